// A priority queue with exact order (front, erase of any element) whose inserts are appends: a
// tenant's queue of waiting requests, which needs its smallest key but never a rank or an in-order
// walk.
//
// Keys are grouped into buckets by a monotone function of the key (BucketOf: key order a < b implies
// bucket(a) <= bucket(b)). Only the front buckets, up to `horizon`, are kept in order, in a small
// OrderedIndex (`near`); every later key is appended, unsorted, to its bucket (`far`). When `near`
// runs empty, the first far bucket is sorted into it. A random insert into a deep queue therefore
// writes one line of a bucket instead of searching and shifting a cold B+tree leaf, and each key is
// sorted once, in a bucket of its neighbours, when it comes near the front.
//
// Erasing a far key leaves it in its bucket and counts the bucket stale; a stale bucket's keys are
// checked with the caller's `live(key)` when it is sorted in (dropping the erased ones, and keeping
// one of two equal keys: an element erased and inserted again before its bucket came near).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "ordered_index.hpp"

namespace tokenlane::detail {

template <class Key, class BucketOf, class Less = std::less<Key>>
class BucketQueue {
  using Bucket = decltype(BucketOf{}(std::declval<const Key&>()));

 public:
  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }
  const Key& front() const { return near_.front(); }  // the smallest; not empty

  // Inserts k, which must not be present.
  void insert(const Key& k) {
    const Bucket b = BucketOf{}(k);
    if (size_ == 0) {  // what is left in `far` is erased keys
      far_.clear();
      horizon_ = b;
    }
    ++size_;
    if (!(horizon_ < b)) {
      near_.insert(k);
    } else {
      far_[b].keys.push_back(k);
    }
  }

  // Removes k, which must be present. live(key) tells whether a key of a stale bucket is still
  // present (see above); it is called only while sorting a bucket in.
  template <class Live>
  void erase(const Key& k, const Live& live) {
    const Bucket b = BucketOf{}(k);
    --size_;
    if (!(horizon_ < b)) {
      near_.erase(k);
    } else {
      far_[b].stale++;
    }
    if (size_ == 0) {
      near_.clear();
      far_.clear();
      return;
    }
    while (near_.empty()) pull(live);
  }

 private:
  struct Far {
    std::vector<Key> keys;
    std::uint32_t stale = 0;  // erased keys still in `keys`
  };

  template <class Live>
  void pull(const Live& live) {
    auto it = far_.begin();
    horizon_ = it->first;
    std::vector<Key>& keys = it->second.keys;
    if (it->second.stale) {
      keys.erase(std::remove_if(keys.begin(), keys.end(), [&](const Key& k) { return !live(k); }), keys.end());
    }
    std::sort(keys.begin(), keys.end(), Less{});
    const Key* prev = nullptr;
    for (const Key& k : keys) {
      if (prev && !Less{}(*prev, k)) continue;  // the same key twice (erased and inserted again)
      near_.insert(k);
      prev = &k;
    }
    far_.erase(it);
  }

  OrderedIndex<Key, Less> near_;
  std::map<Bucket, Far> far_;
  Bucket horizon_{};
  std::size_t size_ = 0;
};

}  // namespace tokenlane::detail
