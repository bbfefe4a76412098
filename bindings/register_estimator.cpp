// Binds the output-token estimators as one polymorphic class. Prompts arrive already flattened
// (python/tokenlane/estimators.py); estimates cross as tuples; the batch calls take parallel
// sequences so evaluation and training run without the GIL.
#include <pybind11/stl.h>

#include <chrono>

#include "bindings.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/estimator.hpp"

namespace tokenlane::bindings {
namespace {

using EstimatorPtr = std::shared_ptr<Estimator>;
using Opt = std::optional<std::uint64_t>;
using EstimateTuple = std::tuple<std::uint64_t, std::uint64_t, double, std::string>;

EstimateTuple to_tuple(const Estimate& e) { return {e.p50, e.p90, e.quantile, e.source}; }

// Parallel columns of a batch; optional columns may be None.
struct Batch {
  std::vector<py::object> holders;
  std::vector<std::string> models, routes, tenants, tasks;
  std::vector<std::string_view> prompts;
  std::vector<Opt> max_tokens, model_max_output, input_tokens;

  EstimateQuery at(std::size_t i) const {
    EstimateQuery q;
    q.prompt = prompts[i];
    q.model = models[i];
    if (!max_tokens.empty()) q.max_tokens = max_tokens[i];
    if (!model_max_output.empty()) q.model_max_output = model_max_output[i];
    if (!input_tokens.empty()) q.input_tokens = input_tokens[i];
    if (!routes.empty()) q.route = routes[i];
    if (!tenants.empty()) q.tenant = tenants[i];
    if (!tasks.empty()) q.task = tasks[i];
    return q;
  }
};

template <class T>
std::vector<T> column(const py::object& seq, std::size_t n, const char* name) {
  if (seq.is_none()) return {};
  auto v = seq.cast<std::vector<T>>();
  if (v.size() != n) throw Error(ErrorCode::invalid_argument, std::string("batch column ") + name + " has the wrong length");
  return v;
}

Batch batch_of(const py::sequence& prompts, const std::vector<std::string>& models, const py::object& max_tokens,
               const py::object& model_max_output, const py::object& input_tokens, const py::object& routes,
               const py::object& tenants, const py::object& tasks) {
  Batch b;
  const std::size_t n = prompts.size();
  if (models.size() != n) throw Error(ErrorCode::invalid_argument, "batch column models has the wrong length");
  b.holders.resize(n);
  b.prompts.reserve(n);
  for (std::size_t i = 0; i < n; ++i) b.prompts.push_back(utf8_of(prompts[i], b.holders[i]));
  b.models = models;
  b.max_tokens = column<Opt>(max_tokens, n, "max_tokens");
  b.model_max_output = column<Opt>(model_max_output, n, "model_max_output");
  b.input_tokens = column<Opt>(input_tokens, n, "input_tokens");
  b.routes = column<std::string>(routes, n, "routes");
  b.tenants = column<std::string>(tenants, n, "tenants");
  b.tasks = column<std::string>(tasks, n, "tasks");
  return b;
}

struct BatchResult {
  std::vector<std::uint64_t> p50, p90;
  std::vector<std::string> sources;
  std::vector<std::int64_t> ns;
  explicit BatchResult(std::size_t n) : p50(n), p90(n), sources(n), ns(n) {}
  void estimate(const Estimator& e, const EstimateQuery& q, std::size_t i) {
    const auto t0 = std::chrono::steady_clock::now();
    Estimate est = e.estimate(q);
    ns[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    p50[i] = est.p50;
    p90[i] = est.p90;
    sources[i] = std::move(est.source);
  }
  py::tuple tuple() const { return py::make_tuple(p50, p90, sources, ns); }
};

LearnedEstimator& learned_part(Estimator& e) {
  if (auto* l = dynamic_cast<LearnedEstimator*>(&e)) return *l;
  if (auto* b = dynamic_cast<BlendEstimator*>(&e); b && b->learned()) return *b->learned();
  throw Error(ErrorCode::invalid_argument, e.kind() + " estimators cannot be fitted offline (they learn online)");
}

}  // namespace

void register_estimator(py::module_& m) {
  py::class_<Estimator, EstimatorPtr>(m, "Estimator")
      .def_static("heuristic", [] { return EstimatorPtr(std::make_shared<HeuristicEstimator>()); })
      .def_static("learned", [] { return EstimatorPtr(std::make_shared<LearnedEstimator>()); })
      .def_static("history",
                  [](std::uint32_t min_count, std::size_t max_keys, std::size_t template_chars) {
                    HistoryEstimator::Options o;
                    o.min_count = min_count;
                    o.max_keys = max_keys;
                    o.template_chars = template_chars;
                    return EstimatorPtr(std::make_shared<HistoryEstimator>(o));
                  })
      .def_static("blend",
                  [](const EstimatorPtr& learned, const EstimatorPtr& history, double history_prior,
                     double coverage_step, double median_step) {
                    py::gil_scoped_release release;
                    // The blend owns copies of its parts, so the caller's objects stay independent.
                    std::unique_ptr<LearnedEstimator> l;
                    if (learned) l.reset(dynamic_cast<LearnedEstimator*>(Estimator::from_json(learned->to_json()).release()));
                    std::unique_ptr<HistoryEstimator> h;
                    if (history) h.reset(dynamic_cast<HistoryEstimator*>(Estimator::from_json(history->to_json()).release()));
                    if (!h) h = std::make_unique<HistoryEstimator>();
                    BlendOptions o;
                    o.history_prior = history_prior;
                    o.coverage_step = coverage_step;
                    o.median_step = median_step;
                    return EstimatorPtr(std::make_shared<BlendEstimator>(std::move(l), std::move(h), o));
                  })
      .def_static("from_json",
                  [](const std::string& text) {
                    py::gil_scoped_release release;
                    return EstimatorPtr(Estimator::from_json(text));
                  })
      .def_static("load",
                  [](const std::string& path) {
                    py::gil_scoped_release release;
                    return EstimatorPtr(Estimator::load(path));
                  })
      .def_property_readonly("kind", &Estimator::kind)
      .def("to_json",
           [](const Estimator& e) {
             py::gil_scoped_release release;
             return e.to_json();
           })
      .def("save",
           [](const Estimator& e, const std::string& path) {
             py::gil_scoped_release release;
             e.save(path);
           })
      .def("estimate",
           [](const Estimator& e, const py::handle& prompt, const std::string& model, Opt max_tokens,
              Opt model_max_output, Opt input_tokens, const std::string& route, const std::string& tenant,
              const std::string& task) {
             py::object holder;
             EstimateQuery q;
             q.prompt = utf8_of(prompt, holder);
             q.model = model;
             q.max_tokens = max_tokens;
             q.model_max_output = model_max_output;
             q.input_tokens = input_tokens;
             q.route = route;
             q.tenant = tenant;
             q.task = task;
             ReleaseGilIf release(q.prompt.size() > kKeepGilBytes);
             return to_tuple(e.estimate(q));
           })
      .def("observe",
           [](Estimator& e, const py::handle& prompt, const std::string& model, std::uint64_t output_tokens,
              Opt input_tokens, const std::string& route, const std::string& tenant, const std::string& task,
              bool truncated) {
             py::object holder;
             EstimateQuery q;
             q.prompt = utf8_of(prompt, holder);
             q.model = model;
             q.input_tokens = input_tokens;
             q.route = route;
             q.tenant = tenant;
             q.task = task;
             ReleaseGilIf release(q.prompt.size() > kKeepGilBytes);
             e.observe(q, output_tokens, truncated);
           },
           py::arg("prompt"), py::arg("model"), py::arg("output_tokens"), py::arg("input_tokens"), py::arg("route"),
           py::arg("tenant"), py::arg("task"), py::arg("truncated") = false)
      // Batch calls: (p50s, p90s, sources, nanoseconds spent in each estimate).
      .def("estimate_batch",
           [](const Estimator& e, const py::sequence& prompts, const std::vector<std::string>& models,
              const py::object& max_tokens, const py::object& model_max_output, const py::object& input_tokens,
              const py::object& routes, const py::object& tenants, const py::object& tasks) {
             Batch b = batch_of(prompts, models, max_tokens, model_max_output, input_tokens, routes, tenants, tasks);
             BatchResult r(b.prompts.size());
             {
               py::gil_scoped_release release;
               for (std::size_t i = 0; i < b.prompts.size(); ++i) r.estimate(e, b.at(i), i);
             }
             return r.tuple();
           })
      // Online replay: estimate each record, then observe it, in order. Returns what estimate_batch returns.
      .def("replay_batch",
           [](Estimator& e, const py::sequence& prompts, const std::vector<std::string>& models,
              const std::vector<std::uint64_t>& outputs, const py::object& max_tokens,
              const py::object& model_max_output, const py::object& input_tokens, const py::object& routes,
              const py::object& tenants, const py::object& tasks, const py::object& truncated) {
             Batch b = batch_of(prompts, models, max_tokens, model_max_output, input_tokens, routes, tenants, tasks);
             if (outputs.size() != b.prompts.size())
               throw Error(ErrorCode::invalid_argument, "batch column output_tokens has the wrong length");
             std::vector<bool> cut;
             if (!truncated.is_none()) cut = truncated.cast<std::vector<bool>>();
             if (!cut.empty() && cut.size() != b.prompts.size())
               throw Error(ErrorCode::invalid_argument, "batch column truncated has the wrong length");
             BatchResult r(b.prompts.size());
             {
               py::gil_scoped_release release;
               for (std::size_t i = 0; i < b.prompts.size(); ++i) {
                 const EstimateQuery q = b.at(i);
                 r.estimate(e, q, i);
                 e.observe(q, outputs[i], !cut.empty() && cut[i]);
               }
             }
             return r.tuple();
           },
           py::arg("prompts"), py::arg("models"), py::arg("outputs"), py::arg("max_tokens"),
           py::arg("model_max_output"), py::arg("input_tokens"), py::arg("routes"), py::arg("tenants"),
           py::arg("tasks"), py::arg("truncated") = py::none())
      .def("fit",
           [](Estimator& e, const py::sequence& prompts, const std::vector<std::string>& models,
              const std::vector<std::uint64_t>& outputs, const py::object& input_tokens, const py::object& routes,
              const py::object& tenants, const py::object& tasks, int epochs, std::uint64_t seed) {
             Batch b = batch_of(prompts, models, py::none(), py::none(), input_tokens, routes, tenants, tasks);
             if (outputs.size() != b.prompts.size())
               throw Error(ErrorCode::invalid_argument, "batch column output_tokens has the wrong length");
             LearnedEstimator& learned = learned_part(e);
             py::gil_scoped_release release;
             std::vector<Observation> records(b.prompts.size());
             for (std::size_t i = 0; i < records.size(); ++i) {
               Observation& r = records[i];
               r.prompt = std::string(b.prompts[i]);
               r.model = b.models[i];
               r.output_tokens = outputs[i];
               if (!b.input_tokens.empty()) r.input_tokens = b.input_tokens[i];
               if (!b.routes.empty()) r.route = b.routes[i];
               if (!b.tenants.empty()) r.tenant = b.tenants[i];
               if (!b.tasks.empty()) r.task = b.tasks[i];
             }
             learned.fit(records, epochs, seed);
           })
      .def("verbosity", [](Estimator& e, const std::string& model) { return learned_part(e).verbosity(model); });
}

}  // namespace tokenlane::bindings
