// The price-table loader on arbitrary JSON (LiteLLM files and tokenlane configs), then pricing every
// model it loaded: a table or tokenlane::Error, and costs that never throw anything else.
#include <cstdlib>
#include <string>

#include "fuzz_support.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/pricing.hpp"

namespace {

void price_all(const tokenlane::Pricing& table) {
  tokenlane::CostQuery q;
  q.input_tokens = 300'000;
  q.output_tokens = 1'000;
  q.cached_input_tokens = 1'000;
  q.reasoning_tokens = 10;
  for (const auto& model : table.models()) {
    for (bool batch : {false, true}) {
      q.batch = batch;
      try {
        table.cost(model, q);
      } catch (const tokenlane::Error&) {
      }
    }
    table.max_input_tokens(model);
    table.max_output_tokens(model);
    table.resolve(model);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  try {
    // "extends" may name a file: keep the fuzzer inside an empty directory.
    price_all(*tokenlane::Pricing::from_json(json, {}, "/nonexistent-fuzz-dir"));
  } catch (const tokenlane::Error&) {
  }
  static const auto base = tokenlane::Pricing::from_json(
      R"({"gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
          "litellm_provider": "openai", "max_output_tokens": 16384}})");
  try {
    price_all(*base->with_config(json));
  } catch (const tokenlane::Error&) {
  }
  return 0;
}
