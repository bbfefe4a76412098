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
#include <memory>
#include <vector>

#include "ordered_index.hpp"

namespace tokenlane::detail {

// Unsorted buckets of keys by an ordered bucket id. The first kNear buckets (a few dozen: what a
// queue spread over minutes needs) are kept in one vector sorted by id, largest first, so finding
// one is a binary search in a line or two (a std::map walks a cold node per level) and the smallest
// leaves from the back; later ones wait in a std::map, which refills the vector when it empties, so
// a queue spread over days of buckets costs O(log) per bucket as before. Emptied buckets keep their
// key vectors for reuse.
template <class Bucket, class Key>
class Buckets {
 public:
  struct Far {
    Bucket id{};
    std::vector<Key> keys;
    std::uint32_t stale = 0;  // erased keys still in `keys` (BucketQueue)
  };
  bool empty() const { return near_.empty(); }  // (the map is empty whenever the vector is)
  Far& front() { return near_.back(); }        // the smallest id; not empty
  // The bucket `id`, created empty if absent.
  Far& at(const Bucket& id) {
    if (later_ && !later_->empty() && near_.front().id < id) {  // past the vector's buckets
      Far& f = (*later_)[id];
      f.id = id;
      return f;
    }
    auto it = std::lower_bound(near_.begin(), near_.end(), id, [](const Far& f, const Bucket& b) { return b < f.id; });
    if (it != near_.end() && !(it->id < id)) return *it;  // (it->id <= id: equal)
    std::size_t at = static_cast<std::size_t>(it - near_.begin());
    if (near_.size() == kNear) {  // make room: the largest moves to the map
      if (!later_) later_ = std::make_unique<std::map<Bucket, Far>>();
      if (at == 0) {  // (it would be the largest itself)
        Far& f = (*later_)[id];
        f.id = id;
        return f;
      }
      later_->emplace(near_.front().id, std::move(near_.front()));
      near_.erase(near_.begin());
      --at;
    }
    it = near_.insert(near_.begin() + static_cast<std::ptrdiff_t>(at), Far{});
    it->id = id;
    if (!spare_.empty()) {
      it->keys.swap(spare_.back());
      spare_.pop_back();
    }
    return *it;
  }
  void pop_front() {
    Far& f = near_.back();
    f.keys.clear();
    if (spare_.size() < 2 && f.keys.capacity() <= 4096) spare_.push_back(std::move(f.keys));  // (no more than churn needs)
    near_.pop_back();
    if (near_.empty() && later_) {  // the next kNear / 2 buckets come back from the map
      auto stop = later_->begin();
      for (std::size_t i = 0; i < kNear / 2 && stop != later_->end(); ++i) ++stop;
      for (auto it = stop; it != later_->begin();) {
        --it;
        near_.push_back(std::move(it->second));
      }
      later_->erase(later_->begin(), stop);
    }
  }
  void clear() {
    while (!near_.empty()) pop_front();
  }

 private:
  static constexpr std::size_t kNear = 64;
  std::vector<Far> near_;      // by id, largest first
  std::unique_ptr<std::map<Bucket, Far>> later_;  // ids above every one in near_ (made when needed)
  std::vector<std::vector<Key>> spare_;
};

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
      far_.at(b).keys.push_back(k);
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
      far_.at(b).stale++;
    }
    if (size_ == 0) {
      near_.clear();
      far_.clear();
      return;
    }
    while (near_.empty()) pull(live);
  }

 private:
  template <class Live>
  void pull(const Live& live) {
    auto& f = far_.front();
    horizon_ = f.id;
    std::vector<Key>& keys = f.keys;
    if (f.stale) {
      keys.erase(std::remove_if(keys.begin(), keys.end(), [&](const Key& k) { return !live(k); }), keys.end());
    }
    // (Keys by arrival, as fifo and fair give, come in order: no sort then.)
    if (!std::is_sorted(keys.begin(), keys.end(), Less{})) std::sort(keys.begin(), keys.end(), Less{});
    const Key* prev = nullptr;
    for (const Key& k : keys) {
      if (prev && !Less{}(*prev, k)) continue;  // the same key twice (erased and inserted again)
      near_.insert(k);
      prev = &k;
    }
    far_.pop_front();
  }

  OrderedIndex<Key, Less> near_;
  Buckets<Bucket, Key> far_;
  Bucket horizon_{};
  std::size_t size_ = 0;
};

}  // namespace tokenlane::detail
