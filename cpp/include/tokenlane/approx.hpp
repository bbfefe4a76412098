// tokenlane/approx.hpp — APPROXIMATE token counts for model families without a public tokenizer.
//
// Claude, Gemini and other families do not publish their tokenizers (or ship them only inside
// their own runtimes), so tokenlane cannot count their tokens exactly before the call. For them it
// estimates: the exact o200k_base count times a per-family ratio calibrated against real tokenizers
// on real text (see docs/approximate-counting.md for the data, the ratios and their errors).
// Every result says it is approximate and how far off it typically is; it is never presented as
// exact, and the ledger corrects it with the provider's reported usage after the call.
//
//   auto o200k = tokenlane::get_encoding("o200k_base");
//   tokenlane::ApproximateCount c = tokenlane::count_approximate(*o200k, text, "claude-sonnet-4-5");
//   // c.tokens, c.family == "claude", c.typical_error == 0.xx
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "tokenlane/tokenizer.hpp"

namespace tokenlane {

struct ApproximateFamily {
  std::string name;                    // "claude", "gemini", "llama", ...
  std::vector<std::string> markers;    // lower-case substrings of model names in this family
  double ratio;                        // family tokens per o200k_base token
  double typical_error;                // mean absolute relative error on the calibration data
  bool calibrated;                     // false: no tokenizer was available; a documented guess
  std::string basis;                   // what the ratio was measured against
};

struct ApproximateCount {
  std::size_t tokens;
  std::string family;
  double typical_error;
  bool calibrated;
};

// The known families, in matching order.
const std::vector<ApproximateFamily>& approximate_families();
// The family of a model name (case-insensitive, provider prefixes such as "anthropic/" or
// "us.anthropic." are fine), or nullptr when no family matches.
const ApproximateFamily* approximate_family_for_model(std::string_view model);
// Estimates the tokens of `text` for `model`. `o200k` must be the o200k_base encoding.
// Throws Error(not_found) when the model belongs to no known family.
ApproximateCount count_approximate(const Encoding& o200k, std::string_view text,
                                   std::string_view model);

}  // namespace tokenlane
