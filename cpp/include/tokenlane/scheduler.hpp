// tokenlane/scheduler.hpp — decides, for every priced request, whether it runs now, waits, is
// deferred or is refused, under budgets, concurrency and token-rate limits.
//
// A Scheduler is a passive, deterministic state machine with an injected clock: it owns no threads,
// calls nothing back and reads no clock. The caller passes `now` (float seconds; Unix epoch seconds in
// production, so budget windows are UTC calendar hours/days/months; virtual seconds in the simulator)
// and drives it:
//
//   tokenlane::Scheduler s(config);
//   Decision d = s.submit(request, now);      // admit: it is running; queue/defer: wait; reject: refuse
//   for (auto& id : s.pop_ready(now)) ...     // start these (queued requests whose turn came)
//   for (auto& [id, d] : s.pop_rejected(now)) ...   // tell these callers (shed from the queue)
//   s.complete(id, now, actual_cost, input_tokens, output_tokens);   // or s.cancel(id, now)
//   s.next_wakeup(now);                       // when to call pop_ready/pop_rejected again, if no event
//
// Budgets follow reserve → run → reconcile: starting a request reserves its p90 cost; complete()
// charges the actual cost and releases the reservation; cancel() releases it all. A request starts
// only if spent + reserved + its p90 cost fits the limit, so spend can exceed a budget by at most the
// amount by which completed requests' actual costs exceeded their p90 reservations, and every
// reservation is released when its request ends. All methods are thread-safe (one internal mutex).
// docs/scheduling.md describes the policies, limits and invariants in full.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenlane/budget_window.hpp"
#include "tokenlane/money.hpp"

namespace tokenlane {

enum class Priority : std::uint8_t { interactive = 0, standard = 1, batch = 2 };

// fifo: arrival order, the cost-agnostic baseline (no deferred lane for batch).
// cost_priority: cheapest predicted cost first, aged so that nothing starves.
// deadline: least slack first (deadline minus predicted service time).
// fair: per-tenant virtual token counters (VTC), weighted; FIFO within a tenant.
// combined ("default"): requests about to miss their deadline first (latest start time within
//   urgency_s); then priority class, then fair share across tenants, then the earlier of the latest
//   start time (deadline slack) and an aged shortest-predicted-job key.
enum class Policy : std::uint8_t { fifo, cost_priority, deadline, fair, combined };

enum class RequestState : std::uint8_t { queued, deferred, running };
enum class DecisionKind : std::uint8_t { admit, queue, defer, reject };

std::string_view to_string(Priority p) noexcept;
std::string_view to_string(Policy p) noexcept;  // "default" for combined
std::string_view to_string(RequestState s) noexcept;
std::string_view to_string(DecisionKind k) noexcept;
// Parse the names above; throw Error(invalid_argument) listing the valid names.
Priority parse_priority(std::string_view name);
Policy parse_policy(std::string_view name);


struct ScheduledRequest {
  std::string id;  // unique among live (queued, deferred, running) requests
  std::string tenant;
  std::string user;
  std::string model;
  Priority priority = Priority::standard;
  std::optional<double> deadline_s;  // absolute, on the scheduler's clock
  std::uint64_t input_tokens = 0;
  std::uint64_t est_output_p50 = 0;
  std::uint64_t est_output_p90 = 0;  // >= est_output_p50
  std::optional<std::uint64_t> max_tokens;
  Money cost_p50, cost_p90, cost_max;  // projected costs; cost_p90 is what admission reserves
};

struct Decision {
  DecisionKind kind = DecisionKind::reject;
  // Machine-readable: "ok", "queued", "deferred", "budget_deferred", "concurrency", "rate_limit_rpm",
  // "rate_limit_tpm", "budget_exceeded", "queue_full", "max_wait", "too_large", "deadline",
  // "cancelled", "admin", ...
  std::string reason;
  std::string message;                  // a sentence: what happened and what to do
  std::optional<double> retry_after_s;  // seconds from now until the blocking limit frees
  std::optional<std::uint64_t> position;  // queue: requests ahead in the current policy order
  std::optional<double> eta_s;            // queue: estimated wait in seconds from now
  Money reserved;                         // admit: the p90 cost reserved
};

struct SchedulerConfig {
  Policy policy = Policy::combined;
  std::optional<std::uint32_t> max_concurrency;         // global in-flight cap
  std::optional<std::uint32_t> tenant_max_concurrency;  // per-tenant in-flight cap
  std::optional<double> tpm, rpm;                       // global tokens / requests per minute
  std::optional<double> tenant_tpm, tenant_rpm;         // the same per tenant
  std::optional<std::size_t> max_queue;                 // 0: never queue (reject with the cause)
  std::optional<double> max_wait_s;                     // queued longer than this: shed
  bool shed_expired = true;  // shed queued requests whose deadline has passed (reason "deadline")

  // Service-time prior (seconds = ttft_s + tpot_s × predicted output tokens); tpot is then learned
  // per model from completed requests. Used by the deadline-aware orders and by ETAs.
  double ttft_s = 0.5;
  double tpot_s = 0.02;
  // Targets for requests that carry no deadline, per class (interactive, standard, batch), seconds.
  double class_slo_s[3] = {10.0, 120.0, 86400.0};
  // cost_priority: a request with twice the mean predicted cost waits at most this much longer.
  double cost_aging_s = 60.0;
  // combined: a request predicted d seconds longer than another yields to it for sjf_aging × d
  // seconds of waiting, then ages ahead.
  double sjf_aging = 4.0;
  // combined: ... and never past arrival + (1 + tail_share) × the wait FIFO would give it when it
  // arrives ((queued requests + 1) × observed mean service time / max_concurrency): shortest-first
  // reorders a tenant's requests only within that bound, so its median gains while its tail stays
  // near FIFO's. (Classes and fair share across tenants still come first.) Infinity: no bound.
  double tail_share = 0.5;
  // combined: a request whose latest start time (deadline − predicted service) is less than this
  // many seconds away goes first, ahead of class and fair-share order, while it can still make it.
  double urgency_s = 2.0;
  // Batch-class requests do not start while spent + reserved would pass this share of the budget,
  // which keeps the rest for interactive and standard traffic (they wait in the deferred lane).
  double budget_defer_fraction = 0.8;
  // A batch request that has waited this long in the deferred lane (deferred for capacity, not for
  // budget) joins the queue as a standard request keyed by its arrival: the lane absorbs bursts,
  // but under sustained load batch work still moves, so nothing starves. Infinity: never.
  double batch_max_defer_s = 600.0;
  // VTC cost of a request: in_weight × input + out_weight × output tokens, divided by tenant weight.
  double vtc_input_weight = 1.0;
  double vtc_output_weight = 2.0;
  // Memory stays bounded however many tenant names arrive: the record of a tenant with no work, no
  // budget, weight 1 and full rate buckets is forgotten after this many idle seconds, or sooner
  // (least recently active first) while more than max_tenant_records records exist. A returning
  // tenant starts afresh; its VTC counter is lifted as for any tenant returning from idle
  // (docs/scheduling.md, "Forgetting idle tenants").
  double tenant_idle_forget_s = 600.0;
  std::size_t max_tenant_records = 10000;
};

struct BudgetUsage {
  Money spent;     // in the current window (all time when the tenant has no budget)
  Money reserved;  // p90 reservations of the tenant's running requests
  std::optional<Money> limit;
  std::optional<BudgetWindow> window;
  std::optional<double> resets_at;  // epoch seconds of the next window, none for total / no budget
};

// OpenAI's x-ratelimit-* shape; unset where unlimited. Remaining is the tighter of the tenant's and
// the global bucket; reset is the time until that bucket is full again.
struct RateLimitStatus {
  std::optional<double> limit_requests, remaining_requests, reset_requests_s;
  std::optional<double> limit_tokens, remaining_tokens, reset_tokens_s;
};

struct SnapshotEntry {
  std::string id, tenant, model;
  Priority priority = Priority::standard;
  RequestState state = RequestState::queued;
  std::uint64_t position = 0;  // index in its list
  double wait_s = 0;           // since submit (queued/deferred) or since start (running)
  Money cost_p50, cost_p90, reserved;
  std::optional<double> deadline_s;
  std::uint64_t input_tokens = 0, est_output_p50 = 0;
};

struct TenantSnapshot {
  std::string tenant;
  std::uint64_t queued = 0, deferred = 0, running = 0;
  Money reserved;
  double vtc_counter = 0;
  double weight = 1;
};

struct SchedulerSnapshot {
  std::vector<SnapshotEntry> queue, deferred, running;  // each in order (queue: policy order)
  std::vector<TenantSnapshot> tenants;                  // sorted by name
  std::vector<std::pair<std::string, std::uint64_t>> counters;
  Money reserved_total;
  Policy policy = Policy::combined;
  bool paused = false;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config = {});
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Budget of a tenant over a UTC calendar window; replaces an existing one (keeping its spend).
  void set_budget(const std::string& tenant, Money limit, BudgetWindow window);
  void clear_budget(const std::string& tenant);
  // Seeds the spend of the window containing `now` (from the ledger at start-up).
  void set_spent(const std::string& tenant, Money spent, double now);
  // Fair-share weight of a tenant (> 0, default 1): a weight-2 tenant gets twice the service.
  void set_weight(const std::string& tenant, double weight);
  // Service the tenant received elsewhere (other replicas of the same service, which share the
  // counts through Redis): added to its fair-share (VTC) counter, weighted as a completion here
  // would be, so the fair orders rank tenants by the fleet's service, not only this process's.
  void add_service(const std::string& tenant, std::uint64_t input_tokens, std::uint64_t output_tokens);

  // Throws Error(invalid_argument) on malformed requests (empty or live id, p90 < p50, negative
  // costs, non-finite times).
  Decision submit(const ScheduledRequest& request, double now);
  // Ids moved to running (reservations taken), in start order; also ids dispatch() started.
  std::vector<std::string> pop_ready(double now);
  // Requests shed from the queue or deferred lane since the last call, with their decision.
  std::vector<std::pair<std::string, Decision>> pop_rejected(double now);
  // Charges the actual cost and tokens and releases the reservation. False unless running.
  bool complete(const std::string& id, double now, Money actual_cost, std::uint64_t input_tokens,
                std::uint64_t output_tokens);
  // Ends a queued, deferred or running request and releases everything it holds. False if unknown.
  bool cancel(const std::string& id, double now);
  // Earliest time at which pop_ready/pop_rejected may return something without another event
  // (submit, complete, cancel); `now` when they would already; none when only events can help.
  std::optional<double> next_wakeup(double now);
  std::optional<RequestState> status(const std::string& id) const;

  BudgetUsage usage(const std::string& tenant, double now);
  RateLimitStatus rate_limits(const std::string& tenant, double now);
  // max_items bounds each list (queue, deferred, running) for large queues.
  SchedulerSnapshot snapshot(double now, std::size_t max_items = static_cast<std::size_t>(-1));

  // Admin / manual mode.
  void pause();
  void resume();
  bool paused() const;
  void set_policy(Policy policy);
  Policy policy() const;
  // Starts a queued or deferred request now, ahead of its turn and regardless of pause and the
  // deferred lane, if concurrency, rate limits and budget allow. The id is also returned by the
  // next pop_ready, so the driver starts work in one place. False if it could not start.
  bool dispatch(const std::string& id, double now);
  // Removes a queued or deferred request; it is reported by pop_rejected with `reason`.
  bool reject(const std::string& id, double now, const std::string& reason = "admin");
  // Moves a queued request to the deferred lane.
  bool defer(const std::string& id, double now);

  std::size_t queued_count() const;
  std::size_t deferred_count() const;
  std::size_t running_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tokenlane
