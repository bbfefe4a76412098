// Chat requests are counted with OpenAI's documented overheads.
#include <catch2/catch.hpp>

#include "tokenlane/chat.hpp"

TEST_CASE("chat overheads follow OpenAI's rules", "[chat]") {
  auto enc = tokenlane::get_encoding("o200k_base");
  const std::size_t user = enc->count("user"), hi = enc->count("Hi");
  SECTION("per message, reply priming") {
    CHECK(tokenlane::count_chat_tokens(*enc, R"([{"role": "user", "content": "Hi"}])", "gpt-4o") ==
          3 + user + hi + 3);
  }
  SECTION("a name costs one more token") {
    CHECK(tokenlane::count_chat_tokens(
              *enc, R"({"messages": [{"role": "user", "name": "bob", "content": "Hi"}]})", "gpt-4o") ==
          3 + user + hi + enc->count("bob") + 1 + 3);
  }
  SECTION("tools add their rendered definitions") {
    const char* body = R"({"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function",
        "function": {"name": "get_weather", "description": "Get the weather.", "parameters": {"type": "object",
        "properties": {"unit": {"type": "string", "description": "Unit", "enum": ["c", "f"]}}}}}]})";
    std::size_t tools = 7 + enc->count("get_weather:Get the weather") + 3 + 3 - 3 + 3 + enc->count("c") + 3 +
                        enc->count("f") + enc->count("unit:string:Unit") + 12;
    CHECK(tokenlane::count_chat_tokens(*enc, body, "gpt-4o") == 3 + user + hi + 3 + tools);
  }
  SECTION("malformed requests name what is wrong") {
    CHECK_THROWS_WITH(tokenlane::count_chat_tokens(*enc, "{", "gpt-4o"), Catch::Contains("not valid JSON"));
    CHECK_THROWS_WITH(tokenlane::count_chat_tokens(*enc, R"({"messages": [{"content": "x"}]})", "gpt-4o"),
                      Catch::Contains("messages[0]"));
  }
}
