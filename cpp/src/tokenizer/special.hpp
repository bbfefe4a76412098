// Internal: finds the first occurrence of any of a set of special-token strings in text.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace tokenlane::detail {

class SpecialMatcher {
 public:
  SpecialMatcher() = default;
  explicit SpecialMatcher(const std::vector<std::string>& specials)
      : owned_(std::make_shared<const std::vector<std::string>>(specials)) {
    bool first = true;
    for (const std::string& s : *owned_) {
      if (s.empty()) continue;
      first_byte_[static_cast<unsigned char>(s[0])] = true;
      if (first) {
        prefix_ = s;
        first = false;
      } else {
        const auto common = std::mismatch(prefix_.begin(), prefix_.end(), s.begin(), s.end()).first;
        prefix_.erase(common, prefix_.end());
      }
      set_.insert(s);
      if (std::find(lengths_.begin(), lengths_.end(), s.size()) == lengths_.end()) {
        lengths_.push_back(s.size());
      }
    }
    std::sort(lengths_.rbegin(), lengths_.rend());  // the longest match wins at a position
  }

  std::size_t size() const { return set_.size(); }

  // (offset, special) of the first special in text, or (npos, {}). The view points into `text`.
  std::pair<std::size_t, std::string_view> find(std::string_view text) const {
    for (std::size_t p = 0; p < text.size(); ++p) {
      if (!prefix_.empty()) {  // the usual case (OpenAI's specials all start with "<|"): memmem skips
        // ahead, also past the '<' of code and markup, where a search for the first byte stops at each
        const void* hit = memmem(text.data() + p, text.size() - p, prefix_.data(), prefix_.size());
        if (hit == nullptr) break;
        p = static_cast<std::size_t>(static_cast<const char*>(hit) - text.data());
      } else if (!first_byte_[static_cast<unsigned char>(text[p])]) {
        continue;
      }
      for (std::size_t len : lengths_) {
        if (p + len > text.size()) continue;
        std::string_view candidate = text.substr(p, len);
        if (set_.count(candidate) != 0) return {p, candidate};
      }
    }
    return {std::string_view::npos, {}};
  }

 private:
  // Shared and immutable, so the views in set_ stay valid when a matcher is copied or moved.
  std::shared_ptr<const std::vector<std::string>> owned_;
  std::unordered_set<std::string_view> set_;
  std::vector<std::size_t> lengths_;
  bool first_byte_[256] = {};  // first bytes of the specials, for when they share no prefix
  std::string prefix_;          // the longest prefix every special shares ("<|" for OpenAI's)
};

}  // namespace tokenlane::detail
