// The common part of every estimator (validation, caps, the versioned JSON format) and the
// heuristic baseline.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "internal.hpp"
#include "tokenlane/error.hpp"

namespace tokenlane {

EstimateQuery Observation::query() const {
  EstimateQuery q;
  q.prompt = prompt;
  q.model = model;
  q.input_tokens = input_tokens;
  q.route = route;
  q.tenant = tenant;
  q.task = task;
  return q;
}

namespace detail {

void validate(const EstimateQuery& q) {
  if (q.model.empty()) throw Error(ErrorCode::invalid_argument, "estimator: model must be a non-empty model name");
  if (q.max_tokens && *q.max_tokens == 0)
    throw Error(ErrorCode::invalid_argument, "estimator: max_tokens must be at least 1 (or None for no cap)");
  if (q.model_max_output && *q.model_max_output == 0)
    throw Error(ErrorCode::invalid_argument, "estimator: the model's max output tokens must be at least 1");
}

double input_tokens_of(const EstimateQuery& q) {
  if (q.input_tokens) return static_cast<double>(*q.input_tokens);
  return std::max(1.0, static_cast<double>(q.prompt.size()) / 4.0);
}

std::uint64_t cap_of(const EstimateQuery& q) {
  std::uint64_t cap = q.model_max_output ? *q.model_max_output : kGenericMaxOutput;
  if (q.max_tokens) cap = std::min(cap, *q.max_tokens);
  return std::max<std::uint64_t>(cap, 1);
}

Estimate finalize(const EstimateQuery& q, double log_p50, double log_p90, std::string source) {
  const double cap = static_cast<double>(cap_of(q));
  auto to_tokens = [cap](double log_value) {
    if (!std::isfinite(log_value)) return log_value > 0 ? cap : 1.0;
    return std::clamp(std::round(std::exp(log_value)), 1.0, cap);
  };
  Estimate e;
  e.p50 = static_cast<std::uint64_t>(to_tokens(log_p50));
  e.p90 = std::max(e.p50, static_cast<std::uint64_t>(to_tokens(log_p90)));
  e.source = std::move(source);
  return e;
}

nlohmann::json EstimatorCodec::header(std::string_view kind) {
  return nlohmann::json{{"format", kEstimatorFormat}, {"version", kEstimatorVersion}, {"kind", kind}};
}

}  // namespace detail

// ---- Heuristic --------------------------------------------------------------------------------

std::pair<double, double> HeuristicEstimator::prior(std::string_view task, double in) {
  // (base tokens, tokens per input token, p90/p50 ratio): the original design's rule of thumb.
  struct Rule {
    std::string_view task;
    double base, per_input, spread, ceiling;
  };
  static const Rule rules[] = {
      {"code", 300, 0.3, 2.5, 4096},    {"summarize", 40, 0.1, 2.0, 600}, {"translate", 10, 1.0, 1.5, 1e9},
      {"rewrite", 10, 1.0, 1.5, 1e9},   {"classify", 5, 0.01, 4.0, 64},  {"extract", 20, 0.1, 3.0, 1024},
      {"qa", 100, 0.1, 3.0, 1024},      {"chat", 150, 0.25, 3.0, 2048},
  };
  const Rule* rule = &rules[7];
  for (const Rule& r : rules)
    if (r.task == task) rule = &r;
  const double p50 = std::clamp(rule->base + rule->per_input * in, 1.0, rule->ceiling);
  return {p50, p50 * rule->spread};
}

Estimate HeuristicEstimator::estimate(const EstimateQuery& q) const {
  detail::validate(q);
  auto [p50, p90] = prior(q.task, detail::input_tokens_of(q));
  return detail::finalize(q, std::log(p50), std::log(p90), "heuristic");
}

std::string HeuristicEstimator::to_json() const { return detail::EstimatorCodec::header(kind()).dump(); }

// ---- Format -----------------------------------------------------------------------------------

std::unique_ptr<Estimator> Estimator::from_json(std::string_view json_text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::invalid_argument, std::string("estimator state is not valid JSON: ") + e.what());
  }
  // value() would throw nlohmann's type_error for a non-string: read strings only as strings.
  const auto text_of = [&j](const char* key) {
    const auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (!j.is_object() || text_of("format") != kEstimatorFormat)
    throw Error(ErrorCode::invalid_argument,
                "not a tokenlane estimator file (expected \"format\": \"tokenlane.estimator\")");
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != kEstimatorVersion)
    throw Error(ErrorCode::invalid_argument,
                "unsupported estimator format version " + (j.contains("version") ? j["version"].dump() : "(none)") +
                    "; this tokenlane reads version " + std::to_string(kEstimatorVersion) +
                    " (re-save it with the tokenlane that wrote it, or retrain)");
  const std::string kind = text_of("kind");
  try {
    if (kind == "heuristic") return std::make_unique<HeuristicEstimator>();
    if (kind == "learned") return detail::EstimatorCodec::learned(j);
    if (kind == "history") return detail::EstimatorCodec::history(j);
    if (kind == "blend") return detail::EstimatorCodec::blend(j);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::invalid_argument, "malformed " + kind + " estimator state: " + e.what());
  }
  throw Error(ErrorCode::invalid_argument,
              "unknown estimator kind \"" + kind + "\" (expected heuristic, learned, history or blend)");
}

void Estimator::save(const std::string& path) const {
  const std::string text = to_json();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(ErrorCode::invalid_argument, "cannot write estimator state to " + path);
    out << text;
    if (!out.flush()) throw Error(ErrorCode::invalid_argument, "cannot write estimator state to " + path);
  }
  // Replace atomically so a crash never leaves a half-written state behind.
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw Error(ErrorCode::invalid_argument, "cannot replace estimator state at " + path);
}

std::unique_ptr<Estimator> Estimator::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::not_found, "cannot read estimator state " + path);
  std::ostringstream buf;
  buf << in.rdbuf();
  return from_json(buf.str());
}

}  // namespace tokenlane
