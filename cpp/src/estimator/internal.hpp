// Shared pieces of the estimators: text scanning, prompt features, capping, the JSON codec.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tokenlane/error.hpp"
#include "tokenlane/estimator.hpp"

namespace tokenlane {

inline constexpr const char* kEstimatorFormat = "tokenlane.estimator";
inline constexpr int kEstimatorVersion = 1;

namespace detail {

// A number of a saved estimator state as T: an integer within T's range, or a finite float within
// float's; anything else is invalid_argument. (nlohmann's get<T>() converts a JSON float to an
// integer, or a double to a float, even out of range: undefined behaviour, found by
// tests/fuzz/estimator_state_fuzz with {"min_count": 2.2e38}.)
template <class T>
T state_number(const nlohmann::json& v) {
  using limits = std::numeric_limits<T>;
  if constexpr (std::is_floating_point_v<T>) {
    if (v.is_number()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && std::fabs(d) <= static_cast<double>(limits::max())) return static_cast<T>(d);
    }
  } else if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u <= static_cast<std::uint64_t>(limits::max())) return static_cast<T>(u);
  } else if (v.is_number_integer()) {
    const auto i = v.get<std::int64_t>();
    if constexpr (std::is_signed_v<T>) {
      if (i >= static_cast<std::int64_t>(limits::min()) && i <= static_cast<std::int64_t>(limits::max()))
        return static_cast<T>(i);
    }  // (a negative JSON integer is never number_unsigned: out of range for an unsigned T)
  }
  throw Error(ErrorCode::invalid_argument, "malformed estimator state: " + v.dump().substr(0, 60) +
                                               (std::is_floating_point_v<T> ? " is not a finite number in range"
                                                                            : " is not an integer in range"));
}

inline constexpr std::uint64_t kFnvOffset = 1469598103934665603ULL;
inline constexpr std::uint64_t kFnvPrime = 1099511628211ULL;

inline std::uint64_t fnv1a(std::string_view s, std::uint64_t h = kFnvOffset) {
  for (unsigned char c : s) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

inline std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  // splitmix64 finalizer over a combination: cheap, well spread, deterministic everywhere.
  std::uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Throws Error(invalid_argument) for an empty model or max_tokens == 0.
void validate(const EstimateQuery& q);
// The prompt's token count: exact when given, else bytes/4 (at least 1).
double input_tokens_of(const EstimateQuery& q);
// Turns log-quantiles into a capped Estimate: p50 >= 1, p90 >= p50, both <= the caps.
Estimate finalize(const EstimateQuery& q, double log_p50, double log_p90, std::string source);
std::uint64_t cap_of(const EstimateQuery& q);

// Dense feature slots of the learned model (hashed n-grams follow them).
enum Slot : std::uint32_t {
  kBias,
  kLogInput,
  kCountCue,
  kCountTarget,
  kShortCue,
  kTinyCue,
  kLongCue,
  kStepCue,
  kListCue,
  kCodeCue,
  kCodeInPrompt,
  kRewriteCue,
  kRewriteLogInput,
  kClassifyCue,
  kCreativeCue,
  kShortFormCue,
  kQuestion,
  kNonAscii,
  kCjk,
  kLogLines,
  kPromptList,
  kMathCue,
  kSummarizeCue,
  kSummarizeLogInput,
  kTaskChat,
  kTaskCode,
  kTaskSummarize,
  kTaskTranslate,
  kTaskRewrite,
  kTaskClassify,
  kTaskExtract,
  kTaskQa,
  kInputBin0,  // one-hot log2 bins of the input length: <16, <32, ..., >=4096 tokens (10 slots),
               // so a non-linear length effect is learned quickly
  kDenseSlots = kInputBin0 + 10 + 6,  // 6 spare slots for later features

};

struct Feature {
  std::uint32_t index;
  float value;
};

// The features of one prompt: hashed word n-grams (indices in [kDenseSlots, kDenseSlots + buckets),
// `buckets` a power of two), then the dense slots: the first `count` (returned) entries of `out`,
// which is only ever grown, so a warm buffer costs no allocation.
std::size_t extract_features(const EstimateQuery& q, double input_tokens, std::uint32_t buckets,
                             std::vector<Feature>& out);

// One word of the feature scan: the run of word bytes (ASCII letters and digits, '+', every byte
// >= 0x80) that starts at `begin`, with what the features need of it.
struct WordScan {
  std::size_t end = 0;        // one past the word's last byte
  std::uint64_t hash = 0;     // hash_word of the word
  std::size_t non_ascii = 0;  // bytes >= 0x80
  std::size_t cjk = 0;        // UTF-8 lead bytes 0xE3..0xED (CJK and Hangul blocks)
  bool digits = true;         // every byte an ASCII digit
};
// Found, counted and hashed 16 bytes at a time with SSE2 where the compiler targets it, else
// scan_word_bytes; both give the same.
WordScan scan_word(std::string_view text, std::size_t begin);
WordScan scan_word_bytes(std::string_view text, std::size_t begin);  // the portable byte loop
// What the features read of the bytes the word scan skips in a long prompt: [begin, end).
struct GapScan {
  std::size_t newlines = 0, non_ascii = 0, cjk = 0;
  bool question = false, code_fence = false, separator = false;  // a '?', a "```", a kMessageSeparator
};
GapScan scan_gap(std::string_view text, std::size_t begin, std::size_t end);  // SSE2 where targeted
GapScan scan_gap_bytes(std::string_view text, std::size_t begin, std::size_t end);
// The hash of a word (and of each word of a cue phrase), its bytes ASCII-lowercased.
std::uint64_t hash_word(std::string_view word);

// The template shape of a prompt: lowercase, ASCII digits -> '0', whitespace runs -> one space,
// at most `chars` normalized bytes of the first message and of the last message.
std::uint64_t template_hash(std::string_view prompt, std::size_t chars);

struct EstimatorCodec {
  static nlohmann::json header(std::string_view kind);
  static nlohmann::json learned_state(const LearnedEstimator& e);
  static std::unique_ptr<LearnedEstimator> learned(const nlohmann::json& j);
  static nlohmann::json history_state(const HistoryEstimator& e);
  static std::unique_ptr<HistoryEstimator> history(const nlohmann::json& j);
  static std::unique_ptr<BlendEstimator> blend(const nlohmann::json& j);
};

}  // namespace detail
}  // namespace tokenlane
