// Chat counting on arbitrary JSON: a count or tokenlane::Error(invalid_argument), nothing else.
#include <cstdlib>

#include "fuzz_encodings.hpp"
#include "fuzz_support.hpp"
#include "tokenlane/chat.hpp"
#include "tokenlane/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static constexpr std::string_view kModels[] = {"gpt-4o", "gpt-3.5-turbo-0301", "gpt-4", "gpt-4o-mini"};
  const auto [selector, json] = fuzz::split(data, size);
  const std::string_view model = kModels[selector % 4];
  try {
    tokenlane::count_chat_tokens(fuzz::encoding(selector / 4), json, model);
  } catch (const tokenlane::Error& e) {
    if (e.code() != tokenlane::ErrorCode::invalid_argument) std::abort();
  }
  return 0;
}
