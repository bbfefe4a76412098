// Shared helper of the libFuzzer targets: splitting an input into a selector byte and a payload.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

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

}  // namespace fuzz
