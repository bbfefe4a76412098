// Internal: the vocabulary (token bytes <-> rank) and byte-pair merging of one pre-tokenized piece.
//
// Merging follows tiktoken's rule exactly: repeatedly merge the adjacent pair whose concatenated
// bytes have the lowest rank, leftmost first, until no pair is in the vocabulary. Short pieces use a
// flat array (fast for the usual 2-20 bytes); long pieces use a linked list and a bucket queue
// over ranks, so each merge costs O(1) and time stays linear in the piece length.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenlane/tokenizer.hpp"

namespace tokenlane::detail {

inline constexpr Rank kNoRank = 0xFFFFFFFFu;

class Vocabulary {
 public:
  // Parses a .tiktoken file; `specials` are added for decoding only (never produced by merges).
  static Vocabulary parse(const std::string& name, std::string_view contents,
                          const std::vector<std::pair<std::string, Rank>>& specials);

  // The rank of exactly these bytes (ordinary tokens only), or -1.
  std::int64_t find(const unsigned char* p, std::size_t n) const { return find(p, n, hash(p, n)); }
  std::int64_t find(const unsigned char* p, std::size_t n, std::uint64_t h) const {
    std::uint32_t tag = static_cast<std::uint32_t>(h);
    for (std::size_t i = h >> shift_;; i = (i + 1) & mask_) {
      std::uint64_t slot = slots_[i];
      if (slot == 0) return -1;
      if (static_cast<std::uint32_t>(slot >> 32) == tag) {
        Rank r = static_cast<Rank>(slot) - 1;
        const Span& t = spans_[r];
        if (t.len == n && std::memcmp(arena_.data() + t.off, p, n) == 0) return r;
      }
    }
  }
  Rank find_rank(const unsigned char* p, std::size_t n) const {
    std::int64_t r = find(p, n);
    return r < 0 ? kNoRank : static_cast<Rank>(r);
  }

  // Bytes of a token (ordinary or special); a null view if the id is unknown.
  std::string_view token_bytes(Rank r) const {
    if (r >= spans_.size() || spans_[r].off == kAbsent) return {};
    return {arena_.data() + spans_[r].off, spans_[r].len};
  }

  // Appends the tokens of one piece to `out` (anything with push(Rank)).
  template <class Out>
  void encode_piece(const unsigned char* p, std::size_t n, Out& out) const {
    if (n == 1) return out.push(byte_rank_[p[0]]);
    std::uint64_t h = hash(p, n);
    std::int64_t whole = find(p, n, h);
    if (whole >= 0) return out.push(static_cast<Rank>(whole));
    if (n > kShortPiece) {
      for (Rank r : merge_long(p, n)) out.push(r);
      return;
    }
    if (n > PieceCache::kMaxBytes) return merge_short(p, n, out);
    // Pieces that are not one token repeat a lot in real text ("tokenizer", " McDonald"), so their
    // merge results are remembered per thread.
    thread_local PieceCache cache;
    PieceCache::Entry& e = cache.slots[h & (PieceCache::kSlots - 1)];
    if (e.vocab_id != id_ || e.hash != h || e.len != n || std::memcmp(e.bytes, p, n) != 0) {
      e.n_tokens = 0;
      merge_short(p, n, e);  // a piece of n bytes has at most n tokens: e.tokens cannot overflow
      e.vocab_id = id_;
      e.hash = h;
      e.len = static_cast<std::uint8_t>(n);
      std::memcpy(e.bytes, p, n);
    }
    for (std::size_t i = 0; i < e.n_tokens; ++i) out.push(e.tokens[i]);
  }

 private:
  struct PieceCache {
    static constexpr std::size_t kMaxBytes = 24;
    static constexpr std::size_t kSlots = 4096;
    struct Entry {
      std::uint64_t vocab_id = 0;  // 0: empty
      std::uint64_t hash = 0;
      std::uint8_t len = 0;
      std::uint8_t n_tokens = 0;
      unsigned char bytes[kMaxBytes];
      Rank tokens[kMaxBytes];
      void push(Rank r) { tokens[n_tokens++] = r; }
    };
    Entry slots[kSlots];
  };

  static constexpr std::size_t kShortPiece = 128;
  static constexpr std::uint32_t kAbsent = 0xFFFFFFFFu;
  struct Span {
    std::uint32_t off = kAbsent;
    std::uint32_t len = 0;
  };

  static std::uint64_t hash(const unsigned char* p, std::size_t n) {
    std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
      std::uint64_t w;
      std::memcpy(&w, p, 8);
      h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
      h ^= h >> 31;
      p += 8;
      n -= 8;
    }
    if (n > 0) {
      std::uint64_t w = 0;
      std::memcpy(&w, p, n);
      h = (h ^ w) * 0x94d049bb133111ebull;
    }
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    return h ^ (h >> 32);
  }

  template <class Out>
  void merge_short(const unsigned char* p, std::size_t n, Out& out) const {
    // Part i is bytes [pos[i], pos[i+1]) with rank tok[i]; pair[i] is the rank of parts i and i+1.
    std::uint32_t pos[kShortPiece + 1];
    Rank tok[kShortPiece];
    Rank pair[kShortPiece];
    std::size_t m = n;
    for (std::size_t i = 0; i <= n; ++i) pos[i] = static_cast<std::uint32_t>(i);
    for (std::size_t i = 0; i < n; ++i) tok[i] = byte_rank_[p[i]];
    for (std::size_t i = 0; i + 1 < n; ++i) pair[i] = find_rank(p + i, 2);
    while (m > 1) {
      std::size_t best = 0;
      for (std::size_t i = 1; i + 1 < m; ++i) {
        if (pair[i] < pair[best]) best = i;
      }
      if (pair[best] == kNoRank) break;
      tok[best] = pair[best];
      std::memmove(pos + best + 1, pos + best + 2, (m - best - 1) * sizeof pos[0]);
      std::memmove(tok + best + 1, tok + best + 2, (m - best - 2) * sizeof tok[0]);
      if (best + 3 <= m) {
        std::memmove(pair + best + 1, pair + best + 2, (m - best - 3) * sizeof pair[0]);
      }
      --m;
      if (best + 1 < m) pair[best] = find_rank(p + pos[best], pos[best + 2] - pos[best]);
      if (best > 0) pair[best - 1] = find_rank(p + pos[best - 1], pos[best + 1] - pos[best - 1]);
    }
    for (std::size_t i = 0; i < m; ++i) out.push(tok[i]);
  }

  std::vector<Rank> merge_long(const unsigned char* p, std::size_t n) const;

  std::string arena_;         // the bytes of every token, concatenated
  std::vector<Span> spans_;   // per rank: where its bytes are in arena_
  std::vector<std::uint64_t> slots_;  // open addressing: (hash tag << 32) | (rank + 1); 0 = empty
  std::size_t mask_ = 0;
  int shift_ = 64;
  Rank byte_rank_[256] = {};
  std::uint64_t id_ = 0;  // unique per loaded vocabulary; keys the per-thread piece cache
};

}  // namespace tokenlane::detail
