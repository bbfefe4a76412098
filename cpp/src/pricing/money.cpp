// Exact decimal parsing and formatting for Money (pico-dollars in an int64).
#include "tokenlane/money.hpp"

#include <cstdint>
#include <limits>
#include <string>

#include "tokenlane/error.hpp"

namespace tokenlane {
namespace {

[[noreturn]] void fail(std::string_view text, const char* why) {
  throw Error(ErrorCode::invalid_argument, "'" + std::string(text) + "' " + why);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

constexpr std::uint64_t kMaxMagnitude = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

}  // namespace

std::int64_t decimal_to_scaled(std::string_view text, int scale, bool* rounded) {
  if (rounded != nullptr) *rounded = false;
  std::size_t i = 0;
  bool negative = false;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) negative = text[i++] == '-';

  // Mantissa digits (leading zeros dropped) and how many of them follow the decimal point.
  std::string digits;
  long frac_digits = 0;
  bool seen_digit = false, seen_point = false;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (is_digit(c)) {
      seen_digit = true;
      if (seen_point) ++frac_digits;
      if (!digits.empty() || c != '0') digits.push_back(c);  // leading zeros carry no value
    } else if (c == '.' && !seen_point) {
      seen_point = true;
    } else {
      break;
    }
  }
  if (!seen_digit) fail(text, "is not a decimal number");

  long exponent = 0;
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    bool exp_negative = false;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) exp_negative = text[i++] == '-';
    if (i >= text.size() || !is_digit(text[i])) fail(text, "has a malformed exponent");
    for (; i < text.size() && is_digit(text[i]); ++i) {
      if (exponent < 100000) exponent = exponent * 10 + (text[i] - '0');
    }
    if (exp_negative) exponent = -exponent;
  }
  if (i != text.size()) fail(text, "is not a decimal number");
  if (digits.empty()) return 0;

  // value × 10^scale = digits × 10^shift
  long shift = exponent - frac_digits + scale;
  std::uint64_t magnitude = 0;
  auto push = [&](int digit) {
    if (magnitude > (kMaxMagnitude - static_cast<std::uint64_t>(digit)) / 10) fail(text, "is out of range");
    magnitude = magnitude * 10 + static_cast<std::uint64_t>(digit);
  };
  if (shift >= 0) {
    if (static_cast<long>(digits.size()) + shift > 19) fail(text, "is out of range");
    for (char c : digits) push(c - '0');
    for (long k = 0; k < shift; ++k) push(0);
  } else {
    std::size_t drop = static_cast<std::size_t>(-shift);
    std::size_t keep = drop >= digits.size() ? 0 : digits.size() - drop;
    for (std::size_t k = 0; k < keep; ++k) push(digits[k] - '0');
    // Round half away from zero on the first dropped digit (a zero when only padding is dropped).
    if (drop <= digits.size() && digits[keep] >= '5') {
      if (magnitude == kMaxMagnitude) fail(text, "is out of range");
      ++magnitude;
    }
    bool any_dropped = false;
    for (std::size_t k = keep; k < digits.size(); ++k) any_dropped = any_dropped || digits[k] != '0';
    if (rounded != nullptr) *rounded = any_dropped;
  }
  return negative ? -static_cast<std::int64_t>(magnitude) : static_cast<std::int64_t>(magnitude);
}

Money Money::from_usd(std::string_view decimal) {
  bool rounded = false;
  std::int64_t pico = decimal_to_scaled(decimal, 12, &rounded);
  if (rounded) fail(decimal, "has digits finer than a pico-dollar (1e-12 USD)");
  return from_pico(pico);
}

std::string Money::to_string() const {
  std::uint64_t magnitude =
      pico_ < 0 ? static_cast<std::uint64_t>(-(pico_ + 1)) + 1 : static_cast<std::uint64_t>(pico_);
  std::uint64_t whole = magnitude / static_cast<std::uint64_t>(pico_per_usd);
  std::uint64_t frac = magnitude % static_cast<std::uint64_t>(pico_per_usd);
  std::string out = pico_ < 0 ? "-" : "";
  out += std::to_string(whole);
  if (frac != 0) {
    std::string f = std::to_string(frac);
    f.insert(0, 12 - f.size(), '0');
    while (f.back() == '0') f.pop_back();
    out += '.';
    out += f;
  }
  return out;
}

Money& Money::operator+=(Money other) {
  if (__builtin_add_overflow(pico_, other.pico_, &pico_)) {
    throw Error(ErrorCode::invalid_argument, "money amount out of range (more than 9,223,372 USD)");
  }
  return *this;
}

Money& Money::operator-=(Money other) {
  if (__builtin_sub_overflow(pico_, other.pico_, &pico_)) {
    throw Error(ErrorCode::invalid_argument, "money amount out of range (more than 9,223,372 USD)");
  }
  return *this;
}

Money Money::times(std::uint64_t count) const {
  std::int64_t result = 0;
  if (count > kMaxMagnitude ? pico_ != 0 : __builtin_mul_overflow(pico_, static_cast<std::int64_t>(count), &result)) {
    throw Error(ErrorCode::invalid_argument, "money amount out of range (more than 9,223,372 USD)");
  }
  return from_pico(result);
}

}  // namespace tokenlane
