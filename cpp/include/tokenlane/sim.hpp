// tokenlane/sim.hpp — replays a request trace through the real Scheduler on a virtual clock.
//
// A discrete-event simulation: arrivals come from the trace, each started request occupies one
// provider slot for a modelled service time, and the very same tokenlane::Scheduler that serves
// production decides admission and order. Nothing here calls back into the caller while it runs.
//
//   tokenlane::SimTrace trace = ...;          // columns, one entry per request
//   tokenlane::SimConfig cfg;                 // scheduler limits, service model, prices, budget
//   tokenlane::SimResult r = tokenlane::simulate(trace, cfg);
//
// Service model: service_s = ttft_s + prefill_s_per_token × input + tpot_s × actual output tokens.
// The provider runs at most scheduler.max_concurrency requests at once (the scheduler's own cap);
// below that cap a request's service time does not depend on load, as with a hosted API.
// Costs are priced per token: input × input_price + output × output_price (pico-dollars).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tokenlane/money.hpp"
#include "tokenlane/scheduler.hpp"

namespace tokenlane {

// One request per index. deadline_s: absolute on the trace clock, NaN for none.
struct SimTrace {
  std::vector<double> arrival_s;
  std::vector<std::uint64_t> input_tokens;
  std::vector<std::uint64_t> output_tokens;  // actual
  std::vector<std::uint64_t> est_p50, est_p90;  // what the scheduler is told
  std::vector<std::uint32_t> tenant;            // index into tenant_names
  std::vector<std::string> tenant_names;
  std::vector<std::uint8_t> priority;  // Priority values
  std::vector<double> deadline_s;
};

struct ServiceModel {
  double ttft_s = 0.5;
  double prefill_s_per_token = 0.0;
  double tpot_s = 0.02;
};

struct SimConfig {
  SchedulerConfig scheduler;
  ServiceModel service;
  std::string model = "model";
  std::int64_t input_price_pico = 0;   // per input token
  std::int64_t output_price_pico = 0;  // per output token
  std::optional<Money> budget_per_tenant;
  BudgetWindow budget_window = BudgetWindow::total;
  double clock_origin_s = 0;  // added to trace times (epoch seconds, for calendar budget windows)
  // Requests still waiting this long after the last arrival end as "unfinished".
  double drain_limit_s = 30.0 * 86400.0;
  double fairness_window_s = 60.0;  // window of the service-share fairness metrics
  std::atomic<std::uint64_t>* progress = nullptr;  // arrivals processed, for progress bars
};

enum class SimOutcome : std::uint8_t { completed = 0, rejected = 1, unfinished = 2 };

struct SimResult {
  // Per request (trace order). Times on the trace clock; NaN where not applicable.
  std::vector<double> start_s, end_s;
  std::vector<std::uint8_t> outcome;         // SimOutcome
  std::vector<std::uint8_t> first_decision;  // DecisionKind of submit
  std::vector<std::uint8_t> deferred;        // 1 if it ever waited in the deferred lane
  std::vector<std::string> reason;           // submit reason, or the shedding reason
  std::vector<std::int64_t> cost_pico;       // actual cost if completed, else 0
  // Fairness across tenants, computed over windows of fairness_window_s in which at least two
  // tenants were backlogged (a request of theirs waiting for >= 90% of the window): Jain's index of the VTC-weighted service each received (mean over
  // windows; 1 = equal shares) and the largest gap between two such tenants' service (tokens).
  double jain_fairness = 1.0;
  double max_service_gap = 0.0;
  std::uint64_t fairness_windows = 0;
  double makespan_s = 0;  // first arrival to last completion
};

// Throws Error(invalid_argument) when the columns disagree in length or hold invalid values.
SimResult simulate(const SimTrace& trace, const SimConfig& config);

}  // namespace tokenlane
