#pragma once

namespace tokenlane::util {

// Marks the calling thread as background work: names it (`top -H`, perf and /proc show the name;
// at most 15 characters) and, on Linux, puts it in the SCHED_BATCH policy. A SCHED_BATCH thread
// keeps its full CPU share but never preempts a running thread when it wakes up, so a batch that
// starts while a request is being answered waits for the next tick instead of taking that core
// (sched(7)). Best effort: a refusal changes nothing.
void mark_background_thread(const char* name) noexcept;

}  // namespace tokenlane::util
