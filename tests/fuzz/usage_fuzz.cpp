// A provider's usage object (any shape) to a cost query and a price: tokenlane::Error or a result.
#include <cstdlib>

#include "fuzz_support.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/pricing.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static constexpr std::string_view kProviders[] = {"", "openai", "anthropic", "gemini"};
  static const auto table = tokenlane::Pricing::from_json(
      R"({"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                "cache_read_input_token_cost": 1e-07, "litellm_provider": "anthropic"}})");
  const auto [selector, json] = fuzz::split(data, size);
  try {
    tokenlane::usage_to_query(json, kProviders[selector % 4]);
  } catch (const tokenlane::Error& e) {
    if (e.code() != tokenlane::ErrorCode::invalid_argument) std::abort();
  }
  try {
    table->cost_of_usage("m", json, selector & 1);
  } catch (const tokenlane::Error& e) {
    if (e.code() != tokenlane::ErrorCode::invalid_argument) std::abort();
  }
  return 0;
}
