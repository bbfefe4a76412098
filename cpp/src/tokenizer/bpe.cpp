#include "bpe.hpp"

#include <queue>

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
  Vocabulary v;
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

std::vector<Rank> Vocabulary::merge_long(const unsigned char* p, std::size_t n) const {
  // Nodes are byte positions of current parts, linked through next/prev. pair[i] is the rank of the
  // part at i merged with its successor; heap entries (rank << 32 | i) go stale when pair[i] changes.
  std::vector<std::uint32_t> next(n), prev(n);
  std::vector<Rank> tok(n), pair(n, kNoRank);
  std::vector<std::uint64_t> heap;
  heap.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    next[i] = static_cast<std::uint32_t>(i + 1);
    prev[i] = static_cast<std::uint32_t>(i - 1);
    tok[i] = byte_rank_[p[i]];
  }
  auto end_of = [&](std::uint32_t i) -> std::uint32_t { return next[i] < n ? next[next[i]] : n; };
  auto update = [&](std::uint32_t i) {
    pair[i] = next[i] < n ? find_rank(p + i, end_of(i) - i) : kNoRank;
    if (pair[i] != kNoRank) heap.push_back((std::uint64_t{pair[i]} << 32) | i);
  };
  for (std::uint32_t i = 0; i + 1 < n; ++i) update(i);
  auto later = [](std::uint64_t a, std::uint64_t b) { return a > b; };
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    std::uint64_t top = heap.back();
    heap.pop_back();
    auto i = static_cast<std::uint32_t>(top);
    Rank r = static_cast<Rank>(top >> 32);
    if (tok[i] == kNoRank || pair[i] != r) continue;
    std::uint32_t j = next[i];
    tok[i] = r;
    tok[j] = kNoRank;
    next[i] = next[j];
    if (next[j] < n) prev[next[j]] = i;
    std::size_t before = heap.size();
    update(i);
    if (i > 0) update(prev[i]);
    for (std::size_t k = before; k < heap.size(); ++k) {
      std::push_heap(heap.begin(), heap.begin() + static_cast<std::ptrdiff_t>(k) + 1, later);
    }
  }
  std::vector<Rank> out;
  for (std::uint32_t i = 0; i < n; i = next[i]) out.push_back(tok[i]);
  return out;
}

}  // namespace tokenlane::detail
