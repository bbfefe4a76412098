#include "background_thread.hpp"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace tokenlane::util {

void mark_background_thread(const char* name) noexcept {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), name);
  sched_param param{};
  param.sched_priority = 0;
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
#else
  (void)name;
#endif
}

}  // namespace tokenlane::util
