// Pricing: exact money, the shipped table, provider usage conventions, tiers, batch, names, configs.
#include <catch2/catch.hpp>

#include <string>

#include "tokenlane/money.hpp"
#include "tokenlane/pricing.hpp"

using tokenlane::CostQuery;
using tokenlane::Error;
using tokenlane::ErrorCode;
using tokenlane::Money;
using tokenlane::Pricing;

namespace {

std::string default_table() { return std::string(TOKENLANE_SOURCE_DIR) + "/python/tokenlane/data/prices.json"; }

const Pricing& shipped() {
  static auto p = Pricing::from_file(default_table());
  return *p;
}

CostQuery io(std::uint64_t in, std::uint64_t out) {
  CostQuery q;
  q.input_tokens = in;
  q.output_tokens = out;
  return q;
}

// A hand-written table in LiteLLM's schema (not LiteLLM's data): the odd entries it must survive.
const char* kLiteLLM = R"({
  "sample_spec": {"input_cost_per_token": 0.0, "max_input_tokens": "max input tokens, if the provider specifies it"},
  "some-image-model": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
  "acme/big-model": {
    "litellm_provider": "acme", "mode": "chat",
    "input_cost_per_token": 1e-06, "output_cost_per_token": 4e-06,
    "cache_read_input_token_cost": 1e-07, "cache_creation_input_token_cost": 1.25e-06,
    "output_cost_per_reasoning_token": 8e-06,
    "input_cost_per_token_above_128k_tokens": 2e-06, "output_cost_per_token_above_128k_tokens": 6e-06,
    "input_cost_per_token_above_1000k_tokens": 3e-06,
    "cache_creation_input_token_cost_above_1hr": 2e-06,
    "input_cost_per_token_priority": 9e-06,
    "input_cost_per_token_batches": 4e-07,
    "max_input_tokens": 2000000, "max_tokens": 8192,
    "supports_vision": true
  },
  "acme/small-model": {"litellm_provider": "acme", "input_cost_per_token": 1e-07, "output_cost_per_token": 2e-07}
})";

}  // namespace

TEST_CASE("Money is exact and checked", "[pricing][money]") {
  CHECK(Money::from_usd("2.50").pico() == 2'500'000'000'000);
  CHECK(Money::from_usd("2.5e-06").pico() == 2'500'000);
  CHECK(Money::from_usd("-0.3").to_string() == "-0.3");
  CHECK(Money::from_pico(2'500'000).to_string() == "0.0000025");
  CHECK(Money::from_pico(0).to_string() == "0");
  CHECK(Money::from_pico(7'000'000'000'000).to_string() == "7");
  CHECK_THROWS_AS(Money::from_usd("1e-13"), Error);  // finer than a pico-dollar
  CHECK_THROWS_AS(Money::from_usd("abc"), Error);
  CHECK_THROWS_AS(Money::from_usd("1e7"), Error);    // out of range
  CHECK_THROWS_AS(Money::from_usd("9000000").times(2), Error);
  bool rounded = false;
  CHECK(tokenlane::decimal_to_scaled("0.2", 6) == 200'000);
  CHECK(tokenlane::decimal_to_scaled("1.59263611e-07", 12, &rounded) == 159'264);
  CHECK(rounded);
  CHECK(tokenlane::decimal_to_scaled("0.0015", 3, &rounded) == 2);  // half away from zero
  CHECK(tokenlane::decimal_to_scaled("000.50", 2, &rounded) == 50);
  CHECK_FALSE(rounded);
}

TEST_CASE("the shipped table prices the major models", "[pricing]") {
  const Pricing& p = shipped();
  CHECK(p.cost("gpt-4o", io(1'000'000, 0)).total.to_string() == "2.5");
  CHECK(p.cost("gpt-4o", io(0, 1'000'000)).total.to_string() == "10");
  CHECK(p.cost("claude-sonnet-4-5", io(100'000, 100'000)).total.to_string() == "1.8");
  CHECK(p.cost("gpt-5-nano", io(1, 0)).total.pico() == 50'000);
  CHECK(p.max_output_tokens("gpt-4o") == 16384u);
  CHECK(p.max_input_tokens("gpt-4.1") == 1047576u);
  CHECK(p.provider("claude-haiku-4-5") == "anthropic");
  CHECK(p.models().size() >= 25);
  for (const std::string& m : p.models()) {
    INFO(m);
    CHECK_FALSE(p.entry(m).source.empty());
    CHECK(p.entry(m).as_of.size() == 10);
  }
}

TEST_CASE("cached tokens follow each provider's usage convention", "[pricing][usage]") {
  const Pricing& p = shipped();
  // Same numbers, two conventions. OpenAI: prompt_tokens (1000) already include the 800 cached.
  auto openai = p.cost_of_usage(
      "gpt-4o", R"({"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 800}})");
  CHECK(openai.query.input_tokens == 1000);
  CHECK(openai.input.to_string() == "0.0005");         // 200 uncached × $2.50/M
  CHECK(openai.cached_input.to_string() == "0.001");   // 800 × $1.25/M
  CHECK(openai.total.to_string() == "0.0025");
  // Anthropic: input_tokens (1000) EXCLUDE the 800 cache reads: the prompt had 1800 tokens.
  auto anthropic = p.cost_of_usage(
      "claude-sonnet-4-5", R"({"input_tokens": 1000, "cache_read_input_tokens": 800, "output_tokens": 100})");
  CHECK(anthropic.query.input_tokens == 1800);
  CHECK(anthropic.input.to_string() == "0.003");        // 1000 × $3/M
  CHECK(anthropic.cached_input.to_string() == "0.00024");
  CHECK(anthropic.total.to_string() == "0.00474");
  // Cache writes are their own class for Anthropic.
  auto writes = p.cost_of_usage("claude-sonnet-4-5",
                                R"({"usage": {"input_tokens": 10, "cache_creation_input_tokens": 1000, "output_tokens": 0}})");
  CHECK(writes.query.input_tokens == 1010);
  CHECK(writes.cache_write.to_string() == "0.00375");
  // OpenAI Responses API: input_tokens INCLUDE the cached ones.
  auto responses = p.cost_of_usage(
      "gpt-4o", R"({"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 800}, "output_tokens": 100,
                   "output_tokens_details": {"reasoning_tokens": 0}})");
  CHECK(responses.total == openai.total);
  // Gemini usageMetadata: thoughts are billed as output on top of candidates.
  auto gemini = p.cost_of_usage("gemini-2.5-flash",
                                R"({"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10,
                                    "thoughtsTokenCount": 90, "cachedContentTokenCount": 50}})");
  CHECK(gemini.query.output_tokens == 100);
  CHECK(gemini.query.reasoning_tokens == 90);
  CHECK_THROWS_WITH(p.cost_of_usage("gpt-4o", R"({"tokens": 5})"), Catch::Contains("unrecognized usage"));
  CHECK_THROWS_WITH(p.cost_of_usage("gpt-4o", R"({"prompt_tokens": -5})"), Catch::Contains("non-negative"));
}

TEST_CASE("reasoning tokens are part of the output", "[pricing]") {
  const Pricing& p = shipped();
  // o3 has no separate reasoning price: 1000 completion tokens (900 reasoning) cost 1000 outputs.
  auto o3 = p.cost_of_usage("o3", R"({"prompt_tokens": 0, "completion_tokens": 1000,
                                      "completion_tokens_details": {"reasoning_tokens": 900}})");
  CHECK(o3.output.to_string() == "0.0008");
  CHECK(o3.reasoning.to_string() == "0.0072");
  CHECK(o3.total == p.cost("o3", io(0, 1000)).total);
  auto custom = Pricing::from_json(kLiteLLM);
  CostQuery q = io(0, 10);
  q.reasoning_tokens = 4;
  auto c = custom->cost("acme/big-model", q);
  CHECK(c.output.pico() == 6 * 4'000'000);
  CHECK(c.reasoning.pico() == 4 * 8'000'000);
  q.reasoning_tokens = 11;
  CHECK_THROWS_AS(custom->cost("acme/big-model", q), Error);
}

TEST_CASE("long-context tiers bill the whole request at the tier price", "[pricing]") {
  const Pricing& p = shipped();
  auto at = p.cost("gemini-2.5-pro", io(200'000, 1000));
  CHECK(at.long_context_above == 0);
  CHECK(at.total.to_string() == "0.26");  // 200k × $1.25/M + 1k × $10/M
  auto above = p.cost("gemini-2.5-pro", io(200'001, 1000));
  CHECK(above.long_context_above == 200'000);
  CHECK(above.input == Money::from_usd("2.5e-6").times(200'001));
  CHECK(above.output.to_string() == "0.015");
  auto custom = Pricing::from_json(kLiteLLM);
  CHECK(custom->cost("acme/big-model", io(1'000'001, 1)).input == Money::from_usd("3e-6").times(1'000'001));
  // The 1000k tier has no output price: the 128k tier's applies.
  CHECK(custom->cost("acme/big-model", io(1'000'001, 1)).output == Money::from_usd("6e-6"));
}

TEST_CASE("batch prices: explicit, provider discount, or none", "[pricing][batch]") {
  const Pricing& p = shipped();
  CostQuery q = io(1'000'000, 1'000'000);
  q.batch = true;
  auto gpt4o = p.cost("gpt-4o", q);  // explicit *_batches keys
  CHECK(gpt4o.batch_discounted);
  CHECK(gpt4o.total.to_string() == "6.25");
  auto gpt5 = p.cost("gpt-5", q);  // OpenAI's 50%
  CHECK(gpt5.total.to_string() == "5.625");
  CHECK(p.cost("claude-sonnet-4-5", io(100'000, 100'000)).total.to_string() == "1.8");
  CostQuery small = io(100'000, 100'000);
  small.batch = true;
  CHECK(p.cost("claude-sonnet-4-5", small).total.to_string() == "0.9");
  CHECK(p.cost("gemini-2.5-flash", q).total.to_string() == "1.4");
  CHECK(p.cost("mistral-small-latest", q).total.to_string() == "0.12");
  auto groq = p.cost("groq/llama-3.1-8b-instant", q);  // no known batch discount
  CHECK_FALSE(groq.batch_discounted);
  CHECK(groq.total.to_string() == "0.13");
  CHECK(tokenlane::provider_batch_discount_percent("anthropic") == 50);
  CHECK_FALSE(tokenlane::provider_batch_discount_percent("groq"));
}

TEST_CASE("unknown models: a clear error, or the configured fallback", "[pricing]") {
  const Pricing& p = shipped();
  try {
    p.cost("my-llama-70b", io(1, 1));
    FAIL("expected not_found");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::not_found);
    CHECK_THAT(e.what(), Catch::Contains("my-llama-70b") && Catch::Contains("input_per_mtok") &&
                             Catch::Contains("fallback"));
  }
  auto with_fallback = p.with_config(R"({"fallback": {"input_per_mtok": 5, "output_per_mtok": 15}})");
  auto c = with_fallback->cost("my-llama-70b", io(1'000'000, 0));
  CHECK(c.fallback);
  CHECK(c.total.to_string() == "5");
  CHECK_FALSE(with_fallback->cost("gpt-4o", io(1, 0)).fallback);
}

TEST_CASE("model names resolve through prefixes and snapshot dates", "[pricing]") {
  const Pricing& p = shipped();
  CHECK(p.resolve("gpt-4o") == std::string("gpt-4o"));
  CHECK(p.resolve("openai/gpt-4o") == std::string("gpt-4o"));
  CHECK(p.resolve("gpt-4o-2024-08-06") == std::string("gpt-4o-2024-08-06"));  // a snapshot with its own entry
  CHECK(p.resolve("claude-opus-4-1-20250805") == std::string("claude-opus-4-1"));  // one without: the date goes
  CHECK(p.resolve("anthropic/claude-opus-4-1-20250805") == std::string("claude-opus-4-1"));
  CHECK(p.resolve("gemini-2.5-pro") == std::string("gemini/gemini-2.5-pro"));
  CHECK(p.resolve("mistral-large-latest") == std::string("mistral/mistral-large-latest"));
  CHECK(p.resolve("claude-3-5-haiku") == std::string("claude-3-5-haiku-20241022"));
  CHECK(p.resolve("claude-3-5-haiku-latest") == std::string("claude-3-5-haiku-20241022"));
  CHECK_FALSE(p.resolve("gpt-99"));
  CHECK_FALSE(p.resolve("llama-3.3"));
}

TEST_CASE("sums of a million tiny costs are exact", "[pricing]") {
  const Pricing& p = shipped();
  CostQuery q = io(3, 1);
  q.cached_input_tokens = 1;
  Money sum;
  double float_sum = 0;
  for (int i = 0; i < 1'000'000; ++i) {
    auto c = p.cost("gpt-5-nano", q);  // 2 × $0.05/M + 1 × $0.005/M + 1 × $0.40/M
    sum += c.total;
    float_sum += c.total.usd();
  }
  CHECK(sum.to_string() == "0.505");
  CHECK(sum == p.cost("gpt-5-nano", [] {
                  CostQuery big = io(3'000'000, 1'000'000);
                  big.cached_input_tokens = 1'000'000;
                  return big;
                }()).total);
  CHECK(float_sum != 0.505);  // what floats would have reported
}

TEST_CASE("a LiteLLM-schema file loads as is", "[pricing]") {
  auto p = Pricing::from_json(kLiteLLM);
  CHECK(p->models() == std::vector<std::string>{"acme/big-model", "acme/small-model"});
  CHECK(p->skipped_entries() == 1);  // the image model (sample_spec is LiteLLM's schema doc)
  const auto& m = p->entry("big-model");
  CHECK(m.base.input == 1'000'000);
  CHECK(m.tiers.size() == 2);
  CHECK(m.tiers[0].above_tokens == 128'000);
  CHECK(m.max_output_tokens == 8192u);  // legacy max_tokens
  CHECK(p->max_input_tokens("acme/big-model") == 2'000'000u);
  CostQuery q = io(100, 0);
  q.batch = true;
  CHECK(p->cost("acme/big-model", q).input.pico() == 100 * 400'000);
  CHECK_THROWS_AS(Pricing::from_json("[1, 2]"), Error);
  CHECK_THROWS_AS(Pricing::from_json("{not json"), Error);
}

TEST_CASE("tokenlane configs add models, patch prices, alias, and fall back", "[pricing][config]") {
  auto base = Pricing::from_json(kLiteLLM);
  auto p = base->with_config(R"({
    "models": {
      "my-llama": {"input_per_mtok": 0.2, "output_per_mtok": "0.6", "provider": "self_hosted",
                   "max_output_tokens": 4096,
                   "long_context": [{"above_tokens": 32000, "input_per_mtok": 0.4}]},
      "big-model": {"output_per_mtok": 5}
    },
    "aliases": {"prod-chat": "my-llama"}
  })");
  CHECK(p->cost("my-llama", io(10'000, 10'000)).total.to_string() == "0.008");
  CHECK(p->cost("prod-chat", io(1'000'000, 0)).total.to_string() == "0.4");  // over 32k: tier
  CHECK(p->provider("my-llama") == "self_hosted");
  CHECK(p->max_output_tokens("prod-chat") == 4096u);
  // The patch changed only the output price of acme/big-model; the base table is untouched.
  CHECK(p->cost("acme/big-model", io(100'000, 100'000)).total.to_string() == "0.6");
  CHECK(base->cost("acme/big-model", io(100'000, 100'000)).total.to_string() == "0.5");
  CHECK_THROWS_WITH(base->with_config(R"({"models": {"x": {"input_per_mtoken": 1}}})"), Catch::Contains("input_per_mtoken"));
  CHECK_THROWS_WITH(base->with_config(R"({"models": {"x": {"input_per_mtok": 1}}})"), Catch::Contains("output_per_mtok"));
  CHECK_THROWS_WITH(base->with_config(R"({"aliases": {"x": "nope"}})"), Catch::Contains("nope"));

  // Loading a config: "extends" picks the base ("default" = Options::default_table_path).
  Pricing::Options options;
  options.default_table_path = default_table();
  auto extended = Pricing::from_json(R"({"models": {"my-llama": {"input_per_mtok": 0.2, "output_per_mtok": 0.6}}})", options);
  CHECK(extended->resolve("gpt-4o"));
  CHECK(extended->resolve("my-llama"));
  auto alone = Pricing::from_json(R"({"extends": "none", "models": {"m": {"input_per_mtok": 1, "output_per_mtok": 2}}})", options);
  CHECK(alone->models() == std::vector<std::string>{"m"});
  auto from_path = Pricing::from_json(R"({"extends": "prices.json", "models": {}})", Pricing::Options{},
                                      std::string(TOKENLANE_SOURCE_DIR) + "/python/tokenlane/data");
  CHECK(from_path->resolve("claude-opus-4-1"));
}

TEST_CASE("inconsistent counts are refused", "[pricing]") {
  const Pricing& p = shipped();
  CostQuery q = io(10, 0);
  q.cached_input_tokens = 8;
  q.cache_write_tokens = 3;
  CHECK_THROWS_WITH(p.cost("claude-haiku-4-5", q), Catch::Contains("exceed input_tokens"));
  CHECK_THROWS_AS(p.cost_of_usage("gpt-4o", R"({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 6}})"),
                  Error);
}
