// Binds the trace replay. Columns cross as NumPy arrays (copied into the core's vectors), the replay
// runs without the GIL, and per-request results come back as arrays; reasons as codes + names.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <unordered_map>

#include "bindings.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/sim.hpp"

namespace tokenlane::bindings {
namespace {

template <class T>
std::vector<T> column(const py::array_t<T, py::array::c_style | py::array::forcecast>& a) {
  if (a.ndim() != 1) throw Error(ErrorCode::invalid_argument, "trace columns must be one-dimensional");
  return std::vector<T>(a.data(), a.data() + a.size());
}

template <class T>
py::array_t<T> array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

struct SimProgress {
  std::atomic<std::uint64_t> done{0};
};

}  // namespace

void register_sim(py::module_& m) {
  py::class_<SimProgress>(m, "SimProgress")
      .def(py::init<>())
      .def_property_readonly("done", [](const SimProgress& p) { return p.done.load(std::memory_order_relaxed); });

  m.def(
      "simulate",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> arrival,
         py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> input_tokens,
         py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> output_tokens,
         py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> est_p50,
         py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> est_p90,
         py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast> tenant,
         std::vector<std::string> tenant_names,
         py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast> priority,
         py::array_t<double, py::array::c_style | py::array::forcecast> deadline,
         const std::string& policy, std::optional<std::uint32_t> max_concurrency,
         std::optional<std::uint32_t> tenant_max_concurrency, std::optional<double> tpm, std::optional<double> rpm,
         std::optional<double> tenant_tpm, std::optional<double> tenant_rpm, std::optional<std::size_t> max_queue,
         std::optional<double> max_wait_s, bool shed_expired, std::tuple<double, double, double> class_slo_s,
         double ttft_s, double prefill_s_per_token, double tpot_s, const std::string& model,
         std::int64_t input_price_pico, std::int64_t output_price_pico, std::optional<std::int64_t> budget_pico,
         const std::string& budget_window, double clock_origin_s, double fairness_window_s,
         SimProgress* progress, double tail_share, double batch_max_defer_s) {
        SimTrace t;
        t.arrival_s = column(arrival);
        t.input_tokens = column(input_tokens);
        t.output_tokens = column(output_tokens);
        t.est_p50 = column(est_p50);
        t.est_p90 = column(est_p90);
        t.tenant = column(tenant);
        t.tenant_names = std::move(tenant_names);
        t.priority = column(priority);
        t.deadline_s = column(deadline);
        SimConfig c;
        c.scheduler.policy = parse_policy(policy);
        c.scheduler.max_concurrency = max_concurrency;
        c.scheduler.tenant_max_concurrency = tenant_max_concurrency;
        c.scheduler.tpm = tpm;
        c.scheduler.rpm = rpm;
        c.scheduler.tenant_tpm = tenant_tpm;
        c.scheduler.tenant_rpm = tenant_rpm;
        c.scheduler.max_queue = max_queue;
        c.scheduler.max_wait_s = max_wait_s;
        c.scheduler.shed_expired = shed_expired;
        c.scheduler.tail_share = tail_share;
        c.scheduler.batch_max_defer_s = batch_max_defer_s;
        c.scheduler.class_slo_s[0] = std::get<0>(class_slo_s);
        c.scheduler.class_slo_s[1] = std::get<1>(class_slo_s);
        c.scheduler.class_slo_s[2] = std::get<2>(class_slo_s);
        // The scheduler's service-time prior is the simulated service model (then learned).
        c.scheduler.ttft_s = ttft_s;
        c.scheduler.tpot_s = tpot_s;
        c.service.ttft_s = ttft_s;
        c.service.prefill_s_per_token = prefill_s_per_token;
        c.service.tpot_s = tpot_s;
        c.model = model;
        c.input_price_pico = input_price_pico;
        c.output_price_pico = output_price_pico;
        if (budget_pico) c.budget_per_tenant = Money::from_pico(*budget_pico);
        c.budget_window = parse_budget_window(budget_window);
        c.clock_origin_s = clock_origin_s;
        c.fairness_window_s = fairness_window_s;
        if (progress) c.progress = &progress->done;
        SimResult r;
        {
          py::gil_scoped_release release;
          r = simulate(t, c);
        }
        std::unordered_map<std::string, std::uint8_t> codes;
        std::vector<std::string> names;
        std::vector<std::uint8_t> reason(r.reason.size());
        for (std::size_t i = 0; i < r.reason.size(); ++i) {
          auto [it, fresh] = codes.try_emplace(r.reason[i], static_cast<std::uint8_t>(names.size()));
          if (fresh) names.push_back(r.reason[i]);
          reason[i] = it->second;
        }
        py::dict d;
        d["start_s"] = array(r.start_s);
        d["end_s"] = array(r.end_s);
        d["outcome"] = array(r.outcome);
        d["first_decision"] = array(r.first_decision);
        d["deferred"] = array(r.deferred);
        d["reason_code"] = array(reason);
        d["reason_names"] = names;
        d["cost_pico"] = array(r.cost_pico);
        d["jain_fairness"] = r.jain_fairness;
        d["max_service_gap"] = r.max_service_gap;
        d["fairness_windows"] = r.fairness_windows;
        d["makespan_s"] = r.makespan_s;
        return d;
      },
      py::arg("arrival"), py::arg("input_tokens"), py::arg("output_tokens"), py::arg("est_p50"), py::arg("est_p90"),
      py::arg("tenant"), py::arg("tenant_names"), py::arg("priority"), py::arg("deadline"),
      py::kw_only(), py::arg("policy"), py::arg("max_concurrency"), py::arg("tenant_max_concurrency"), py::arg("tpm"),
      py::arg("rpm"), py::arg("tenant_tpm"), py::arg("tenant_rpm"), py::arg("max_queue"), py::arg("max_wait_s"),
      py::arg("shed_expired"), py::arg("class_slo_s"), py::arg("ttft_s"), py::arg("prefill_s_per_token"),
      py::arg("tpot_s"), py::arg("model"), py::arg("input_price_pico"), py::arg("output_price_pico"),
      py::arg("budget_pico"), py::arg("budget_window"), py::arg("clock_origin_s"), py::arg("fairness_window_s"),
      py::arg("progress") = nullptr, py::arg("tail_share") = 0.5, py::arg("batch_max_defer_s") = 600.0);
}

}  // namespace tokenlane::bindings
