// tokenlane/prepare.hpp — the middleware's prepare step for a chat request in one call: count the
// prompt exactly, estimate the output, price the expected, p90 and worst case; and the estimator's
// online update after the response, on a thread of its own.
//
// The fast path takes *plain* chat requests, the usual case: every field of every message a string
// (role, content, name, tool_call_id) or null, the content possibly a list of text parts, tool
// calls with string names and arguments; tool definitions come as their JSON (legacy functions
// take the general path). Its results equal those of the general path
// (count_chat_tokens on the body, Estimator::estimate on the flattened prompt, Pricing::cost), which
// every other shape takes (tests/cpp/prepare_test.cpp and tests/python/test_prepare.py hold the two
// together).
//
//   tokenlane::PlainChat chat;
//   chat.add({{"role", "user"}, {"content", "Hello"}});
//   auto p = tokenlane::prepare_chat(*enc, *estimator, *pricing, chat, {"gpt-4o", "/chat", "acme"});
//   p->input_tokens; p->estimate.p90; p->cost_p90;       // 8, ..., pico-USD
//   observer.observe(p, /*output_tokens=*/312, /*truncated=*/false);   // returns at once
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tokenlane/estimator.hpp"
#include "tokenlane/pricing.hpp"
#include "tokenlane/tokenizer.hpp"

namespace tokenlane {

// A chat request's messages as views of their string fields (the caller keeps the text alive).
struct PlainChat {
  struct Field {
    std::string_view key, value;
    bool part = false;  // one text of a list: a content's text part, a tool call's name or arguments
  };
  std::vector<Field> fields;                 // every message's fields, message after message
  std::vector<std::uint32_t> message_ends;   // per message: one past its last field in `fields`

  void add(std::initializer_list<Field> message) {
    fields.insert(fields.end(), message.begin(), message.end());
    end_message();
  }
  void end_message() { message_ends.push_back(static_cast<std::uint32_t>(fields.size())); }
};

struct PrepareQuery {
  std::string_view model, route, tenant;
  std::optional<std::uint64_t> max_tokens;  // the request's output cap (absent or 0: the model's)
  std::uint64_t n = 1;                      // completions asked for (output is billed for each)
  std::uint64_t default_max_output = 4096;  // worst-case output when the price table has no limit
  std::string_view tools_json;              // the request's "tools" as a JSON array ("" for none)
};

struct PreparedChat {
  std::string model, route, tenant;  // kept for the estimator's update after the response
  std::string prompt;                // the messages flattened as estimators read them
  std::uint64_t input_tokens = 0;    // exact, as OpenAI bills the prompt
  // For the provider prompt-cache prediction: the last message counted as a request of its own,
  // and a hash of every message before it (0 with one message; equal prefixes, equal hashes).
  std::uint64_t last_message_tokens = 0;
  std::uint64_t prefix_hash = 0;
  bool priced = false;  // false: the model has no price and there is no fallback (nothing below set)
  std::optional<std::uint64_t> max_input_tokens;  // the model's context limit, if the table has one
  std::uint64_t max_output = 0;                   // per completion: min(max_tokens, the model's limit)
  Estimate estimate;                              // per completion
  std::int64_t cost_p50 = 0, cost_p90 = 0, cost_max = 0;  // pico-USD for all n completions
};

// Counts, estimates and prices a plain chat request (see the file comment).
std::shared_ptr<PreparedChat> prepare_chat(const Encoding& encoding, const Estimator& estimator,
                                           const Pricing& pricing, const PlainChat& chat, const PrepareQuery& query);

// Feeds an estimator the actual output of answered requests on a thread of its own, so the thread
// that answers never waits for online learning. Updates are applied in batches every `batch_delay`
// (or once `kBatch` wait): waking the thread for each request would be a hand-off the answering
// thread pays for (the OS lets a woken thread preempt its waker). Learning is best effort: past
// `max_queued` waiting updates, new ones are dropped (and counted) rather than grow without bound.
class BackgroundObserver {
 public:
  static constexpr std::size_t kBatch = 256;
  explicit BackgroundObserver(std::shared_ptr<Estimator> estimator, std::size_t max_queued = 10000,
                              std::chrono::milliseconds batch_delay = std::chrono::milliseconds(10));
  ~BackgroundObserver();  // applies what is queued, then stops
  BackgroundObserver(const BackgroundObserver&) = delete;
  BackgroundObserver& operator=(const BackgroundObserver&) = delete;

  // Queues one update (returns at once; starts the thread on first use).
  void observe(std::shared_ptr<const PreparedChat> request, std::uint64_t output_tokens, bool truncated);
  // Returns once every update queued before the call is applied.
  void flush();
  std::uint64_t dropped() const;

 private:
  struct Update {
    std::shared_ptr<const PreparedChat> request;
    std::uint64_t output_tokens;
    bool truncated;
  };
  void run();

  std::shared_ptr<Estimator> estimator_;
  std::size_t max_queued_;
  std::chrono::milliseconds batch_delay_;
  mutable std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<Update> queue_;
  std::uint64_t queued_ = 0, applied_ = 0, dropped_ = 0;
  bool stopping_ = false, flushing_ = false;
  bool idle_ = false;  // the thread sleeps until notified (after kIdleRounds empty batches)
  static constexpr int kIdleRounds = 100;
  std::thread thread_;
};

}  // namespace tokenlane
