#include "tokenlane/approx.hpp"

#include <cctype>
#include <cmath>

namespace tokenlane {

const std::vector<ApproximateFamily>& approximate_families() {
  // Ratios and errors come from benchmarks/calibrate_approx.py; docs/approximate-counting.md
  // explains the data. Re-run the script and update both when a tokenizer changes.
  static const std::vector<ApproximateFamily> families = {
      {"claude", {"claude", "anthropic"}, 1.0, 0.25, false, "uncalibrated placeholder"},
      {"gemini", {"gemini", "gemma"}, 1.0, 0.25, false, "uncalibrated placeholder"},
      {"llama", {"llama"}, 1.0, 0.25, false, "uncalibrated placeholder"},
      {"mistral", {"mistral", "mixtral", "codestral", "ministral", "magistral", "pixtral"}, 1.0, 0.25,
       false, "uncalibrated placeholder"},
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
