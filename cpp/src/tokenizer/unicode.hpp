// Internal: UTF-8 decoding and the character classes of tiktoken's split patterns.
#pragma once

#include <cstddef>
#include <cstdint>

#include "inlining.hpp"

namespace tokenlane::detail {

// Class flags per code point (generated into unicode_data.cpp by scripts/gen_unicode_tables.py).
enum : std::uint8_t {
  kLetter = 1,     // \p{L}
  kNumber = 2,     // \p{N}
  kSpace = 4,      // \s (White_Space)
  kMark = 8,       // \p{M}
  kUpperish = 16,  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]  (o200k)
  kLowerish = 32,  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]        (o200k)
};

extern const std::uint16_t kClassStage1[];
extern const std::uint8_t kClassStage2[];

// Flags of ASCII characters, computed once; the hot path never leaves this table for ASCII text.
struct AsciiClasses {
  std::uint8_t flags[128];
  constexpr AsciiClasses() : flags() {
    for (int c = 0; c < 128; ++c) {
      std::uint8_t f = 0;
      if ((c >= 'a' && c <= 'z')) f = kLetter | kLowerish;
      if ((c >= 'A' && c <= 'Z')) f = kLetter | kUpperish;
      if (c >= '0' && c <= '9') f = kNumber;
      if (c == ' ' || (c >= 0x09 && c <= 0x0D)) f = kSpace;
      flags[c] = f;
    }
  }
};
inline constexpr AsciiClasses kAscii{};

inline std::uint8_t class_of(std::uint32_t cp) {
  if (cp < 128) return kAscii.flags[cp];
  if (cp >= 0x110000) return 0;
  return kClassStage2[(static_cast<std::uint32_t>(kClassStage1[cp >> 7]) << 7) | (cp & 127)];
}


// A decoded character: its code point, its byte length and its class flags.
struct Char {
  std::uint32_t cp;
  std::uint32_t len;
  std::uint8_t cls;
};

// Decodes the character at p (p < end). Invalid or truncated sequences decode as one byte with no
// class (they behave like punctuation), so arbitrary bytes never crash the pre-tokenizer.
inline Char decode_char(const unsigned char* p, const unsigned char* end) {
  unsigned char b = p[0];
  if (b < 0x80) return {b, 1, kAscii.flags[b]};
  std::size_t avail = static_cast<std::size_t>(end - p);
  std::uint32_t cp;
  std::uint32_t len;
  if ((b & 0xE0) == 0xC0 && b >= 0xC2) {
    cp = b & 0x1F;
    len = 2;
  } else if ((b & 0xF0) == 0xE0) {
    cp = b & 0x0F;
    len = 3;
  } else if ((b & 0xF8) == 0xF0 && b <= 0xF4) {
    cp = b & 0x07;
    len = 4;
  } else {
    return {0xFFFD, 1, 0};
  }
  if (avail < len) return {0xFFFD, 1, 0};
  for (std::uint32_t i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return {0xFFFD, 1, 0};
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  return {cp, len, class_of(cp)};
}

}  // namespace tokenlane::detail
