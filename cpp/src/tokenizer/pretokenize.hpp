// Internal: hand-written pre-tokenizers, one per tiktoken split pattern.
//
// Each function walks UTF-8 text once and calls sink(begin, end) for every piece the corresponding
// regex (tiktoken 0.14, `tiktoken_ext/openai_public.py`) would match, in order. The comments quote
// the regex alternative each branch implements; the order of the branches is the order of the
// alternatives, because the regex engine takes the first alternative that matches.
#pragma once

#include <cstddef>

#include "unicode.hpp"

namespace tokenlane::detail {

class Cursor {
 public:
  Cursor(const unsigned char* s, std::size_t n) : s_(s), n_(n) {}
  std::size_t size() const { return n_; }
  Char at(std::size_t i) const { return decode_char(s_ + i, s_ + n_); }
  unsigned char byte(std::size_t i) const { return s_[i]; }

  // End of the run of characters starting at i whose flags intersect `any`.
  std::size_t run_end(std::size_t i, std::uint8_t any) const {
    while (i < n_) {
      unsigned char b = s_[i];
      if (b < 0x80) {
        if (!(kAscii.flags[b] & any)) break;
        ++i;
        continue;
      }
      Char c = at(i);
      if (!(c.cls & any)) break;
      i += c.len;
    }
    return i;
  }
  // End of the run of "punctuation" ([^\s\p{L}\p{N}]) starting at i.
  std::size_t punct_end(std::size_t i) const {
    while (i < n_) {
      unsigned char b = s_[i];
      if (b < 0x80) {
        if (kAscii.flags[b] & (kLetter | kNumber | kSpace)) break;
        ++i;
        continue;
      }
      Char c = at(i);
      if (c.cls & (kLetter | kNumber | kSpace)) break;
      i += c.len;
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

// cl100k_base:
//   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//   |\s++$|\s*[\r\n]|\s+(?!\S)|\s
template <class Sink>
void split_cl100k(const unsigned char* s, std::size_t n, Sink&& sink) {
  Cursor t(s, n);
  std::size_t i = 0;
  while (i < n) {
    std::size_t start = i;
    Char c = t.at(i);
    // '(?i:[sdmt]|ll|ve|re)
    if (c.cp == '\'') {
      if (std::size_t k = t.contraction(i + 1, true)) {
        i += 1 + k;
        sink(start, i);
        continue;
      }
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}++
    if (c.cls & kLetter) {
      i = t.run_end(i, kLetter);
      sink(start, i);
      continue;
    }
    const bool prefix = !(c.cls & kNumber) && !is_newline(c.cp);
    if (prefix && i + c.len < n && (t.at(i + c.len).cls & kLetter)) {
      i = t.run_end(i + c.len, kLetter);
      sink(start, i);
      continue;
    }
    // \p{N}{1,3}+
    if (c.cls & kNumber) {
      i = t.bounded_run_end(i, kNumber, 3);
      sink(start, i);
      continue;
    }
    //  ?[^\s\p{L}\p{N}]++[\r\n]*+
    std::size_t p = Cursor::npos;
    if (is_punct(c)) p = i;
    else if (c.cp == ' ' && i + 1 < n && is_punct(t.at(i + 1))) p = i + 1;
    if (p != Cursor::npos) {
      i = t.ascii_run_end(t.punct_end(p), "\r\n");
      sink(start, i);
      continue;
    }
    // \s++$|\s*[\r\n]|\s+(?!\S)|\s
    i = whitespace_piece_end(t, i, /*end_first=*/true, /*newline_rule=*/true);
    sink(start, i);
  }
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
    while (k < t_.size()) {
      Char c = t_.at(k);
      if (!(c.cls & kUpperish)) break;
      if (c.cls & kLowerish) {
        last_both = k;
        last_both_len = c.len;
      }
      k += c.len;
    }
    if (k < t_.size() && (t_.at(k).cls & kLowerish)) return with_contraction(t_.run_end(k, kLowerish));
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

template <class Sink>
void split_o200k(const unsigned char* s, std::size_t n, Sink&& sink) {
  Cursor t(s, n);
  O200kWords words(t);
  std::size_t i = 0;
  while (i < n) {
    std::size_t start = i;
    // Fast path for the most common piece, an ASCII word with an optional leading space: what A
    // (upper* lower+) or else B (upper+) match when every byte involved is ASCII. A word followed by
    // a non-ASCII byte (a letter or mark may continue it) or an apostrophe (a contraction may
    // follow) takes the general path.
    {
      std::size_t j = i + (s[i] == ' ');
      if (j < n && is_ascii_letter(s[j])) {
        std::size_t u = j;
        while (u < n && s[u] >= 'A' && s[u] <= 'Z') ++u;
        std::size_t e = u;
        while (e < n && s[e] >= 'a' && s[e] <= 'z') ++e;
        if (e == n || (s[e] < 0x80 && s[e] != '\'')) {
          sink(start, e);
          i = e;
          continue;
        }
      }
    }
    Char c = t.at(i);
    const bool prefix = !(c.cls & (kLetter | kNumber)) && !is_newline(c.cp);
    const bool wordish = c.cls & (kLetter | kMark);
    std::size_t e = Cursor::npos;
    if (prefix && i + c.len < n) e = words.a(i + c.len);
    if (e == Cursor::npos && wordish) e = words.a(i);
    if (e == Cursor::npos && prefix && i + c.len < n) e = words.b(i + c.len);
    if (e == Cursor::npos && wordish) e = words.b(i);
    if (e != Cursor::npos) {
      i = e;
    } else if (c.cls & kNumber) {
      i = t.bounded_run_end(i, kNumber, 3);
    } else if (is_punct(c)) {
      i = t.ascii_run_end(t.punct_end(i), "\r\n/");
    } else if (c.cp == ' ' && i + 1 < n && is_punct(t.at(i + 1))) {
      i = t.ascii_run_end(t.punct_end(i + 1), "\r\n/");
    } else {
      i = whitespace_piece_end(t, i, /*end_first=*/false, /*newline_rule=*/true);
    }
    sink(start, i);
  }
}

}  // namespace tokenlane::detail
