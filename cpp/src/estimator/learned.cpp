// LearnedEstimator: linear quantile regression of log(output tokens) on hashed prompt features,
// fitted by SGD on the pinball loss with AdaGrad step sizes (each weight's step shrinks with the
// evidence it has seen, so online updates stay stable after offline training).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <shared_mutex>

#include "internal.hpp"
#include "tokenlane/error.hpp"

namespace tokenlane {

using detail::Feature;

struct LearnedEstimator::State {
  static constexpr std::uint32_t kBuckets = 1u << 17;  // hashed n-gram weights (a power of two)
  static constexpr std::uint32_t kDim = detail::kDenseSlots + kBuckets;
  static constexpr double kLearningRate = 0.05;
  static constexpr double kModelLearningRate = 0.05;
  static constexpr double kAccumulatorStart = 1e-2;

  // What an estimate reads while an update may be writing it: relaxed atomics (plain loads and
  // stores on x86 and ARM). An estimate made during an update may see part of that one update.
  struct Shared {
    std::atomic<float> v{0.0f};
    float get() const { return v.load(std::memory_order_relaxed); }
    void set(float x) { v.store(x, std::memory_order_relaxed); }
  };
  struct ModelBias {
    Shared b50, b90;
    float g50 = static_cast<float>(kAccumulatorStart), g90 = static_cast<float>(kAccumulatorStart);
    std::uint64_t n = 0;
  };

  // p50 and p90 weights of a feature side by side: one cache line per feature on the hot path.
  struct Weight {
    Shared q50, q90;
    void set(float a, float b) {
      q50.set(a);
      q90.set(b);
    }
  };
  struct Pair {
    float q50, q90;
  };
  std::vector<Weight> w;  // weights (read by estimates)
  std::vector<Pair> g;    // AdaGrad accumulators (updates only)
  std::map<std::string, ModelBias, std::less<>> models;
  std::uint64_t observations = 0;
  // Who waits for whom: an estimate never waits for an update. Estimates hold `mu` shared; so do
  // updates, which also hold `write_mu` (one writer at a time). `mu` is held exclusively only to add
  // a model to `models` (its first observation) and by fit(). An estimate used to wait for the
  // write lock of every update, and for as long as the OS kept the updating thread off the CPU.
  mutable std::shared_mutex mu;
  mutable std::mutex write_mu;

  State()
      : w(kDim), g(kDim, Pair{static_cast<float>(kAccumulatorStart), static_cast<float>(kAccumulatorStart)}) {}

  ModelBias& model_entry(std::string_view model) {  // caller holds mu exclusively, or knows it exists
    auto it = models.find(model);
    if (it == models.end()) it = models.try_emplace(std::string(model)).first;
    return it->second;
  }

  void set_priors() {
    // Hand-set priors (no training data shipped): log-space effects of the explicit cues around a
    // typical chat answer of ~300 tokens, p90 ~2.5x p50. Documented in docs/estimators.md.
    struct Prior {
      std::uint32_t slot;
      float p50, p90;
    };
    static const Prior priors[] = {
        {detail::kBias, 5.70f, 6.75f},          {detail::kLogInput, 0.40f, 0.40f},
        {detail::kCountCue, 0.10f, -0.30f},     {detail::kCountTarget, 0.85f, 0.80f},
        {detail::kShortCue, -0.60f, -0.50f},    {detail::kTinyCue, -2.50f, -2.00f},
        {detail::kLongCue, 0.50f, 0.40f},       {detail::kStepCue, 0.25f, 0.20f},
        {detail::kListCue, 0.15f, 0.10f},       {detail::kCodeCue, 0.20f, 0.20f},
        {detail::kCodeInPrompt, 0.10f, 0.10f},  {detail::kRewriteCue, -1.00f, -0.80f},
        {detail::kRewriteLogInput, 1.60f, 1.40f}, {detail::kClassifyCue, -0.80f, -0.50f},
        {detail::kCreativeCue, 0.30f, 0.20f},   {detail::kShortFormCue, -1.20f, -1.00f},
        {detail::kQuestion, -0.10f, -0.10f},    {detail::kMathCue, -0.30f, -0.20f},
        {detail::kSummarizeCue, -0.60f, -0.60f}, {detail::kSummarizeLogInput, 0.30f, 0.30f},
        {detail::kTaskCode, 0.30f, 0.30f},      {detail::kTaskSummarize, -0.70f, -0.70f},
        {detail::kTaskTranslate, -0.60f, -0.60f}, {detail::kTaskRewrite, -0.60f, -0.60f},
        {detail::kTaskClassify, -3.00f, -2.50f}, {detail::kTaskExtract, -1.50f, -1.20f},
        {detail::kTaskQa, -0.50f, -0.40f},
    };
    for (const Prior& p : priors) w[p.slot].set(p.p50, p.p90);
  }

  struct Features {
    std::vector<Feature> buffer;
    std::size_t n = 0;
    void extract(const EstimateQuery& q) { n = detail::extract_features(q, detail::input_tokens_of(q), kBuckets, buffer); }
  };
  static Features& scratch() {
    thread_local Features features;
    return features;
  }

  std::pair<double, double> predict(const Features& x, std::string_view model) const {
    float p50 = 0, p90 = 0;
    for (std::size_t k = 0; k < x.n; ++k) {
      const Feature& f = x.buffer[k];
      const Weight& wk = w[f.index];
      p50 += wk.q50.get() * f.value;
      p90 += wk.q90.get() * f.value;
    }
    auto it = models.find(model);
    if (it != models.end()) {
      p50 += it->second.b50.get();
      p90 += it->second.b90.get();
    }
    return {p50, p90};
  }

  // One pinball-loss SGD step for both quantiles (caller holds write_mu, and mu shared or more;
  // `model` is in `models`). A truncated response says only "longer than y": a quantile already
  // above y learns nothing from it (the censored pinball loss), one below it is pushed up as by any
  // longer answer. Returns the prediction it learned from (a new model's bias starts at 0, so it is
  // what predict answered before the model had an entry).
  std::pair<double, double> update(const Features& x, std::string_view model, double y, bool truncated) {
    const auto before = predict(x, model);
    const auto [p50, p90] = before;
    const double s50 = y > p50 ? -0.5 : (truncated ? 0.0 : 0.5);
    const double s90 = y > p90 ? -0.9 : (truncated ? 0.0 : 0.1);
    if (s50 == 0.0 && s90 == 0.0) return before;
    for (std::size_t k = 0; k < x.n; ++k) {
      const Feature& f = x.buffer[k];
      const double g5 = s50 * f.value, g9 = s90 * f.value;
      Pair& acc = g[f.index];
      Weight& wk = w[f.index];
      acc.q50 += static_cast<float>(g5 * g5);
      acc.q90 += static_cast<float>(g9 * g9);
      wk.q50.set(wk.q50.get() - static_cast<float>(kLearningRate * g5 / std::sqrt(static_cast<double>(acc.q50))));
      wk.q90.set(wk.q90.get() - static_cast<float>(kLearningRate * g9 / std::sqrt(static_cast<double>(acc.q90))));
    }
    ModelBias& m = models.find(model)->second;
    m.g50 += static_cast<float>(s50 * s50);
    m.g90 += static_cast<float>(s90 * s90);
    m.b50.set(m.b50.get() - static_cast<float>(kModelLearningRate * s50 / std::sqrt(static_cast<double>(m.g50))));
    m.b90.set(m.b90.get() - static_cast<float>(kModelLearningRate * s90 / std::sqrt(static_cast<double>(m.g90))));
    ++m.n;
    ++observations;
    return before;
  }
};

LearnedEstimator::LearnedEstimator() : s_(std::make_unique<State>()) { s_->set_priors(); }
LearnedEstimator::~LearnedEstimator() = default;

std::pair<double, double> LearnedEstimator::predict_log(const EstimateQuery& q) const {
  State::Features& x = State::scratch();
  x.extract(q);
  std::shared_lock lock(s_->mu);
  return s_->predict(x, q.model);
}

Estimate LearnedEstimator::estimate(const EstimateQuery& q) const {
  detail::validate(q);
  auto [p50, p90] = predict_log(q);
  return detail::finalize(q, p50, p90, "learned");
}

void LearnedEstimator::observe(const EstimateQuery& q, std::uint64_t output_tokens, bool truncated) {
  observe_log(q, output_tokens, truncated);
}

std::pair<double, double> LearnedEstimator::observe_log(const EstimateQuery& q, std::uint64_t output_tokens,
                                                        bool truncated) {
  detail::validate(q);
  State::Features& x = State::scratch();
  x.extract(q);
  const double y = std::log(static_cast<double>(std::max<std::uint64_t>(output_tokens, 1)));
  std::lock_guard writer(s_->write_mu);
  if (s_->models.find(q.model) == s_->models.end()) {  // (only writers change the map: read safely)
    std::unique_lock lock(s_->mu);
    s_->model_entry(q.model);
  }
  std::shared_lock lock(s_->mu);
  return s_->update(x, q.model, y, truncated);
}

void LearnedEstimator::fit(const std::vector<Observation>& records, int epochs, std::uint64_t seed) {
  if (epochs < 1) throw Error(ErrorCode::invalid_argument, "fit: epochs must be at least 1");
  for (const Observation& r : records)
    if (r.model.empty()) throw Error(ErrorCode::invalid_argument, "fit: every record needs a model name");
  std::vector<std::size_t> order(records.size());
  std::iota(order.begin(), order.end(), 0);
  State::Features x;
  std::lock_guard writer(s_->write_mu);
  std::unique_lock lock(s_->mu);
  for (const Observation& r : records) s_->model_entry(r.model);
  std::uint64_t state = seed;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    // Deterministic Fisher-Yates with a splitmix64 stream: the same records and seed, the same model.
    for (std::size_t i = order.size(); i > 1; --i) {
      state = detail::mix(state, i);
      std::swap(order[i - 1], order[state % i]);
    }
    for (std::size_t i : order) {
      const Observation& r = records[i];
      const EstimateQuery q = r.query();
      x.extract(q);
      s_->update(x, r.model, std::log(static_cast<double>(std::max<std::uint64_t>(r.output_tokens, 1))), r.truncated);
    }
  }
}

double LearnedEstimator::verbosity(std::string_view model) const {
  std::shared_lock lock(s_->mu);
  auto it = s_->models.find(model);
  return it == s_->models.end() ? 1.0 : std::exp(static_cast<double>(it->second.b50.get()));
}

std::string LearnedEstimator::to_json() const { return detail::EstimatorCodec::learned_state(*this).dump(); }

namespace detail {

nlohmann::json EstimatorCodec::learned_state(const LearnedEstimator& e) {
  const LearnedEstimator::State& s = *e.s_;
  std::lock_guard writer(s.write_mu);  // the accumulators too, between updates
  std::shared_lock lock(s.mu);
  nlohmann::json j = header("learned");
  j["dim"] = LearnedEstimator::State::kDim;
  j["observations"] = s.observations;
  nlohmann::json weights = nlohmann::json::array();
  const float g0 = static_cast<float>(LearnedEstimator::State::kAccumulatorStart);
  for (std::uint32_t i = 0; i < LearnedEstimator::State::kDim; ++i) {
    const auto& w = s.w[i];
    const auto& g = s.g[i];
    const float w50 = w.q50.get(), w90 = w.q90.get();
    if (w50 == 0.0f && w90 == 0.0f && g.q50 == g0 && g.q90 == g0) continue;
    weights.push_back({i, w50, w90, g.q50, g.q90});
  }
  j["weights"] = std::move(weights);  // [index, w50, w90, adagrad50, adagrad90]
  nlohmann::json models = nlohmann::json::object();
  for (const auto& [name, m] : s.models)
    if (m.n) models[name] = {m.b50.get(), m.b90.get(), m.g50, m.g90, m.n};  // (n == 0: added, never learned)
  j["models"] = std::move(models);  // name: [bias50, bias90, adagrad50, adagrad90, observations]
  return j;
}

std::unique_ptr<LearnedEstimator> EstimatorCodec::learned(const nlohmann::json& j) {
  if (state_number<std::uint32_t>(j.at("dim")) != LearnedEstimator::State::kDim)
    throw Error(ErrorCode::invalid_argument, "learned estimator state has feature dimension " + j.at("dim").dump() +
                                                 ", this build uses " +
                                                 std::to_string(LearnedEstimator::State::kDim));
  auto e = std::make_unique<LearnedEstimator>();
  LearnedEstimator::State& s = *e->s_;
  for (auto& w : s.w) w.set(0.0f, 0.0f);
  const auto observations = j.find("observations");
  s.observations = observations == j.end() ? 0 : state_number<std::uint64_t>(*observations);
  for (const auto& row : j.at("weights")) {
    const std::uint32_t i = state_number<std::uint32_t>(row.at(0));
    if (i >= LearnedEstimator::State::kDim) throw Error(ErrorCode::invalid_argument, "weight index out of range");
    s.w[i].set(state_number<float>(row.at(1)), state_number<float>(row.at(2)));
    s.g[i] = {state_number<float>(row.at(3)), state_number<float>(row.at(4))};
  }
  for (const auto& [name, v] : j.at("models").items()) {
    LearnedEstimator::State::ModelBias& m = s.model_entry(name);  // (not shared yet: no locks)
    m.b50.set(state_number<float>(v.at(0)));
    m.b90.set(state_number<float>(v.at(1)));
    m.g50 = state_number<float>(v.at(2));
    m.g90 = state_number<float>(v.at(3));
    m.n = state_number<std::uint64_t>(v.at(4));
  }
  return e;
}

}  // namespace detail
}  // namespace tokenlane
