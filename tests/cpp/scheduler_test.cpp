// Scheduler: calendar windows, every policy's order, every limit, budgets (reserve → run →
// reconcile), the deferred lane, admin controls, and property tests over random operation sequences.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/bucket_queue.hpp"
#include "scheduler/id_table.hpp"
#include "scheduler/ordered_index.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/scheduler.hpp"

using namespace tokenlane;

namespace {

ScheduledRequest req(const std::string& id, std::uint64_t out = 100, std::int64_t cost = 1000,
                     const std::string& tenant = "t", Priority prio = Priority::standard) {
  ScheduledRequest r;
  r.id = id;
  r.tenant = tenant;
  r.model = "m";
  r.priority = prio;
  r.input_tokens = 10;
  r.est_output_p50 = out;
  r.est_output_p90 = out * 2;
  r.cost_p50 = Money::from_pico(cost);
  r.cost_p90 = Money::from_pico(cost * 2);
  r.cost_max = Money::from_pico(cost * 4);
  return r;
}

SchedulerConfig cfg(Policy p, std::uint32_t conc = 1) {
  SchedulerConfig c;
  c.policy = p;
  c.max_concurrency = conc;
  return c;
}

// Fills the single slot with a blocker, queues `reqs`, then drains one at a time and returns the order.
std::vector<std::string> drain_order(Scheduler& s, const std::vector<ScheduledRequest>& reqs, double t0 = 0) {
  REQUIRE(s.submit(req("blocker"), t0).kind == DecisionKind::admit);
  double now = t0;
  for (const auto& r : reqs) {
    now += 0.001;
    s.submit(r, now);
  }
  std::vector<std::string> order;
  std::string running = "blocker";
  for (;;) {
    now += 0.001;
    s.complete(running, now, Money::from_pico(0), 10, 100);
    auto ids = s.pop_ready(now);
    if (ids.empty()) break;
    REQUIRE(ids.size() == 1);
    order.push_back(ids[0]);
    running = ids[0];
  }
  return order;
}

}  // namespace

TEST_CASE("budget windows are UTC calendar hours, days and months", "[scheduler]") {
  const double now = 1795463325;  // 2026-11-23T19:48:45Z
  auto h = budget_window_bounds(BudgetWindow::hour, now);
  CHECK(h.first == 1795460400);
  CHECK(h.second == 1795464000);
  auto d = budget_window_bounds(BudgetWindow::day, now);
  CHECK(d.first == 1795392000);
  CHECK(d.second == 1795478400);
  auto m = budget_window_bounds(BudgetWindow::month, now);
  CHECK(m.first == 1793491200);   // 2026-11-01
  CHECK(m.second == 1796083200);  // 2026-12-01
  auto dec = budget_window_bounds(BudgetWindow::month, 1798758000);  // 2026-12-31T23:00Z
  CHECK(dec.first == 1796083200);
  CHECK(dec.second == 1798761600);  // 2027-01-01
  auto leap = budget_window_bounds(BudgetWindow::month, 1835438400);  // 2028-02-29T12:00Z
  CHECK(leap.first == 1832976000);
  CHECK(leap.second == 1835481600);
  auto total = budget_window_bounds(BudgetWindow::total, now);
  CHECK(std::isinf(total.second));
}

TEST_CASE("names parse and print", "[scheduler]") {
  CHECK(parse_policy("default") == Policy::combined);
  CHECK(to_string(Policy::combined) == "default");
  CHECK(parse_priority("batch") == Priority::batch);
  CHECK(parse_budget_window("month") == BudgetWindow::month);
  CHECK_THROWS_AS(parse_policy("lifo"), Error);
  CHECK_THROWS_WITH(parse_budget_window("week"), Catch::Contains("hour, day, month, total"));
}

TEST_CASE("malformed requests are refused with an error", "[scheduler]") {
  Scheduler s(cfg(Policy::fifo));
  auto bad = req("a");
  bad.est_output_p90 = 1;
  CHECK_THROWS_AS(s.submit(bad, 0), Error);
  CHECK_THROWS_AS(s.submit(req(""), 0), Error);
  CHECK_THROWS_AS(s.submit(req("a"), std::nan("")), Error);
  s.submit(req("a"), 0);
  CHECK_THROWS_WITH(s.submit(req("a"), 0), Catch::Contains("already"));
  SchedulerConfig c;
  c.tpm = -1;
  CHECK_THROWS_AS(Scheduler(c), Error);
}

TEST_CASE("admit when free, queue with position and ETA when busy", "[scheduler]") {
  Scheduler s(cfg(Policy::fifo, 2));
  auto a = s.submit(req("a"), 0);
  CHECK(a.kind == DecisionKind::admit);
  CHECK(a.reason == "ok");
  CHECK(a.reserved.pico() == 2000);
  CHECK(s.submit(req("b"), 0).kind == DecisionKind::admit);
  auto c = s.submit(req("c"), 0);
  CHECK(c.kind == DecisionKind::queue);
  CHECK(c.reason == "queued");
  CHECK(*c.position == 0);
  CHECK(*c.eta_s > 0);
  auto d = s.submit(req("d"), 0);
  CHECK(*d.position == 1);
  CHECK(*d.eta_s > *c.eta_s);
  CHECK(s.status("c") == RequestState::queued);
  CHECK(s.pop_ready(1).empty());
  CHECK_FALSE(s.next_wakeup(1).has_value());  // only a completion can help
  CHECK(s.complete("a", 2, Money::from_pico(900), 10, 90));
  CHECK(s.next_wakeup(2) == 2.0);
  CHECK(s.pop_ready(2) == std::vector<std::string>{"c"});
  CHECK(s.status("a") == std::nullopt);
  CHECK(s.status("c") == RequestState::running);
  CHECK_FALSE(s.complete("a", 3, Money::from_pico(1), 1, 1));  // already done
}

TEST_CASE("fifo serves in arrival order", "[scheduler][policy]") {
  Scheduler s(cfg(Policy::fifo));
  auto order = drain_order(s, {req("x", 500, 5000), req("y", 10, 100), req("z", 50, 500)});
  CHECK(order == std::vector<std::string>{"x", "y", "z"});
}

TEST_CASE("cost_priority serves cheap first, with aging", "[scheduler][policy]") {
  SECTION("cheap first") {
    Scheduler s(cfg(Policy::cost_priority));
    auto order = drain_order(s, {req("x", 500, 5000), req("y", 10, 100), req("z", 50, 500)});
    CHECK(order == std::vector<std::string>{"y", "z", "x"});
  }
  SECTION("an old expensive request ages ahead of a new cheap one") {
    auto c = cfg(Policy::cost_priority);
    c.cost_aging_s = 10;
    Scheduler s(c);
    REQUIRE(s.submit(req("blocker", 100, 1000), 0).kind == DecisionKind::admit);
    s.submit(req("old", 100, 3000), 1);   // mean cost then 2000: key 1 + 10*1.5 = 16
    s.submit(req("new", 100, 10), 100);   // arrives much later: key ~ 100
    s.complete("blocker", 101, Money(), 1, 1);
    CHECK(s.pop_ready(101) == std::vector<std::string>{"old"});
  }
}

TEST_CASE("deadline serves least slack first", "[scheduler][policy]") {
  Scheduler s(cfg(Policy::deadline));
  auto a = req("late", 100);
  a.deadline_s = 100;
  auto b = req("soon", 100);
  b.deadline_s = 20;
  auto c = req("long_soon", 1000);  // same deadline as "soon" but 18 s more predicted work
  c.deadline_s = 20;
  auto order = drain_order(s, {a, b, c});
  CHECK(order == std::vector<std::string>{"long_soon", "soon", "late"});
}

TEST_CASE("fair shares service between tenants by virtual token counters", "[scheduler][policy]") {
  SECTION("a light tenant is not stuck behind a heavy tenant's backlog") {
    Scheduler s(cfg(Policy::fair));
    std::vector<ScheduledRequest> reqs;
    for (int i = 0; i < 6; ++i) reqs.push_back(req("heavy" + std::to_string(i), 100, 1000, "heavy"));
    for (int i = 0; i < 3; ++i) reqs.push_back(req("light" + std::to_string(i), 100, 1000, "light"));
    auto order = drain_order(s, reqs);
    // The blocker ran for tenant "t"; heavy and light then alternate until light is done.
    std::vector<std::string> first6(order.begin(), order.begin() + 6);
    CHECK(std::count_if(first6.begin(), first6.end(), [](auto& id) { return id.rfind("light", 0) == 0; }) == 3);
  }
  SECTION("weights scale the share") {
    Scheduler s(cfg(Policy::fair));
    s.set_weight("gold", 2.0);
    std::vector<ScheduledRequest> reqs;
    for (int i = 0; i < 9; ++i) reqs.push_back(req("g" + std::to_string(i), 100, 1000, "gold"));
    for (int i = 0; i < 9; ++i) reqs.push_back(req("b" + std::to_string(i), 100, 1000, "bronze"));
    auto order = drain_order(s, reqs);
    std::vector<std::string> first9(order.begin(), order.begin() + 9);
    const auto gold = std::count_if(first9.begin(), first9.end(), [](auto& id) { return id[0] == 'g'; });
    CHECK(gold >= 5);
    CHECK(gold <= 7);
  }
}

TEST_CASE("service done elsewhere counts in the fair share (replicas)", "[scheduler][policy]") {
  for (Policy policy : {Policy::fair, Policy::combined}) {
    Scheduler s(cfg(policy));
    REQUIRE(s.submit(req("blocker"), 0).kind == DecisionKind::admit);
    CHECK(s.submit(req("heavy0", 100, 1000, "heavy"), 0.001).kind == DecisionKind::queue);
    CHECK(s.submit(req("light0", 100, 1000, "light"), 0.002).kind == DecisionKind::queue);
    // Locally both are even (heavy came first); another replica served "heavy" 5,000 tokens.
    s.add_service("heavy", 1000, 2000);
    s.complete("blocker", 0.003, Money::from_pico(0), 10, 100);
    CHECK(s.pop_ready(0.003) == std::vector<std::string>{"light0"});
  }
  SECTION("without it, the earlier request of the tied tenants goes first") {
    Scheduler s(cfg(Policy::fair));
    REQUIRE(s.submit(req("blocker"), 0).kind == DecisionKind::admit);
    s.submit(req("heavy0", 100, 1000, "heavy"), 0.001);
    s.submit(req("light0", 100, 1000, "light"), 0.002);
    s.complete("blocker", 0.003, Money::from_pico(0), 10, 100);
    CHECK(s.pop_ready(0.003) == std::vector<std::string>{"heavy0"});
  }
}

TEST_CASE("default: interactive first, short before long, batch in the deferred lane", "[scheduler][policy]") {
  Scheduler s(cfg(Policy::combined));
  auto order = drain_order(s, {req("std_long", 2000), req("std_short", 20),
                               req("inter", 500, 1000, "t", Priority::interactive),
                               req("bat", 10, 1000, "t", Priority::batch)});
  CHECK(order == std::vector<std::string>{"inter", "std_short", "std_long", "bat"});
}

TEST_CASE("batch requests are deferred when busy, admitted when idle", "[scheduler][lane]") {
  Scheduler s(cfg(Policy::combined));
  CHECK(s.submit(req("b1", 10, 1, "t", Priority::batch), 0).kind == DecisionKind::admit);
  auto d = s.submit(req("b2", 10, 1, "t", Priority::batch), 0);
  CHECK(d.kind == DecisionKind::defer);
  CHECK(d.reason == "deferred");
  CHECK(s.status("b2") == RequestState::deferred);
  s.submit(req("s1"), 0);
  s.complete("b1", 1, Money(), 1, 1);
  CHECK(s.pop_ready(1) == std::vector<std::string>{"s1"});  // the queue goes before the lane
  s.complete("s1", 2, Money(), 1, 1);
  CHECK(s.pop_ready(2) == std::vector<std::string>{"b2"});
}

TEST_CASE("fifo has no deferred lane", "[scheduler][lane]") {
  Scheduler s(cfg(Policy::fifo));
  s.submit(req("a"), 0);
  CHECK(s.submit(req("b", 10, 1, "t", Priority::batch), 0).kind == DecisionKind::queue);
}

TEST_CASE("concurrency limits: global and per tenant", "[scheduler][limits]") {
  SchedulerConfig c;
  c.policy = Policy::fifo;
  c.max_concurrency = 3;
  c.tenant_max_concurrency = 2;
  Scheduler s(c);
  CHECK(s.submit(req("a1", 1, 1, "a"), 0).kind == DecisionKind::admit);
  CHECK(s.submit(req("a2", 1, 1, "a"), 0).kind == DecisionKind::admit);
  CHECK(s.submit(req("a3", 1, 1, "a"), 0).kind == DecisionKind::queue);  // tenant cap
  CHECK(s.submit(req("b1", 1, 1, "b"), 0).kind == DecisionKind::admit);  // others still run
  CHECK(s.submit(req("b2", 1, 1, "b"), 0).kind == DecisionKind::queue);  // global cap
  CHECK(s.running_count() == 3);
  s.complete("a1", 1, Money(), 1, 1);
  CHECK(s.pop_ready(1) == std::vector<std::string>{"a3"});
  s.complete("b1", 2, Money(), 1, 1);
  CHECK(s.pop_ready(2) == std::vector<std::string>{"b2"});
}

TEST_CASE("requests per minute: token bucket with an honest retry_after", "[scheduler][limits]") {
  SchedulerConfig c;
  c.policy = Policy::fifo;
  c.rpm = 60;  // one per second, burst 60
  c.max_queue = 0;
  Scheduler s(c);
  for (int i = 0; i < 60; ++i) REQUIRE(s.submit(req("r" + std::to_string(i), 1, 1), 0).kind == DecisionKind::admit);
  auto d = s.submit(req("over", 1, 1), 0);
  CHECK(d.kind == DecisionKind::reject);
  CHECK(d.reason == "rate_limit_rpm");
  CHECK(*d.retry_after_s == Approx(1.0));
  CHECK(s.submit(req("later", 1, 1), 1.0).kind == DecisionKind::admit);
  auto rl = s.rate_limits("t", 1.0);
  CHECK(*rl.limit_requests == 60);
  CHECK(*rl.remaining_requests == 0);
  CHECK_FALSE(rl.limit_tokens.has_value());
}

TEST_CASE("tokens per minute: charged by estimate, corrected by actuals", "[scheduler][limits]") {
  SchedulerConfig c;
  c.policy = Policy::fifo;
  c.tpm = 1000;
  Scheduler s(c);
  auto r = req("a", 490);  // 10 input + 490 p50 = 500 tokens
  CHECK(s.submit(r, 0).kind == DecisionKind::admit);
  CHECK(s.submit(req("b", 490), 0).kind == DecisionKind::admit);
  auto q = s.submit(req("c", 490), 0);
  CHECK(q.kind == DecisionKind::queue);
  CHECK(*s.next_wakeup(0) == Approx(30.0));  // 500 tokens at 1000/min
  // "a" used only its 10 input tokens: 490 come back at once, so "c" can start now.
  s.complete("a", 1, Money(), 10, 0);
  CHECK(s.pop_ready(1) == std::vector<std::string>{"c"});
  // Under-estimates put the bucket in debt, delaying later requests.
  s.complete("b", 1, Money(), 10, 2000);
  CHECK(*s.rate_limits("t", 1).remaining_tokens == 0);
  SECTION("larger than the bucket: too_large") {
    auto d = s.submit(req("huge", 5000), 2);
    CHECK(d.kind == DecisionKind::reject);
    CHECK(d.reason == "too_large");
    CHECK_FALSE(d.retry_after_s.has_value());
  }
}

TEST_CASE("queue length and maximum wait shed with reasons", "[scheduler][limits]") {
  SchedulerConfig c;
  c.policy = Policy::fifo;
  c.max_concurrency = 1;
  c.max_queue = 2;
  c.max_wait_s = 10;
  Scheduler s(c);
  s.submit(req("a"), 0);
  s.submit(req("b"), 0);
  s.submit(req("c"), 5);
  auto full = s.submit(req("d"), 5);
  CHECK(full.kind == DecisionKind::reject);
  CHECK(full.reason == "queue_full");
  CHECK(full.retry_after_s.has_value());
  CHECK(*s.next_wakeup(6) == Approx(10.0));
  auto shed = s.pop_rejected(10.5);
  REQUIRE(shed.size() == 1);
  CHECK(shed[0].first == "b");
  CHECK(shed[0].second.reason == "max_wait");
  CHECK(s.status("b") == std::nullopt);
  CHECK(s.status("c") == RequestState::queued);
  CHECK(s.pop_rejected(10.5).empty());
}

// A request whose wait equals max_wait_s is not shed yet (it waited *longer* than the maximum only
// after that), so next_wakeup must not name that moment: a driver waking there finds nothing to do
// and is told "now" again. The simulator on an epoch clock (origin ~1.7e9 s) then crept forward by
// tiny steps that did not move the clock. The wake-up must be a time at which the request is shed.
TEST_CASE("max_wait: next_wakeup names a time at which the request is shed", "[scheduler][limits]") {
  for (const double origin : {0.0, 1733400000.0, 1733400000.1234567}) {
    for (const double max_wait : {10.0, 30.0, 0.3, 7.1}) {
      SchedulerConfig c;
      c.policy = Policy::fifo;
      c.max_concurrency = 1;
      c.max_wait_s = max_wait;
      c.shed_expired = false;
      Scheduler s(c);
      s.submit(req("a"), origin);
      s.submit(req("b"), origin);
      const auto w = s.next_wakeup(origin + max_wait / 2);
      REQUIRE(w.has_value());
      CHECK(*w > origin + max_wait / 2);
      CHECK(*w - origin > max_wait);
      CHECK(*w - origin <= max_wait + 1e-6);
      // Just before it, nothing is due; at it, b is shed.
      CHECK(s.pop_rejected(std::nextafter(*w, 0.0)).empty());
      CHECK(s.next_wakeup(*w) == *w);
      const auto shed = s.pop_rejected(*w);
      REQUIRE(shed.size() == 1);
      CHECK(shed[0].first == "b");
      CHECK(shed[0].second.reason == "max_wait");
    }
  }
}

TEST_CASE("max_queue = 0 refuses with the blocking cause", "[scheduler][limits]") {
  SchedulerConfig c;
  c.policy = Policy::fifo;
  c.max_concurrency = 1;
  c.max_queue = 0;
  Scheduler s(c);
  s.submit(req("a"), 0);
  auto d = s.submit(req("b"), 0);
  CHECK(d.kind == DecisionKind::reject);
  CHECK(d.reason == "concurrency");
}

TEST_CASE("expired deadlines are shed from the queue", "[scheduler][limits]") {
  Scheduler s(cfg(Policy::fifo));
  s.submit(req("a"), 0);
  auto b = req("b");
  b.deadline_s = 5;
  s.submit(b, 0);
  CHECK(*s.next_wakeup(1) > 5.0);
  auto rej = s.pop_rejected(6);
  REQUIRE(rej.size() == 1);
  CHECK(rej[0].second.reason == "deadline");
}

TEST_CASE("budgets: reserve p90, charge actual, release the rest", "[scheduler][budget]") {
  SchedulerConfig c;
  c.policy = Policy::fifo;
  Scheduler s(c);
  s.set_budget("t", Money::from_pico(10000), BudgetWindow::day);
  const double now = 1795463325;
  // p90 cost 4000 each: two fit (8000 reserved), the third waits for a reservation to settle.
  CHECK(s.submit(req("a", 10, 2000), now).kind == DecisionKind::admit);
  CHECK(s.submit(req("b", 10, 2000), now).kind == DecisionKind::admit);
  auto q = s.submit(req("c", 10, 2000), now);
  CHECK(q.kind == DecisionKind::queue);
  auto u = s.usage("t", now);
  CHECK(u.reserved.pico() == 8000);
  CHECK(u.spent.pico() == 0);
  CHECK(*u.resets_at == 1795478400);
  CHECK(s.complete("a", now + 1, Money::from_pico(1500), 10, 10));
  u = s.usage("t", now + 1);
  CHECK(u.spent.pico() == 1500);
  CHECK(u.reserved.pico() == 4000);
  CHECK(s.pop_ready(now + 1) == std::vector<std::string>{"c"});
  CHECK(s.cancel("b", now + 2));
  CHECK(s.usage("t", now + 2).reserved.pico() == 4000);
  CHECK(s.complete("c", now + 3, Money::from_pico(5000), 10, 10));  // over its p90: charged in full
  u = s.usage("t", now + 3);
  CHECK(u.spent.pico() == 6500);
  CHECK(u.reserved.pico() == 0);
  SECTION("spent: reject until the window resets, with an honest retry_after") {
    s.set_spent("t", Money::from_pico(9000), now + 4);
    auto d = s.submit(req("d", 10, 2000), now + 4);
    CHECK(d.kind == DecisionKind::reject);
    CHECK(d.reason == "budget_exceeded");
    CHECK(*d.retry_after_s == Approx(1795478400 - (now + 4)));
    // The next UTC day starts with a fresh window.
    CHECK(s.submit(req("e", 10, 2000), 1795478400 + 1).kind == DecisionKind::admit);
    CHECK(s.usage("t", 1795478400 + 1).spent.pico() == 0);
  }
  SECTION("batch is deferred to the next window instead of refused") {
    SchedulerConfig c2;
    Scheduler s2(c2);
    s2.set_budget("t", Money::from_pico(10000), BudgetWindow::hour);
    s2.set_spent("t", Money::from_pico(9000), now);
    auto d = s2.submit(req("bat", 10, 2000, "t", Priority::batch), now);
    CHECK(d.kind == DecisionKind::defer);
    CHECK(d.reason == "budget_deferred");
    CHECK(*s2.next_wakeup(now) == Approx(1795464000));
    CHECK(s2.pop_ready(1795464000).size() == 1);
  }
  SECTION("a request costing more than the whole budget is too large") {
    auto d = s.submit(req("big", 10, 6000), now + 5);
    CHECK(d.reason == "exceeds_budget");
  }
}

TEST_CASE("batch keeps out of the last share of a budget", "[scheduler][budget]") {
  SchedulerConfig c;  // default policy, budget_defer_fraction 0.8
  c.max_concurrency = 10;
  Scheduler s(c);
  s.set_budget("t", Money::from_pico(10000), BudgetWindow::total);
  s.set_spent("t", Money::from_pico(5000), 0);
  // p90 4000: 5000 + 4000 > 8000, so batch waits while standard may still use it.
  CHECK(s.submit(req("bat", 10, 2000, "t", Priority::batch), 0).kind == DecisionKind::defer);
  CHECK(s.submit(req("std", 10, 2000), 0).kind == DecisionKind::admit);
}

TEST_CASE("admin: pause, resume, dispatch, reject, defer, set_policy", "[scheduler][admin]") {
  Scheduler s(cfg(Policy::fifo, 2));
  s.pause();
  CHECK(s.paused());
  auto d = s.submit(req("a"), 0);
  CHECK(d.kind == DecisionKind::queue);
  s.submit(req("b", 10), 0);
  s.submit(req("c", 5), 0);
  CHECK(s.pop_ready(1).empty());
  CHECK(s.dispatch("c", 1));  // force-run despite pause and order
  CHECK(s.status("c") == RequestState::running);
  CHECK(s.pop_ready(1) == std::vector<std::string>{"c"});  // reported once to the driver
  CHECK(s.reject("a", 1, "admin"));
  auto rej = s.pop_rejected(1);
  REQUIRE(rej.size() == 1);
  CHECK(rej[0].second.reason == "admin");
  CHECK(s.defer("b", 1));
  CHECK(s.status("b") == RequestState::deferred);
  s.resume();
  CHECK(s.pop_ready(2) == std::vector<std::string>{"b"});  // the lane runs when the queue is empty
  CHECK_FALSE(s.dispatch("nope", 2));
  CHECK_FALSE(s.cancel("nope", 2));
  SECTION("set_policy re-orders waiting requests") {
    Scheduler t(cfg(Policy::fifo));
    t.submit(req("run"), 0);
    t.submit(req("long", 1000, 10000), 0);
    t.submit(req("short", 10, 100), 0);
    t.set_policy(Policy::cost_priority);
    CHECK(t.policy() == Policy::cost_priority);
    auto snap = t.snapshot(1);
    REQUIRE(snap.queue.size() == 2);
    CHECK(snap.queue[0].id == "short");
    t.complete("run", 1, Money(), 1, 1);
    CHECK(t.pop_ready(1) == std::vector<std::string>{"short"});
  }
}

TEST_CASE("snapshot lists queue, lane, running and reservations", "[scheduler]") {
  Scheduler s(cfg(Policy::combined));
  s.submit(req("a"), 0);
  s.submit(req("b"), 1);
  s.submit(req("c", 10, 1, "t", Priority::batch), 1);
  auto snap = s.snapshot(3);
  REQUIRE(snap.running.size() == 1);
  CHECK(snap.running[0].id == "a");
  CHECK(snap.running[0].reserved.pico() == 2000);
  REQUIRE(snap.queue.size() == 1);
  CHECK(snap.queue[0].wait_s == Approx(2.0));
  REQUIRE(snap.deferred.size() == 1);
  CHECK(snap.reserved_total.pico() == 2000);
  CHECK(snap.policy == Policy::combined);
  REQUIRE(snap.tenants.size() == 1);
  CHECK(snap.tenants[0].queued == 1);
}

// ---- forgetting idle tenants ---------------------------------------------------------------------

namespace {

std::uint64_t tenant_records(Scheduler& s, double now) {
  for (const auto& [name, value] : s.snapshot(now, 0).counters)
    if (name == "tenants") return value;
  FAIL("no tenants counter");
  return 0;
}

// Two steady tenants and, between their requests, `one_shot` tenants that each send one request
// (an API key seen once); every decision and start, in order.
std::vector<std::string> one_shot_run(SchedulerConfig c, int one_shot, std::uint64_t* max_records) {
  Scheduler s(c);
  std::vector<std::string> log, running;
  double now = 0;
  *max_records = 0;
  for (int i = 0; i < one_shot; ++i) {
    now += 0.05;
    const std::string t = i % 3 == 0 ? "steady-a" : i % 3 == 1 ? "steady-b" : "key-" + std::to_string(i);
    const Decision d = s.submit(req("r" + std::to_string(i), 50 + static_cast<std::uint64_t>(i % 7) * 40, 1000, t), now);
    log.push_back(std::string(to_string(d.kind)) + " " + d.reason + " " + std::to_string(d.position.value_or(0)));
    if (d.kind == DecisionKind::admit) running.push_back("r" + std::to_string(i));
    if (i >= 300 && !running.empty()) {  // then one completion per arrival: ~290 stay queued
      s.complete(running.front(), now, Money::from_pico(900), 10, 60 + static_cast<std::uint64_t>(i % 5) * 30);
      running.erase(running.begin());
    }
    for (auto& id : s.pop_ready(now)) {
      log.push_back("start " + id);
      running.push_back(id);
    }
    if (i % 1000 == 0) *max_records = std::max(*max_records, tenant_records(s, now));
  }
  *max_records = std::max(*max_records, tenant_records(s, now));
  return log;
}

}  // namespace

TEST_CASE("idle tenants are forgotten: records stay bounded, decisions for the others unchanged", "[scheduler][memory]") {
  for (Policy p : {Policy::fair, Policy::combined, Policy::fifo}) {
    SchedulerConfig keep_all = cfg(p, 8);
    keep_all.tenant_idle_forget_s = std::numeric_limits<double>::infinity();
    keep_all.max_tenant_records = std::numeric_limits<std::size_t>::max();
    SchedulerConfig bounded = cfg(p, 8);
    bounded.max_tenant_records = 500;
    std::uint64_t kept_all = 0, kept_bounded = 0;
    const auto expected = one_shot_run(keep_all, 60000, &kept_all);
    const auto got = one_shot_run(bounded, 60000, &kept_bounded);
    CHECK(kept_all > 20000);       // one record per name ever seen
    CHECK(kept_bounded <= 500 + 8);  // the cap, plus a record noted while over it
    // One-shot tenants never return, so forgetting them changes no decision of anyone.
    CHECK(got == expected);
  }
}

TEST_CASE("an idle tenant is forgotten only when its record holds nothing a new one would not", "[scheduler][memory]") {
  SchedulerConfig c = cfg(Policy::fair, 2);
  c.tenant_rpm = 60;  // one request a second: a tenant's bucket is full again 1 s after its request
  Scheduler s(c);
  s.set_budget("budgeted", Money::from_pico(1000000), BudgetWindow::total);
  s.set_weight("weighted", 2.0);
  s.submit(req("b1", 100, 1000, "budgeted"), 0);
  s.complete("b1", 1, Money::from_pico(700), 10, 100);
  s.submit(req("w1", 100, 1000, "weighted"), 1);
  s.complete("w1", 2, Money::from_pico(700), 10, 100);
  s.submit(req("p1", 100, 1000, "plain"), 2);
  s.complete("p1", 3, Money::from_pico(700), 10, 100);
  s.submit(req("busy1", 100, 1000, "busy"), 3);  // still running at the end
  CHECK(tenant_records(s, 3) == 4);
  // 600 s idle: only "plain" goes (budget, weight and running work are kept).
  s.usage("other", 700);  // any call with a clock reaches the idle list (and lists "other")
  CHECK(tenant_records(s, 700) == 4);  // budgeted, weighted, busy, other
  CHECK(s.usage("budgeted", 700).spent.pico() == 700);  // the budget's spend is kept
  CHECK(s.usage("plain", 700).spent.pico() == 0);       // a fresh record (spend is the ledger's)
  // A tenant whose rate bucket is still refilling is kept until it is full.
  SchedulerConfig crowded = c;
  crowded.max_tenant_records = 1;
  Scheduler s2(crowded);
  s2.submit(req("x1", 100, 1000, "x"), 10);
  s2.complete("x1", 10.5, Money::from_pico(1), 10, 10);  // its bucket: 59 of 60, full at t = 11
  s2.submit(req("y1", 100, 1000, "y"), 10.6);
  s2.complete("y1", 10.7, Money::from_pico(1), 10, 10);
  CHECK(tenant_records(s2, 10.7) == 2);
  s2.usage("y", 12);  // both buckets full now: the crowd is thinned to one record
  CHECK(tenant_records(s2, 12) <= 1);
  // A forgotten tenant comes back like a new one, with a full bucket.
  CHECK(s2.submit(req("x2", 100, 1000, "x"), 12).kind == DecisionKind::admit);
}

// ---- property tests ------------------------------------------------------------------------------

namespace {

struct Model {
  std::map<std::string, std::string> tenant_of;
  std::set<std::string> running;
  std::map<std::string, std::int64_t> p90;
  std::map<std::string, std::int64_t> error;  // per tenant: Σ max(0, actual − p90) in the window
  std::map<std::string, double> window_start;
};

}  // namespace

TEST_CASE("random operation sequences never overspend, leak or exceed concurrency", "[scheduler][property]") {
  const Policy policies[] = {Policy::fifo, Policy::cost_priority, Policy::deadline, Policy::fair, Policy::combined};
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937_64 rng(seed);
    auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
    SchedulerConfig c;
    c.policy = policies[seed % 5];
    c.max_concurrency = 1 + static_cast<std::uint32_t>(pick(6));
    if (seed % 2) c.tenant_max_concurrency = 1 + static_cast<std::uint32_t>(pick(3));
    if (seed % 3 == 0) c.tpm = 20000;
    if (seed % 4 == 0) c.rpm = 120;
    if (seed % 5 == 1) c.max_queue = 20;
    if (seed % 6 == 2) c.max_wait_s = 30;
    Scheduler s(c);
    const char* tenants[] = {"a", "b", "c"};
    const BudgetWindow windows[] = {BudgetWindow::hour, BudgetWindow::day, BudgetWindow::total};
    std::map<std::string, std::int64_t> limit;
    for (int i = 0; i < 3; ++i) {
      limit[tenants[i]] = 200000 + static_cast<std::int64_t>(pick(400000));
      s.set_budget(tenants[i], Money::from_pico(limit[tenants[i]]), windows[(seed + i) % 3]);
    }
    Model m;
    double now = 1795463325 + uni(0, 7200);
    int next_id = 0;
    std::set<std::string> live;  // queued, deferred or running
    auto check = [&]() {
      REQUIRE(s.running_count() <= *c.max_concurrency);
      std::map<std::string, std::uint32_t> per_tenant;
      for (const auto& id : m.running) per_tenant[m.tenant_of[id]]++;
      if (c.tenant_max_concurrency)
        for (auto& [t, n] : per_tenant) REQUIRE(n <= *c.tenant_max_concurrency);
      for (const char* t : tenants) {
        auto u = s.usage(t, now);
        std::int64_t reserved = 0;
        for (const auto& id : m.running)
          if (m.tenant_of[id] == t) reserved += m.p90[id];
        REQUIRE(u.reserved.pico() == reserved);
        const double ws = budget_window_bounds(*u.window, now).first;
        if (m.window_start[t] != ws) {
          m.window_start[t] = ws;
          m.error[t] = 0;
        }
        // The invariant: spend (plus what is reserved) stays within the limit plus the error of
        // completed requests whose actual cost exceeded their reservation.
        REQUIRE(u.spent.pico() + u.reserved.pico() <= limit[t] + m.error[t]);
      }
    };
    auto started = [&](const std::string& id) {
      m.running.insert(id);
      REQUIRE(s.status(id) == RequestState::running);
    };
    for (int step = 0; step < 600; ++step) {
      const std::size_t op = pick(100);
      if (op < 40) {
        const std::string id = "r" + std::to_string(next_id++);
        const std::string t = tenants[pick(3)];
        const auto out = static_cast<std::uint64_t>(1 + pick(800));
        auto r = req(id, out, static_cast<std::int64_t>(out * 20), t, static_cast<Priority>(pick(3)));
        if (pick(3) == 0) r.deadline_s = now + uni(1, 120);
        auto d = s.submit(r, now);
        m.tenant_of[id] = t;
        m.p90[id] = r.cost_p90.pico();
        if (d.kind == DecisionKind::admit) {
          REQUIRE(d.reserved.pico() == r.cost_p90.pico());
          started(id);
        }
        if (d.kind != DecisionKind::reject) live.insert(id);
      } else if (op < 60) {
        for (const auto& id : s.pop_ready(now)) started(id);
      } else if (op < 80 && !m.running.empty()) {
        auto it = m.running.begin();
        std::advance(it, static_cast<long>(pick(m.running.size())));
        const std::string id = *it;
        // Actual cost: usually below p90, sometimes far above (estimate error).
        const std::int64_t actual = static_cast<std::int64_t>(static_cast<double>(m.p90[id]) * uni(0, 1.6));
        const std::string t = m.tenant_of[id];
        auto u = s.usage(t, now);
        const double ws = budget_window_bounds(*u.window, now).first;
        if (m.window_start[t] != ws) {
          m.window_start[t] = ws;
          m.error[t] = 0;
        }
        REQUIRE(s.complete(id, now, Money::from_pico(actual), 10, static_cast<std::uint64_t>(pick(1000))));
        m.error[t] += std::max<std::int64_t>(0, actual - m.p90[id]);
        m.running.erase(id);
        live.erase(id);
      } else if (op < 86 && !live.empty()) {
        auto it = live.begin();
        std::advance(it, static_cast<long>(pick(live.size())));
        const std::string id = *it;
        REQUIRE(s.cancel(id, now));
        m.running.erase(id);
        live.erase(id);
        REQUIRE(s.status(id) == std::nullopt);
      } else if (op < 93) {
        now += pick(10) == 0 ? uni(0, 4000) : uni(0, 5);  // sometimes past a window boundary
      } else if (op < 95) {
        s.set_policy(policies[pick(5)]);
      } else if (op < 97) {
        if (!live.empty()) {
          auto it = live.begin();
          std::advance(it, static_cast<long>(pick(live.size())));
          if (s.dispatch(*it, now)) started(*it);
        }
      } else {
        auto w = s.next_wakeup(now);
        if (w) REQUIRE(*w >= now);
      }
      for (const auto& [id, d] : s.pop_rejected(now)) {
        REQUIRE(d.kind == DecisionKind::reject);
        REQUIRE(live.count(id) == 1);
        REQUIRE(m.running.count(id) == 0);
        live.erase(id);
      }
      check();
    }
    // End every request: nothing may stay reserved.
    for (const auto& id : std::vector<std::string>(live.begin(), live.end())) REQUIRE(s.cancel(id, now));
    m.running.clear();
    auto snap = s.snapshot(now);
    CHECK(snap.reserved_total.pico() == 0);
    CHECK(snap.queue.empty());
    CHECK(snap.deferred.empty());
    CHECK(snap.running.empty());
    for (const char* t : tenants) CHECK(s.usage(t, now).reserved.pico() == 0);
  }
}

TEST_CASE("a replay drains: every submitted request ends admitted, rejected or popped", "[scheduler][property]") {
  for (Policy p : {Policy::fifo, Policy::cost_priority, Policy::deadline, Policy::fair, Policy::combined}) {
    SchedulerConfig c;
    c.policy = p;
    c.max_concurrency = 4;
    c.tpm = 50000;
    Scheduler s(c);
    std::mt19937_64 rng(7);
    std::multimap<double, std::string> finishing;
    std::set<std::string> done, waiting;
    double now = 0;
    for (int i = 0; i < 400; ++i) {
      now += static_cast<double>(rng() % 100) / 100.0;
      while (!finishing.empty() && finishing.begin()->first <= now) {
        auto [t, id] = *finishing.begin();
        finishing.erase(finishing.begin());
        s.complete(id, t, Money::from_pico(10), 10, 200);
        done.insert(id);
        for (auto& r : s.pop_ready(t)) {
          waiting.erase(r);
          finishing.emplace(t + 2.0, r);
        }
      }
      const std::string id = "q" + std::to_string(i);
      auto d = s.submit(req(id, 1 + rng() % 400, 10, "t" + std::to_string(rng() % 3),
                            static_cast<Priority>(rng() % 3)), now);
      if (d.kind == DecisionKind::admit) finishing.emplace(now + 2.0, id);
      else if (d.kind != DecisionKind::reject) waiting.insert(id);
    }
    for (int guard = 0; guard < 100000 && (!finishing.empty() || !waiting.empty()); ++guard) {
      double t = finishing.empty() ? now : finishing.begin()->first;
      if (auto w = s.next_wakeup(now); w && *w < t) t = *w;
      if (finishing.empty()) {
        auto w = s.next_wakeup(now);
        REQUIRE(w.has_value());  // something waits on time alone
        t = *w;
      }
      now = std::max(now, t);
      while (!finishing.empty() && finishing.begin()->first <= now) {
        auto [ft, id] = *finishing.begin();
        finishing.erase(finishing.begin());
        s.complete(id, ft, Money::from_pico(10), 10, 200);
        done.insert(id);
      }
      for (auto& r : s.pop_ready(now)) {
        waiting.erase(r);
        finishing.emplace(now + 2.0, r);
      }
      for (auto& [id, d] : s.pop_rejected(now)) waiting.erase(id);
    }
    CHECK(waiting.empty());
    CHECK(finishing.empty());
    CHECK(s.snapshot(now).reserved_total.pico() == 0);
  }
}

TEST_CASE("one scheduler driven from several threads keeps its limits and leaks nothing", "[scheduler][threads]") {
  // The middleware drives it from the event loop while admin routes and the ledger thread read it;
  // the ThreadSanitizer build (scripts/test) checks this for races.
  SchedulerConfig c = cfg(Policy::combined, 3);
  c.tenant_max_concurrency = 2;
  Scheduler s(c);
  s.set_budget("t0", Money::from_pico(50'000'000), BudgetWindow::total);
  const double now = 1795463325;
  std::atomic<int> over_limit{0}, completed{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      std::vector<std::string> mine;
      for (int i = 0; i < 200; ++i) {
        const std::string id = "w" + std::to_string(w) + "-" + std::to_string(i);
        std::vector<std::string> started = s.pop_ready(now);
        if (s.submit(req(id, 50, 1000, "t" + std::to_string(i % 3)), now).kind == DecisionKind::admit)
          started.push_back(id);
        mine.push_back(id);
        if (s.running_count() > 3) over_limit++;
        for (const auto& run : started)
          if (s.complete(run, now, Money::from_pico(900), 10, 40)) completed++;
        s.pop_rejected(now);
        if (i % 7 == 0) s.snapshot(now, 5);
        if (i % 11 == 0) s.cancel(mine[i / 2], now);
      }
      for (const auto& id : mine) s.cancel(id, now);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& id : s.pop_ready(now)) s.complete(id, now, Money::from_pico(900), 10, 40);
  CHECK(over_limit == 0);
  CHECK(completed > 0);
  CHECK(s.running_count() == 0);
  CHECK(s.queued_count() == 0);
  CHECK(s.usage("t0", now).reserved == Money());
}

// A tenant's queue (bucket_queue.hpp: sorted front buckets, unsorted far buckets, lazy erase from
// the far ones) against std::set: front, size, erases anywhere, and keys erased and inserted again
// before their bucket is sorted in (they must come out once).
TEST_CASE("bucket queue agrees with std::set", "[scheduler][property]") {
  using K = std::pair<int, int>;
  struct BucketOf {
    int operator()(const K& k) const { return k.first >= 0 ? k.first / 16 : -1 - (-1 - k.first) / 16; }
  };
  std::mt19937_64 rng(11);
  for (int round = 0; round < 4; ++round) {
    detail::BucketQueue<K, BucketOf> q;
    std::set<K> ref;
    const int range = round % 2 ? 4000 : 200;
    const auto live = [&](const K& k) { return ref.count(k) == 1; };
    int base = 0;  // keys drift upwards, as arrival-based keys do
    for (int step = 0; step < 80000; ++step) {
      const bool grow = (step / 10000) % 2 == 0;
      const int op = static_cast<int>(rng() % 10);
      base += static_cast<int>(rng() % 2);
      const K k{base - range / 4 + static_cast<int>(rng() % static_cast<unsigned>(range)), static_cast<int>(rng() % 3)};
      if ((grow && op < 6) || (!grow && op < 3)) {
        if (ref.insert(k).second) q.insert(k);
      } else if (op < 8 && !ref.empty()) {  // erase anywhere, sometimes inserting it again at once
        auto it = ref.lower_bound(k);
        if (it == ref.end()) it = ref.begin();
        const K gone = *it;
        ref.erase(it);
        q.erase(gone, live);
        if (rng() % 3 == 0) {
          ref.insert(gone);
          q.insert(gone);
        }
      } else if (!ref.empty()) {
        REQUIRE(q.front() == *ref.begin());
        const K first = *ref.begin();
        ref.erase(ref.begin());
        q.erase(first, live);
      }
      REQUIRE(q.size() == ref.size());
      if (!ref.empty()) REQUIRE(q.front() == *ref.begin());
    }
    while (!ref.empty()) {
      REQUIRE(q.front() == *ref.begin());
      const K first = *ref.begin();
      ref.erase(ref.begin());
      q.erase(first, live);
      REQUIRE(q.size() == ref.size());
    }
    REQUIRE(q.empty());
  }
}

// While one tenant holds every queued request its queue is the rank index itself; a second tenant's
// arrival gives it its own again, and the queue emptying lets the next tenant share it. Positions,
// the snapshot's order and counts, and the start order must not notice.
TEST_CASE("one backlogged tenant shares the rank index, and stops when another queues", "[scheduler][policy]") {
  Scheduler s(cfg(Policy::deadline));
  auto dl = [](const std::string& id, const std::string& tenant, double deadline) {
    ScheduledRequest r = req(id, 100, 1000, tenant);
    r.deadline_s = deadline;
    return r;
  };
  REQUIRE(s.submit(req("blocker"), 0).kind == DecisionKind::admit);
  CHECK(s.submit(dl("a1", "A", 50), 0.001).position == 0u);
  CHECK(s.submit(dl("a2", "A", 20), 0.002).position == 0u);
  CHECK(s.submit(dl("a3", "A", 40), 0.003).position == 1u);
  CHECK(s.submit(dl("b1", "B", 30), 0.004).position == 1u);  // A stops sharing here
  CHECK(s.submit(dl("a4", "A", 10), 0.005).position == 0u);
  CHECK(s.cancel("a3", 0.006));
  const auto snap = s.snapshot(0.007);
  std::vector<std::string> queue;
  for (const auto& e : snap.queue) queue.push_back(e.id);
  CHECK(queue == std::vector<std::string>{"a4", "a2", "b1", "a1"});
  REQUIRE(snap.tenants.size() == 3);  // "A", "B", "t" (the blocker's)
  CHECK(snap.tenants[0].queued == 3);
  CHECK(snap.tenants[1].queued == 1);
  std::vector<std::string> order;
  std::string running = "blocker";
  double now = 0.01;
  auto drain = [&] {
    for (;;) {
      now += 0.001;
      s.complete(running, now, Money(), 10, 100);
      const auto ids = s.pop_ready(now);
      if (ids.empty()) break;
      REQUIRE(ids.size() == 1);
      order.push_back(ids[0]);
      running = ids[0];
    }
  };
  drain();
  CHECK(order == std::vector<std::string>{"a4", "a2", "b1", "a1"});
  CHECK(s.queued_count() == 0);
  REQUIRE(s.submit(req("blocker2"), now).kind == DecisionKind::admit);
  running = "blocker2";
  CHECK(s.submit(dl("b2", "B", 5), now).position == 0u);  // B shares the index now
  CHECK(s.submit(dl("b3", "B", 8), now).position == 1u);
  CHECK(s.submit(dl("a5", "A", 1), now).position == 0u);
  order.clear();
  drain();
  CHECK(order == std::vector<std::string>{"a5", "b2", "b3"});
}

// The scheduler's private ordered sets (counted B+tree) and id table, against std::set / std::map on
// random operation sequences long enough to split, merge and collapse several tree levels.
TEST_CASE("ordered index and id table agree with the standard containers", "[scheduler][property]") {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 6; ++round) {
    detail::OrderedIndex<std::pair<int, int>> tree;
    std::set<std::pair<int, int>> ref;
    // sparse keys, dense keys (many collisions), and few keys (one leaf: replace moves within it)
    const int range = round % 3 == 0 ? 100000 : round % 3 == 1 ? 300 : 15;
    const int steps = 60000;
    for (int step = 0; step < steps; ++step) {
      // Grow for the first half, then shrink to empty, with random and front erases.
      const bool grow = step < steps / 2;
      const int op = static_cast<int>(rng() % 10);
      const std::pair<int, int> k{static_cast<int>(rng() % static_cast<unsigned>(range)), static_cast<int>(rng() % 3)};
      if (op == 5 && !ref.empty() && ref.count(k) == 0) {
        auto from = ref.lower_bound({static_cast<int>(rng() % static_cast<unsigned>(range)), 0});
        if (from == ref.end()) from = ref.begin();
        const std::pair<int, int> old = *from;
        tree.replace(old, k);
        ref.erase(from);
        ref.insert(k);
        REQUIRE(tree.rank(k) == static_cast<std::size_t>(std::distance(ref.begin(), ref.lower_bound(k))));
      } else if ((grow && op < 6) || (!grow && op < 3)) {
        const auto expected = static_cast<std::size_t>(std::distance(ref.begin(), ref.lower_bound(k)));
        if (ref.insert(k).second) REQUIRE(tree.insert_ranked(k) == expected);
      } else if (op < 8 || ref.empty()) {
        REQUIRE(tree.erase(k) == (ref.erase(k) == 1));
      } else {
        REQUIRE(tree.front() == *ref.begin());
        REQUIRE(tree.erase(*ref.begin()));
        ref.erase(ref.begin());
      }
      REQUIRE(tree.size() == ref.size());
      if (step % 997 == 0) {
        REQUIRE(std::equal(tree.begin(), tree.end(), ref.begin(), ref.end()));
        for (int q = 0; q < 20; ++q) {
          const std::pair<int, int> probe{static_cast<int>(rng() % static_cast<unsigned>(range)), 1};
          REQUIRE(tree.rank(probe) == static_cast<std::size_t>(std::distance(ref.begin(), ref.lower_bound(probe))));
        }
      }
    }
    while (!ref.empty()) {  // drain by the front, as a queue does
      REQUIRE(tree.front() == *ref.begin());
      REQUIRE(tree.erase(*ref.begin()));
      ref.erase(ref.begin());
      REQUIRE(tree.size() == ref.size());
    }
    REQUIRE(tree.empty());
    REQUIRE(tree.begin() == tree.end());
  }

  detail::IdTable ids;
  std::vector<std::string> names(5000);
  std::map<std::string, std::uint32_t> ref;
  const auto id_of = [&](std::uint32_t slot) -> const std::string& { return names[slot]; };
  for (int step = 0; step < 200000; ++step) {
    const std::string id = "r" + std::to_string(rng() % 3000);
    const std::uint32_t h = detail::IdTable::hash(id);
    const auto it = ref.find(id);
    REQUIRE(ids.find(h, id, id_of) == (it == ref.end() ? detail::IdTable::kNone : it->second));
    if (it == ref.end()) {
      const auto slot = static_cast<std::uint32_t>(rng() % names.size());
      if (!names[slot].empty()) continue;  // slot in use
      names[slot] = id;
      ids.insert(h, slot);
      ref.emplace(id, slot);
    } else if (rng() % 2) {
      ids.erase(h, it->second);
      names[it->second].clear();
      ref.erase(it);
    }
    REQUIRE(ids.size() == ref.size());
  }
}
