// An ordered set with rank queries in O(log n): queue positions for 100k-deep queues.
// libstdc++'s policy-based tree keeps subtree sizes; elsewhere a std::set counts (O(n) rank).
#pragma once

#include <cstddef>
#include <functional>
#include <iterator>

#if defined(__GLIBCXX__)
#include <ext/pb_ds/assoc_container.hpp>
#include <ext/pb_ds/tree_policy.hpp>
#else
#include <set>
#endif

namespace tokenlane::detail {

template <class Key>
class OrderedIndex {
 public:
  void insert(const Key& k) { tree_.insert(k); }
  void erase(const Key& k) { tree_.erase(k); }
  void clear() { tree_.clear(); }
  std::size_t size() const { return tree_.size(); }
  bool empty() const { return tree_.empty(); }
  // Number of elements ordered before k.
  std::size_t rank(const Key& k) const {
#if defined(__GLIBCXX__)
    return tree_.order_of_key(k);
#else
    return static_cast<std::size_t>(std::distance(tree_.begin(), tree_.lower_bound(k)));
#endif
  }
  auto begin() const { return tree_.begin(); }
  auto end() const { return tree_.end(); }

 private:
#if defined(__GLIBCXX__)
  __gnu_pbds::tree<Key, __gnu_pbds::null_type, std::less<Key>, __gnu_pbds::rb_tree_tag,
                   __gnu_pbds::tree_order_statistics_node_update>
      tree_;
#else
  std::set<Key> tree_;
#endif
};

}  // namespace tokenlane::detail
