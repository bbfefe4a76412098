// Binds the scheduler. Requests arrive as plain arguments (python/tokenlane/scheduler.py reads the
// request dict), decisions leave as tuples; every call releases the GIL.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tokenlane/scheduler.hpp"

namespace tokenlane::bindings {
namespace {

using DecisionTuple = std::tuple<std::string, std::string, std::string, std::optional<double>,
                                 std::optional<std::uint64_t>, std::optional<double>, std::int64_t>;

DecisionTuple as_tuple(const Decision& d) {
  return {std::string(to_string(d.kind)), d.reason, d.message, d.retry_after_s, d.position, d.eta_s, d.reserved.pico()};
}

py::dict entry_dict(const SnapshotEntry& e) {
  py::dict d;
  d["id"] = e.id;
  d["tenant"] = e.tenant;
  d["model"] = e.model;
  d["priority"] = std::string(to_string(e.priority));
  d["state"] = std::string(to_string(e.state));
  d["position"] = e.position;
  d["wait_s"] = e.wait_s;
  d["cost"] = e.cost_p50.pico();
  d["cost_p90"] = e.cost_p90.pico();
  d["reserved"] = e.reserved.pico();
  d["deadline"] = e.deadline_s;
  d["input_tokens"] = e.input_tokens;
  d["est_output_p50"] = e.est_output_p50;
  return d;
}

py::list entries(const std::vector<SnapshotEntry>& v) {
  py::list out;
  for (const auto& e : v) out.append(entry_dict(e));
  return out;
}

}  // namespace

void register_scheduler(py::module_& m) {
  py::class_<Scheduler>(m, "Scheduler")
      .def(py::init([](const std::string& policy, std::optional<std::uint32_t> max_concurrency,
                       std::optional<std::uint32_t> tenant_max_concurrency, std::optional<double> tpm,
                       std::optional<double> rpm, std::optional<double> tenant_tpm, std::optional<double> tenant_rpm,
                       std::optional<std::size_t> max_queue, std::optional<double> max_wait_s, bool shed_expired,
                       double ttft_s, double tpot_s, std::tuple<double, double, double> class_slo_s,
                       double cost_aging_s, double sjf_aging, double budget_defer_fraction, double urgency_s,
                       double batch_max_defer_s, double tail_share, double tenant_idle_forget_s,
                       std::size_t max_tenant_records) {
             SchedulerConfig c;
             c.policy = parse_policy(policy);
             c.max_concurrency = max_concurrency;
             c.tenant_max_concurrency = tenant_max_concurrency;
             c.tpm = tpm;
             c.rpm = rpm;
             c.tenant_tpm = tenant_tpm;
             c.tenant_rpm = tenant_rpm;
             c.max_queue = max_queue;
             c.max_wait_s = max_wait_s;
             c.shed_expired = shed_expired;
             c.ttft_s = ttft_s;
             c.tpot_s = tpot_s;
             c.class_slo_s[0] = std::get<0>(class_slo_s);
             c.class_slo_s[1] = std::get<1>(class_slo_s);
             c.class_slo_s[2] = std::get<2>(class_slo_s);
             c.cost_aging_s = cost_aging_s;
             c.sjf_aging = sjf_aging;
             c.budget_defer_fraction = budget_defer_fraction;
             c.urgency_s = urgency_s;
             c.batch_max_defer_s = batch_max_defer_s;
             c.tail_share = tail_share;
             c.tenant_idle_forget_s = tenant_idle_forget_s;
             c.max_tenant_records = max_tenant_records;
             return std::make_unique<Scheduler>(std::move(c));
           }),
           py::arg("policy"), py::arg("max_concurrency"), py::arg("tenant_max_concurrency"), py::arg("tpm"),
           py::arg("rpm"), py::arg("tenant_tpm"), py::arg("tenant_rpm"), py::arg("max_queue"), py::arg("max_wait_s"),
           py::arg("shed_expired"), py::arg("ttft_s"), py::arg("tpot_s"), py::arg("class_slo_s"),
           py::arg("cost_aging_s"), py::arg("sjf_aging"), py::arg("budget_defer_fraction"),
           py::arg("urgency_s"), py::arg("batch_max_defer_s") = 600.0,
           py::arg("tail_share") = 0.5, py::arg("tenant_idle_forget_s") = 600.0,
           py::arg("max_tenant_records") = 10000)
      .def("set_budget",
           [](Scheduler& s, const std::string& tenant, std::int64_t limit, const std::string& window) {
             const BudgetWindow w = parse_budget_window(window);
             py::gil_scoped_release release;
             s.set_budget(tenant, Money::from_pico(limit), w);
           })
      .def("clear_budget", &Scheduler::clear_budget, py::call_guard<py::gil_scoped_release>())
      .def("set_spent",
           [](Scheduler& s, const std::string& tenant, std::int64_t spent, double now) {
             py::gil_scoped_release release;
             s.set_spent(tenant, Money::from_pico(spent), now);
           })
      .def("set_weight", &Scheduler::set_weight, py::call_guard<py::gil_scoped_release>())
      .def("add_service", &Scheduler::add_service, py::call_guard<py::gil_scoped_release>())
      .def("submit",
           [](Scheduler& s, std::string id, std::string tenant, std::string user, std::string model,
              const std::string& priority, std::optional<double> deadline_s, std::uint64_t input_tokens,
              std::uint64_t p50, std::uint64_t p90, std::optional<std::uint64_t> max_tokens, std::int64_t cost_p50,
              std::int64_t cost_p90, std::int64_t cost_max, double now) {
             ScheduledRequest r;
             r.id = std::move(id);
             r.tenant = std::move(tenant);
             r.user = std::move(user);
             r.model = std::move(model);
             r.priority = parse_priority(priority);
             r.deadline_s = deadline_s;
             r.input_tokens = input_tokens;
             r.est_output_p50 = p50;
             r.est_output_p90 = p90;
             r.max_tokens = max_tokens;
             r.cost_p50 = Money::from_pico(cost_p50);
             r.cost_p90 = Money::from_pico(cost_p90);
             r.cost_max = Money::from_pico(cost_max);
             return as_tuple(s.submit(r, now));  // microseconds: keeps the GIL (see ReleaseGilIf)
           })
      .def("pop_ready", &Scheduler::pop_ready)
      .def("pop_rejected",
           [](Scheduler& s, double now) {
             std::vector<std::pair<std::string, Decision>> out = s.pop_rejected(now);
             std::vector<std::pair<std::string, DecisionTuple>> v;
             v.reserve(out.size());
             for (auto& [id, d] : out) v.emplace_back(std::move(id), as_tuple(d));
             return v;
           })
      .def("complete",
           [](Scheduler& s, const std::string& id, double now, std::int64_t cost, std::uint64_t in, std::uint64_t out) {
             return s.complete(id, now, Money::from_pico(cost), in, out);
           })
      .def("cancel", &Scheduler::cancel)
      .def("next_wakeup", &Scheduler::next_wakeup)
      .def("status",
           [](const Scheduler& s, const std::string& id) -> std::optional<std::string> {
             std::optional<RequestState> st;
             {
               py::gil_scoped_release release;
               st = s.status(id);
             }
             if (!st) return std::nullopt;
             return std::string(to_string(*st));
           })
      .def("usage",
           [](Scheduler& s, const std::string& tenant, double now) {
             BudgetUsage u;
             {
               py::gil_scoped_release release;
               u = s.usage(tenant, now);
             }
             py::dict d;
             d["spent_pico_usd"] = u.spent.pico();
             d["reserved_pico_usd"] = u.reserved.pico();
             d["limit_pico_usd"] = u.limit ? py::object(py::int_(u.limit->pico())) : py::object(py::none());
             d["window"] = u.window ? py::object(py::str(std::string(to_string(*u.window)))) : py::object(py::none());
             d["resets_at"] = u.resets_at;
             return d;
           })
      .def("rate_limits",
           [](Scheduler& s, const std::string& tenant, double now) {
             RateLimitStatus r;
             {
               py::gil_scoped_release release;
               r = s.rate_limits(tenant, now);
             }
             py::dict d;
             d["limit_requests"] = r.limit_requests;
             d["remaining_requests"] = r.remaining_requests;
             d["reset_requests_s"] = r.reset_requests_s;
             d["limit_tokens"] = r.limit_tokens;
             d["remaining_tokens"] = r.remaining_tokens;
             d["reset_tokens_s"] = r.reset_tokens_s;
             return d;
           })
      .def("snapshot",
           [](Scheduler& s, double now, std::size_t max_items) {
             SchedulerSnapshot snap;
             {
               py::gil_scoped_release release;
               snap = s.snapshot(now, max_items);
             }
             py::dict d;
             d["queue"] = entries(snap.queue);
             d["deferred"] = entries(snap.deferred);
             d["running"] = entries(snap.running);
             py::dict reservations;
             py::list tenants;
             for (const TenantSnapshot& t : snap.tenants) {
               reservations[py::str(t.tenant)] = t.reserved.pico();
               py::dict td;
               td["tenant"] = t.tenant;
               td["queued"] = t.queued;
               td["deferred"] = t.deferred;
               td["running"] = t.running;
               td["reserved"] = t.reserved.pico();
               td["vtc_counter"] = t.vtc_counter;
               td["weight"] = t.weight;
               tenants.append(td);
             }
             d["reservations"] = reservations;
             d["reserved_total"] = snap.reserved_total.pico();
             d["tenants"] = tenants;
             py::dict counters;
             for (const auto& [k, v] : snap.counters) counters[py::str(k)] = v;
             d["counters"] = counters;
             d["policy"] = std::string(to_string(snap.policy));
             d["paused"] = snap.paused;
             return d;
           })
      .def("pause", &Scheduler::pause, py::call_guard<py::gil_scoped_release>())
      .def("resume", &Scheduler::resume, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("paused", &Scheduler::paused)
      .def("set_policy",
           [](Scheduler& s, const std::string& name) {
             const Policy p = parse_policy(name);
             py::gil_scoped_release release;
             s.set_policy(p);
           })
      .def_property_readonly("policy", [](const Scheduler& s) { return std::string(to_string(s.policy())); })
      .def("dispatch", &Scheduler::dispatch, py::call_guard<py::gil_scoped_release>())
      .def("reject", &Scheduler::reject, py::call_guard<py::gil_scoped_release>())
      .def("defer", &Scheduler::defer, py::call_guard<py::gil_scoped_release>())
      .def("counts", [](const Scheduler& s) {
        py::gil_scoped_release release;
        return std::make_tuple(s.queued_count(), s.deferred_count(), s.running_count());
      });
}

}  // namespace tokenlane::bindings
