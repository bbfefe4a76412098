// BlendEstimator: history where a template has been seen (on this model or others), else the
// learned model shifted by the route's (or tenant's) observed bias, else the heuristic; then an
// online coverage control per source keeps p50 at the median and p90 at the 90th percentile.
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "internal.hpp"
#include "tokenlane/error.hpp"

namespace tokenlane {
namespace {

constexpr std::array<const char*, 4> kSources = {"heuristic", "learned", "history:template", "history:template:xmodel"};
constexpr double kResidualPrior = 5.0;   // observations before a route's bias counts half
constexpr double kResidualMinRate = 0.05;  // EMA floor: the bias follows drift

std::size_t source_index(std::string_view s) {
  for (std::size_t i = 0; i < kSources.size(); ++i)
    if (s == kSources[i]) return i;
  return 0;
}

}  // namespace

struct BlendEstimator::Calibration {
  struct Offsets {
    double d50 = 0, d90 = 0;
  };
  struct Residual {
    double mean = 0, n = 0;
  };
  std::array<Offsets, kSources.size()> offsets{};
  std::map<std::string, Residual, std::less<>> residuals;  // "r\x1f<model>\x1f<route>" / "t\x1f..."
  mutable std::shared_mutex mu;

  static std::string key(const EstimateQuery& q) {
    if (!q.route.empty()) return "r\x1f" + std::string(q.model) + "\x1f" + std::string(q.route);
    if (!q.tenant.empty()) return "t\x1f" + std::string(q.model) + "\x1f" + std::string(q.tenant);
    return {};
  }
};

struct BlendEstimator::Raw {
  double base50 = 0;   // learned (or heuristic) log p50 before the route bias
  double m50 = 0, m90 = 0;
  std::size_t source = 0;
  std::string key;
};

BlendEstimator::BlendEstimator(std::unique_ptr<LearnedEstimator> learned, std::unique_ptr<HistoryEstimator> history,
                               const Options& options)
    : learned_(std::move(learned)),
      history_(std::move(history)),
      options_(options),
      cal_(std::make_unique<Calibration>()) {
  if (!history_) throw Error(ErrorCode::invalid_argument, "BlendEstimator needs a HistoryEstimator");
  if (!(options.history_prior > 0) || !(options.coverage_step >= 0) || !(options.median_step >= 0))
    throw Error(ErrorCode::invalid_argument, "BlendEstimator: history_prior > 0 and non-negative steps required");
}

BlendEstimator::~BlendEstimator() = default;

std::unique_ptr<BlendEstimator> BlendEstimator::make_default() {
  return std::make_unique<BlendEstimator>(std::make_unique<LearnedEstimator>(), std::make_unique<HistoryEstimator>());
}

namespace {
std::pair<double, double> prior_log(const EstimateQuery& q) {
  auto [p50, p90] = HeuristicEstimator::prior(q.task, detail::input_tokens_of(q));
  return {std::log(p50), std::log(p90)};
}
}  // namespace

BlendEstimator::Raw BlendEstimator::predict(const EstimateQuery& q) const {
  return blend(q, learned_ ? learned_->predict_log(q) : prior_log(q));
}

BlendEstimator::Raw BlendEstimator::blend(const EstimateQuery& q, std::pair<double, double> base) const {
  Raw r;
  const auto [l50, l90] = base;
  r.source = learned_ ? 1 : 0;
  r.base50 = l50;
  r.key = Calibration::key(q);
  double bias = 0;
  if (!r.key.empty()) {
    std::shared_lock lock(cal_->mu);
    auto it = cal_->residuals.find(r.key);
    if (it != cal_->residuals.end()) bias = it->second.mean * it->second.n / (it->second.n + kResidualPrior);
  }
  r.m50 = l50 + bias;
  r.m90 = l90 + bias;
  if (auto h = history_->lookup(q, /*specific_only=*/true, 1)) {
    const double spread = std::max(0.0, l90 - l50);
    // A template earns weight by evidence (n / (n + prior)) and by being specific: one whose own
    // spread is as wide as the learned model's (a prefix every request shares) says nothing about
    // this request, and would flatten the learned ranking.
    const double own = std::max(0.0, h->log_p90 - h->log_p50);
    const double specific = spread > 0 ? std::clamp(1.0 - own / spread, 0.0, 1.0) : 1.0;
    const double w = h->count / (h->count + options_.history_prior) * specific;
    r.m50 = w * h->log_p50 + (1 - w) * r.m50;
    r.m90 = r.m50 + spread;
    r.source = h->level == "template" ? 2 : 3;
  }
  return r;
}

Estimate BlendEstimator::estimate(const EstimateQuery& q) const {
  detail::validate(q);
  const Raw r = predict(q);
  Calibration::Offsets d;
  {
    std::shared_lock lock(cal_->mu);
    d = cal_->offsets[r.source];
  }
  const double m50 = r.m50 + d.d50;
  return detail::finalize(q, m50, std::max(m50, r.m90 + d.d90), kSources[r.source]);
}

void BlendEstimator::observe(const EstimateQuery& q, std::uint64_t output_tokens, bool truncated) {
  detail::validate(q);
  const double y = std::log(static_cast<double>(std::max<std::uint64_t>(output_tokens, 1)));
  // The learned model learns first and says what it predicted before: one pass over the prompt.
  const Raw r = blend(q, learned_ ? learned_->observe_log(q, output_tokens, truncated) : prior_log(q));
  {
    std::unique_lock lock(cal_->mu);
    Calibration::Offsets& d = cal_->offsets[r.source];
    const double m50 = r.m50 + d.d50;
    const double m90 = std::max(m50, r.m90 + d.d90);
    // A truncated length above a quantile is a miss like any other; below it, it tells nothing
    // (the model would have gone on), so the control does not move.
    if (y > m50 || !truncated) d.d50 += options_.median_step * ((y > m50 ? 1.0 : 0.0) - 0.5);
    if (y > m90 || !truncated) d.d90 += options_.coverage_step * ((y > m90 ? 1.0 : 0.0) - 0.1);
    if (!r.key.empty()) {
      Calibration::Residual& res = cal_->residuals[r.key];
      if (!truncated || y - r.base50 > res.mean) {
        res.n += 1;
        const double rate = std::max(1.0 / res.n, kResidualMinRate);
        res.mean += rate * ((y - r.base50) - res.mean);
      }
    }
  }
  history_->observe(q, output_tokens, truncated);
}

std::string BlendEstimator::to_json() const {
  nlohmann::json j = detail::EstimatorCodec::header(kind());
  j["options"] = {{"history_prior", options_.history_prior},
                  {"coverage_step", options_.coverage_step},
                  {"median_step", options_.median_step}};
  {
    std::shared_lock lock(cal_->mu);
    nlohmann::json offsets = nlohmann::json::object();
    for (std::size_t i = 0; i < kSources.size(); ++i)
      offsets[kSources[i]] = {cal_->offsets[i].d50, cal_->offsets[i].d90};
    j["offsets"] = std::move(offsets);
    nlohmann::json residuals = nlohmann::json::object();
    for (const auto& [k, v] : cal_->residuals) residuals[k] = {v.mean, v.n};
    j["residuals"] = std::move(residuals);
  }
  j["learned"] = learned_ ? detail::EstimatorCodec::learned_state(*learned_) : nlohmann::json(nullptr);
  j["history"] = detail::EstimatorCodec::history_state(*history_);
  return j.dump();
}

namespace detail {

std::unique_ptr<BlendEstimator> EstimatorCodec::blend(const nlohmann::json& j) {
  BlendEstimator::Options o;
  const auto& opts = j.at("options");
  o.history_prior = opts.at("history_prior").get<double>();
  o.coverage_step = opts.at("coverage_step").get<double>();
  o.median_step = opts.at("median_step").get<double>();
  std::unique_ptr<LearnedEstimator> learned;
  if (!j.at("learned").is_null()) learned = EstimatorCodec::learned(j.at("learned"));
  auto e = std::make_unique<BlendEstimator>(std::move(learned), EstimatorCodec::history(j.at("history")), o);
  for (const auto& [name, v] : j.at("offsets").items()) {
    const std::size_t i = source_index(name);
    if (kSources[i] != name) continue;  // a source this build does not have: ignore its offset
    e->cal_->offsets[i] = {v.at(0).get<double>(), v.at(1).get<double>()};
  }
  for (const auto& [k, v] : j.at("residuals").items())
    e->cal_->residuals[k] = {v.at(0).get<double>(), v.at(1).get<double>()};
  return e;
}

}  // namespace detail
}  // namespace tokenlane
