// encode / count / decode on arbitrary bytes (invalid UTF-8 included): no crash, count equals the
// encoded length, and decoding gives the input back byte for byte.
#include <cstdlib>
#include <string>

#include "fuzz_encodings.hpp"
#include "fuzz_support.hpp"
#include "tokenlane/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto [selector, text] = fuzz::split(data, size);
  const auto& enc = fuzz::encoding(selector);

  const auto ids = enc.encode_ordinary(text);
  if (enc.count(text) != ids.size()) std::abort();
  if (enc.decode_bytes(ids) != text) std::abort();

  // Special tokens allowed: the text may now contain control tokens, and still round-trips.
  const auto& specials = enc.special_token_strings();
  const auto with_specials = enc.encode(text, specials);
  if (enc.count(text, specials) != with_specials.size()) std::abort();
  if (enc.decode_bytes(with_specials) != text) std::abort();

  try {
    enc.check_disallowed_special(text, specials);
  } catch (const tokenlane::Error& e) {
    if (e.code() != tokenlane::ErrorCode::disallowed_special) std::abort();
  }
  return 0;
}
