#include "tokenlane/prepare.hpp"

#include <algorithm>
#include <functional>

#include "../util/background_thread.hpp"
#include "tokenlane/chat.hpp"

namespace tokenlane {
namespace {

// Folds `text` into a running 64-bit hash (boost's hash_combine over the standard library's hash).
std::uint64_t mix(std::uint64_t h, std::string_view text) {
  const std::uint64_t v = std::hash<std::string_view>{}(text);
  return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
}

std::int64_t total(const Pricing& pricing, std::string_view model, std::uint64_t input, std::uint64_t output) {
  CostQuery q;
  q.input_tokens = input;
  q.output_tokens = output;
  return pricing.cost(model, q).total.pico();
}

}  // namespace

std::shared_ptr<PreparedChat> prepare_chat(const Encoding& encoding, const Estimator& estimator,
                                           const Pricing& pricing, const PlainChat& chat, const PrepareQuery& query) {
  auto out = std::make_shared<PreparedChat>();
  PreparedChat& p = *out;
  p.model = query.model;
  p.route = query.route;
  p.tenant = query.tenant;

  // Count as count_chat_tokens does (every field's text, the framing), and flatten as the
  // estimators read chat messages: role \x1f content, messages joined by \x1e.
  const ChatFraming framing = chat_framing(encoding, query.model);
  long tokens = framing.reply_priming;
  std::size_t prompt_bytes = 0;
  for (const auto& f : chat.fields) prompt_bytes += f.value.size() + 2;
  p.prompt.reserve(prompt_bytes);
  std::uint32_t begin = 0;
  long message_tokens = 0;
  const std::size_t messages = chat.message_ends.size();
  for (std::size_t m = 0; m < messages; ++m) {
    const std::uint32_t end = chat.message_ends[m];
    std::string_view role;
    message_tokens = framing.per_message;
    const bool in_prefix = m + 1 < messages;
    for (std::uint32_t i = begin; i < end; ++i) {
      const PlainChat::Field& f = chat.fields[i];
      message_tokens += static_cast<long>(encoding.count(f.value));
      if (f.key == "name") message_tokens += framing.per_name;
      if (f.key == "role") role = f.value;
      if (in_prefix) p.prefix_hash = mix(mix(p.prefix_hash, f.part ? "content[]" : f.key), f.value);
    }
    if (in_prefix) p.prefix_hash = mix(p.prefix_hash, "\x1e");  // message boundary
    tokens += message_tokens;
    if (m > 0) p.prompt += kMessageSeparator;
    p.prompt.append(role).push_back(kRoleSeparator);
    bool first_part = true;  // text parts are joined by newlines, empty ones skipped
    for (std::uint32_t i = begin; i < end; ++i) {
      const PlainChat::Field& f = chat.fields[i];
      if (f.key != "content" || (f.part && f.value.empty())) continue;
      if (f.part && !first_part) p.prompt.push_back('\n');
      p.prompt.append(f.value);
      first_part = false;
    }
    begin = end;
  }
  if (!query.tools_json.empty()) {  // the tool definitions are part of the prompt, and of its cached prefix
    tokens += static_cast<long>(count_chat_tools(encoding, query.tools_json, query.model));
    p.prefix_hash = mix(p.prefix_hash, query.tools_json);
  }
  p.input_tokens = static_cast<std::uint64_t>(std::max(0L, tokens));
  p.last_message_tokens = static_cast<std::uint64_t>(std::max(0L, framing.reply_priming + message_tokens));

  const bool known = pricing.resolve(query.model).has_value();
  if (!known && !pricing.has_fallback()) return out;
  p.priced = true;
  std::optional<std::uint64_t> model_max;
  if (known) {
    p.max_input_tokens = pricing.max_input_tokens(query.model);
    model_max = pricing.max_output_tokens(query.model);
  }
  const std::uint64_t limit = model_max.value_or(query.default_max_output);
  p.max_output = query.max_tokens && *query.max_tokens > 0 ? std::min(*query.max_tokens, limit) : limit;

  EstimateQuery q;
  q.prompt = p.prompt;
  q.model = query.model;
  q.max_tokens = p.max_output;
  q.model_max_output = limit;
  q.input_tokens = p.input_tokens;
  q.route = query.route;
  q.tenant = query.tenant;
  p.estimate = estimator.estimate(q);

  // The price tier depends on the prompt only, so cost is linear in output tokens.
  const std::int64_t base = total(pricing, query.model, p.input_tokens, 0);
  const std::int64_t per_output = total(pricing, query.model, p.input_tokens, 1) - base;
  const auto n = static_cast<std::int64_t>(query.n);
  p.cost_p50 = base + static_cast<std::int64_t>(p.estimate.p50) * n * per_output;
  p.cost_p90 = base + static_cast<std::int64_t>(p.estimate.p90) * n * per_output;
  p.cost_max = base + static_cast<std::int64_t>(p.max_output) * n * per_output;
  return out;
}

BackgroundObserver::BackgroundObserver(std::shared_ptr<Estimator> estimator, std::size_t max_queued,
                                       std::chrono::milliseconds batch_delay)
    : estimator_(std::move(estimator)), max_queued_(max_queued), batch_delay_(batch_delay) {}

BackgroundObserver::~BackgroundObserver() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BackgroundObserver::observe(std::shared_ptr<const PreparedChat> request, std::uint64_t output_tokens,
                                 bool truncated) {
  bool full = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= max_queued_) {
      ++dropped_;
      return;
    }
    queue_.push_back({std::move(request), output_tokens, truncated});
    ++queued_;
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
    full = queue_.size() == kBatch || idle_;
  }
  if (full) wake_.notify_one();  // else the thread's own timer picks the update up
}

void BackgroundObserver::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  const std::uint64_t target = queued_;
  flushing_ = true;
  wake_.notify_one();
  done_.wait(lock, [&] { return applied_ >= target || !thread_.joinable(); });
}

std::uint64_t BackgroundObserver::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

void BackgroundObserver::run() {
  util::mark_background_thread("tokenlane-learn");
  std::vector<Update> batch;
  int empty_rounds = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (idle_) {  // no traffic for a while: sleep until an update or a flush arrives
      wake_.wait(lock, [&] { return stopping_ || flushing_ || !queue_.empty(); });
      idle_ = false;
    } else {
      wake_.wait_for(lock, batch_delay_, [&] { return stopping_ || flushing_ || queue_.size() >= kBatch; });
    }
    if (queue_.empty()) {
      flushing_ = false;
      if (stopping_) return;  // everything queued is applied
      idle_ = ++empty_rounds >= kIdleRounds;
      continue;
    }
    empty_rounds = 0;
    batch.swap(queue_);
    lock.unlock();
    for (Update& u : batch) {
      EstimateQuery q;
      q.prompt = u.request->prompt;
      q.model = u.request->model;
      q.input_tokens = u.request->input_tokens;
      q.route = u.request->route;
      q.tenant = u.request->tenant;
      try {
        estimator_->observe(q, u.output_tokens, u.truncated);
      } catch (...) {  // an update the estimator refuses is skipped: learning is best effort
      }
    }
    const std::size_t applied = batch.size();
    batch.clear();
    lock.lock();
    applied_ += applied;
    if (queue_.empty()) flushing_ = false;
    done_.notify_all();
  }
}

}  // namespace tokenlane
