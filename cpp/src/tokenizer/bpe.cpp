#include "bpe.hpp"

#include <algorithm>
#include <atomic>

namespace tokenlane::detail {
namespace {

int base64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Appends the decoded bytes of a base64 field; false if it is malformed.
bool base64_decode(std::string_view in, std::string& out) {
  if (in.size() % 4 != 0) return false;
  for (std::size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      unsigned char c = static_cast<unsigned char>(in[i + k]);
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = 0;
        ++pad;
      } else if (pad > 0 || (v[k] = base64_value(c)) < 0) {
        return false;
      }
    }
    std::uint32_t w = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>(w >> 16));
    if (pad < 2) out.push_back(static_cast<char>((w >> 8) & 0xFF));
    if (pad < 1) out.push_back(static_cast<char>(w & 0xFF));
  }
  return true;
}

// Leftmost smallest of a[0, n), n >= 1. Four independent minima keep the loop free of a
// dependency chain (and let the compiler vectorize it); the index is found in a second pass.
std::size_t argmin(const Rank* a, std::size_t n) {
  Rank m0 = a[0], m1 = a[0], m2 = a[0], m3 = a[0];
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    m0 = std::min(m0, a[i]);
    m1 = std::min(m1, a[i + 1]);
    m2 = std::min(m2, a[i + 2]);
    m3 = std::min(m3, a[i + 3]);
  }
  for (; i < n; ++i) m0 = std::min(m0, a[i]);
  const Rank m = std::min(std::min(m0, m1), std::min(m2, m3));
  std::size_t k = 0;
  while (a[k] != m) ++k;
  return k;
}

[[noreturn]] void corrupt(const std::string& name, std::size_t line, const std::string& what) {
  throw Error(ErrorCode::vocab_corrupt,
              "rank file for " + name + ", line " + std::to_string(line) + ": " + what);
}

}  // namespace

Vocabulary Vocabulary::parse(const std::string& name, std::string_view contents,
                             const std::vector<std::pair<std::string, Rank>>& specials) {
  Vocabulary v;
  std::size_t line_no = 0;
  while (!contents.empty()) {
    ++line_no;
    std::size_t eol = contents.find('\n');
    std::string_view line = contents.substr(0, eol);
    contents.remove_prefix(eol == std::string_view::npos ? contents.size() : eol + 1);
    if (line.empty()) continue;
    std::size_t sp = line.find(' ');
    if (sp == std::string_view::npos) corrupt(name, line_no, "expected '<base64> <rank>'");
    std::uint64_t rank = 0;
    std::string_view digits = line.substr(sp + 1);
    if (digits.empty() || digits.size() > 9) corrupt(name, line_no, "bad rank");
    for (char c : digits) {
      if (c < '0' || c > '9') corrupt(name, line_no, "bad rank");
      rank = rank * 10 + static_cast<std::uint64_t>(c - '0');
    }
    if (rank >= kMaxRanks) corrupt(name, line_no, "rank above " + std::to_string(kMaxRanks - 1));
    std::size_t off = v.arena_.size();
    if (!base64_decode(line.substr(0, sp), v.arena_) || v.arena_.size() == off) {
      corrupt(name, line_no, "bad base64 token");
    }
    if (rank >= v.spans_.size()) v.spans_.resize(rank + 1);
    if (v.spans_[rank].off != kAbsent) corrupt(name, line_no, "duplicate rank");
    v.spans_[rank] = {static_cast<std::uint32_t>(off), static_cast<std::uint32_t>(v.arena_.size() - off)};
  }
  v.build_tables(name);
  v.add_specials(specials);
  return v;
}

Vocabulary Vocabulary::from_tokens(const std::string& name, std::vector<std::pair<std::string, Rank>> tokens,
                                   const std::vector<std::pair<std::string, Rank>>& specials) {
  Vocabulary v;
  for (const auto& [bytes, rank] : tokens) {
    if (rank >= kMaxRanks) corrupt(name, 0, "rank " + std::to_string(rank) + " is above " + std::to_string(kMaxRanks - 1));
    if (bytes.empty()) corrupt(name, rank, "empty token");
    if (rank >= v.spans_.size()) v.spans_.resize(rank + 1);
    if (v.spans_[rank].off != kAbsent) corrupt(name, rank, "duplicate rank");
    v.spans_[rank] = {static_cast<std::uint32_t>(v.arena_.size()), static_cast<std::uint32_t>(bytes.size())};
    v.arena_.append(bytes);
  }
  v.build_tables(name);
  v.add_specials(specials);
  return v;
}

void Vocabulary::add_specials(const std::vector<std::pair<std::string, Rank>>& specials) {
  for (const auto& [text, rank] : specials) {
    if (rank >= spans_.size()) spans_.resize(rank + 1);
    std::size_t off = arena_.size();
    arena_.append(text);
    spans_[rank] = {static_cast<std::uint32_t>(off), static_cast<std::uint32_t>(text.size())};
  }
}

void Vocabulary::build_tables(const std::string& name) {
  static std::atomic<std::uint64_t> next_id{1};
  id_ = next_id.fetch_add(1);
  const auto* bytes = reinterpret_cast<const unsigned char*>(arena_.data());

  // Tokens by bytes, at load factor <= 0.5.
  std::size_t ordinary = 0;
  for (const Span& t : spans_) ordinary += t.off != kAbsent;
  std::size_t cap = 1;
  int bits = 0;
  while (cap < 2 * ordinary + 2) cap <<= 1, ++bits;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  shift_ = 64 - bits;
  token_bits_.assign(kTokenBitsMask + 1, 0);
  for (Rank r = 0; r < spans_.size(); ++r) {
    const Span& t = spans_[r];
    if (t.off == kAbsent) continue;
    const unsigned char* p = bytes + t.off;
    if (find_rank(p, t.len) != kNoRank) corrupt(name, r, "the same bytes appear under two ranks");
    std::uint64_t head = head_bytes(p, t.len);
    const std::uint64_t h = hash_bytes(p, t.len, head);
    token_bits_[(h >> 6) & kTokenBitsMask] |= std::uint64_t{1} << (h & 63);
    max_token_bytes_ = std::max<std::size_t>(max_token_bytes_, t.len);
    std::size_t i = h >> shift_;
    while (slots_[i].len != 0) i = (i + 1) & mask_;
    slots_[i] = {head, r, t.len};
  }
  for (int b = 0; b < 256; ++b) {
    unsigned char c = static_cast<unsigned char>(b);
    Rank r = find_rank(&c, 1);
    if (r == kNoRank) corrupt(name, 0, "byte " + std::to_string(b) + " has no rank");
    byte_rank_[b] = r;
  }

  // Every split of every token into two tokens: the merges BPE can ever ask about.
  std::vector<std::uint64_t> found;
  for (Rank r = 0; r < spans_.size(); ++r) {
    const Span& t = spans_[r];
    if (t.off == kAbsent) continue;
    const unsigned char* p = bytes + t.off;
    for (std::uint32_t k = 1; k < t.len; ++k) {
      Rank a = find_rank(p, k);
      if (a == kNoRank) continue;
      Rank b = find_rank(p + k, t.len - k);
      if (b == kNoRank) continue;
      found.push_back((std::uint64_t{1} << 63) | (std::uint64_t{a} << 40) | (std::uint64_t{b} << 20) | r);
    }
  }
  cap = 1;
  bits = 0;
  while (cap < 2 * found.size() + 2) cap <<= 1, ++bits;
  pairs_.assign(cap, 0);
  pair_mask_ = cap - 1;
  pair_shift_ = 64 - bits;
  std::size_t filter_bits = 64;
  int filter_log = 6;
  while (filter_bits < 8 * found.size()) filter_bits <<= 1, ++filter_log;
  pair_bits_.assign(filter_bits / 64, 0);
  pair_bits_shift_ = 64 - filter_log;
  for (std::uint64_t e : found) {
    std::uint64_t key = e >> 20;
    std::size_t i = (key * 0x9E3779B97F4A7C15ull) >> pair_shift_;
    while (pairs_[i] != 0) i = (i + 1) & pair_mask_;
    pairs_[i] = e;
    const std::uint64_t h = (key * 0xbf58476d1ce4e5b9ull) >> pair_bits_shift_;
    pair_bits_[h >> 6] |= std::uint64_t{1} << (h & 63);
  }
  byte_pair_.resize(65536);
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) byte_pair_[(a << 8) | b] = pair_rank(byte_rank_[a], byte_rank_[b]);
  }

  // Every string of one, two and three ASCII digits, leading zeros included, when each is one token
  // (tiktoken's whole-piece shortcut then gives that token without merging); else no table.
  digit_ranks_.clear();
  std::vector<Rank> digits(kDigitStrings);
  for (std::size_t len = 1; len <= 3; ++len) {
    const unsigned limit = len == 1 ? 10 : len == 2 ? 100 : 1000;
    for (unsigned v = 0; v < limit; ++v) {
      unsigned char d[3];
      for (std::size_t k = len, x = v; k-- > 0; x /= 10) d[k] = static_cast<unsigned char>('0' + x % 10);
      const Rank r = find_rank(d, len);
      if (r == kNoRank) return;
      digits[kDigitOffset[len] + v] = r;
    }
  }
  digit_ranks_ = std::move(digits);
}

PieceCache& Vocabulary::thread_cache() const {
  // A few vocabularies per thread (an app may count with o200k and cl100k in turn); the oldest goes.
  struct Caches {
    std::uint64_t id[4] = {};
    std::unique_ptr<PieceCache> cache[4];
    unsigned next = 0;
  };
  thread_local Caches caches;
  for (int k = 0; k < 4; ++k) {
    if (caches.id[k] == id_) return *caches.cache[k];
  }
  unsigned k = caches.next++ % 4;
  caches.id[k] = id_;
  caches.cache[k] = std::make_unique<PieceCache>();
  return *caches.cache[k];
}

std::size_t Vocabulary::merge_short(const unsigned char* p, std::size_t n, Rank* tok, PieceCache& cache) const {
  auto rank_of = [&](Rank a, Rank b) { return cache.pair_rank(a, b, [this](Rank x, Rank y) { return pair_rank(x, y); }); };
  // Part i has token tok[i]; pair[i] is the rank of parts i and i+1 merged (kNoRank: not a token).
  Rank pair[PieceCache::kMaxBytes];
  std::size_t m = n;
  for (std::size_t i = 0; i < n; ++i) tok[i] = byte_rank_[p[i]];
  for (std::size_t i = 0; i + 1 < n; ++i) pair[i] = byte_pair_[(p[i] << 8) | p[i + 1]];
  pair[n - 1] = kNoRank;
  while (m > 1) {
    std::size_t best = argmin(pair, m - 1);
    if (pair[best] == kNoRank) break;
    tok[best] = pair[best];
    --m;
    std::memmove(tok + best + 1, tok + best + 2, (m - best - 1) * sizeof tok[0]);
    std::memmove(pair + best + 1, pair + best + 2, (m - best - 1) * sizeof pair[0]);
    if (best + 1 < m) pair[best] = rank_of(tok[best], tok[best + 1]);
    else pair[best] = kNoRank;
    if (best > 0) pair[best - 1] = rank_of(tok[best - 1], tok[best]);
  }
  return m;
}

namespace {

// Pending merges of one long piece, ordered exactly like tiktoken: lowest rank first, then leftmost.
// One bucket of positions per rank plus a three-level bitmap of non-empty buckets, so the next
// merge is found in O(1) instead of a heap's O(log n) cache misses. Reused per thread.
class MergeQueue {
 public:

  void reset(std::size_t n_ranks) {
    if (buckets_.size() < n_ranks) {
      buckets_.resize(n_ranks);
      l0_.assign((n_ranks + 63) / 64, 0);
      l1_.assign((l0_.size() + 63) / 64, 0);
    }
    for (Rank r : touched_) buckets_[r] = Bucket{};  // leave nothing behind from an aborted run
    touched_.clear();
    l2_ = 0;
    std::fill(l0_.begin(), l0_.end(), 0);
    std::fill(l1_.begin(), l1_.end(), 0);
  }

  void push(Rank rank, std::uint32_t pos) {
    Bucket& b = buckets_[rank];
    if (b.head == b.pos.size()) {
      if (b.pos.empty()) touched_.push_back(rank);
      b.pos.clear();
      b.head = 0;
      b.sorted = true;
      l0_[rank >> 6] |= bit(rank);
      l1_[rank >> 12] |= bit(rank >> 6);
      l2_ |= bit(rank >> 12);
    } else if (pos < b.pos.back()) {
      b.sorted = false;
    }
    b.pos.push_back(pos);
  }

  // Pops the (rank, position) that comes first; false when empty. `ahead` receives a position
  // this bucket pops a few pops later (or `pos`), for the caller to prefetch: a long piece's merges
  // of one rank are scattered over its nodes, and each would otherwise wait for a cache miss.
  bool pop(Rank& rank, std::uint32_t& pos, std::uint32_t& ahead) {
    if (l2_ == 0) return false;
    std::size_t w2 = ctz(l2_);
    std::size_t w1 = (w2 << 6) | ctz(l1_[w2]);
    rank = static_cast<Rank>((w1 << 6) | ctz(l0_[w1]));
    Bucket& b = buckets_[rank];
    if (!b.sorted) {
      std::sort(b.pos.begin() + static_cast<std::ptrdiff_t>(b.head), b.pos.end());
      b.sorted = true;
    }
    pos = b.pos[b.head++];
    ahead = b.head + kLookahead < b.pos.size() ? b.pos[b.head + kLookahead] : pos;
    if (b.head == b.pos.size()) {
      if ((l0_[w1] &= ~bit(rank)) == 0 && (l1_[w2] &= ~bit(static_cast<Rank>(w1))) == 0) {
        l2_ &= ~bit(static_cast<Rank>(w2));
      }
    }
    return true;
  }

 private:
  static constexpr std::size_t kLookahead = 8;
  struct Bucket {
    std::vector<std::uint32_t> pos;
    std::size_t head = 0;
    bool sorted = true;
  };
  static std::uint64_t bit(std::size_t i) { return std::uint64_t{1} << (i & 63); }
  static std::size_t ctz(std::uint64_t w) { return static_cast<std::size_t>(__builtin_ctzll(w)); }

  std::vector<Bucket> buckets_;
  std::vector<Rank> touched_;
  std::vector<std::uint64_t> l0_, l1_;
  std::uint64_t l2_ = 0;
};

}  // namespace

namespace {

// merge_runs takes pieces of at most this many runs of one byte (a word of one letter, with its
// leading blank; a run of blanks or dashes before a newline) and gives up when merging has split
// them into more than kMaxBlocks runs of one token (it never has on cl100k_base or o200k_base).
constexpr std::size_t kMaxRuns = 8;
constexpr std::size_t kMaxBlocks = 64;

}  // namespace

const std::vector<TokenRun>* Vocabulary::merge_runs(const unsigned char* p, std::size_t n,
                                                    PieceCache& cache) const {
  thread_local std::vector<TokenRun> runs;
  runs.clear();
  if (n >= (std::size_t{1} << 32)) return nullptr;
  for (std::size_t i = 0; i < n;) {  // the runs of equal bytes, eight bytes per compare
    if (runs.size() == kMaxRuns) return nullptr;
    const unsigned char c = p[i];
    const std::uint64_t all_c = 0x0101010101010101ull * c;
    std::size_t j = i + 1;
    while (j + 8 <= n && load64(p + j) == all_c) j += 8;
    while (j < n && p[j] == c) ++j;
    runs.push_back({byte_rank_[c], static_cast<std::uint32_t>(j - i)});
    i = j;
  }
  auto rank_of = [&](Rank a, Rank b) { return cache.pair_rank(a, b, [this](Rank x, Rank y) { return pair_rank(x, y); }); };
  // This is tiktoken's loop (merge the lowest-ranked adjacent pair, leftmost first) on a list of
  // runs, where one step may do many of its merges at once. Every step merges at least one pair, so
  // there are fewer than n; the cap gives up early on a piece whose merges are not run-shaped.
  const std::size_t max_steps = 64 + n / 16;
  for (std::size_t step = 0;; ++step) {
    if (step > max_steps || runs.size() > kMaxBlocks) return nullptr;
    // The next pair. A run of count >= 2 holds equal pairs, its first one leftmost; it comes before
    // the pair across the run's right boundary.
    Rank best = kNoRank;
    std::size_t at = 0;
    bool inside = false;
    for (std::size_t j = 0; j < runs.size(); ++j) {
      if (runs[j].count >= 2) {
        const Rank r = rank_of(runs[j].token, runs[j].token);
        if (r < best) best = r, at = j, inside = true;
      }
      if (j + 1 < runs.size()) {
        const Rank r = rank_of(runs[j].token, runs[j + 1].token);
        if (r < best) best = r, at = j, inside = false;
      }
    }
    if (best == kNoRank) break;
    const Rank merged = best;  // a pair's rank is the id of the merged token
    if (inside) {
      // A run of k tokens a. tiktoken merges its pairs (0,1), (2,3), ... one by one as long as no
      // pair made on the way ranks at or below `best` (all others rank above it or lie to the right):
      // (before, aa) once, (aa, a) after each merge but the last, (aa, aa) once there are two. Then
      // all k/2 merges are one step; else only the first is.
      const Rank a = runs[at].token;
      const std::uint32_t k = runs[at].count;
      std::uint32_t merges = k / 2;
      auto at_or_below = [&](Rank r) { return r != kNoRank && r <= best; };
      if (merges >= 2 && ((at > 0 && at_or_below(rank_of(runs[at - 1].token, merged))) ||
                          at_or_below(rank_of(merged, a)) || (merges >= 3 && at_or_below(rank_of(merged, merged))))) {
        merges = 1;
      }
      runs[at] = {merged, merges};
      if (k > 2 * merges) runs.insert(runs.begin() + static_cast<std::ptrdiff_t>(at) + 1, TokenRun{a, k - 2 * merges});
    } else {  // the last token of run `at` with the first of the next
      --runs[at].count;
      --runs[at + 1].count;
      runs.insert(runs.begin() + static_cast<std::ptrdiff_t>(at) + 1, TokenRun{merged, 1});
    }
    std::size_t kept = 0;  // drop emptied runs, join neighbours of one token
    for (const TokenRun& run : runs) {
      if (run.count == 0) continue;
      if (kept > 0 && runs[kept - 1].token == run.token) {
        runs[kept - 1].count += run.count;
      } else {
        runs[kept++] = run;
      }
    }
    runs.resize(kept);
  }
  return &runs;
}

std::vector<Rank> Vocabulary::general_merge(std::string_view piece) const {
  const auto* p = reinterpret_cast<const unsigned char*>(piece.data());
  if (piece.size() <= 1) return piece.empty() ? std::vector<Rank>{} : std::vector<Rank>{byte_rank_[p[0]]};
  return merge_long(p, piece.size(), thread_cache());
}

std::vector<TokenRun> Vocabulary::run_merge(std::string_view piece) const {
  const auto* runs = merge_runs(reinterpret_cast<const unsigned char*>(piece.data()), piece.size(), thread_cache());
  return runs ? *runs : std::vector<TokenRun>{};
}

std::vector<Rank> Vocabulary::merge_long(const unsigned char* p, std::size_t n, PieceCache& cache) const {
  // Parts are linked by their first byte position; node[i].pair is the rank of the part at i merged
  // with its successor. Queue entries go stale when a pair changes and are then skipped. The node
  // fields live together so that one merge touches few cache lines.
  struct Node {
    std::uint32_t next, prev;
    Rank tok, pair;
  };
  thread_local MergeQueue queue;
  queue.reset(spans_.size());
  std::vector<Node> node(n);
  for (std::size_t i = 0; i < n; ++i) {
    node[i] = {static_cast<std::uint32_t>(i + 1), static_cast<std::uint32_t>(i - 1), byte_rank_[p[i]], kNoRank};
  }
  auto rank_of = [&](Rank a, Rank b) { return cache.pair_rank(a, b, [this](Rank x, Rank y) { return pair_rank(x, y); }); };
  auto update = [&](std::uint32_t i) {
    Node& a = node[i];
    a.pair = a.next < n ? rank_of(a.tok, node[a.next].tok) : kNoRank;
    if (a.pair != kNoRank) queue.push(a.pair, i);
  };
  for (std::uint32_t i = 0; i + 1 < n; ++i) {  // byte pairs: straight from the 64K table
    node[i].pair = byte_pair_[(p[i] << 8) | p[i + 1]];
    if (node[i].pair != kNoRank) queue.push(node[i].pair, i);
  }
  Rank r;
  std::uint32_t i, ahead;
  while (queue.pop(r, i, ahead)) {
    __builtin_prefetch(&node[ahead]);
    Node& a = node[i];
    if (a.tok == kNoRank || a.pair != r) continue;
    Node& b = node[a.next];
    a.tok = r;
    b.tok = kNoRank;
    a.next = b.next;
    if (b.next < n) node[b.next].prev = i;
    update(i);
    if (i > 0) update(a.prev);
  }
  std::vector<Rank> out;
  for (std::uint32_t k = 0; k < n; k = node[k].next) out.push_back(node[k].tok);
  return out;
}

}  // namespace tokenlane::detail
