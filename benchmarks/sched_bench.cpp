// Scheduler microbenchmark: submit + complete + pop_ready cycles with 100k requests queued, for every
// policy, with 1 and 27 tenants. Built as tokenlane_sched_bench next to the tests, never run by them.
//   build/cpp/tests/cpp/tokenlane_sched_bench [queued=100000] [cycles=1000000] [policy] [tenants]
//   build/cpp/tests/cpp/tokenlane_sched_bench tenants [n=1000000]   (memory with one-shot tenants)
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "tokenlane/scheduler.hpp"

using namespace tokenlane;

// Resident memory of the process, bytes (Linux).
static double rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

// `tenants` mode: one-shot tenants (each name sends one request, as unknown API keys do) through a
// fair scheduler, with the default forgetting of idle tenants and with every record kept.
static int one_shot_tenants(long n) {
  std::printf("| tenant records | one-shot tenants | records kept | resident memory growth | per tenant |\n|---|---|---|---|---|\n");
  for (bool keep_all : {false, true}) {
    SchedulerConfig c;
    c.policy = Policy::fair;
    c.max_concurrency = 64;
    if (keep_all) {
      c.tenant_idle_forget_s = 1e300;
      c.max_tenant_records = static_cast<std::size_t>(-1);
    }
    Scheduler s(c);
    const double rss0 = rss_bytes();
    std::vector<std::string> running;
    double now = 0;
    for (long i = 0; i < n; ++i) {
      now += 1e-3;
      ScheduledRequest r;
      r.id = "req-" + std::to_string(i);
      r.tenant = "key-" + std::to_string(i);
      r.model = "gpt-4o-mini";
      r.input_tokens = 100;
      r.est_output_p50 = 100;
      r.est_output_p90 = 200;
      r.cost_p50 = Money::from_pico(60000000);
      r.cost_p90 = r.cost_max = Money::from_pico(120000000);
      if (s.submit(r, now).kind == DecisionKind::admit) running.push_back(r.id);
      if (running.size() >= 64) {
        s.complete(running.front(), now, Money::from_pico(50000000), 100, 90);
        running.erase(running.begin());
      }
      for (auto& id : s.pop_ready(now)) running.push_back(id);
    }
    std::uint64_t kept = 0;
    for (const auto& [name, value] : s.snapshot(now, 0).counters)
      if (name == "tenants") kept = value;
    const double grew = rss_bytes() - rss0;
    std::printf("| %s | %ld | %llu | %.1f MB | %.0f B |\n", keep_all ? "all kept" : "idle forgotten (default)", n,
                static_cast<unsigned long long>(kept), grew / 1e6, grew / static_cast<double>(n));
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "tenants") return one_shot_tenants(argc > 2 ? std::atol(argv[2]) : 1000000);
  const long queued = argc > 1 ? std::atol(argv[1]) : 100000;
  const long cycles = argc > 2 ? std::atol(argv[2]) : 1000000;
  const std::string only = argc > 3 ? argv[3] : "";  // one policy (profiling), else all
  const int only_tenants = argc > 4 ? std::atoi(argv[4]) : 0;  // one tenant count (profiling), else 1 and 27
  std::printf("| policy | tenants | queued | cycles/s (submit+complete+pop_ready) | calls/s (CPU time) |\n|---|---|---|---|---|\n");
  for (Policy p : {Policy::fifo, Policy::cost_priority, Policy::deadline, Policy::fair, Policy::combined}) {
    if (!only.empty() && to_string(p) != only) continue;
    for (int tenants : {1, 27}) {
      if (only_tenants && tenants != only_tenants) continue;
      SchedulerConfig c;
      c.policy = p;
      c.max_concurrency = 64;
      c.tpm = 1e12;
      c.shed_expired = false;  // keep the queue at its size
      Scheduler s(c);
      std::mt19937_64 rng(42);
      // Ids are made before timing so the loop measures the scheduler, not std::to_string.
      const long total = queued + 64 + cycles;
      std::vector<ScheduledRequest> reqs(static_cast<std::size_t>(total));
      for (long i = 0; i < total; ++i) {
        ScheduledRequest& r = reqs[static_cast<std::size_t>(i)];
        r.id = "req-" + std::to_string(i);
        r.tenant = "tenant-" + std::to_string(rng() % static_cast<unsigned>(tenants));
        r.model = "gpt-4o-mini";
        r.priority = static_cast<Priority>(rng() % 2);  // interactive/standard: all in the main queue
        r.input_tokens = 100 + rng() % 2000;
        r.est_output_p50 = 1 + rng() % 1000;
        r.est_output_p90 = r.est_output_p50 * 2;
        r.cost_p50 = Money::from_pico(static_cast<std::int64_t>(r.est_output_p50) * 600000);
        r.cost_p90 = Money::from_pico(r.cost_p50.pico() * 2);
        r.cost_max = r.cost_p90;
        if (rng() % 2) r.deadline_s = static_cast<double>(i) * 1e-3 + 30.0;
      }
      double now = 0;
      std::vector<std::string> running;
      long next = 0;
      for (; next < queued + 64; ++next) {
        auto d = s.submit(reqs[static_cast<std::size_t>(next)], now);
        if (d.kind == DecisionKind::admit) running.push_back(reqs[static_cast<std::size_t>(next)].id);
      }
      // CPU time of this thread: the machines these run on are shared, wall time is noise.
      timespec c0{}, c1{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
      std::size_t ri = 0;
      for (long i = 0; i < cycles; ++i, ++next) {
        now += 1e-3;
        s.complete(running[ri], now, Money::from_pico(1000), 100, 100);
        s.submit(reqs[static_cast<std::size_t>(next)], now);
        auto ids = s.pop_ready(now);
        running[ri] = std::move(ids.at(0));
        ri = (ri + 1) % running.size();
      }
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
      const double secs = static_cast<double>(c1.tv_sec - c0.tv_sec) + 1e-9 * static_cast<double>(c1.tv_nsec - c0.tv_nsec);
      std::printf("| %s | %d | %zu | %.0f | %.0f |\n", std::string(to_string(p)).c_str(), tenants, s.queued_count(),
                  static_cast<double>(cycles) / secs, 3.0 * static_cast<double>(cycles) / secs);
    }
  }
  return 0;
}
