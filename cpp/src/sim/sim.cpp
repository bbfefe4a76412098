// The trace replay: one loop over time-ordered events (arrivals, completions, scheduler wake-ups).
#include "tokenlane/sim.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>
#include <string>

#include "tokenlane/error.hpp"

namespace tokenlane {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

void check_trace(const SimTrace& t) {
  const std::size_t n = t.arrival_s.size();
  auto same = [&](std::size_t m, const char* name) {
    if (m != n)
      throw Error(ErrorCode::invalid_argument, std::string("trace column '") + name + "' has " + std::to_string(m) +
                                                   " rows, arrival_s has " + std::to_string(n));
  };
  same(t.input_tokens.size(), "input_tokens");
  same(t.output_tokens.size(), "output_tokens");
  same(t.est_p50.size(), "est_p50");
  same(t.est_p90.size(), "est_p90");
  same(t.tenant.size(), "tenant");
  same(t.priority.size(), "priority");
  same(t.deadline_s.size(), "deadline_s");
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(t.arrival_s[i]))
      throw Error(ErrorCode::invalid_argument, "arrival_s must be finite (row " + std::to_string(i) + ")");
    if (i && t.arrival_s[i] < t.arrival_s[i - 1])
      throw Error(ErrorCode::invalid_argument, "arrival_s must be sorted (row " + std::to_string(i) + ")");
    if (t.tenant[i] >= t.tenant_names.size())
      throw Error(ErrorCode::invalid_argument, "tenant index out of range (row " + std::to_string(i) + ")");
    if (t.priority[i] > 2) throw Error(ErrorCode::invalid_argument, "priority must be 0, 1 or 2");
    if (t.est_p90[i] < t.est_p50[i])
      throw Error(ErrorCode::invalid_argument, "est_p90 < est_p50 (row " + std::to_string(i) + ")");
  }
}

std::int64_t price(std::int64_t per_token, std::uint64_t tokens) {
  return Money::from_pico(per_token).times(tokens).pico();
}

// Parses "r<index>" back to the index (ids are ours).
std::size_t index_of(const std::string& id) { return static_cast<std::size_t>(std::stoull(id.c_str() + 1)); }

void fairness(const SimTrace& t, const SimConfig& cfg, SimResult& r, double horizon_end) {
  const std::size_t n = t.arrival_s.size();
  const std::size_t nt = t.tenant_names.size();
  if (n == 0 || nt < 2) return;
  const double origin = t.arrival_s.front();
  const double span = std::max(horizon_end - origin, 1e-9);
  double w = std::max(cfg.fairness_window_s, 1e-3);
  // Keep the windows × tenants table within ~32M cells.
  while (span / w * static_cast<double>(nt) > 3.2e7) w *= 2;
  const auto nw = static_cast<std::size_t>(std::ceil(span / w)) + 1;
  std::vector<double> service(nw * nt, 0.0);
  std::vector<double> covered(nw * nt, 0.0);  // seconds of each window with a request of the tenant waiting
  auto win = [&](double x) {
    const double k = std::floor((x - origin) / w);
    return static_cast<std::size_t>(std::clamp(k, 0.0, static_cast<double>(nw - 1)));
  };
  auto spread = [&](std::vector<double>& into, std::uint32_t ten, double s, double e, double amount_per_s) {
    for (std::size_t k = win(s); k <= win(e); ++k) {
      const double lo = std::max(s, origin + static_cast<double>(k) * w);
      const double hi = std::min(e, origin + static_cast<double>(k + 1) * w);
      if (hi > lo) into[k * nt + ten] += amount_per_s * (hi - lo);
    }
  };
  const double wi = cfg.scheduler.vtc_input_weight, wo = cfg.scheduler.vtc_output_weight;
  struct Wait {
    std::uint32_t tenant;
    double start, end;
  };
  std::vector<Wait> waits;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t ten = t.tenant[i];
    const double wait_end = r.outcome[i] == static_cast<std::uint8_t>(SimOutcome::completed)
                                ? r.start_s[i]
                                : (std::isnan(r.end_s[i]) ? horizon_end : r.end_s[i]);
    if (wait_end > t.arrival_s[i]) waits.push_back({ten, t.arrival_s[i], wait_end});
    if (r.outcome[i] != static_cast<std::uint8_t>(SimOutcome::completed)) continue;
    const double cost = wi * static_cast<double>(t.input_tokens[i]) + wo * static_cast<double>(t.output_tokens[i]);
    const double s = r.start_s[i], e = r.end_s[i];
    if (!(e > s)) service[win(s) * nt + ten] += cost;
    else spread(service, ten, s, e, cost / (e - s));
  }
  // Union of each tenant's waiting intervals, so overlapping waits are not counted twice. They were
  // collected in arrival order, so grouping by tenant (a stable counting sort) sorts them.
  {
    std::vector<std::size_t> at(nt + 1, 0);
    for (const Wait& x : waits) ++at[x.tenant + 1];
    for (std::size_t k = 0; k < nt; ++k) at[k + 1] += at[k];
    std::vector<Wait> grouped(waits.size());
    for (const Wait& x : waits) grouped[at[x.tenant]++] = x;
    waits.swap(grouped);
  }
  for (std::size_t i = 0; i < waits.size();) {
    const std::uint32_t ten = waits[i].tenant;
    double s = waits[i].start, e = waits[i].end;
    std::size_t j = i + 1;
    for (; j < waits.size() && waits[j].tenant == ten && waits[j].start <= e; ++j) e = std::max(e, waits[j].end);
    spread(covered, ten, s, e, 1.0);
    i = j;
  }
  double jain_sum = 0;
  std::uint64_t windows = 0;
  for (std::size_t k = 0; k < nw; ++k) {
    double sum = 0, sq = 0, mx = -kInf, mn = kInf;
    std::size_t m = 0;
    // Backlogged: waiting for at least 90% of the window (VTC's notion: it would have taken more).
    const double len = std::min(w, horizon_end - (origin + static_cast<double>(k) * w));
    for (std::size_t ten = 0; ten < nt; ++ten) {
      if (len <= 0 || covered[k * nt + ten] < 0.9 * len) continue;
      const double x = service[k * nt + ten];
      sum += x;
      sq += x * x;
      mx = std::max(mx, x);
      mn = std::min(mn, x);
      ++m;
    }
    if (m < 2) continue;
    ++windows;
    jain_sum += sq > 0 ? sum * sum / (static_cast<double>(m) * sq) : 1.0;
    r.max_service_gap = std::max(r.max_service_gap, mx - mn);
  }
  r.fairness_windows = windows;
  if (windows) r.jain_fairness = jain_sum / static_cast<double>(windows);
}

}  // namespace

SimResult simulate(const SimTrace& trace, const SimConfig& config) {
  check_trace(trace);
  const std::size_t n = trace.arrival_s.size();
  SimResult r;
  r.start_s.assign(n, kNaN);
  r.end_s.assign(n, kNaN);
  r.outcome.assign(n, static_cast<std::uint8_t>(SimOutcome::unfinished));
  r.first_decision.assign(n, 0);
  r.deferred.assign(n, 0);
  r.reason.assign(n, std::string());
  r.cost_pico.assign(n, 0);
  if (n == 0) return r;

  Scheduler s(config.scheduler);
  if (config.budget_per_tenant)
    for (const std::string& name : trace.tenant_names) s.set_budget(name, *config.budget_per_tenant, config.budget_window);
  const double origin = config.clock_origin_s;
  const ServiceModel& sm = config.service;

  using Done = std::pair<double, std::size_t>;  // (end time, index)
  std::priority_queue<Done, std::vector<Done>, std::greater<Done>> running;
  auto start = [&](std::size_t i, double now) {
    r.start_s[i] = now;
    const double service = sm.ttft_s + sm.prefill_s_per_token * static_cast<double>(trace.input_tokens[i]) +
                           sm.tpot_s * static_cast<double>(trace.output_tokens[i]);
    running.emplace(now + service, i);
  };
  const std::int64_t ip = config.input_price_pico, op = config.output_price_pico;

  std::size_t next = 0;
  double wake = kInf;
  double now = trace.arrival_s.front();
  const double last_arrival = trace.arrival_s.back();
  for (;;) {
    const double t_arr = next < n ? trace.arrival_s[next] : kInf;
    const double t_done = running.empty() ? kInf : running.top().first;
    const double t = std::min({t_arr, t_done, wake});
    if (t == kInf || t > last_arrival + config.drain_limit_s) break;
    now = std::max(now, t);
    const double clock = origin + now;
    while (!running.empty() && running.top().first <= now) {
      const auto [end, i] = running.top();
      running.pop();
      const std::int64_t cost = price(ip, trace.input_tokens[i]) + price(op, trace.output_tokens[i]);
      s.complete("r" + std::to_string(i), origin + end, Money::from_pico(cost), trace.input_tokens[i],
                 trace.output_tokens[i]);
      r.end_s[i] = end;
      r.cost_pico[i] = cost;
      r.outcome[i] = static_cast<std::uint8_t>(SimOutcome::completed);
    }
    while (next < n && trace.arrival_s[next] <= now) {
      const std::size_t i = next++;
      ScheduledRequest q;
      q.id = "r" + std::to_string(i);
      q.tenant = trace.tenant_names[trace.tenant[i]];
      q.model = config.model;
      q.priority = static_cast<Priority>(trace.priority[i]);
      if (!std::isnan(trace.deadline_s[i])) q.deadline_s = origin + trace.deadline_s[i];
      q.input_tokens = trace.input_tokens[i];
      q.est_output_p50 = trace.est_p50[i];
      q.est_output_p90 = trace.est_p90[i];
      const std::int64_t in_cost = price(ip, q.input_tokens);
      q.cost_p50 = Money::from_pico(in_cost + price(op, q.est_output_p50));
      q.cost_p90 = Money::from_pico(in_cost + price(op, q.est_output_p90));
      q.cost_max = q.cost_p90;
      const Decision d = s.submit(q, clock);
      r.first_decision[i] = static_cast<std::uint8_t>(d.kind);
      r.reason[i] = d.reason;
      if (d.kind == DecisionKind::admit) start(i, now);
      else if (d.kind == DecisionKind::reject) {
        r.outcome[i] = static_cast<std::uint8_t>(SimOutcome::rejected);
        r.end_s[i] = now;
      } else if (d.kind == DecisionKind::defer) {
        r.deferred[i] = 1;
      }
      if (config.progress) config.progress->store(next, std::memory_order_relaxed);
    }
    for (const std::string& ready : s.pop_ready(clock)) start(index_of(ready), now);
    for (const auto& [rid, d] : s.pop_rejected(clock)) {
      const std::size_t i = index_of(rid);
      r.outcome[i] = static_cast<std::uint8_t>(SimOutcome::rejected);
      r.reason[i] = d.reason;
      r.end_s[i] = now;
    }
    const auto w = s.next_wakeup(clock);
    if (!w) {
      wake = kInf;
      continue;
    }
    // Back on the trace clock, rounded up so that origin + wake reaches the scheduler's time; a
    // wake-up at `now` right after popping would repeat forever, so step past it.
    double local = *w - origin;
    for (int k = 0; k < 8 && origin + local < *w; ++k) local += std::max(std::abs(*w), 1.0) * 1e-15;
    wake = std::max(local, std::nextafter(now, kInf));
  }
  double last_end = trace.arrival_s.front();
  for (std::size_t i = 0; i < n; ++i)
    if (r.outcome[i] == static_cast<std::uint8_t>(SimOutcome::completed)) last_end = std::max(last_end, r.end_s[i]);
  r.makespan_s = last_end - trace.arrival_s.front();
  fairness(trace, config, r, std::max(last_end, now));
  if (config.progress) config.progress->store(n, std::memory_order_relaxed);
  return r;
}

}  // namespace tokenlane
