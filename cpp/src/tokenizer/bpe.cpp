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

[[noreturn]] void corrupt(const std::string& name, std::size_t line, const std::string& what) {
  throw Error(ErrorCode::vocab_corrupt,
              "rank file for " + name + ", line " + std::to_string(line) + ": " + what);
}

}  // namespace

Vocabulary Vocabulary::parse(const std::string& name, std::string_view contents,
                             const std::vector<std::pair<std::string, Rank>>& specials) {
  static std::atomic<std::uint64_t> next_id{1};
  Vocabulary v;
  v.id_ = next_id.fetch_add(1);
  std::size_t line_no = 0;
  std::size_t ordinary = 0;
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
    std::size_t off = v.arena_.size();
    if (!base64_decode(line.substr(0, sp), v.arena_) || v.arena_.size() == off) {
      corrupt(name, line_no, "bad base64 token");
    }
    if (rank >= v.spans_.size()) v.spans_.resize(rank + 1);
    if (v.spans_[rank].off != kAbsent) corrupt(name, line_no, "duplicate rank");
    v.spans_[rank] = {static_cast<std::uint32_t>(off), static_cast<std::uint32_t>(v.arena_.size() - off)};
    ++ordinary;
  }

  // Hash table at load factor <= 0.5.
  std::size_t cap = 1;
  int bits = 0;
  while (cap < 2 * ordinary + 2) cap <<= 1, ++bits;
  v.slots_.assign(cap, 0);
  v.mask_ = cap - 1;
  v.shift_ = 64 - bits;
  for (Rank r = 0; r < v.spans_.size(); ++r) {
    const Span& t = v.spans_[r];
    if (t.off == kAbsent) continue;
    const auto* p = reinterpret_cast<const unsigned char*>(v.arena_.data() + t.off);
    if (v.find(p, t.len) >= 0) corrupt(name, r, "the same bytes appear under two ranks");
    std::uint64_t h = hash(p, t.len);
    std::size_t i = h >> v.shift_;
    while (v.slots_[i] != 0) i = (i + 1) & v.mask_;
    v.slots_[i] = (std::uint64_t{static_cast<std::uint32_t>(h)} << 32) | (std::uint64_t{r} + 1);
  }
  for (int b = 0; b < 256; ++b) {
    unsigned char c = static_cast<unsigned char>(b);
    std::int64_t r = v.find(&c, 1);
    if (r < 0) corrupt(name, 0, "byte " + std::to_string(b) + " has no rank");
    v.byte_rank_[b] = static_cast<Rank>(r);
  }

  for (const auto& [text, rank] : specials) {
    if (rank >= v.spans_.size()) v.spans_.resize(rank + 1);
    std::size_t off = v.arena_.size();
    v.arena_.append(text);
    v.spans_[rank] = {static_cast<std::uint32_t>(off), static_cast<std::uint32_t>(text.size())};
  }
  return v;
}

namespace {

// Pending merges of one long piece, ordered exactly like tiktoken: lowest rank first, then leftmost.
// One bucket of positions per rank plus a three-level bitmap of non-empty buckets, so the next
// merge is found in O(1) instead of a heap's O(log n) cache misses. Reused per thread.
class MergeQueue {
 public:
  static constexpr std::size_t kMaxRanks = std::size_t{1} << 18;  // three 64-way bitmap levels

  void reset(std::size_t n_ranks) {
    if (n_ranks > kMaxRanks) {
      throw Error(ErrorCode::invalid_argument, "vocabularies above 262144 ranks are not supported");
    }
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

  // Pops the (rank, position) that comes first; false when empty.
  bool pop(Rank& rank, std::uint32_t& pos) {
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
    if (b.head == b.pos.size()) {
      if ((l0_[w1] &= ~bit(rank)) == 0 && (l1_[w2] &= ~bit(static_cast<Rank>(w1))) == 0) {
        l2_ &= ~bit(static_cast<Rank>(w2));
      }
    }
    return true;
  }

 private:
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

std::vector<Rank> Vocabulary::merge_long(const unsigned char* p, std::size_t n) const {
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
  // Long pieces repeat the same token pairs (runs of one character, indentation, digit runs), so pair
  // lookups are memoised by (left token, right token) in a small direct-mapped table.
  std::size_t memo_size = 64;
  while (memo_size < n && memo_size < 4096) memo_size <<= 1;
  std::vector<std::uint64_t> memo_key(memo_size, ~std::uint64_t{0});
  std::vector<Rank> memo_rank(memo_size);
  auto update = [&](std::uint32_t i) {
    Node& a = node[i];
    if (a.next >= n) {
      a.pair = kNoRank;
      return;
    }
    const Node& b = node[a.next];
    std::uint64_t key = (std::uint64_t{a.tok} << 32) | b.tok;
    std::size_t slot = static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> 40) & (memo_size - 1);
    if (memo_key[slot] != key) {
      memo_key[slot] = key;
      memo_rank[slot] = find_rank(p + i, (b.next < n ? b.next : n) - i);
    }
    a.pair = memo_rank[slot];
    if (a.pair != kNoRank) queue.push(a.pair, i);
  };
  for (std::uint32_t i = 0; i + 1 < n; ++i) update(i);
  Rank r;
  std::uint32_t i;
  while (queue.pop(r, i)) {
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
