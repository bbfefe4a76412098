// tokenlane/chat.hpp — the input tokens of an OpenAI chat request, counted the way OpenAI bills them.
//
// A chat request is more than its message texts: every message costs a fixed overhead, a `name`
// costs one more token, the reply is primed with three tokens, and tool definitions are rendered
// into the prompt. The constants are the ones OpenAI documents in its cookbook ("How to count tokens
// with tiktoken", "num_tokens_for_tools"); they match the API's `usage.prompt_tokens` for the
// gpt-3.5/4/4o families.
//
//   auto enc = tokenlane::get_encoding("o200k_base");
//   std::size_t n = tokenlane::count_chat_tokens(*enc,
//       R"({"messages": [{"role": "user", "content": "Hi"}]})", "gpt-4o");  // 8
//
// Images in content parts are not measured (their size is unknown before download); each counts as
// kImageTokensLow or kImageTokensDefault, a documented estimate, not an exact figure.
#pragma once

#include <cstddef>
#include <string_view>

#include "tokenlane/tokenizer.hpp"

namespace tokenlane {

inline constexpr std::size_t kImageTokensLow = 85;       // detail "low": OpenAI's fixed price
inline constexpr std::size_t kImageTokensDefault = 765;  // detail "high"/"auto": a 1024x1024 image

// Counts a chat request: `request_json` is either the request body (an object with "messages" and
// optionally "tools" or "functions") or a bare JSON array of messages. `model` selects the
// per-message overhead (gpt-3.5-turbo-0301 differs) and the tool-rendering constants.
// Throws Error(invalid_argument) with the JSON path of the problem when the shape is wrong.
std::size_t count_chat_tokens(const Encoding& encoding, std::string_view request_json,
                              std::string_view model);

// The fixed costs of a chat request's framing for `model`: what count_chat_tokens adds to the
// tokens of the message fields themselves (the middleware's fast path, tokenlane/prepare.hpp,
// counts plain messages with these and must agree with count_chat_tokens).
struct ChatFraming {
  long per_message;    // every message
  long per_name;       // a message with a "name" field
  long reply_priming;  // once per request
};
ChatFraming chat_framing(const Encoding& encoding, std::string_view model);

// The tokens of a request's tool definitions alone: `tools_json` is the JSON array of its "tools"
// (what count_chat_tokens adds for them). Throws Error(invalid_argument) naming tools[i].
std::size_t count_chat_tools(const Encoding& encoding, std::string_view tools_json, std::string_view model);

}  // namespace tokenlane
