// The middleware's fast path agrees with the general path: count_chat_tokens on the body,
// Estimator::estimate on the flattened prompt, Pricing::cost.
#include <catch2/catch.hpp>

#include "tokenlane/chat.hpp"
#include "tokenlane/prepare.hpp"

using namespace tokenlane;

namespace {
std::shared_ptr<const Pricing> table() {
  static auto p = Pricing::from_file(std::string(TOKENLANE_SOURCE_DIR) + "/python/tokenlane/data/prices.json");
  return p;
}
}  // namespace

TEST_CASE("prepare_chat counts, estimates and prices as the general path does", "[prepare]") {
  auto enc = get_encoding("o200k_base");
  HeuristicEstimator est;
  PlainChat chat;
  chat.add({{"role", "system"}, {"content", "You are terse."}});
  chat.add({{"role", "user"}, {"name", "bob"}, {"content", "Explain BPE in one line, please."}});
  const char* body = R"({"messages": [{"role": "system", "content": "You are terse."},
      {"role": "user", "name": "bob", "content": "Explain BPE in one line, please."}]})";
  PrepareQuery q{"gpt-4o-mini", "/chat", "acme", 100, 2, 4096};
  auto p = prepare_chat(*enc, est, *table(), chat, q);

  CHECK(p->input_tokens == count_chat_tokens(*enc, body, "gpt-4o-mini"));
  CHECK(p->prompt == std::string("system\x1fYou are terse.\x1euser\x1f") + "Explain BPE in one line, please.");
  REQUIRE(p->priced);
  CHECK(p->max_output == 100);  // the request's cap, below the model's
  EstimateQuery eq;
  eq.prompt = p->prompt;
  eq.model = "gpt-4o-mini";
  eq.max_tokens = 100;
  eq.model_max_output = table()->max_output_tokens("gpt-4o-mini");
  eq.input_tokens = p->input_tokens;
  eq.route = "/chat";
  eq.tenant = "acme";
  const Estimate e = est.estimate(eq);
  CHECK(p->estimate.p50 == e.p50);
  CHECK(p->estimate.p90 == e.p90);
  CostQuery c;
  c.input_tokens = p->input_tokens;
  c.output_tokens = e.p90 * 2;  // both completions
  CHECK(p->cost_p90 == table()->cost("gpt-4o-mini", c).total.pico());
  c.output_tokens = 200;
  CHECK(p->cost_max == table()->cost("gpt-4o-mini", c).total.pico());
}

TEST_CASE("prepare_chat leaves a model without a price unpriced", "[prepare]") {
  auto enc = get_encoding("o200k_base");
  HeuristicEstimator est;
  PlainChat chat;
  chat.add({{"role", "user"}, {"content", "Hi"}});
  auto p = prepare_chat(*enc, est, *table(), chat, {"no-such-model", "", "", std::nullopt, 1, 4096});
  CHECK_FALSE(p->priced);
  CHECK(p->input_tokens == count_chat_tokens(*enc, R"([{"role": "user", "content": "Hi"}])", "no-such-model"));
}

TEST_CASE("BackgroundObserver teaches the estimator on its own thread, as observe does", "[prepare]") {
  auto enc = get_encoding("o200k_base");
  auto taught = std::make_shared<HistoryEstimator>();
  HistoryEstimator direct;
  PlainChat chat;
  chat.add({{"role", "user"}, {"content", "Summarise the quarterly report."}});
  auto p = prepare_chat(*enc, *taught, *table(), chat, {"gpt-4o-mini", "/sum", "acme", std::nullopt, 1, 4096});
  BackgroundObserver observer(taught);
  EstimateQuery q;
  q.prompt = p->prompt;
  q.model = "gpt-4o-mini";
  q.input_tokens = p->input_tokens;
  q.route = "/sum";
  q.tenant = "acme";
  for (std::uint64_t out : {321, 280, 400, 350}) {
    observer.observe(p, out, false);
    direct.observe(q, out);
  }
  observer.flush();
  CHECK(taught->to_json() == direct.to_json());
  CHECK(observer.dropped() == 0);
}

TEST_CASE("prepare_chat gives the prompt-cache prediction its last message and prefix", "[prepare]") {
  auto enc = get_encoding("o200k_base");
  HeuristicEstimator est;
  const PrepareQuery q{"gpt-4o", "/chat", "acme", std::nullopt, 1, 4096};
  auto chat = [](std::string_view first, std::string_view last) {
    PlainChat c;
    c.add({{"role", "system"}, {"content", first}});
    c.add({{"role", "user"}, {"content", last}});
    return c;
  };
  auto a = prepare_chat(*enc, est, *table(), chat("Be terse.", "Why?"), q);
  auto b = prepare_chat(*enc, est, *table(), chat("Be terse.", "How?"), q);
  auto c = prepare_chat(*enc, est, *table(), chat("Be verbose.", "Why?"), q);
  CHECK(a->last_message_tokens == count_chat_tokens(*enc, R"([{"role": "user", "content": "Why?"}])", "gpt-4o"));
  CHECK(a->prefix_hash != 0);
  CHECK(a->prefix_hash == b->prefix_hash);  // the same prefix, another last turn
  CHECK(a->prefix_hash != c->prefix_hash);
  PlainChat one;
  one.add({{"role", "user"}, {"content", "Why?"}});
  auto d = prepare_chat(*enc, est, *table(), one, q);
  CHECK(d->prefix_hash == 0);
  CHECK(d->last_message_tokens == d->input_tokens);
}

TEST_CASE("prepare_chat takes a content given as text parts", "[prepare]") {
  auto enc = get_encoding("o200k_base");
  HeuristicEstimator est;
  PlainChat chat;
  chat.fields.push_back({"role", "user"});
  chat.fields.push_back({"content", "Hello", true});
  chat.fields.push_back({"content", "", true});
  chat.fields.push_back({"content", "world", true});
  chat.end_message();
  auto p = prepare_chat(*enc, est, *table(), chat, {"gpt-4o", "", "", std::nullopt, 1, 4096});
  CHECK(p->input_tokens == count_chat_tokens(*enc, R"([{"role": "user", "content": [{"type": "text", "text": "Hello"},
      {"type": "text", "text": ""}, {"type": "text", "text": "world"}]}])", "gpt-4o"));
  CHECK(p->prompt == "user\x1fHello\nworld");  // as the estimators' flattening joins text parts
}

TEST_CASE("prepare_chat counts tool definitions and tool calls as count_chat_tokens does", "[prepare]") {
  auto enc = get_encoding("o200k_base");
  HeuristicEstimator est;
  const char* tools = R"([{"type": "function", "function": {"name": "get_weather", "description": "Now.",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])";
  PlainChat chat;
  chat.add({{"role", "user"}, {"content", "Weather?"}});
  chat.fields.push_back({"role", "assistant"});
  chat.fields.push_back({"tool_calls", "get_weather", true});
  chat.fields.push_back({"tool_calls", R"({"city": "Paris"})", true});
  chat.end_message();
  PrepareQuery q{"gpt-4o", "", "", std::nullopt, 1, 4096};
  q.tools_json = tools;
  auto p = prepare_chat(*enc, est, *table(), chat, q);
  const std::string body = std::string(R"({"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant",
      "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather",
      "arguments": "{\"city\": \"Paris\"}"}}]}], "tools": )") + tools + "}";
  CHECK(p->input_tokens == count_chat_tokens(*enc, body, "gpt-4o"));
  CHECK(p->prompt == "user\x1fWeather?\x1e" "assistant\x1f");
}
