// Internal: hand-written pre-tokenizers, one per tiktoken split pattern.
//
// Each function walks UTF-8 text once and calls sink(begin, end) for every piece the corresponding
// regex (tiktoken 0.14, `tiktoken_ext/openai_public.py`) would match, in order. The comments quote
// the regex alternative each branch implements; the order of the branches is the order of the
// alternatives, because the regex engine takes the first alternative that matches.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TOKENLANE_WINDOW_DISPATCH 1  // wider window classifiers, chosen at run time (classify64)
#include <immintrin.h>
#endif

#include "tokenlane/tokenizer.hpp"
#include "unicode.hpp"

// The general (any Unicode) paths are kept out of line (TOKENLANE_NOINLINE), so that the hot ASCII
// loops stay small.

namespace tokenlane::detail {

class Cursor {
 public:
  Cursor(const unsigned char* s, std::size_t n) : s_(s), n_(n) {}
  std::size_t size() const { return n_; }
  Char at(std::size_t i) const { return decode_char(s_ + i, s_ + n_); }
  unsigned char byte(std::size_t i) const { return s_[i]; }

  // The class flags and byte length of the character at i (i < size()), as at(i) gives them: two-
  // and three-byte characters (most non-Latin scripts) are decoded inline, the rest out of line.
  TOKENLANE_ALWAYS_INLINE std::uint8_t class_at(std::size_t i, std::uint32_t& len) const {
    const unsigned char b = s_[i];
    if (b < 0x80) {
      len = 1;
      return kAscii.flags[b];
    }
    if (b >= 0xC2 && b < 0xE0 && i + 1 < n_ && (s_[i + 1] & 0xC0) == 0x80) {
      len = 2;
      return class_of((std::uint32_t{b} & 0x1F) << 6 | (s_[i + 1] & 0x3F));
    }
    if ((b & 0xF0) == 0xE0 && i + 2 < n_ && (s_[i + 1] & 0xC0) == 0x80 && (s_[i + 2] & 0xC0) == 0x80) {
      len = 3;
      return class_of((std::uint32_t{b} & 0x0F) << 12 | (s_[i + 1] & 0x3Fu) << 6 | (s_[i + 2] & 0x3F));
    }
    const Char c = at(i);
    len = c.len;
    return c.cls;
  }

  // End of the run of characters starting at i whose flags intersect `any`.
  std::size_t run_end(std::size_t i, std::uint8_t any) const {
    while (i < n_) {
      std::uint32_t len;
      if (!(class_at(i, len) & any)) break;
      i += len;
    }
    return i;
  }
  // End of the run of "punctuation" ([^\s\p{L}\p{N}]) starting at i.
  std::size_t punct_end(std::size_t i) const {
    while (i < n_) {
      std::uint32_t len;
      if (class_at(i, len) & (kLetter | kNumber | kSpace)) break;
      i += len;
    }
    return i;
  }
  // End of at most `max` characters of class `cls` starting at i.
  std::size_t bounded_run_end(std::size_t i, std::uint8_t cls, int max) const {
    for (int k = 0; k < max && i < n_; ++k) {
      Char c = at(i);
      if (!(c.cls & cls)) break;
      i += c.len;
    }
    return i;
  }
  // End of a run of bytes from `set` (ASCII only) starting at i.
  std::size_t ascii_run_end(std::size_t i, const char* set) const {
    for (; i < n_; ++i) {
      bool in = false;
      for (const char* p = set; *p; ++p) in |= (s_[i] == static_cast<unsigned char>(*p));
      if (!in) break;
    }
    return i;
  }

  // Facts about the whitespace run starting at i: where it ends, where its last character starts,
  // and where its last \r or \n is (npos if none).
  struct SpaceRun {
    std::size_t end, last_char, last_newline;
  };
  SpaceRun space_run(std::size_t i) const {
    SpaceRun r{i, i, npos};
    while (r.end < n_) {
      Char c = at(r.end);
      if (!(c.cls & kSpace)) break;
      if (c.cp == '\r' || c.cp == '\n') r.last_newline = r.end;
      r.last_char = r.end;
      r.end += c.len;
    }
    return r;
  }

  // Length of a contraction suffix after an apostrophe at i ("s", "t", "ll", "ve", ...), or 0.
  // `fold` applies (?i) with Unicode simple case folding, where U+017F (long s) matches 's'.
  std::size_t contraction(std::size_t i, bool fold) const {
    if (i >= n_) return 0;
    unsigned char a = s_[i];
    if (fold && a == 0xC5 && i + 1 < n_ && s_[i + 1] == 0xBF) return 2;  // U+017F
    if (fold && a < 0x80) a = static_cast<unsigned char>(a | 0x20 * (a >= 'A' && a <= 'Z'));
    if (a == 's' || a == 'd' || a == 'm' || a == 't') return 1;
    if (i + 1 >= n_) return 0;
    unsigned char b = s_[i + 1];
    if (fold) b = static_cast<unsigned char>(b | 0x20 * (b >= 'A' && b <= 'Z'));
    if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return 2;
    return 0;
  }

  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

 private:
  const unsigned char* s_;
  std::size_t n_;
};

inline bool is_ascii_letter(unsigned char b) { return static_cast<unsigned char>((b | 0x20) - 'a') < 26; }
inline bool is_newline(std::uint32_t cp) { return cp == '\r' || cp == '\n'; }
inline bool is_punct(const Char& c) { return !(c.cls & (kLetter | kNumber | kSpace)); }

// A sink is called as sink(begin, end) for every piece. The cl100k and o200k pre-tokenizers also
// tell it which pieces are ASCII digits, when it asks (a sink with these members; a plain lambda
// gets every piece the usual way):
//   sink.digits(b, e)     one piece of one to three ASCII digits;
//   sink.digit_run(b, e)  ASCII digits that are pieces of three from b, the last one to three long.
// They are told where the piece is cut, so that no other kind of piece pays a test for digits.
template <class Sink, class = void>
struct WantsDigits : std::false_type {};
template <class Sink>
struct WantsDigits<Sink, std::void_t<decltype(std::declval<Sink&>().digits(std::size_t{}, std::size_t{})),
                                     decltype(std::declval<Sink&>().digit_run(std::size_t{}, std::size_t{}))>>
    : std::true_type {};
template <class Sink>
inline constexpr bool wants_digits = WantsDigits<std::remove_reference_t<Sink>>::value;

template <class Sink>
TOKENLANE_ALWAYS_INLINE void emit_digit_run(Sink& sink, std::size_t b, std::size_t e) {
  if constexpr (wants_digits<Sink>) {
    sink.digit_run(b, e);
  } else {
    for (; b + 3 < e; b += 3) sink(b, b + 3);
    sink(b, e);
  }
}

// The whitespace alternatives shared by all patterns, starting at a whitespace character:
//   [cl100k/gpt2] \s++$ | [cl100k] \s*[\r\n] | [o200k] \s*[\r\n]+ | \s+(?!\S) | \s
// (For o200k, `\s*[\r\n]+` precedes `\s+(?!\S)` and there is no `\s++$`; a run that reaches the end
// of text is still matched whole by `\s+(?!\S)`, and the two newline forms end at the same place.)
inline std::size_t whitespace_piece_end(const Cursor& t, std::size_t i, bool end_first,
                                        bool newline_rule) {
  Cursor::SpaceRun r = t.space_run(i);
  if (end_first && r.end == t.size()) return r.end;
  if (newline_rule && r.last_newline != Cursor::npos) return r.last_newline + 1;
  if (r.end == t.size()) return r.end;
  if (r.last_char > i) return r.last_char;
  return i + t.at(i).len;
}

// What one byte says about the piece it is in, for the ASCII fast paths below (derived from kAscii,
// so the two tables cannot disagree). Every non-ASCII byte is kHigh: the general path decides.
enum ByteKind : std::uint8_t { kbLower, kbUpper, kbDigit, kbSpace, kbOtherSpace, kbNewline, kbPunct, kbHigh, kbEnd };
struct ByteKinds {
  std::uint8_t of[256];
  constexpr ByteKinds() : of() {
    for (int b = 0; b < 256; ++b) {
      std::uint8_t f = b < 128 ? kAscii.flags[b] : 0;
      std::uint8_t k = kbPunct;
      if (b >= 128) k = kbHigh;
      else if (f & kLowerish) k = kbLower;
      else if (f & kUpperish) k = kbUpper;
      else if (f & kNumber) k = kbDigit;
      else if (b == ' ') k = kbSpace;
      else if (b == '\r' || b == '\n') k = kbNewline;
      else if (f & kSpace) k = kbOtherSpace;
      of[b] = k;
    }
  }
};
inline constexpr ByteKinds kByteKind{};

// The ASCII fast paths return the end of the piece starting at i when every byte that decides it is
// ASCII, else npos (the general path, which handles every case, then decides). They cover the same
// alternatives in the same order as the general paths, specialised to ASCII classes.
struct AsciiScan {
  const unsigned char* s;
  std::size_t n;
  std::uint8_t kind(std::size_t i) const { return i < n ? kByteKind.of[s[i]] : std::uint8_t{kbEnd}; }
  std::size_t run(std::size_t i, std::uint8_t k) const {
    while (i < n && kByteKind.of[s[i]] == k) ++i;
    return i;
  }
  // End of the run of bytes in [lo, hi] (ASCII) starting at i. Eight bytes at a time (SWAR): the run
  // end comes from a bit scan instead of a per-byte loop, whose exit branch mispredicts once per piece.
  static constexpr std::uint64_t kOnes = 0x0101010101010101ull, kHighBits = 0x80 * kOnes;
  // The high bit of each byte of w that is not in [lo, hi] (ASCII), the others clear.
  template <unsigned char lo, unsigned char hi>
  static std::uint64_t outside(std::uint64_t w) {
    const std::uint64_t low7 = w & ~kHighBits;                 // lanes cannot carry
    const std::uint64_t ge_lo = low7 + (0x80 - lo) * kOnes;    // high bit: byte >= lo
    const std::uint64_t gt_hi = low7 + (0x7F - hi) * kOnes;    // high bit: byte > hi
    return ~(ge_lo & ~gt_hi & ~w) & kHighBits;
  }
  template <unsigned char lo, unsigned char hi>
  std::size_t range_run(std::size_t i) const {
    for (; i + 8 <= n; i += 8) {
      std::uint64_t w;
      std::memcpy(&w, s + i, 8);
      if (const std::uint64_t out = outside<lo, hi>(w)) return i + static_cast<std::size_t>(__builtin_ctzll(out) >> 3);
    }
    while (i < n && s[i] >= lo && s[i] <= hi) ++i;
    return i;
  }
  // End of the run of ASCII letters (either case) starting at i.
  std::size_t letter_run(std::size_t i) const {
    for (; i + 8 <= n; i += 8) {
      std::uint64_t w;
      std::memcpy(&w, s + i, 8);
      // Setting bit 5 maps A-Z onto a-z and no other ASCII byte into a-z.
      if (const std::uint64_t out = outside<'a', 'z'>(w | 0x20 * kOnes)) {
        return i + static_cast<std::size_t>(__builtin_ctzll(out) >> 3);
      }
    }
    while (i < n && kByteKind.of[s[i]] <= kbUpper) ++i;
    return i;
  }
  // End of [A-Z]*[a-z]* starting at j: both runs from one load when they end within 8 bytes.
  std::size_t case_run(std::size_t j) const {
    if (j + 8 <= n) {
      std::uint64_t w;
      std::memcpy(&w, s + j, 8);
      const std::uint64_t not_upper = outside<'A', 'Z'>(w);
      if (not_upper != 0) {
        const int upper_bytes = __builtin_ctzll(not_upper) >> 3;
        const std::uint64_t not_lower = outside<'a', 'z'>(w) & (~std::uint64_t{0} << (8 * upper_bytes));
        if (not_lower != 0) return j + static_cast<std::size_t>(__builtin_ctzll(not_lower) >> 3);
        return range_run<'a', 'z'>(j + 8);
      }
    }
    return range_run<'a', 'z'>(range_run<'A', 'Z'>(j));
  }
  bool high(std::size_t i) const { return i < n && s[i] >= 0x80; }
  // The digit pieces (\p{N}{1,3}) of the run of ASCII digits starting at i, passed to sink; returns
  // where they end, or npos when none is certain (a run of one or two digits before a non-ASCII
  // byte, which may be a number that joins the piece). Before a non-ASCII byte only whole triples
  // are emitted and the rest is left to the general path.
  template <class Sink>
  std::size_t digit_run(std::size_t i, Sink& sink) const {
    std::size_t e = range_run<'0', '9'>(i);
    if (high(e)) {
      e = i + (e - i) / 3 * 3;
      if (e == i) return Cursor::npos;
    }
    emit_digit_run(sink, i, e);
    return e;
  }
  // \p{N}{1,3} over ASCII digits starting at i.
  std::size_t digits(std::size_t i) const {
    std::size_t e = i + 1;
    if (kind(e) == kbDigit && kind(++e) == kbDigit) return e + 1;
    return high(e) ? Cursor::npos : e;  // a non-ASCII digit may follow
  }
  // [^\s\p{L}\p{N}]+ then any run of the `tail` bytes, over ASCII, starting at p.
  std::size_t punct(std::size_t p, bool slash) const {
    std::size_t e = run(p, kbPunct);
    if (high(e)) return Cursor::npos;
    while (e < n && (s[e] == '\n' || s[e] == '\r' || (slash && s[e] == '/'))) ++e;
    return e;
  }
  // How many bytes after i are spaces, in whole blocks of 8 (the rest goes byte by byte).
  std::size_t spaces_after(std::size_t i) const {
    std::size_t e = i + 1;
    for (std::uint64_t w; e + 8 <= n; e += 8) {
      std::memcpy(&w, s + e, 8);
      if (w != 0x2020202020202020ull) break;
    }
    return e - (i + 1);
  }
  // The whitespace alternatives (see whitespace_piece_end) over an ASCII whitespace run at i.
  std::size_t whitespace(std::size_t i, bool end_first) const {
    std::size_t e = i, last_newline = Cursor::npos;
    for (; e < n; ++e) {
      std::uint8_t k = kByteKind.of[s[e]];
      if (k == kbNewline) last_newline = e;
      else if (k == kbSpace) e += spaces_after(e);  // padding and indentation: 8 bytes per compare
      else if (k != kbOtherSpace) break;
    }
    if (high(e)) return Cursor::npos;  // a non-ASCII space may continue the run
    if (end_first && e == n) return e;
    if (last_newline != Cursor::npos) return last_newline + 1;
    if (e == n || e == i + 1) return e;
    return e - 1;
  }
};

// r50k_base / p50k_base:
//   '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
template <class Sink>
void split_gpt2(const unsigned char* s, std::size_t n, Sink&& sink) {
  Cursor t(s, n);
  std::size_t i = 0;
  while (i < n) {
    std::size_t start = i;
    Char c = t.at(i);
    if (c.cp == '\'') {
      if (std::size_t k = t.contraction(i + 1, false)) {
        i += 1 + k;
        sink(start, i);
        continue;
      }
    }
    std::size_t j = i;
    Char d = c;
    if (c.cp == ' ' && i + 1 < n) {
      d = t.at(i + 1);
      if (d.cls & kSpace) d = c;  // " " + whitespace: no optional-space form applies
      else j = i + 1;
    }
    if (d.cls & kLetter) {
      i = t.run_end(j, kLetter);
    } else if (d.cls & kNumber) {
      i = t.run_end(j, kNumber);
    } else if (is_punct(d)) {
      i = t.punct_end(j);
    } else {
      i = whitespace_piece_end(t, i, /*end_first=*/true, /*newline_rule=*/false);
    }
    sink(start, i);
  }
}

// What the ASCII fast paths below return when they have passed the pieces to the sink themselves (a
// run of digits, for a sink that wants_digits): where those pieces end, plus this flag. npos has it
// too, so that the usual path pays one test for both.
inline constexpr std::size_t kEmitted = std::size_t{1} << (8 * sizeof(std::size_t) - 2);

// A piece that starts with an ASCII digit: the whole run for a sink that wants digits, else one
// piece.
template <class Sink>
TOKENLANE_ALWAYS_INLINE std::size_t ascii_digits(const AsciiScan& a, std::size_t i, Sink* sink) {
  if constexpr (wants_digits<Sink>) {
    return a.digit_run(i, *sink) | kEmitted;
  } else {
    (void)sink;
    return a.digits(i);
  }
}

// No sink: the fast paths return one piece at a time.
struct NoSink {};

// cl100k_base, ASCII fast path (see AsciiScan).
template <class Sink = NoSink>
inline std::size_t cl100k_ascii_piece(const Cursor& t, const AsciiScan& a, std::size_t i, Sink* sink = nullptr) {
  const std::uint8_t k0 = a.kind(i), k1 = a.kind(i + 1);
  std::size_t j;  // where the letters start
  if (k0 <= kbUpper) {
    j = i;
  } else if (a.s[i] == '\'' && t.contraction(i + 1, true) != 0) {
    return i + 1 + t.contraction(i + 1, true);  // '(?i:[sdmt]|ll|ve|re)
  } else if ((k0 == kbSpace || k0 == kbOtherSpace || k0 == kbPunct) && k1 <= kbUpper) {
    j = i + 1;  // [^\r\n\p{L}\p{N}]?+\p{L}++
  } else if (k0 == kbDigit) {
    return ascii_digits(a, i, sink);
  } else if (k0 == kbHigh || k1 == kbHigh) {
    return Cursor::npos;  // a non-ASCII letter, number or space may be involved
  } else if (k0 == kbPunct) {
    return a.punct(i, false);
  } else if (k0 == kbSpace && k1 == kbPunct) {
    return a.punct(i + 1, false);
  } else {
    return a.whitespace(i, /*end_first=*/true);
  }
  const std::size_t e = a.letter_run(j);
  return a.high(e) ? Cursor::npos : e;
}

// cl100k_base:
//   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//   |\s++$|\s*[\r\n]|\s+(?!\S)|\s
// The general path: the end of the piece starting at i, for any text.
TOKENLANE_NOINLINE inline std::size_t cl100k_piece_end(const Cursor& t, std::size_t i) {
  const std::size_t n = t.size();
  Char c = t.at(i);
  // '(?i:[sdmt]|ll|ve|re)
  if (c.cp == '\'') {
    if (std::size_t k = t.contraction(i + 1, true)) return i + 1 + k;
  }
  // [^\r\n\p{L}\p{N}]?+\p{L}++
  if (c.cls & kLetter) return t.run_end(i, kLetter);
  const bool prefix = !(c.cls & kNumber) && !is_newline(c.cp);
  if (prefix && i + c.len < n && (t.at(i + c.len).cls & kLetter)) return t.run_end(i + c.len, kLetter);
  // \p{N}{1,3}+
  if (c.cls & kNumber) return t.bounded_run_end(i, kNumber, 3);
  //  ?[^\s\p{L}\p{N}]++[\r\n]*+
  if (is_punct(c)) return t.ascii_run_end(t.punct_end(i), "\r\n");
  if (c.cp == ' ' && i + 1 < n && is_punct(t.at(i + 1))) return t.ascii_run_end(t.punct_end(i + 1), "\r\n");
  // \s++$|\s*[\r\n]|\s+(?!\S)|\s
  return whitespace_piece_end(t, i, /*end_first=*/true, /*newline_rule=*/true);
}

// o200k_base (alternatives joined with |):
//   A  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   B  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   C  \p{N}{1,3}
//   D   ?[^\s\p{L}\p{N}]+[\r\n/]*
//   E  \s*[\r\n]+      F  \s+(?!\S)      G  \s+
class O200kWords {
 public:
  explicit O200kWords(const Cursor& t) : t_(t) {}

  // Where alternative A ends when its case runs start at j (after the optional prefix), or npos.
  // A's upper-case run is greedy; if no lower-case character follows it, the engine backtracks to
  // the last character of the run that is in both classes (Lm, Lo or M) and ends just after it.
  std::size_t a(std::size_t j) const {
    std::size_t k = j;
    std::size_t last_both = Cursor::npos;
    std::uint32_t last_both_len = 0;
    std::uint8_t cls = 0;
    std::uint32_t len = 0;
    while (k < t_.size()) {
      cls = t_.class_at(k, len);
      if (!(cls & kUpperish)) break;
      if (cls & kLowerish) {
        last_both = k;
        last_both_len = len;
      }
      k += len;
    }
    if (k < t_.size() && (cls & kLowerish)) return with_contraction(t_.run_end(k + len, kLowerish));
    if (last_both == Cursor::npos) return Cursor::npos;
    return with_contraction(last_both + last_both_len);
  }
  // Where alternative B ends when its case runs start at j, or npos.
  std::size_t b(std::size_t j) const {
    if (j >= t_.size() || !(t_.at(j).cls & kUpperish)) return Cursor::npos;
    return with_contraction(t_.run_end(t_.run_end(j, kUpperish), kLowerish));
  }

 private:
  std::size_t with_contraction(std::size_t e) const {
    if (e < t_.size() && t_.byte(e) == '\'') {
      if (std::size_t k = t_.contraction(e + 1, true)) return e + 1 + k;
    }
    return e;
  }
  const Cursor& t_;
};

// o200k_base, ASCII fast path (see AsciiScan). An ASCII word is what A (upper* lower+) or else B
// (upper+) match; it goes to the general path when a non-ASCII byte follows it (a letter or mark
// may continue it).
template <class Sink = NoSink>
inline std::size_t o200k_ascii_piece(const Cursor& t, const AsciiScan& a, std::size_t i, Sink* sink = nullptr) {
  const std::uint8_t k0 = a.kind(i), k1 = a.kind(i + 1);
  std::size_t j;  // where the letters start
  if (k0 <= kbUpper) {
    j = i;
  } else if ((k0 == kbSpace || k0 == kbOtherSpace || k0 == kbPunct) && k1 <= kbUpper) {
    j = i + 1;  // the optional [^\r\n\p{L}\p{N}] prefix
  } else if (k0 == kbDigit) {
    return ascii_digits(a, i, sink);
  } else if (k0 == kbHigh || k1 == kbHigh) {
    return Cursor::npos;
  } else if (k0 == kbPunct) {
    return a.punct(i, true);
  } else if (k0 == kbSpace && k1 == kbPunct) {
    return a.punct(i + 1, true);
  } else {
    return a.whitespace(i, /*end_first=*/false);
  }
  std::size_t e = a.case_run(j);
  if (e < a.n) {
    if (a.s[e] >= 0x80) return Cursor::npos;
    if (a.s[e] == '\'') {
      if (std::size_t k = t.contraction(e + 1, true)) e += 1 + k;
    }
  }
  return e;
}


// o200k_base and cl100k_base over 64 bytes at a time ("bit-parallel"): every byte class becomes a
// 64-bit mask (bit k = byte k of the window), and the piece starts of the whole window come from a
// few dozen whole-word operations on the masks instead of a branchy walk per piece, whose dispatch
// on the piece kind mispredicts about once per piece. The rules below restate the regex's
// alternatives over these classes, given that the window starts at a piece start (see
// window_pieces). Only pieces whose boundaries are decided by bytes inside the window are emitted;
// the scalar paths take over at a non-ASCII character the masks do not classify (below: the common
// two- and three-byte letters and multi-byte punctuation), near the end of the text, and at the rare
// patterns the masks do not model.
struct AsciiMasks {
  std::uint64_t lower, upper, digit, newline, space, blank, high, apostrophe, slash, cont, both, number2, tail2;
  // blank: \s other than \r \n (space, \t, \v, \f, and NEL and NBSP: see add_latin1_supplement);
  // space: ' ' only. digit: ASCII digits; number2: the bytes of the two-byte numbers (² ½ ...). high:
  // bytes >= 0x80 except those of the two-byte letters, the three-byte letters, the rest of Latin-1 and
  // the multi-byte punctuation below. cont: the bytes after the first of each multi-byte punctuation
  // character; tail2: the second bytes of two-byte blanks and numbers. both: letters in both case
  // classes (the three-byte letters, ª and º).
};

// Two-byte letters the windows also take (both bytes get the letter's case): U+00C0-U+00FF except
// U+00D7 and U+00F7 (Latin-1 letters: lead 0xC3), U+0400-U+045F (Cyrillic: leads 0xD0, 0xD1 with
// continuation 0x80-0x9F). Lu: U+00C0-U+00DE, U+0400-U+042F; Ll: U+00DF-U+00FF, U+0430-U+045F. The
// masks give, per byte, the lead bytes and the continuation bytes that make such a letter.
struct PairMasks {
  std::uint64_t lead_c3, lead_d0, lead_d1;
  std::uint64_t c3_upper, c3_lower, d0_upper, d0_lower, d1_lower;  // continuation bytes
};
inline void add_two_byte_letters(AsciiMasks& m, const PairMasks& p) {
  const std::uint64_t up = (p.lead_c3 & (p.c3_upper >> 1)) | (p.lead_d0 & (p.d0_upper >> 1));
  const std::uint64_t lo = (p.lead_c3 & (p.c3_lower >> 1)) | (p.lead_d0 & (p.d0_lower >> 1)) |
                           (p.lead_d1 & (p.d1_lower >> 1));
  m.upper |= up | (up << 1);
  m.lower |= lo | (lo << 1);
  m.high &= ~(up | (up << 1) | lo | (lo << 1));
}

// The PairMasks of s[0, 64).
inline PairMasks pair_masks(const unsigned char* s) {
  PairMasks pairs{};
#if defined(__SSE2__)
  auto eq = [](__m128i v, char c) { return _mm_cmpeq_epi8(v, _mm_set1_epi8(c)); };
  auto bits = [](__m128i v) { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm_movemask_epi8(v))); };
  // Continuation bytes 0x80-0xBF are -128..-65 as signed bytes; below(x, b): bytes under b - 256.
  auto below = [](__m128i x, int b) { return _mm_cmplt_epi8(x, _mm_set1_epi8(static_cast<char>(b))); };
  for (int q = 0; q < 4; ++q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * q));
    const int sh = 16 * q;
    const __m128i cont = below(v, 0xC0 - 256);
    const __m128i c3_upper = _mm_andnot_si128(eq(v, static_cast<char>(0x97)), below(v, 0x9F - 256));
    const __m128i c3_lower = _mm_andnot_si128(_mm_or_si128(below(v, 0x9F - 256), eq(v, static_cast<char>(0xB7))), cont);
    pairs.lead_c3 |= bits(eq(v, static_cast<char>(0xC3))) << sh;
    pairs.lead_d0 |= bits(eq(v, static_cast<char>(0xD0))) << sh;
    pairs.lead_d1 |= bits(eq(v, static_cast<char>(0xD1))) << sh;
    pairs.c3_upper |= bits(c3_upper) << sh;
    pairs.c3_lower |= bits(c3_lower) << sh;
    pairs.d0_upper |= bits(below(v, 0xB0 - 256)) << sh;
    pairs.d0_lower |= bits(_mm_andnot_si128(below(v, 0xB0 - 256), cont)) << sh;
    pairs.d1_lower |= bits(below(v, 0xA0 - 256)) << sh;
  }
#else
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t bit = std::uint64_t{1} << k;
    const unsigned char b = s[k];
    if (b == 0xC3) pairs.lead_c3 |= bit;
    if (b == 0xD0) pairs.lead_d0 |= bit;
    if (b == 0xD1) pairs.lead_d1 |= bit;
    if (b >= 0x80 && b <= 0x9E && b != 0x97) pairs.c3_upper |= bit;
    if (b >= 0x9F && b <= 0xBF && b != 0xB7) pairs.c3_lower |= bit;
    if (b >= 0x80 && b <= 0xAF) pairs.d0_upper |= bit;
    if (b >= 0xB0 && b <= 0xBF) pairs.d0_lower |= bit;
    if (b >= 0x80 && b <= 0x9F) pairs.d1_lower |= bit;
  }
#endif
  return pairs;
}

// Classifies s[0, 64) with SSE2 (part of x86-64, so always there) or, on other targets, a portable
// loop (same masks, one byte at a time).
TOKENLANE_ALWAYS_INLINE AsciiMasks classify64_baseline(const unsigned char* s) {
  AsciiMasks m{};
#if defined(__SSE2__)
  auto range = [](__m128i v, char lo, char hi) {  // signed compares: bytes >= 0x80 never match
    return _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(static_cast<char>(lo - 1))),
                         _mm_cmplt_epi8(v, _mm_set1_epi8(static_cast<char>(hi + 1))));
  };
  auto eq = [](__m128i v, char c) { return _mm_cmpeq_epi8(v, _mm_set1_epi8(c)); };
  auto bits = [](__m128i v) { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm_movemask_epi8(v))); };
  for (int q = 0; q < 4; ++q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * q));
    const int sh = 16 * q;
    const __m128i space = eq(v, ' ');
    const __m128i newline = _mm_or_si128(eq(v, '\n'), eq(v, '\r'));
    const __m128i ws = _mm_or_si128(range(v, 0x09, 0x0D), space);
    m.lower |= bits(range(v, 'a', 'z')) << sh;
    m.upper |= bits(range(v, 'A', 'Z')) << sh;
    m.digit |= bits(range(v, '0', '9')) << sh;
    m.newline |= bits(newline) << sh;
    m.space |= bits(space) << sh;
    m.blank |= bits(_mm_andnot_si128(newline, ws)) << sh;
    m.high |= bits(v) << sh;
    m.apostrophe |= bits(eq(v, '\'')) << sh;
    m.slash |= bits(eq(v, '/')) << sh;
  }
#else
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t bit = std::uint64_t{1} << k;
    const unsigned char b = s[k];
    switch (kByteKind.of[b]) {
      case kbLower: m.lower |= bit; break;
      case kbUpper: m.upper |= bit; break;
      case kbDigit: m.digit |= bit; break;
      case kbSpace: m.space |= bit; m.blank |= bit; break;
      case kbOtherSpace: m.blank |= bit; break;
      case kbNewline: m.newline |= bit; break;
      case kbHigh: m.high |= bit; break;
      default: break;
    }
    if (b == '\'') m.apostrophe |= bit;
    if (b == '/') m.slash |= bit;
  }
#endif
  if (m.high) add_two_byte_letters(m, pair_masks(s));  // only where there is non-ASCII text
  return m;
}

#if defined(TOKENLANE_WINDOW_DISPATCH)
// Wider classifiers (same masks as classify64_baseline), compiled for their instruction set by a
// target attribute and called only when the CPU has it, so the library still runs on any x86-64.
enum class WindowIsa : std::uint8_t { sse2, avx2, avx512 };

inline WindowIsa best_window_isa() {
  __builtin_cpu_init();  // this may run in a static initializer, before libgcc's own
  if (__builtin_cpu_supports("avx512bw")) return WindowIsa::avx512;
  if (__builtin_cpu_supports("avx2")) return WindowIsa::avx2;
  return WindowIsa::sse2;
}
// The classifier classify64 uses: the best this CPU has, checked once per process. Tests and the
// microbenchmark may lower it to compare the variants (never raise it above best_window_isa()).
inline WindowIsa window_isa = best_window_isa();

#define TOKENLANE_AVX512 __attribute__((target("avx512f,avx512bw")))
#define TOKENLANE_AVX2 __attribute__((target("avx2")))

// AVX-512BW: the window is one register and every compare yields its 64-bit mask directly.
TOKENLANE_AVX512 TOKENLANE_ALWAYS_INLINE std::uint64_t eq512(__m512i v, int c) {
  return _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(c)));
}
TOKENLANE_AVX512 TOKENLANE_ALWAYS_INLINE std::uint64_t in512(__m512i v, int lo, int hi) {  // bytes in [lo, hi]
  return _mm512_cmple_epu8_mask(_mm512_sub_epi8(v, _mm512_set1_epi8(static_cast<char>(lo))),
                                _mm512_set1_epi8(static_cast<char>(hi - lo)));
}
TOKENLANE_AVX512 TOKENLANE_NOINLINE inline AsciiMasks classify64_avx512(const unsigned char* s) {
  AsciiMasks m{};
  const __m512i v = _mm512_loadu_si512(s);
  m.lower = in512(v, 'a', 'z');
  m.upper = in512(v, 'A', 'Z');
  m.digit = in512(v, '0', '9');
  m.newline = eq512(v, '\n') | eq512(v, '\r');
  m.space = eq512(v, ' ');
  m.blank = (in512(v, 0x09, 0x0D) | m.space) & ~m.newline;
  m.high = _mm512_movepi8_mask(v);
  m.apostrophe = eq512(v, '\'');
  m.slash = eq512(v, '/');
  if (m.high) {
    PairMasks p;
    p.lead_c3 = eq512(v, 0xC3);
    p.lead_d0 = eq512(v, 0xD0);
    p.lead_d1 = eq512(v, 0xD1);
    p.c3_upper = in512(v, 0x80, 0x9E) & ~eq512(v, 0x97);
    p.c3_lower = in512(v, 0x9F, 0xBF) & ~eq512(v, 0xB7);
    p.d0_upper = in512(v, 0x80, 0xAF);
    p.d0_lower = in512(v, 0xB0, 0xBF);
    p.d1_lower = in512(v, 0x80, 0x9F);
    add_two_byte_letters(m, p);
  }
  return m;
}

// AVX2: two 32-byte halves, signed compares as in the SSE2 code (bytes >= 0x80 are negative).
TOKENLANE_AVX2 TOKENLANE_ALWAYS_INLINE std::uint64_t bits256(__m256i x) {
  return static_cast<std::uint32_t>(_mm256_movemask_epi8(x));
}
TOKENLANE_AVX2 TOKENLANE_ALWAYS_INLINE __m256i eq256(__m256i v, int c) {
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi8(static_cast<char>(c)));
}
TOKENLANE_AVX2 TOKENLANE_ALWAYS_INLINE __m256i lt256(__m256i v, int c) {  // v < c, signed bytes
  return _mm256_cmpgt_epi8(_mm256_set1_epi8(static_cast<char>(c)), v);
}
TOKENLANE_AVX2 TOKENLANE_ALWAYS_INLINE __m256i gt256(__m256i v, int c) {  // v > c, signed bytes
  return _mm256_cmpgt_epi8(v, _mm256_set1_epi8(static_cast<char>(c)));
}
TOKENLANE_AVX2 TOKENLANE_NOINLINE inline AsciiMasks classify64_avx2(const unsigned char* s) {
  AsciiMasks m{};
  for (int half = 0; half < 2; ++half) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32 * half));
    const int sh = 32 * half;
    const __m256i space = eq256(v, ' ');
    const __m256i newline = _mm256_or_si256(eq256(v, '\n'), eq256(v, '\r'));
    const __m256i ws = _mm256_or_si256(_mm256_and_si256(gt256(v, 0x08), lt256(v, 0x0E)), space);
    m.lower |= bits256(_mm256_and_si256(gt256(v, 'a' - 1), lt256(v, 'z' + 1))) << sh;
    m.upper |= bits256(_mm256_and_si256(gt256(v, 'A' - 1), lt256(v, 'Z' + 1))) << sh;
    m.digit |= bits256(_mm256_and_si256(gt256(v, '0' - 1), lt256(v, '9' + 1))) << sh;
    m.newline |= bits256(newline) << sh;
    m.space |= bits256(space) << sh;
    m.blank |= bits256(_mm256_andnot_si256(newline, ws)) << sh;
    m.high |= bits256(v) << sh;
    m.apostrophe |= bits256(eq256(v, '\'')) << sh;
    m.slash |= bits256(eq256(v, '/')) << sh;
  }
  if (!m.high) return m;
  PairMasks p{};
  for (int half = 0; half < 2; ++half) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32 * half));
    const int sh = 32 * half;
    const __m256i cont = lt256(v, 0xC0 - 256);  // continuation bytes 0x80-0xBF
    p.lead_c3 |= bits256(eq256(v, 0xC3)) << sh;
    p.lead_d0 |= bits256(eq256(v, 0xD0)) << sh;
    p.lead_d1 |= bits256(eq256(v, 0xD1)) << sh;
    p.c3_upper |= bits256(_mm256_andnot_si256(eq256(v, 0x97), lt256(v, 0x9F - 256))) << sh;
    p.c3_lower |= bits256(_mm256_andnot_si256(_mm256_or_si256(lt256(v, 0x9F - 256), eq256(v, 0xB7)), cont)) << sh;
    p.d0_upper |= bits256(lt256(v, 0xB0 - 256)) << sh;
    p.d0_lower |= bits256(_mm256_andnot_si256(lt256(v, 0xB0 - 256), cont)) << sh;
    p.d1_lower |= bits256(lt256(v, 0xA0 - 256)) << sh;
  }
  add_two_byte_letters(m, p);
  return m;
}
#endif

// Classifies s[0, 64) with the widest variant this CPU runs.
TOKENLANE_ALWAYS_INLINE AsciiMasks classify64(const unsigned char* s) {
#if defined(TOKENLANE_WINDOW_DISPATCH)
  if (window_isa == WindowIsa::avx512) return classify64_avx512(s);
  if (window_isa == WindowIsa::avx2) return classify64_avx2(s);
#endif
  return classify64_baseline(s);
}

// The rest of Latin-1: U+0080-U+00BF (lead 0xC2) and × ÷ (U+00D7, U+00F7; the other U+00C0-U+00FF are
// letters, above). Without them a window stops at the first NBSP, ½ or º; text with many (random
// Latin-1, say) then went to the scalar path for four pieces in ten. Each character's two bytes
// leave `high`:
//  - ª º (Lo): letters of both case classes; µ (Ll): lower-case;
//  - U+0085 NEL and U+00A0 NBSP (\s, neither \r nor \n): blank; tail2 marks their second byte;
//  - ² ³ ¹ ¼ ½ ¾ (No): number2, tail2 as well;
//  - the others (C1 controls, signs, symbols, U+00AD soft hyphen, × ÷): punctuation; cont marks
//    their second byte (see add_multibyte_punct).
// A test checks every character of U+0080-U+07FF against the class table.
inline void add_latin1_supplement(AsciiMasks& m, const unsigned char* s) {
  std::uint64_t c2 = 0, c3 = 0, cont = 0, blank = 0, both = 0, lower = 0, number = 0, sign = 0;
#if defined(__SSE2__)
  auto eq = [](__m128i v, int c) { return _mm_cmpeq_epi8(v, _mm_set1_epi8(static_cast<char>(c))); };
  auto bits = [](__m128i v) { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm_movemask_epi8(v))); };
  {  // Most windows with other non-ASCII text have no 0xC2 and no 0xC3 left `high`: done.
    std::uint64_t leads = 0;
    for (int q = 0; q < 4; ++q) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * q));
      leads |= bits(_mm_or_si128(eq(v, 0xC2), eq(v, 0xC3))) << 16 * q;
    }
    if ((leads & m.high) == 0) return;
  }
  for (int q = 0; q < 4; ++q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * q));
    const int sh = 16 * q;
    c2 |= bits(eq(v, 0xC2)) << sh;
    c3 |= bits(eq(v, 0xC3)) << sh;
    cont |= bits(_mm_cmplt_epi8(v, _mm_set1_epi8(static_cast<char>(0xC0 - 256)))) << sh;
    blank |= bits(_mm_or_si128(eq(v, 0x85), eq(v, 0xA0))) << sh;
    both |= bits(_mm_or_si128(eq(v, 0xAA), eq(v, 0xBA))) << sh;
    lower |= bits(eq(v, 0xB5)) << sh;
    const __m128i bc_be = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(static_cast<char>(0xBB - 256))),
                                        _mm_cmplt_epi8(v, _mm_set1_epi8(static_cast<char>(0xBF - 256))));
    number |= bits(_mm_or_si128(_mm_or_si128(eq(v, 0xB2), eq(v, 0xB3)), _mm_or_si128(eq(v, 0xB9), bc_be))) << sh;
    sign |= bits(_mm_or_si128(eq(v, 0x97), eq(v, 0xB7))) << sh;
  }
#else
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t bit = std::uint64_t{1} << k;
    const unsigned char b = s[k];
    if (b == 0xC2) c2 |= bit;
    if (b == 0xC3) c3 |= bit;
    if (b >= 0x80 && b <= 0xBF) cont |= bit;
    if (b == 0x85 || b == 0xA0) blank |= bit;
    if (b == 0xAA || b == 0xBA) both |= bit;
    if (b == 0xB5) lower |= bit;
    if (b == 0xB2 || b == 0xB3 || b == 0xB9 || (b >= 0xBC && b <= 0xBE)) number |= bit;
    if (b == 0x97 || b == 0xB7) sign |= bit;
  }
#endif
  // Bit k: the character starting at byte k is of that kind (its second byte inside the window).
  const std::uint64_t first = c2 & (cont >> 1);
  const std::uint64_t ws = first & (blank >> 1), letter_both = first & (both >> 1), letter_lower = first & (lower >> 1),
                      num = first & (number >> 1);
  const std::uint64_t punct = (first & ~(ws | letter_both | letter_lower | num)) | (c3 & (sign >> 1));
  auto pair = [](std::uint64_t x) { return x | (x << 1); };
  m.blank |= pair(ws);
  m.both |= pair(letter_both);
  m.lower |= pair(letter_lower);
  m.number2 |= pair(num);
  m.tail2 |= (ws | num) << 1;
  m.cont |= punct << 1;
  m.high &= ~pair(first | punct);
}

// Multi-byte punctuation ([^\s\p{L}\p{N}] and not a mark: « » „ “ – … in German and Russian text),
// one character at a time from the first byte the SIMD classes left unknown, until a character that
// is something else. Its bytes become punctuation (they leave `high`), and `cont` marks all but its
// first byte, so that the rules can tell a one-character punctuation run (a word's prefix).
inline void add_multibyte_punct(AsciiMasks& m, const unsigned char* w) {
  while (m.high) {
    const unsigned k = static_cast<unsigned>(__builtin_ctzll(m.high));
    const Char c = decode_char(w + k, w + 64);  // a character cut by the window's end is invalid here
    if (c.len == 1 || (c.cls & (kLetter | kNumber | kSpace | kMark))) return;
    const std::uint64_t bytes = ((std::uint64_t{1} << c.len) - 1) << k;
    m.high &= ~bytes;
    m.cont |= bytes & (bytes << 1);
  }
}

// Three-byte letters the windows also take, in both of o200k's case classes (Lo and Lm): the CJK
// ideographs U+4E00-U+9FFF (lead 0xE4 then 0xB8-0xBF, or leads 0xE5-0xE9), the Hangul syllables
// U+AC00-U+D77F (lead 0xEA then 0xB0-0xBF, 0xEB, 0xEC, or 0xED then 0x80-0x9D) and the kana
// U+3041-U+30FF (lead 0xE3 then 0x81-0x83) except the unassigned code points, marks, symbols and
// punctuation among them (U+3097-U+309C, U+30A0, U+30FB), which stay `high` (a test checks the
// ranges against the class table). Chinese, Japanese and Korean text is mostly these, ASCII and
// multi-byte punctuation, so its windows are then decided by the masks too instead of a branchy walk
// per character.
inline void add_three_byte_letters(AsciiMasks& m, const unsigned char* s) {
  std::uint64_t e3 = 0, e4 = 0, e5_e9 = 0, ea = 0, eb_ec = 0, ed = 0, cont = 0, b0_bf = 0, b8_bf = 0, x80_9d = 0,
                x80 = 0, x81 = 0, x82 = 0, x83 = 0, xbb = 0, not_kana_82 = 0;
#if defined(__SSE2__)
  auto eq = [](__m128i v, int c) { return _mm_cmpeq_epi8(v, _mm_set1_epi8(static_cast<char>(c))); };
  auto bits = [](__m128i v) { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm_movemask_epi8(v))); };
  // Bytes >= 0x80 are negative as signed bytes; below(v, b): bytes under b (b >= 0x80).
  auto below = [](__m128i v, int b) { return _mm_cmplt_epi8(v, _mm_set1_epi8(static_cast<char>(b - 256))); };
  {  // Most windows with other non-ASCII text (Latin, Cyrillic) have no lead byte 0xE3-0xED: done.
    __m128i leads = _mm_setzero_si128();
    for (int q = 0; q < 4; ++q) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * q));
      leads = _mm_or_si128(leads, _mm_andnot_si128(below(v, 0xE3), below(v, 0xEE)));
    }
    if (_mm_movemask_epi8(leads) == 0) return;
  }
  for (int q = 0; q < 4; ++q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * q));
    const int sh = 16 * q;
    const __m128i c = below(v, 0xC0);
    e3 |= bits(eq(v, 0xE3)) << sh;
    e4 |= bits(eq(v, 0xE4)) << sh;
    e5_e9 |= bits(_mm_andnot_si128(below(v, 0xE5), below(v, 0xEA))) << sh;
    ea |= bits(eq(v, 0xEA)) << sh;
    eb_ec |= bits(_mm_andnot_si128(below(v, 0xEB), below(v, 0xED))) << sh;
    ed |= bits(eq(v, 0xED)) << sh;
    cont |= bits(c) << sh;
    b0_bf |= bits(_mm_andnot_si128(below(v, 0xB0), c)) << sh;
    b8_bf |= bits(_mm_andnot_si128(below(v, 0xB8), c)) << sh;
    x80_9d |= bits(below(v, 0x9E)) << sh;
    x80 |= bits(eq(v, 0x80)) << sh;
    x81 |= bits(eq(v, 0x81)) << sh;
    x82 |= bits(eq(v, 0x82)) << sh;
    x83 |= bits(eq(v, 0x83)) << sh;
    xbb |= bits(eq(v, 0xBB)) << sh;
    not_kana_82 |= bits(_mm_or_si128(_mm_andnot_si128(below(v, 0x97), below(v, 0x9D)), eq(v, 0xA0))) << sh;
  }
#else
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t bit = std::uint64_t{1} << k;
    const unsigned char b = s[k];
    if (b == 0xE3) e3 |= bit;
    if (b == 0xE4) e4 |= bit;
    if (b >= 0xE5 && b <= 0xE9) e5_e9 |= bit;
    if (b == 0xEA) ea |= bit;
    if (b == 0xEB || b == 0xEC) eb_ec |= bit;
    if (b == 0xED) ed |= bit;
    if (b >= 0x80 && b <= 0xBF) cont |= bit;
    if (b >= 0xB0 && b <= 0xBF) b0_bf |= bit;
    if (b >= 0xB8 && b <= 0xBF) b8_bf |= bit;
    if (b >= 0x80 && b <= 0x9D) x80_9d |= bit;
    if (b == 0x80) x80 |= bit;
    if (b == 0x81) x81 |= bit;
    if (b == 0x82) x82 |= bit;
    if (b == 0x83) x83 |= bit;
    if (b == 0xBB) xbb |= bit;
    if ((b >= 0x97 && b <= 0x9C) || b == 0xA0) not_kana_82 |= bit;
  }
#endif
  // Bit k: the character starting at byte k is one of these letters (bytes k+1, k+2 inside the window).
  const std::uint64_t third = cont >> 2;
  const std::uint64_t han = ((e5_e9 & (cont >> 1)) | (e4 & (b8_bf >> 1))) & third;
  const std::uint64_t hangul = ((ea & (b0_bf >> 1)) | (eb_ec & (cont >> 1)) | (ed & (x80_9d >> 1))) & third;
  const std::uint64_t kana = e3 & third &
                             (((x81 >> 1) & ~(x80 >> 2)) | ((x82 >> 1) & ~(not_kana_82 >> 2)) |
                              ((x83 >> 1) & ~(xbb >> 2)));
  const std::uint64_t first = han | hangul | kana;
  const std::uint64_t bytes = first | (first << 1) | (first << 2);
  m.both |= bytes;
  m.high &= ~bytes;
}

// Bit k of the result: some bit of `seed` at k or after it, within the same run of `run` bits
// (seed must lie within run). A right-to-left OR-scan in six doubling steps.
inline std::uint64_t fill_down(std::uint64_t seed, std::uint64_t run) {
  seed |= (seed >> 1) & run;
  run &= run >> 1;
  seed |= (seed >> 2) & run;
  run &= run >> 2;
  seed |= (seed >> 4) & run;
  run &= run >> 4;
  seed |= (seed >> 8) & run;
  run &= run >> 8;
  seed |= (seed >> 16) & run;
  run &= run >> 16;
  return seed | ((seed >> 32) & run);
}

// The masks a long word's following windows need: letters of every kind the windows take.
inline AsciiMasks word_masks(const unsigned char* w) {
  AsciiMasks m = classify64(w);
  if (m.high) {
    add_three_byte_letters(m, w);
    add_latin1_supplement(m, w);
  }
  return m;
}

// Whether the character whose first byte b is at offset f of a window is cut by the window's end
// (the next window, starting at it, looks at it).
inline bool cut_by_window_end(unsigned char b, unsigned f) {
  const unsigned len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  return b >= 0xC0 && f + len > 64;
}

// The end of a word piece longer than its window (window_pieces found no end before `cert`), or npos.
// Chinese and Japanese have many: a clause of kanji and kana between two punctuation marks is one
// piece, often longer than 61 bytes, and the scalar path walked a fifth of Japanese text one
// character at a time. A word whose letters from the first through cert are lower-case or of both
// classes runs on to the first byte that is neither, which the windows after it find:
//  - another such letter: the word goes on;
//  - a non-letter: the word ends there (an apostrophe may make a contraction: npos);
//  - an upper-case letter after a lower-case one ([\p{Lu}...]* stopped at the lower-case letter and
//    [\p{Ll}...]+ cannot take it): the word ends there;
//  - an upper-case letter after letters of both classes only: [\p{Lu}...]* took them all and takes
//    the upper-case letters and letters of both classes that follow. At a lower-case letter after
//    those the word goes on; at a non-letter the regex backtracks to the last letter of both
//    classes (the upper-case ones after it start the next piece).
// Where the masks cannot tell (a letter or mark they leave, the text's end), npos: the scalar path
// takes the piece.
inline std::size_t o200k_long_word_end(const unsigned char* s, std::size_t n, std::size_t i, const AsciiMasks& m,
                                       unsigned cert) {
  const std::uint64_t run = m.lower | m.both;
  const unsigned p = run ? static_cast<unsigned>(__builtin_ctzll(run)) : 64;  // after a prefix or upper-case letters
  if (p > 3 || cert <= p) return Cursor::npos;
  const std::uint64_t before_cert = (std::uint64_t{1} << cert) - 1;
  const std::uint64_t letters = before_cert & ~((std::uint64_t{1} << p) - 1);
  if ((run & letters) != letters) return Cursor::npos;
  bool lower_seen = (m.lower & before_cert) != 0;
  std::size_t j = i + cert;  // a character start inside the word, from which the next window looks
  while (j > i + p && (s[j] & 0xC0) == 0x80) --j;
  for (;;) {
    if (j + 64 > n) return Cursor::npos;
    const AsciiMasks w = word_masks(s + j);
    const std::uint64_t other = ~(w.lower | w.both);
    if (other == 0) {  // (a character cut by the window's end stays `high`: j + 64 starts one)
      lower_seen |= w.lower != 0;
      j += 64;
      continue;
    }
    const unsigned f = static_cast<unsigned>(__builtin_ctzll(other));
    lower_seen |= (w.lower & ((std::uint64_t{1} << f) - 1)) != 0;
    const unsigned char b = s[j + f];
    if ((w.high >> f) & 1) {  // a character the masks leave
      if (cut_by_window_end(b, f)) {
        j += f;
        continue;
      }
      // Punctuation (「、」), a space, a number or an invalid byte ends the word; a letter or a mark
      // the masks do not know goes to the scalar path.
      return (decode_char(s + j + f, s + n).cls & (kLetter | kMark)) ? Cursor::npos : j + f;
    }
    if (!((w.upper >> f) & 1)) return b == '\'' ? Cursor::npos : j + f;
    if (lower_seen) return j + f;
    // Upper-case letters after letters of both classes only: what follows them decides.
    const std::uint64_t taken = ~((w.upper | w.both) >> f);  // bit k: byte f + k is neither
    const unsigned g = taken ? f + static_cast<unsigned>(__builtin_ctzll(taken)) : 64;
    if (g == 64 || ((w.high >> g) & 1) || s[j + g] == '\'') return Cursor::npos;
    if ((w.lower >> g) & 1) {
      lower_seen = true;
      j += g;
      continue;
    }
    const std::uint64_t both_after = w.both & ((std::uint64_t{1} << g) - 1) & ~((std::uint64_t{1} << f) - 1);
    return both_after ? j + 64 - static_cast<unsigned>(__builtin_clzll(both_after)) : j + f;
  }
}

// cl100k's word piece longer than its window: [^\r\n\p{L}\p{N}]?+\p{L}++ has no case classes, so the
// letters from the first through cert run on to the first byte that is not one (a mark ends it too),
// which the windows after it find (and the scalar path in the text's last 64 bytes, so that a word
// that reaches the end is not scanned twice). Where the masks cannot tell (a letter they leave),
// npos: the scalar path takes the piece.
inline std::size_t cl100k_long_word_end(const unsigned char* s, std::size_t n, std::size_t i, const AsciiMasks& m,
                                        unsigned cert) {
  const std::uint64_t letter = m.lower | m.upper | m.both;
  const unsigned p = letter ? static_cast<unsigned>(__builtin_ctzll(letter)) : 64;  // after a prefix
  if (p > 3 || cert <= p) return Cursor::npos;
  const std::uint64_t letters = ((std::uint64_t{1} << cert) - 1) & ~((std::uint64_t{1} << p) - 1);
  if ((letter & letters) != letters) return Cursor::npos;
  std::size_t j = i + cert;  // a character start inside the word, from which the next window looks
  while (j > i + p && (s[j] & 0xC0) == 0x80) --j;
  for (;;) {
    if (j + 64 > n) return Cursor(s, n).run_end(j, kLetter);
    const AsciiMasks w = word_masks(s + j);
    const std::uint64_t other = ~(w.lower | w.upper | w.both);
    if (other == 0) {  // (a character cut by the window's end stays `high`: j + 64 starts one)
      j += 64;
      continue;
    }
    const unsigned f = static_cast<unsigned>(__builtin_ctzll(other));
    if ((w.high >> f) & 1) {  // a character the masks leave
      if (cut_by_window_end(s[j + f], f)) {
        j += f;
        continue;
      }
      return (decode_char(s + j + f, s + n).cls & kLetter) ? Cursor::npos : j + f;
    }
    return j + f;
  }
}

// The pieces of o200k_base or cl100k_base (kKind) in the 64 bytes at s + i (readable; i is a piece
// start; n: the text's length), passed to sink with offsets relative to s; a window of digits only
// passes the whole run of digits (to a sink that wants_digits). Returns where the next piece starts:
// i itself when no piece could be decided inside the window (the caller then takes one piece the
// scalar way). The two patterns differ in their words (o200k's have case classes and take a
// contraction as a suffix; cl100k's are any letters, and a contraction is a piece of its own) and
// in their punctuation tails (o200k's take '/' too); the rest is the same.
template <PretokenizerKind kKind, class Sink>
std::size_t window_pieces(const unsigned char* s, std::size_t n, std::size_t i, Sink& sink, std::uint64_t& high) {
  static_assert(kKind == PretokenizerKind::o200k || kKind == PretokenizerKind::cl100k);
  constexpr bool kO200k = kKind == PretokenizerKind::o200k;
  AsciiMasks m = classify64(s + i);
  if (m.high) {
    add_three_byte_letters(m, s + i);
    add_latin1_supplement(m, s + i);
    add_multibyte_punct(m, s + i);
  }
  high = m.high;
  // Only the bytes before the first one left `high` are known to be what the masks say they are.
  const unsigned limit = m.high ? static_cast<unsigned>(__builtin_ctzll(m.high)) : 64;
  if (limit < 8) return i;
  const std::uint64_t letter = m.lower | m.upper | m.both, ws = m.blank | m.newline, number = m.digit | m.number2;
  const std::uint64_t punct = ~(letter | number | ws | m.high);  // [^\s\p{L}\p{N}]
  auto before = [](std::uint64_t x) { return x << 1; };  // bit k: byte k-1 is in x

  //  ?[^\s\p{L}\p{N}]+[\r\n/]*: a punctuation run starts a piece unless a space just before it
  // does (the space is then the last byte of its whitespace run: always a piece start). Newlines
  // right after a punctuation run are its tail.
  const std::uint64_t punct_start = punct & ~before(punct) & ~before(m.space);
  const std::uint64_t newline_runs = m.newline & ~before(m.newline);
  const std::uint64_t tail_seeds = newline_runs & before(punct);
  const std::uint64_t tail = ((m.newline + tail_seeds) ^ m.newline) & m.newline;
  // Whitespace outside the tails. \s*[\r\n]+ ends after a run's last newline; \s+(?!\S) leaves the
  // last blank of a run before non-space for the next piece; the run's first byte starts a piece.
  const std::uint64_t wsr = ws & ~tail;
  const std::uint64_t newline_at_or_after = fill_down(m.newline & wsr, wsr);
  const std::uint64_t last_blank = m.blank & ~(wsr >> 1);  // (its last byte)
  std::uint64_t ws_starts = (wsr & ~before(wsr)) | (wsr & ~newline_at_or_after & before(newline_at_or_after)) |
                            last_blank;
  if (m.tail2) {  // a two-byte blank (NBSP, NEL) starts one byte before its last
    const std::uint64_t two = last_blank & m.tail2;
    ws_starts = (ws_starts & ~two) | (two >> 1);
  }
  // o200k [^\r\n\p{L}\p{N}]?[A-Z]*[a-z]+|...[A-Z]+[a-z]*: a word starts at a letter after a
  // non-letter or at an upper-case letter after a lower-case one (cl100k [^\r\n\p{L}\p{N}]?+\p{L}++:
  // after a non-letter only); a blank or a punctuation run of one character just before it is its
  // prefix (and then the piece starts there instead).
  const std::uint64_t word_start =
      kO200k ? letter & (~before(letter) | (before(m.lower) & m.upper)) : letter & ~before(letter);
  std::uint64_t first_char = punct_start;  // the bytes of each punctuation run's first character
  for (int k = 0; k < 3; ++k) first_char |= before(first_char) & m.cont;
  const std::uint64_t one_char_run = first_char & ~(m.cont >> 1);  // its last byte, if a letter follows
  const std::uint64_t prefixed = word_start & before(m.blank | one_char_run);
  // \p{N}{1,3}
  const std::uint64_t digit_start = number & ~before(number);
  std::uint64_t starts = 1 | punct_start | ws_starts | (word_start & ~prefixed) | digit_start;

  // Pieces are certain up to three bytes before the limit, and not inside a whitespace run that
  // reaches it (a later newline or a non-ASCII space may change it).
  unsigned cert = limit - 3;
  const std::uint64_t known = (std::uint64_t{1} << cert) - 1;
  if (ws >> (limit - 1) & 1) {
    const std::uint64_t outside = ~ws & ((limit == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << limit) - 1));
    const unsigned run_start = outside ? 64 - static_cast<unsigned>(__builtin_clzll(outside)) : 0;
    cert = std::min(cert, run_start);
  }
  if constexpr (kO200k) {
    // A '/' after a newline may be in a punctuation run's tail or start a piece: left to the scalar path.
    if (const std::uint64_t odd = m.slash & before(m.newline) & known) {
      cert = std::min(cert, static_cast<unsigned>(__builtin_ctzll(odd)));
    }
    // A letter of both case classes before an upper-case one ("中文AB"): where the piece ends depends
    // on what follows the upper-case letters (A backtracks to the last letter of both classes when no
    // lower-case one follows; after a lower-case one the upper-case letter starts a piece): left to
    // the scalar path. Elsewhere such letters never start a piece inside a run of letters.
    if (const std::uint64_t both_upper = m.both & (m.upper >> 1)) {
      cert = std::min(cert, static_cast<unsigned>(__builtin_ctzll(both_upper)) + 1);
    }
  }
  // \p{N}{1,3} takes a longer run of digits three at a time (three characters: with two-byte
  // numbers in the run, every third character's first byte).
  for (std::uint64_t r = digit_start & (number >> 1) & (number >> 2) & (number >> 3); r; r &= r - 1) {
    const unsigned first = static_cast<unsigned>(__builtin_ctzll(r));
    const std::uint64_t rest = ~(number >> first);  // bit j: byte first + j is not a number's
    const unsigned end = rest ? first + static_cast<unsigned>(__builtin_ctzll(rest)) : 64;
    const std::uint64_t run = end - first == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << (end - first)) - 1) << first;
    if ((m.number2 & run) == 0) {
      for (unsigned k = first + 3; k < end; k += 3) starts |= std::uint64_t{1} << k;
      continue;
    }
    std::uint64_t chars = number & ~m.tail2 & run;
    for (unsigned c = 0; chars; ++c, chars &= chars - 1) {
      if (c > 0 && c % 3 == 0) starts |= chars & -chars;
    }
  }
  // The contraction (?i:'s|'t|'re|'ve|'m|'ll|'d) after the apostrophe at k (bytes k + 1, k + 2
  // are known): its length, or 0.
  auto contraction = [&](unsigned k) -> unsigned {
    const unsigned char a = s[i + k + 1] | 0x20, b = s[i + k + 2] | 0x20;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 1;
    if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return 2;
    return 0;
  };
  if constexpr (kO200k) {
    // After a word the piece runs through a contraction. (Not after the letters of another
    // contraction: "A't't" is "A't" and "'t".)
    unsigned contraction_end = 0;
    for (std::uint64_t q = m.apostrophe & before(letter) & known; q; q &= q - 1) {
      const unsigned k = static_cast<unsigned>(__builtin_ctzll(q));
      if (k >= cert) break;
      if (k == contraction_end) continue;
      const unsigned len = contraction(k);
      if (len == 0) continue;
      starts &= ~(((std::uint64_t{2} << len) - 1) << k);
      starts |= std::uint64_t{1} << (k + 1 + len);
      contraction_end = k + 1 + len;
    }
  } else {
    // cl100k's first alternative: where a piece starts at an apostrophe (a punctuation run's
    // start), a contraction after it is the whole piece ("'sa" is "'s" and "a", not a prefixed word).
    for (std::uint64_t q = m.apostrophe & punct_start & known; q; q &= q - 1) {
      const unsigned k = static_cast<unsigned>(__builtin_ctzll(q));
      if (k >= cert) break;
      const unsigned len = contraction(k);
      if (len == 0) continue;
      starts &= ~(((std::uint64_t{1} << len) - 1) << (k + 1));
      starts |= std::uint64_t{1} << (k + 1 + len);
    }
  }
  std::uint64_t emit = starts & ((std::uint64_t{1} << cert) - 1) & ~std::uint64_t{1};
  if (cert == 0 || emit == 0) {
    if (cert < 32) return i;  // (a window stopped early by a character the masks leave: scalar path)
    const std::size_t e =
        kO200k ? o200k_long_word_end(s, n, i, m, cert) : cl100k_long_word_end(s, n, i, m, cert);
    if (e == Cursor::npos) return i;
    sink(i, e);
    return e;
  }
  std::size_t b = i;
  if constexpr (wants_digits<Sink>) {
    // A piece that starts with a digit is \p{N}{1,3} (no other kind of piece holds one): of ASCII
    // digits unless it holds a two-byte number. The test per piece is paid only in windows with digits.
    if (m.digit & ((std::uint64_t{1} << cert) - 1)) {
      // A window of digits only: the whole run at once (pieces of three from i).
      if (m.digit == ~std::uint64_t{0}) return AsciiScan{s, n}.digit_run(i, sink);
      for (; emit; emit &= emit - 1) {
        const std::size_t e = i + static_cast<std::size_t>(__builtin_ctzll(emit));
        if ((m.digit >> (b - i)) & 1 && ((m.number2 >> (b - i)) & ((std::uint64_t{1} << (e - b)) - 1)) == 0) {
          sink.digits(b, e);
        } else {
          sink(b, e);
        }
        b = e;
      }
      return b;
    }
  }
  for (; emit; emit &= emit - 1) {
    const std::size_t e = i + static_cast<std::size_t>(__builtin_ctzll(emit));
    sink(b, e);
    b = e;
  }
  return b;
}

// The general path: the end of the piece starting at i, for any text.
TOKENLANE_NOINLINE inline std::size_t o200k_piece_end(const Cursor& t, std::size_t i) {
  const std::size_t n = t.size();
  const O200kWords words(t);
  Char c = t.at(i);
  const bool prefix = !(c.cls & (kLetter | kNumber)) && !is_newline(c.cp);
  const bool wordish = c.cls & (kLetter | kMark);
  std::size_t e = Cursor::npos;
  if (prefix && i + c.len < n) e = words.a(i + c.len);
  if (e == Cursor::npos && wordish) e = words.a(i);
  if (e == Cursor::npos && prefix && i + c.len < n) e = words.b(i + c.len);
  if (e == Cursor::npos && wordish) e = words.b(i);
  if (e != Cursor::npos) return e;
  if (c.cls & kNumber) return t.bounded_run_end(i, kNumber, 3);
  if (is_punct(c)) return t.ascii_run_end(t.punct_end(i), "\r\n/");
  if (c.cp == ' ' && i + 1 < n && is_punct(t.at(i + 1))) return t.ascii_run_end(t.punct_end(i + 1), "\r\n/");
  return whitespace_piece_end(t, i, /*end_first=*/false, /*newline_rule=*/true);
}

// The end of the piece starting at i, one piece at a time (the reference for window_pieces).
template <PretokenizerKind kKind>
std::size_t scalar_piece_end(const Cursor& t, const AsciiScan& a, std::size_t i) {
  constexpr bool kO200k = kKind == PretokenizerKind::o200k;
  const std::size_t e = kO200k ? o200k_ascii_piece(t, a, i) : cl100k_ascii_piece(t, a, i);
  if (e != Cursor::npos) return e;
  return kO200k ? o200k_piece_end(t, i) : cl100k_piece_end(t, i);
}

// o200k_base or cl100k_base: windows where they decide, else one piece at a time.
template <PretokenizerKind kKind, class Sink>
void split_windowed(const unsigned char* s, std::size_t n, Sink&& sink) {
  constexpr bool kO200k = kKind == PretokenizerKind::o200k;
  const Cursor t(s, n);
  const AsciiScan a{s, n};
  // After a window that decided nothing, the scalar path goes on past the first non-ASCII byte (a
  // word with an accent, say). Where windows keep failing (text in other scripts, long runs), they
  // are tried further and further on, so that such text does not pay a classification per piece.
  std::size_t window_from = 0, skip = 0;
  for (std::size_t i = 0; i < n;) {
    if (i >= window_from && i + 64 <= n) {
      std::uint64_t high;
      const std::size_t next = window_pieces<kKind>(s, n, i, sink, high);
      if (next != i) {
        i = next;
        skip = 0;
        continue;
      }
      if (high != 0 && __builtin_popcountll(high) <= 16) {
        window_from = i + static_cast<std::size_t>(__builtin_ctzll(high)) + 1;
      } else {
        skip = skip ? std::min<std::size_t>(2 * skip, 1024) : 16;
        window_from = i + skip;
      }
    }
    std::size_t e = kO200k ? o200k_ascii_piece(t, a, i, &sink) : cl100k_ascii_piece(t, a, i, &sink);
    if (e >= kEmitted) {
      if (e != Cursor::npos) {
        i = e & ~kEmitted;
        continue;
      }
      e = kO200k ? o200k_piece_end(t, i) : cl100k_piece_end(t, i);
    }
    sink(i, e);
    i = e;
  }
}

template <class Sink>
void split_o200k(const unsigned char* s, std::size_t n, Sink&& sink) {
  split_windowed<PretokenizerKind::o200k>(s, n, sink);
}
template <class Sink>
void split_cl100k(const unsigned char* s, std::size_t n, Sink&& sink) {
  split_windowed<PretokenizerKind::cl100k>(s, n, sink);
}

}  // namespace tokenlane::detail
