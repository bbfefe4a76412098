// An ordered set with O(log n) insert, erase and rank (elements before a key): queue positions for
// 100k-deep queues, and the scheduler's other ordered sets.
//
// A counted B+tree. Why not a red-black tree with subtree sizes: each of its ~17 levels at 100k
// elements is a separate heap node, so an insert with a random key (cost_priority, deadline, default)
// is a chain of cache misses plus an allocation. Here a node holds up to 64 keys contiguously, the
// tree is 3 levels deep at 100k, nodes live in pools (no allocation once warm) and insert returns
// the new element's rank from the same descent.
//
// A leaf's keys sit in keys[lo, lo + n): erasing the first element (a queue's head leaving, the
// usual erase) is ++lo instead of moving the other 63 keys, and an insert shifts the shorter side.
//
// Inner nodes keep, per child, a lower bound of its keys (`sep`) and its element count. Every key
// of child i is >= sep[i] and < sep[i + 1]; an erase may leave sep[i] below the child's smallest
// key, which keeps that true. Keys are unique (Less is a strict order with no ties among them).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <vector>

namespace tokenlane::detail {

template <class Key, class Less = std::less<Key>>
class OrderedIndex {
  static constexpr std::uint32_t kCap = 64;       // keys per leaf, children per inner node
  static constexpr std::uint32_t kMin = kCap / 4;  // below this a node merges with a sibling if they fit
  static constexpr std::uint32_t kNil = 0xffffffffu;

  struct Leaf {
    std::uint32_t n = 0, prev = kNil, next = kNil;
    std::uint32_t lo = 0;  // keys[lo, lo + n) are in use; lo is 0 when the leaf is full
    Key keys[kCap];
    Key* begin() { return keys + lo; }
    Key* end() { return keys + lo + n; }
    const Key* begin() const { return keys + lo; }
    const Key* end() const { return keys + lo + n; }
    // Moves the keys to keys[0, n) (before a split or a merge appends to them).
    void pack() {
      if (lo == 0) return;
      std::copy(keys + lo, keys + lo + n, keys);
      lo = 0;
    }
  };
  struct Inner {
    std::uint32_t n = 0;
    std::uint32_t child[kCap];
    std::uint32_t count[kCap];
    Key sep[kCap];
  };

 public:
  class iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = Key;
    using difference_type = std::ptrdiff_t;
    using pointer = const Key*;
    using reference = const Key&;
    const Key& operator*() const { return t_->leaves_[leaf_].keys[pos_]; }
    const Key* operator->() const { return &**this; }
    iterator& operator++() {
      const Leaf& l = t_->leaves_[leaf_];
      if (++pos_ == l.lo + l.n) {
        leaf_ = l.next;
        pos_ = leaf_ == kNil ? 0 : t_->leaves_[leaf_].lo;
      }
      return *this;
    }
    bool operator==(const iterator& o) const { return leaf_ == o.leaf_ && pos_ == o.pos_; }
    bool operator!=(const iterator& o) const { return !(*this == o); }

   private:
    friend class OrderedIndex;
    iterator(const OrderedIndex* t, std::uint32_t leaf)
        : t_(t), leaf_(leaf), pos_(leaf == kNil ? 0 : t->leaves_[leaf].lo) {}
    const OrderedIndex* t_;
    std::uint32_t leaf_;
    std::uint32_t pos_ = 0;  // index into the leaf's keys (from its lo)
  };

  // Inserts k, which must not be present.
  void insert(const Key& k) { insert_impl<false>(k); }
  // The same, returning k's rank (elements ordered before it) from the same descent.
  std::size_t insert_ranked(const Key& k) { return insert_impl<true>(k); }

  // Removes k; false if it was not there.
  bool erase(const Key& k) {
    if (size_ == 0) return false;
    if (eq(front(), k)) {  // the usual case (a queue's head leaves): no search on the way down
      erase_first(root_, height_);
    } else if (!erase_at(root_, height_, k)) {
      return false;
    }
    --size_;
    if (size_ == 0 && height_ > 0) {
      clear();
      return true;
    }
    while (height_ > 0 && inners_[root_].n == 1) {  // a root with one child: drop a level
      const std::uint32_t only = inners_[root_].child[0];
      free_inners_.push_back(root_);
      root_ = only;
      --height_;
    }
    return true;
  }

  // Replaces `from` (present) by `to` (not present). In a one-leaf tree (a few dozen tenants in
  // the tenant order, re-keyed twice per request) only the keys between the two places move.
  void replace(const Key& from, const Key& to) {
    if (height_ == 0 && size_ > 0) {
      Leaf& l = leaves_[root_];
      Key* keys = l.begin();
      const std::uint32_t i = lower(keys, l.n, from);
      if (i < l.n && eq(keys[i], from)) {
        const std::uint32_t j = lower(keys, l.n, to);  // counts `from` when from < to
        if (j > i) {
          std::copy(keys + i + 1, keys + j, keys + i);
          keys[j - 1] = to;
        } else {
          std::copy_backward(keys + j, keys + i, keys + i + 1);
          keys[j] = to;
        }
        return;
      }
    }
    erase(from);
    insert(to);
  }

  // Number of elements ordered before k (k need not be present).
  std::size_t rank(const Key& k) const {
    if (size_ == 0) return 0;
    std::size_t rank = 0;
    std::uint32_t node = root_;
    for (std::uint32_t h = height_; h > 0; --h) {
      const Inner& in = inners_[node];
      const std::uint32_t i = child_for(in, k);
      rank += counted(in, i);
      node = in.child[i];
    }
    const Leaf& l = leaves_[node];
    return rank + lower(l.begin(), l.n, k);
  }

  // The first element not ordered before k.
  iterator lower_bound(const Key& k) const {
    if (size_ == 0) return end();
    std::uint32_t node = root_;
    for (std::uint32_t h = height_; h > 0; --h) {
      const Inner& in = inners_[node];
      node = in.child[child_for(in, k)];
    }
    const Leaf& l = leaves_[node];
    const std::uint32_t at = lower(l.begin(), l.n, k);
    if (at == l.n) return iterator(this, l.next);  // past this leaf's keys: the next leaf's first
    iterator it(this, node);
    it.pos_ = l.lo + at;
    return it;
  }

  void clear() {
    leaves_.clear();
    inners_.clear();
    free_leaves_.clear();
    free_inners_.clear();
    root_ = first_ = kNil;
    height_ = 0;
    size_ = 0;
  }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const Key& front() const { return *leaves_[first_].begin(); }  // the smallest; not empty
  iterator begin() const { return iterator(this, size_ ? first_ : kNil); }
  iterator end() const { return iterator(this, kNil); }

 private:
  template <bool kRank>
  std::size_t insert_impl(const Key& k) {
    std::size_t rank = 0;
    if (root_ == kNil) {  // (an emptied one-leaf tree keeps its leaf)
      root_ = new_leaf();
      first_ = root_;
    }
    const Split s = insert_at<kRank>(root_, height_, k, rank);
    if (s.node != kNil) {  // the root split: grow a level
      const Key low = min_of(root_, height_);
      const std::uint32_t old = root_;
      const std::uint32_t left_count = static_cast<std::uint32_t>(size_ + 1 - s.count);
      root_ = new_inner();
      Inner& r = inners_[root_];
      r.n = 2;
      r.child[0] = old;
      r.count[0] = left_count;
      r.sep[0] = low;
      r.child[1] = s.node;
      r.count[1] = s.count;
      r.sep[1] = s.sep;
      ++height_;
    }
    ++size_;
    return rank;
  }

  struct Split {
    std::uint32_t node = kNil;  // the new right sibling, if the node split
    std::uint32_t count = 0;    // its element count
    Key sep{};                  // its smallest key
  };

  // Elements under the children before child i.
  static std::size_t counted(const Inner& in, std::uint32_t i) {
    std::size_t sum = 0;
    for (std::uint32_t j = 0; j < i; ++j) sum += in.count[j];
    return sum;
  }

  bool eq(const Key& a, const Key& b) const { return !less_(a, b) && !less_(b, a); }

  // lower: the first position in a[0, n) not less than k; upper: the first greater than k.
  std::uint32_t lower(const Key* a, std::uint32_t n, const Key& k) const {
    return static_cast<std::uint32_t>(std::lower_bound(a, a + n, k, less_) - a);
  }
  std::uint32_t upper(const Key* a, std::uint32_t n, const Key& k) const {
    return static_cast<std::uint32_t>(std::upper_bound(a, a + n, k, less_) - a);
  }

  // The child whose range holds k: the last with sep <= k (the first if k is below every sep).
  std::uint32_t child_for(const Inner& in, const Key& k) const {
    const std::uint32_t i = upper(in.sep, in.n, k);
    return i == 0 ? 0 : i - 1;
  }

  Key min_of(std::uint32_t node, std::uint32_t height) const {
    return height ? inners_[node].sep[0] : *leaves_[node].begin();
  }

  std::uint32_t new_leaf() {
    std::uint32_t id;
    if (!free_leaves_.empty()) {
      id = free_leaves_.back();
      free_leaves_.pop_back();
    } else {
      id = static_cast<std::uint32_t>(leaves_.size());
      leaves_.emplace_back();
    }
    Leaf& l = leaves_[id];
    l.n = l.lo = 0;
    l.prev = l.next = kNil;
    return id;
  }
  std::uint32_t new_inner() {
    std::uint32_t id;
    if (!free_inners_.empty()) {
      id = free_inners_.back();
      free_inners_.pop_back();
    } else {
      id = static_cast<std::uint32_t>(inners_.size());
      inners_.emplace_back();
    }
    inners_[id].n = 0;
    return id;
  }

  template <bool kRank>
  Split insert_at(std::uint32_t node, std::uint32_t height, const Key& k, std::size_t& rank) {
    if (height == 0) {
      std::uint32_t pos;
      {
        Leaf& l = leaves_[node];
        pos = lower(l.begin(), l.n, k);
        rank += pos;
        if (l.n < kCap) {
          if (l.lo > 0 && (pos < l.n - pos || l.lo + l.n == kCap)) {  // shift the front part left
            std::copy(l.begin(), l.begin() + pos, l.begin() - 1);
            --l.lo;
          } else {
            std::copy_backward(l.begin() + pos, l.end(), l.end() + 1);
          }
          l.begin()[pos] = k;
          ++l.n;
          return {};
        }
      }
      // Full: move the upper half to a new right sibling, then insert into the half that holds k.
      const std::uint32_t rid = new_leaf();  // may reallocate leaves_
      Leaf& l = leaves_[node];
      Leaf& r = leaves_[rid];
      const std::uint32_t half = kCap / 2;
      std::copy(l.keys + half, l.keys + kCap, r.keys);
      r.n = kCap - half;
      l.n = half;
      r.next = l.next;
      r.prev = node;
      if (l.next != kNil) leaves_[l.next].prev = rid;
      l.next = rid;
      Leaf& into = pos <= half ? l : r;
      const std::uint32_t at = pos <= half ? pos : pos - half;
      std::copy_backward(into.keys + at, into.keys + into.n, into.keys + into.n + 1);
      into.keys[at] = k;
      ++into.n;
      return Split{rid, r.n, r.keys[0]};
    }
    std::uint32_t i;
    std::uint32_t child;
    {
      Inner& in = inners_[node];
      i = child_for(in, k);
      if (less_(k, in.sep[i])) in.sep[i] = k;  // only for i == 0: a new smallest key
      if (kRank) rank += counted(in, i);
      child = in.child[i];
    }
    const Split s = insert_at<kRank>(child, height - 1, k, rank);
    {
      Inner& in = inners_[node];
      ++in.count[i];
      if (s.node == kNil) return {};
      in.count[i] -= s.count;
      if (in.n < kCap) {
        put(in, i + 1, s.node, s.count, s.sep);
        return {};
      }
    }
    const std::uint32_t rid = new_inner();  // may reallocate inners_
    Inner& in = inners_[node];
    Inner& r = inners_[rid];
    const std::uint32_t half = kCap / 2;
    std::copy(in.child + half, in.child + kCap, r.child);
    std::copy(in.count + half, in.count + kCap, r.count);
    std::copy(in.sep + half, in.sep + kCap, r.sep);
    r.n = kCap - half;
    in.n = half;
    if (i + 1 <= half) put(in, i + 1, s.node, s.count, s.sep);
    else put(r, i + 1 - half, s.node, s.count, s.sep);
    std::uint32_t moved = 0;
    for (std::uint32_t j = 0; j < r.n; ++j) moved += r.count[j];
    return Split{rid, moved, r.sep[0]};
  }

  static void put(Inner& in, std::uint32_t at, std::uint32_t child, std::uint32_t count, const Key& sep) {
    std::copy_backward(in.child + at, in.child + in.n, in.child + in.n + 1);
    std::copy_backward(in.count + at, in.count + in.n, in.count + in.n + 1);
    std::copy_backward(in.sep + at, in.sep + in.n, in.sep + in.n + 1);
    in.child[at] = child;
    in.count[at] = count;
    in.sep[at] = sep;
    ++in.n;
  }
  static void drop(Inner& in, std::uint32_t at) {
    std::copy(in.child + at + 1, in.child + in.n, in.child + at);
    std::copy(in.count + at + 1, in.count + in.n, in.count + at);
    std::copy(in.sep + at + 1, in.sep + in.n, in.sep + at);
    --in.n;
  }

  bool erase_at(std::uint32_t node, std::uint32_t height, const Key& k) {
    if (height == 0) {
      Leaf& l = leaves_[node];
      Key* it = l.begin() + lower(l.begin(), l.n, k);
      if (it == l.end() || !eq(*it, k)) return false;
      if (it - l.begin() < l.end() - it) {  // shift the front part right
        std::copy_backward(l.begin(), it, it + 1);
        ++l.lo;
      } else {
        std::copy(it + 1, l.end(), it);
      }
      if (--l.n == 0) l.lo = 0;
      return true;
    }
    const Inner& in = inners_[node];
    if (less_(k, in.sep[0])) return false;
    const std::uint32_t i = child_for(in, k);
    if (!erase_at(in.child[i], height - 1, k)) return false;
    --inners_[node].count[i];
    rebalance(node, height, i);
    return true;
  }

  void erase_first(std::uint32_t node, std::uint32_t height) {
    if (height == 0) {
      Leaf& l = leaves_[node];
      ++l.lo;
      if (--l.n == 0) l.lo = 0;
      return;
    }
    erase_first(inners_[node].child[0], height - 1);
    --inners_[node].count[0];
    rebalance(node, height, 0);
  }

  std::uint32_t node_size(std::uint32_t node, std::uint32_t height) const {
    return height ? inners_[node].n : leaves_[node].n;
  }

  // After an erase below child i of `node`: an empty child goes; a small one merges into a sibling
  // when both fit in one node (else both stay: the sibling is more than 3/4 full).
  void rebalance(std::uint32_t node, std::uint32_t height, std::uint32_t i) {
    Inner& in = inners_[node];
    const std::uint32_t ch = height - 1;
    const std::uint32_t n = node_size(in.child[i], ch);
    if (n == 0) {
      release(in.child[i], ch);
      drop(in, i);
      return;
    }
    if (n >= kMin || in.n < 2) return;
    const std::uint32_t left = i + 1 < in.n ? i : i - 1;  // merge the pair (left, left + 1)
    const std::uint32_t a = in.child[left], b = in.child[left + 1];
    if (node_size(a, ch) + node_size(b, ch) > kCap * 3 / 4) return;
    if (ch == 0) {
      Leaf& la = leaves_[a];
      Leaf& lb = leaves_[b];
      la.pack();
      std::copy(lb.begin(), lb.end(), la.keys + la.n);
      la.n += lb.n;
      lb.n = lb.lo = 0;
    } else {
      Inner& ia = inners_[a];
      Inner& ib = inners_[b];
      std::copy(ib.child, ib.child + ib.n, ia.child + ia.n);
      std::copy(ib.count, ib.count + ib.n, ia.count + ia.n);
      std::copy(ib.sep, ib.sep + ib.n, ia.sep + ia.n);
      ia.n += ib.n;
      ib.n = 0;
    }
    in.count[left] += in.count[left + 1];
    release(b, ch);
    drop(in, left + 1);
  }

  // Returns an emptied node to its pool (a leaf leaves the leaf chain).
  void release(std::uint32_t node, std::uint32_t height) {
    if (height) {
      free_inners_.push_back(node);
      return;
    }
    Leaf& l = leaves_[node];
    if (l.prev != kNil) leaves_[l.prev].next = l.next;
    else first_ = l.next;
    if (l.next != kNil) leaves_[l.next].prev = l.prev;
    free_leaves_.push_back(node);
  }

  std::vector<Leaf> leaves_;
  std::vector<Inner> inners_;
  std::vector<std::uint32_t> free_leaves_, free_inners_;
  std::uint32_t root_ = kNil, first_ = kNil, height_ = 0;
  std::size_t size_ = 0;
  Less less_{};
};

}  // namespace tokenlane::detail
