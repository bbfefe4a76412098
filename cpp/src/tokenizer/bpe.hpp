// Internal: the vocabulary (token bytes <-> rank) and byte-pair merging of one pre-tokenized piece.
//
// Merging follows tiktoken's rule exactly: repeatedly merge the adjacent pair whose concatenated
// bytes have the lowest rank, leftmost first, until no pair is in the vocabulary. Because merged
// parts are always tokens, "the rank of the concatenated bytes" is looked up by the pair of token
// ids in a table built at load time (every split of every token into two tokens), which costs one
// probe and no byte comparison. Short pieces use flat arrays (fast for the usual 2-100 bytes); long
// pieces use a linked list and a bucket queue over ranks, so each merge costs O(1) and time stays
// linear in the piece length. Long pieces made of a few runs of one byte ("xxxx…", blanks, "----")
// are merged run-length encoded, many merges per step (merge_runs). Multi-token pieces of up to
// PieceCache::kMaxBytes are remembered per thread (PieceCache); longer ones are never cached.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "inlining.hpp"
#include "tokenlane/tokenizer.hpp"

namespace tokenlane::detail {

inline constexpr Rank kNoRank = 0xFFFFFFFFu;
// Ordinary ranks must be below this: the merge queue's bitmap has three 64-way levels, and the pair
// table packs three ranks into one word.
inline constexpr std::size_t kMaxRanks = std::size_t{1} << 18;

inline std::uint64_t load64(const unsigned char* p) {
  std::uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}
inline std::uint32_t load32(const unsigned char* p) {
  std::uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// The first min(n, 8) bytes at p as a little-endian integer (zero above), reading only p[0, n).
// Overlapping loads write the same byte to the same place, so OR-ing them is exact.
inline std::uint64_t head_bytes(const unsigned char* p, std::size_t n) {
  if (n >= 8) return load64(p);
  if (n >= 4) return load32(p) | (std::uint64_t{load32(p + n - 4)} << (8 * (n - 4)));
  if (n == 0) return 0;
  return p[0] | (std::uint64_t{p[n >> 1]} << (8 * (n >> 1))) | (std::uint64_t{p[n - 1]} << (8 * (n - 1)));
}

// Bytes [8, n) of a and b are equal (n > 8).
inline bool equal_after_head(const unsigned char* a, const unsigned char* b, std::size_t n) {
  for (std::size_t i = 8; i + 8 < n; i += 8) {
    if (load64(a + i) != load64(b + i)) return false;
  }
  return load64(a + n - 8) == load64(b + n - 8);
}

// head_bytes when at least 8 bytes are readable at p: one load and a mask.
inline std::uint64_t head_bytes_padded(const unsigned char* p, std::size_t n) {
  const std::uint64_t w = load64(p);
  return n >= 8 ? w : w & ((std::uint64_t{1} << (8 * n)) - 1);
}

// Hash of a byte string given its head_bytes, for the vocabulary's tables. The final fold brings the
// product's well-mixed high bits down to the low bits that maybe_token indexes by.
inline std::uint64_t hash_bytes(const unsigned char* p, std::size_t n, std::uint64_t head) {
  std::uint64_t h = (head ^ (n * 0x9E3779B97F4A7C15ull)) * 0xbf58476d1ce4e5b9ull;
  if (n > 8) {
    for (std::size_t i = 8; i + 8 < n; i += 8) h = (h ^ (h >> 29) ^ load64(p + i)) * 0x94d049bb133111ebull;
    h = (h ^ (h >> 29) ^ load64(p + n - 8)) * 0x94d049bb133111ebull;
    h = (h ^ (h >> 32)) * 0xd6e8feb86659fd93ull;
  }
  h ^= h >> 32;
  h *= 0xd6e8feb86659fd93ull;
  return h ^ (h >> 32);
}

// Hash of a piece for the PieceCache, which compares the bytes of a hit anyway: it needs spread, not
// strength, and sits on every piece's critical path. One multiply for up to 8 bytes; the product's
// high bits (mixed from every input bit) index the table.
inline std::uint64_t cache_hash(const unsigned char* p, std::size_t n, std::uint64_t head) {
  std::uint64_t h = (head ^ (n * 0x9E3779B97F4A7C15ull)) * 0xbf58476d1ce4e5b9ull;
  if (n > 8) {
    for (std::size_t i = 8; i + 8 < n; i += 8) h = (h ^ (h >> 29) ^ load64(p + i)) * 0x94d049bb133111ebull;
    h = (h ^ (h >> 29) ^ load64(p + n - 8)) * 0x94d049bb133111ebull;
  }
  return h;
}

// Per-thread memory of the tokens of recent pieces (one token or many). Real text repeats a small
// set of pieces, and this table stays in the CPU caches where the whole vocabulary (megabytes)
// cannot. Open addressing; it grows with use up to kMaxSlots, then everything is dropped at once
// (no per-entry eviction, so lookups never thrash on one bucket, and frequent pieces come back
// right after a wipe).
class PieceCache {
 public:
  static constexpr std::size_t kMaxBytes = 128;

  // The tokens cached for the piece, or nullptr; `count` receives how many. h: its cache_hash.
  const Rank* find(const unsigned char* p, std::size_t n, std::uint64_t head, std::uint64_t h,
                   std::uint32_t& count) {
    const std::uint32_t want = key_of(n, h, 0);
    for (std::size_t i = h >> shift_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if ((s.key & ~(kCountBits | kEpochBits)) == want && s.head == head) {
        const std::uint32_t c = count_of(s);
        // A select, not a branch: one token inline or several in the arena is a coin toss per
        // piece in some languages.
        const bool inline_token = is_inline(n, c);
        const Rank* tokens = inline_token ? &s.value : arena_.data() + s.value;
        if (n > 8 && !equal_after_head(reinterpret_cast<const unsigned char*>(tokens + c), p, n)) continue;
        if (tracking_) s.key = (s.key & ~kEpochBits) | epoch_;  // used in this epoch
        count = c;
        return tokens;
      }
      if (s.key == 0) return nullptr;
    }
  }

  void insert(const unsigned char* p, std::size_t n, std::uint64_t head, std::uint64_t h, const Rank* tokens,
              std::uint32_t count) {
    const bool inline_token = is_inline(n, count);  // most pieces: the slot alone holds them
    const std::size_t words = arena_words(n, count);
    if (4 * (entries_ + 1) > 3 * slots_.size()) grow();
    if (arena_.size() + words > kArenaWords) clear();
    std::size_t i = h >> shift_;
    while (slots_[i].key != 0) i = (i + 1) & mask_;
    Slot& s = slots_[i];
    s = {head, key_of(n, h, count) | epoch_, inline_token ? tokens[0] : static_cast<std::uint32_t>(arena_.size())};
    if (!inline_token) {
      arena_.insert(arena_.end(), tokens, tokens + count);
      if (n > 8) {
        const std::size_t at = arena_.size();
        arena_.resize(at + (n + 3) / 4);
        std::memcpy(arena_.data() + at, p, n);
      }
    }
    ++entries_;
    ++inserts_;
  }

  // Called once per encoded text with its length: the cache's clock. An epoch ends every
  // kEpochBytesPerSlot bytes per slot. After an epoch with many new pieces (the thread moved on to
  // other text: another language, code after prose), the next two epochs stamp the pieces they use;
  // if at their end a quarter or more of the pieces went unused, they are dropped and the table
  // rebuilt with the others (their arena data compacted): the new text's pieces then sit in a dense
  // table instead of among the stale ones (C++ core, o200k count after the other categories in the
  // same thread: code +5-10%, German +10-25%). The stamps are written only in those epochs: a store
  // per hit in every epoch cost English 10%. An epoch covers at least one pass over a text that
  // fills the table, so a repeated text's own pieces are never dropped. Two epochs, not one:
  // documents that come back after more than an epoch (a pass over 2 MB of varied English fills
  // 21,000 of 32,768 slots, an epoch is 1 MB, a third of the pieces went unused in one) were
  // dropped at every tracked epoch's end and merged again in the next (o200k count 150-200 MB/s
  // there against 280 on 1 MB).
  //
  // It also reads the slots in order before a long text that follows an idle gap (see warm).
  void tick(std::size_t bytes) {
    if (bytes >= slots_.size() / 4) warm();
    bytes_ += bytes;
    if (bytes_ >= kEpochBytesPerSlot * slots_.size()) end_epoch();
  }

  PieceCache() : slots_(kMinSlots), mask_(kMinSlots - 1), shift_(64 - __builtin_ctzll(kMinSlots)) {}

  // Before a text of at least one byte per 4 slots, if this thread encoded no such text in the last
  // kIdleNs: reads the slot table (and the arena, when no larger) in order, one load per cache line.
  // After an idle gap the thread has done other work (other libraries, the garbage collector, a web
  // framework), so the table is likely out of the CPU caches, and such a text looks up a good share
  // of its lines at random, each a wait on memory; in order, the hardware prefetcher streams them
  // (1 MiB in ~50-100 us). When the table is still cached, this is one L2/L3 read per line (not
  // measured apart). Python benchmark (a gc.collect() and other libraries before each timed pass),
  // o200k, eight runs alternating with the previous code: median encode English +8%, code +17%,
  // German +12%; German count +20%.
  TOKENLANE_NOINLINE void warm() {
    const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch())
                                 .count();
    if (now - last_long_text_ns_ > kIdleNs) {
      const Slot* s = slots_.data();
      std::uint64_t x = 0;
      for (std::size_t i = 0; i < slots_.size(); i += 64 / sizeof(Slot)) x ^= s[i].head;
      // The arena too (the tokens of multi-token pieces, the bytes of long ones) when it is no larger
      // than the slots: a third of German pieces and a sixth of English ones read it on a hit.
      if (arena_.size() * sizeof(Rank) <= slots_.size() * sizeof(Slot)) {
        for (std::size_t i = 0; i < arena_.size(); i += 64 / sizeof(Rank)) x ^= arena_[i];
      }
      asm volatile("" : : "r"(x));  // the loads are the point; keep them
    }
    last_long_text_ns_ = now;
  }

  // The rank of token pair (a, b), remembered in a direct-mapped table (192 KiB, in L2) in front of
  // `lookup` (the vocabulary's pair table, megabytes): merging novel text asks about the same pairs
  // again and again (the characters of a script, a repeated run). Entries are facts about the
  // vocabulary, so they outlive a wipe of the piece table.
  template <class Lookup>
  Rank pair_rank(Rank a, Rank b, const Lookup& lookup) {
    if (!pairs_) pairs_ = std::make_unique<PairMemo>();
    const std::uint64_t key = (std::uint64_t{a} << 20 | b) + 1;
    const std::size_t i = (key * 0x9E3779B97F4A7C15ull) >> (64 - kPairMemoBits);
    if (pairs_->key[i] != key) {
      pairs_->key[i] = key;
      pairs_->rank[i] = lookup(a, b);
    }
    return pairs_->rank[i];
  }

 private:
  static constexpr std::size_t kMinSlots = std::size_t{1} << 12;
  static constexpr std::size_t kMaxSlots = std::size_t{1} << 18;     // 4 MiB of slots at most
  static constexpr std::size_t kArenaWords = std::size_t{1} << 21;   // 8 MiB of tokens and bytes
  static constexpr std::uint32_t kCountBits = 0xFF00;
  // The epoch (mod 8) in which a slot's piece was last used; an entry unused for 8 epochs can pass
  // for a used one, which only keeps it longer.
  static constexpr std::uint32_t kEpochBits = 0x70000, kEpochOne = 0x10000;
  static constexpr std::size_t kEpochBytesPerSlot = 32;
  // 16 bytes, so that the slots of a text's frequent pieces fit in the L2 cache.
  struct Slot {
    std::uint64_t head = 0;   // head_bytes of the piece
    std::uint32_t key = 0;    // length (bits 0-7), token count (8-15), epoch of last use (16-18), hash
                              // tag (19-31); 0: empty
    std::uint32_t value = 0;  // the token (one token, <= 8 bytes), else the arena offset of the
                              // tokens, followed by the piece's bytes when it is longer than 8
  };
  static std::uint32_t key_of(std::size_t n, std::uint64_t h, std::uint32_t count) {
    return static_cast<std::uint32_t>(n) | (count << 8) | (static_cast<std::uint32_t>(h >> 24) << 19);
  }
  static std::size_t length_of(const Slot& s) { return s.key & 0xFF; }
  static std::uint32_t count_of(const Slot& s) { return (s.key & kCountBits) >> 8; }
  // Whether the slot alone holds the piece's tokens (one token, up to 8 bytes). A select, not a branch.
  static bool is_inline(std::size_t n, std::uint32_t count) { return (count == 1) & (n <= 8); }
  // The arena words a piece takes: its tokens, then its bytes when longer than 8; none inline.
  static std::size_t arena_words(std::size_t n, std::uint32_t count) {
    return is_inline(n, count) ? 0 : count + (n > 8 ? (n + 3) / 4 : 0);
  }
  // Where a stored slot goes in the current table (its hash is recomputed from its bytes).
  std::size_t rehash_index(const Slot& s) const {
    const std::size_t n = length_of(s);
    const std::uint32_t c = count_of(s);
    const auto* bytes = n > 8 ? reinterpret_cast<const unsigned char*>(arena_.data() + s.value + c) : nullptr;
    return cache_hash(bytes, n, s.head) >> shift_;  // up to 8 bytes, the hash needs only the head
  }
  void grow() {
    if (slots_.size() >= kMaxSlots) return clear();
    rebuild(slots_.size() * 2, [](Slot&) { return true; });
  }
  // Moves the table to `size` slots, keeping the slots `keep` accepts (it may move their arena data).
  template <class Keep>
  void rebuild(std::size_t size, Keep keep) {
    std::vector<Slot> old(size);
    old.swap(slots_);
    mask_ = size - 1;
    shift_ = 64 - __builtin_ctzll(size);
    entries_ = 0;
    for (Slot s : old) {
      if (s.key == 0 || !keep(s)) continue;
      std::size_t i = rehash_index(s);
      while (slots_[i].key != 0) i = (i + 1) & mask_;
      slots_[i] = s;
      ++entries_;
    }
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    entries_ = 0;
  }
  void end_epoch() {
    if (tracking_ == 1) {  // the second tracked epoch ends
      std::size_t used = 0;
      for (const Slot& t : slots_) used += t.key != 0 && used_lately(t);
      if (4 * used <= 3 * entries_) {
        std::size_t size = kMinSlots;
        while (8 * used > 3 * size && size < slots_.size()) size *= 2;  // room to grow by half
        keep_used(size);
      }
    }
    if (tracking_ > 0) {
      --tracking_;
    } else if (slots_.size() > kMinSlots && 8 * inserts_ >= entries_) {
      tracking_ = 2;
    }
    epoch_ = (epoch_ + kEpochOne) & kEpochBits;
    inserts_ = 0;
    bytes_ = 0;
  }
  // Whether the slot's piece was used (or inserted) in this epoch or the one before.
  bool used_lately(const Slot& s) const {
    const std::uint32_t stamp = s.key & kEpochBits;
    return stamp == epoch_ || stamp == ((epoch_ - kEpochOne) & kEpochBits);
  }
  // Rebuilds the table with `size` slots and only the pieces used in the last two epochs, their
  // arena data compacted.
  void keep_used(std::size_t size) {
    std::vector<Rank> old_arena;
    old_arena.swap(arena_);
    rebuild(size, [&](Slot& s) {
      if (!used_lately(s)) return false;
      if (const std::size_t words = arena_words(length_of(s), count_of(s))) {
        const auto from = old_arena.begin() + s.value;
        s.value = static_cast<std::uint32_t>(arena_.size());
        arena_.insert(arena_.end(), from, from + words);
      }
      return true;
    });
  }
  std::vector<Slot> slots_;
  std::size_t mask_;
  int shift_;  // a hash's slot is its top log2(slots_.size()) bits
  std::vector<Rank> arena_;
  std::size_t entries_ = 0;
  std::size_t inserts_ = 0;      // pieces inserted in this epoch
  int tracking_ = 0;             // tracked epochs left, this one included: hits stamp their slot (see tick)
  std::size_t bytes_ = 0;        // bytes encoded in this epoch
  std::uint32_t epoch_ = 0;      // this epoch's number (mod 8) in the slots' epoch bits
  static constexpr std::int64_t kIdleNs = 2000000;  // 2 ms
  std::int64_t last_long_text_ns_ = 0;  // steady clock at the last text that called warm()
  static constexpr int kPairMemoBits = 14;
  struct PairMemo {
    std::uint64_t key[std::size_t{1} << kPairMemoBits];  // (a << 20 | b) + 1; 0: empty
    Rank rank[std::size_t{1} << kPairMemoBits];
  };
  std::unique_ptr<PairMemo> pairs_;  // zero-filled on first use
};

// `count` copies of one token in a row.
struct TokenRun {
  Rank token;
  std::uint32_t count;
};

class Vocabulary {
 public:
  // Parses a .tiktoken file; `specials` are added for decoding only (never produced by merges).
  static Vocabulary parse(const std::string& name, std::string_view contents,
                          const std::vector<std::pair<std::string, Rank>>& specials);
  // The same from (bytes, rank) pairs, e.g. tiktoken's `mergeable_ranks` dict.
  static Vocabulary from_tokens(const std::string& name, std::vector<std::pair<std::string, Rank>> tokens,
                                const std::vector<std::pair<std::string, Rank>>& specials);

  // The rank of exactly these bytes (ordinary tokens only), or kNoRank.
  Rank find_rank(const unsigned char* p, std::size_t n) const {
    std::uint64_t head = head_bytes(p, n);
    return find(p, n, head, hash_bytes(p, n, head));
  }
  std::int64_t find(const unsigned char* p, std::size_t n) const {
    Rank r = find_rank(p, n);
    return r == kNoRank ? -1 : static_cast<std::int64_t>(r);
  }

  // Bytes of a token (ordinary or special); a null view if the id is unknown.
  std::string_view token_bytes(Rank r) const {
    if (r >= spans_.size() || spans_[r].off == kAbsent) return {};
    return {arena_.data() + spans_[r].off, spans_[r].len};
  }
  // How many ids below the largest are in use (ordinary + special).
  std::size_t size() const { return spans_.size(); }

  // This thread's piece cache for this vocabulary; fetch once per call, not per piece.
  PieceCache& thread_cache() const;

  // For tests: the tokens of one piece by the general linear merge alone (no cache, no shortcut), and
  // by the run-length merge (empty when it declines the piece).
  std::vector<Rank> general_merge(std::string_view piece) const;
  std::vector<TokenRun> run_merge(std::string_view piece) const;

  // Pieces of ASCII digits. Both OpenAI patterns with digit pieces cut a number into \p{N}{1,3}, and
  // in cl100k_base and o200k_base every string of one to three ASCII digits is one token; the
  // pre-tokenizers hand such pieces over as such (see emit_digits in pretokenize.hpp), and their
  // tokens come from a table of 1,110 entries instead of the piece cache, where a thousand digit
  // pieces sit on a thousand cache lines among a text's other pieces. False for vocabularies where
  // some such string is not a token: their digit pieces take encode_piece.
  bool digits_are_tokens() const { return !digit_ranks_.empty(); }
  // The token of a piece of n (1-3) ASCII digits, when digits_are_tokens().
  Rank digit_rank(const unsigned char* p, std::size_t n) const {
    unsigned v = p[0] - '0';
    if (n > 1) v = v * 10 + (p[1] - '0');
    if (n > 2) v = v * 10 + (p[2] - '0');
    return digit_ranks_[kDigitOffset[n] + v];
  }
  // Appends the tokens of a run of ASCII digits cut into pieces of three from p (the last one to
  // three long) to `out`, when digits_are_tokens(). A count needs no lookup.
  template <class Out>
  void encode_digit_run(const unsigned char* p, std::size_t n, Out& out) const {
    if constexpr (!Out::kNeedsIds) {
      out.push_n(0, (n + 2) / 3);
    } else {
      const Rank* triples = digit_ranks_.data() + kDigitOffset[3];
      std::size_t k = 0;
      for (; k + 3 <= n; k += 3) out.push(triples[(p[k] - '0') * 100 + (p[k + 1] - '0') * 10 + (p[k + 2] - '0')]);
      if (k < n) out.push(digit_rank(p + k, n - k));
    }
  }

  // Appends the tokens of one piece to `out` (anything with push(Rank) and push_n(Rank, count)); the
  // bytes up to `end` are readable (the rest of the text).
  template <class Out>
  TOKENLANE_ALWAYS_INLINE void encode_piece(const unsigned char* p, std::size_t n, const unsigned char* end,
                                            PieceCache& cache, Out& out) const {
    // Pieces of every length take the same path: special cases for one- and two-byte pieces (a third
    // of the pieces of code, mixed with longer ones) cost a mispredicted branch per piece, more than
    // the cache lookup they save (measured: o200k count +20% on code, +8% on German).
    if (n > PieceCache::kMaxBytes) return encode_long_piece(p, n, cache, out);
    const std::uint64_t head = end - p >= 8 ? head_bytes_padded(p, n) : head_bytes(p, n);
    const std::uint64_t ch = cache_hash(p, n, head);
    std::uint32_t count = 0;
    if (const Rank* tokens = cache.find(p, n, head, ch, count)) {
      for (std::uint32_t i = 0; i < count; ++i) out.push(tokens[i]);
      return;
    }
    encode_missed_piece(p, n, head, ch, cache, out);
  }

 private:
  // encode_piece's cache miss, out of line: the hit path then inlines into the pre-tokenizer's loop
  // (C++ core, o200k count +2-4%, encode +0-2%).
  template <class Out>
  TOKENLANE_NOINLINE void encode_missed_piece(const unsigned char* p, std::size_t n, std::uint64_t head,
                                                    std::uint64_t ch, PieceCache& cache, Out& out) const {
    std::uint32_t count = 0;
    const std::uint64_t h = hash_bytes(p, n, head);  // the vocabulary's hash, on a miss only
    Rank tokens[PieceCache::kMaxBytes];
    tokens[0] = maybe_token(h) ? find(p, n, head, h) : kNoRank;
    if (tokens[0] != kNoRank) {
      count = 1;  // tiktoken's shortcut: a piece that is one token is not merged
    } else {
      count = static_cast<std::uint32_t>(merge_short(p, n, tokens, cache));
    }
    cache.insert(p, n, head, ch, tokens, count);
    for (std::uint32_t i = 0; i < count; ++i) out.push(tokens[i]);
  }

  // A piece too long for the cache: one token (tiktoken's shortcut; only pieces no longer than the
  // longest token are hashed, not a megabyte of blanks), runs of one byte, or anything else.
  template <class Out>
  TOKENLANE_NOINLINE void encode_long_piece(const unsigned char* p, std::size_t n, PieceCache& cache,
                                                 Out& out) const {
    if (n <= max_token_bytes_) {
      const std::uint64_t head = head_bytes(p, n);
      const std::uint64_t h = hash_bytes(p, n, head);
      const Rank whole = maybe_token(h) ? find(p, n, head, h) : kNoRank;
      if (whole != kNoRank) return out.push(whole);
    }
    if (const std::vector<TokenRun>* runs = merge_runs(p, n, cache)) {
      for (const TokenRun& run : *runs) out.push_n(run.token, run.count);
      return;
    }
    for (Rank r : merge_long(p, n, cache)) out.push(r);
  }

  static constexpr std::uint32_t kAbsent = 0xFFFFFFFFu;
  struct Span {
    std::uint32_t off = kAbsent;
    std::uint32_t len = 0;
  };
  // One ordinary token in the byte-string table: its first 8 bytes inline, so that most lookups
  // touch one cache line and compare one word.
  struct Slot {
    std::uint64_t head = 0;
    Rank rank = 0;
    std::uint32_t len = 0;  // 0: empty
  };

  Rank find(const unsigned char* p, std::size_t n, std::uint64_t head, std::uint64_t h) const {
    for (std::size_t i = h >> shift_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.len == n && s.head == head) {
        if (n <= 8) return s.rank;
        const auto* t = reinterpret_cast<const unsigned char*>(arena_.data()) + spans_[s.rank].off;
        if (equal_after_head(t, p, n)) return s.rank;
      } else if (s.len == 0) {
        return kNoRank;
      }
    }
  }

  // False when no ordinary token has hash h: most novel pieces (text never seen by the piece cache)
  // are not tokens, and this bit set (256 KiB) answers without a miss in the token table (megabytes).
  bool maybe_token(std::uint64_t h) const { return (token_bits_[(h >> 6) & kTokenBitsMask] >> (h & 63)) & 1; }
  static constexpr std::size_t kTokenBitsMask = (std::size_t{1} << 15) - 1;  // 2^21 bits

  // The rank of the concatenation of tokens a and b, or kNoRank.
  Rank pair_rank(Rank a, Rank b) const {
    const std::uint64_t key = (std::uint64_t{1} << 43) | (std::uint64_t{a} << 20) | b;
    if (!maybe_pair(key)) return kNoRank;
    for (std::size_t i = (key * 0x9E3779B97F4A7C15ull) >> pair_shift_;; i = (i + 1) & pair_mask_) {
      const std::uint64_t s = pairs_[i];
      if ((s >> 20) == key) return static_cast<Rank>(s & 0xFFFFF);
      if (s == 0) return kNoRank;
    }
  }

  // False when no two tokens make a token with this pair key. Merging novel text mostly asks about
  // pairs that are not tokens (random Latin-1: 98% of the pair lookups the memo misses); this bit set
  // (at most 1/8 full, 256-512 KiB) answers those without a miss in the pair table (megabytes).
  bool maybe_pair(std::uint64_t key) const {
    const std::uint64_t h = (key * 0xbf58476d1ce4e5b9ull) >> pair_bits_shift_;
    return (pair_bits_[h >> 6] >> (h & 63)) & 1;
  }

  // Merges a piece of 1..kMaxBytes bytes into `tokens`; returns how many.
  std::size_t merge_short(const unsigned char* p, std::size_t n, Rank* tokens, PieceCache& cache) const;
  // Merges a piece of any length (linear time).
  std::vector<Rank> merge_long(const unsigned char* p, std::size_t n, PieceCache& cache) const;
  // Merges a piece made of at most kMaxRuns runs of one byte, as runs of one token; nullptr (and no
  // work beyond O(n)) when the piece has more runs or its merges stop being run-shaped. The result
  // is this thread's buffer, valid until the next call.
  const std::vector<TokenRun>* merge_runs(const unsigned char* p, std::size_t n, PieceCache& cache) const;
  void build_tables(const std::string& name);
  void add_specials(const std::vector<std::pair<std::string, Rank>>& specials);

  std::string arena_;         // the bytes of every token, concatenated
  std::vector<Span> spans_;   // per rank: where its bytes are in arena_
  std::vector<Slot> slots_;   // ordinary tokens by bytes, open addressing
  std::size_t mask_ = 0;
  int shift_ = 64;
  std::vector<std::uint64_t> pairs_;  // (1 << 63 | a << 40 | b << 20 | rank of a+b); 0 = empty
  std::size_t pair_mask_ = 0;
  int pair_shift_ = 64;
  std::vector<std::uint64_t> pair_bits_;  // see maybe_pair
  int pair_bits_shift_ = 64;
  std::vector<Rank> byte_pair_;  // rank of every two-byte string (65536 entries), or kNoRank
  // The rank of each string of 1-3 ASCII digits, at kDigitOffset[length] + its value; empty unless
  // every one is a token (see digits_are_tokens).
  static constexpr std::size_t kDigitStrings = 10 + 100 + 1000;
  static constexpr std::uint32_t kDigitOffset[4] = {0, 0, 10, 110};
  std::vector<Rank> digit_ranks_;
  std::vector<std::uint64_t> token_bits_;  // see maybe_token
  Rank byte_rank_[256] = {};
  std::size_t max_token_bytes_ = 0;  // the longest ordinary token
  std::uint64_t id_ = 0;  // unique per loaded vocabulary; keys the per-thread piece caches
};

}  // namespace tokenlane::detail
