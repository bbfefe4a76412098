// The estimators' feature extraction on arbitrary prompts and models: every estimator answers
// (or refuses an empty model with tokenlane::Error), within its caps, and learns without crashing.
#include <cstdlib>
#include <memory>
#include <string>

#include "estimator/internal.hpp"
#include "fuzz_support.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/estimator.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::unique_ptr<tokenlane::Estimator> estimators[] = {
      std::make_unique<tokenlane::HeuristicEstimator>(), std::make_unique<tokenlane::LearnedEstimator>(),
      std::make_unique<tokenlane::HistoryEstimator>(), tokenlane::BlendEstimator::make_default()};
  static constexpr std::string_view kTasks[] = {"", "chat", "code", "summarize", "translate",
                                                "rewrite", "classify", "extract"};
  const auto [selector, payload] = fuzz::split(data, size);
  // "model\0prompt": the model name is fuzzed too (empty is refused, anything else is priced).
  const auto cut = payload.find('\0');
  tokenlane::EstimateQuery q;
  q.model = cut == std::string_view::npos ? std::string_view("gpt-4o") : payload.substr(0, cut);
  q.prompt = cut == std::string_view::npos ? payload : payload.substr(cut + 1);
  q.task = kTasks[selector % 8];
  if (selector & 8) q.max_tokens = 1 + selector;
  if (selector & 16) q.model_max_output = 64;
  if (selector & 32) q.input_tokens = payload.size() * 1000;
  q.route = selector & 64 ? "/chat" : "";

  std::vector<tokenlane::detail::Feature> features;
  const auto n = tokenlane::detail::extract_features(q, 1.0 + payload.size(), 1u << 12, features);
  if (n > features.size()) std::abort();
  tokenlane::detail::template_hash(q.prompt, 96);

  for (const auto& est : estimators) {
    try {
      const auto e = est->estimate(q);
      if (e.p50 < 1 || e.p90 < e.p50) std::abort();
      if (q.max_tokens && e.p90 > *q.max_tokens) std::abort();
      if (q.model_max_output && e.p90 > *q.model_max_output) std::abort();
      est->observe(q, 1 + payload.size() % 3000);
    } catch (const tokenlane::Error& e) {
      if (!q.model.empty()) std::abort();
    }
  }
  return 0;
}
