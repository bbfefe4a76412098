// Shared helpers of the libFuzzer targets: splitting an input into a selector byte and a payload,
// and loading the encodings once per process (from $TOKENLANE_VOCAB_DIR, as the tests do).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "tokenlane/tokenizer.hpp"

namespace fuzz {

// The first byte picks a variant (encoding, model, provider); the rest is the payload.
struct Split {
  std::uint8_t selector = 0;
  std::string_view payload;
};

inline Split split(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return {};
  return {data[0], std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1)};
}

inline const tokenlane::Encoding& encoding(std::uint8_t selector) {
  static const std::shared_ptr<const tokenlane::Encoding> all[] = {
      tokenlane::get_encoding("o200k_base"), tokenlane::get_encoding("cl100k_base"),
      tokenlane::get_encoding("p50k_base"), tokenlane::get_encoding("r50k_base")};
  return *all[selector % 4];
}

}  // namespace fuzz
