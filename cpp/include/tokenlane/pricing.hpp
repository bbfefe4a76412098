// tokenlane/pricing.hpp — what a request costs, in exact money, before and after it runs.
//
// A Pricing is an immutable table of per-token prices. It reads LiteLLM's
// `model_prices_and_context_window.json` schema as is (the ecosystem's shared price list) and a small
// tokenlane config for custom and self-hosted models, aliases, overrides and a fallback price.
// Prices are kept as whole pico-dollars per token and costs as Money, so every cost is
// tokens × integer price and sums are exact. Tables are immutable and safe to share between threads.
//
//   auto pricing = tokenlane::Pricing::from_file("prices.json");
//   tokenlane::CostQuery q;
//   q.input_tokens = 1'000'000;                       // every prompt token, cached ones included
//   pricing->cost("gpt-4o", q).total.to_string();     // "2.5"
//   pricing->cost_of_usage("claude-sonnet-4-5", R"({"input_tokens": 10, "cache_read_input_tokens": 90,
//                                                   "output_tokens": 5})");   // Anthropic's convention
//
// Conventions (docs/pricing.md has the full text):
// - CostQuery::input_tokens counts every prompt token; cached_input_tokens of them were cache reads
//   and cache_write_tokens cache writes; the rest is billed at the input price.
// - output_tokens counts every completion token; reasoning_tokens of them are priced at the
//   reasoning price when the table has one (OpenAI's completion_tokens include reasoning tokens).
// - Long-context tiers (`*_above_<N>k_tokens`): when the prompt has more than N×1000 tokens, the
//   whole request is billed at the tier's prices, as Anthropic and Google bill it.
// - batch: explicit `*_batches` prices when the entry has them, else the provider's batch discount
//   (batch_discount_percent below), else no discount (reported by CostBreakdown::batch_discounted).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenlane/error.hpp"
#include "tokenlane/money.hpp"

namespace tokenlane {

// Per-token prices of one token class (pico-dollars per token); unset = not in the table.
struct TokenPrices {
  std::optional<std::int64_t> input;        // uncached prompt tokens
  std::optional<std::int64_t> output;       // completion tokens
  std::optional<std::int64_t> cache_read;   // prompt tokens read from the provider's cache
  std::optional<std::int64_t> cache_write;  // prompt tokens written to the cache
  std::optional<std::int64_t> reasoning;    // reasoning ("thinking") tokens, when priced apart
};

// Prices that replace the base ones when the prompt has more than `above_tokens` tokens.
struct LongContextTier {
  std::uint64_t above_tokens = 0;
  TokenPrices prices;
};

struct ModelPrice {
  std::string key;       // the table key, e.g. "gpt-4o" or "groq/llama-3.3-70b-versatile"
  std::string provider;  // LiteLLM's litellm_provider: "openai", "anthropic", "gemini", ...
  std::string mode;      // "chat", "embedding", "completion", ... (informational)
  TokenPrices base;
  std::vector<LongContextTier> tiers;  // sorted by above_tokens
  TokenPrices batch;                   // explicit batch prices (`*_batches` keys)
  std::optional<int> batch_discount_percent;  // per-entry batch discount, overrides the provider's
  std::optional<std::uint64_t> max_input_tokens;
  std::optional<std::uint64_t> max_output_tokens;
  std::string source;  // where the price comes from (URL), when the table says
  std::string as_of;   // when it was checked (YYYY-MM-DD), when the table says
};

struct CostQuery {
  std::uint64_t input_tokens = 0;        // all prompt tokens, cache reads and writes included
  std::uint64_t output_tokens = 0;       // all completion tokens, reasoning included
  std::uint64_t cached_input_tokens = 0;  // of input_tokens: read from the cache
  std::uint64_t cache_write_tokens = 0;   // of input_tokens: written to the cache
  std::uint64_t reasoning_tokens = 0;     // of output_tokens: reasoning tokens
  bool batch = false;                     // sent through the provider's batch API
};

struct CostBreakdown {
  std::string model;     // the table key that priced the request ("" when the fallback did)
  std::string provider;  // its provider ("fallback" for the fallback price)
  CostQuery query;       // the normalized token counts that were priced
  Money input;           // uncached prompt tokens
  Money cached_input;    // cache reads
  Money cache_write;     // cache writes
  Money output;          // completion tokens that are not reasoning tokens
  Money reasoning;       // reasoning tokens
  Money total;
  std::uint64_t long_context_above = 0;  // the tier threshold that applied, 0 if none
  bool batch_discounted = false;         // batch requested and a batch price or discount applied
  bool fallback = false;                 // the model is not in the table; the fallback priced it
};

// The batch discount of a provider in percent (50 for OpenAI, Anthropic, Google, Mistral), or
// nullopt when tokenlane knows none.
std::optional<int> provider_batch_discount_percent(std::string_view provider);

// A provider's raw `usage` object (or a whole response holding one) turned into a CostQuery.
// Shapes: OpenAI Chat Completions (`prompt_tokens` includes `prompt_tokens_details.cached_tokens`,
// `completion_tokens` includes `completion_tokens_details.reasoning_tokens`), OpenAI Responses
// (`input_tokens` includes `input_tokens_details.cached_tokens`, `output_tokens` includes
// `output_tokens_details.reasoning_tokens`), Anthropic (`input_tokens` EXCLUDES
// `cache_read_input_tokens` and `cache_creation_input_tokens`), Gemini `usageMetadata`
// (`promptTokenCount` includes `cachedContentTokenCount`; `thoughtsTokenCount` is billed as output
// on top of `candidatesTokenCount`). The keys present decide; `provider` only breaks a tie between
// shapes that would price identically. Throws Error(invalid_argument) on a malformed object.
CostQuery usage_to_query(std::string_view usage_json, std::string_view provider = {});

class Pricing {
 public:
  struct Options {
    // What a tokenlane config's `"extends": "default"` means (the Python package passes its
    // shipped table). Empty: configs that do not name a base start from an empty table.
    std::string default_table_path;
  };

  // Parses a LiteLLM price file or a tokenlane config (detected from its shape). A config extends
  // the table named by its "extends" key ("default" when absent, "none", or a path relative to
  // `base_dir`). Throws Error(invalid_argument) on malformed input.
  static std::shared_ptr<const Pricing> from_json(std::string_view json_text, const Options& options,
                                                  const std::string& base_dir = {});
  static std::shared_ptr<const Pricing> from_json(std::string_view json_text) {
    return from_json(json_text, Options{});
  }
  // Reads the file, then as above. Throws Error(not_found) if it cannot be read.
  static std::shared_ptr<const Pricing> from_file(const std::string& path, const Options& options = {});
  // An empty table (every model unknown).
  static std::shared_ptr<const Pricing> empty();

  // A new table: this one with a tokenlane config (or a LiteLLM file) applied on top. Entries of
  // known models are patched field by field; new models are added; "fallback" and "aliases" replace.
  std::shared_ptr<const Pricing> with_config(std::string_view json_text) const;

  // Prices a request. Throws Error(not_found) for an unknown model without a fallback, and
  // Error(invalid_argument) when the counts contradict each other (cached > input, ...).
  CostBreakdown cost(std::string_view model, const CostQuery& query) const;
  // usage_to_query with the model's provider, then cost().
  CostBreakdown cost_of_usage(std::string_view model, std::string_view usage_json, bool batch = false) const;

  // The table key a model name resolves to: the exact key, an alias, the name without a provider
  // prefix ("openai/gpt-4o"), a key with a provider prefix ("mistral/…" for "mistral-small-latest"),
  // then without a date suffix ("claude-sonnet-4-5-20250929" → "claude-sonnet-4-5"). nullopt if none.
  std::optional<std::string> resolve(std::string_view model) const;
  // The entry pricing `model` (the fallback entry for unknown models when one is configured).
  // Throws Error(not_found) naming the model and how to add it.
  const ModelPrice& entry(std::string_view model) const;
  std::optional<std::uint64_t> max_input_tokens(std::string_view model) const;
  // max_output_tokens, else LiteLLM's legacy max_tokens.
  std::optional<std::uint64_t> max_output_tokens(std::string_view model) const;
  const std::string& provider(std::string_view model) const;
  std::vector<std::string> models() const;  // every table key, sorted
  bool has_fallback() const noexcept { return fallback_.has_value(); }
  // Entries of a LiteLLM file that were not loaded (no per-token price, or malformed).
  std::size_t skipped_entries() const noexcept { return skipped_; }

  struct Impl;

 private:
  Pricing() = default;
  void rebuild_index();
  std::map<std::string, ModelPrice, std::less<>> models_;
  std::map<std::string, std::string, std::less<>> aliases_;        // from configs
  std::map<std::string, std::string, std::less<>> suffix_index_;   // "gemini-2.5-pro" -> "gemini/gemini-2.5-pro"
  std::optional<ModelPrice> fallback_;
  std::size_t skipped_ = 0;
};

}  // namespace tokenlane
