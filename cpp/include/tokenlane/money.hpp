// tokenlane/money.hpp — exact amounts of US dollars.
//
// Money is a signed count of pico-dollars (1e-12 USD) in 64 bits: every per-token list price in use
// today is a whole number of pico-dollars, so a request's cost (tokens × price) is exact, and sums of
// millions of requests never drift the way floating-point dollars do. The range is ±9,223,372 USD
// per value; arithmetic that would leave it throws Error(invalid_argument) instead of wrapping.
//
//   tokenlane::Money m = tokenlane::Money::from_usd("2.50");   // exact
//   m.pico();        // 2500000000000
//   m.to_string();   // "2.5"   (exact decimal, no float on the way)
//   m.usd();         // 2.5     (a double, for display and ratios only)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tokenlane {

class Money {
 public:
  static constexpr std::int64_t pico_per_usd = 1'000'000'000'000;

  constexpr Money() noexcept = default;
  static constexpr Money from_pico(std::int64_t pico) noexcept {
    Money m;
    m.pico_ = pico;
    return m;
  }
  // Parses a decimal USD amount exactly ("2.50", "-0.3", "1.25e-6"). Throws Error(invalid_argument)
  // if the text is not a number, has digits finer than a pico-dollar, or is out of range.
  static Money from_usd(std::string_view decimal);

  constexpr std::int64_t pico() const noexcept { return pico_; }
  // The amount as a double: for display, plots and ratios, never for sums.
  double usd() const noexcept { return static_cast<double>(pico_) / static_cast<double>(pico_per_usd); }
  // The exact amount in USD as a decimal string without trailing zeros: "0.0025", "-1.5", "0".
  std::string to_string() const;

  // Checked arithmetic: throws Error(invalid_argument) on overflow.
  Money& operator+=(Money other);
  Money& operator-=(Money other);
  friend Money operator+(Money a, Money b) { return a += b; }
  friend Money operator-(Money a, Money b) { return a -= b; }
  // `count` items at this unit price (tokens × price per token), checked.
  Money times(std::uint64_t count) const;

  friend constexpr bool operator==(Money a, Money b) noexcept { return a.pico_ == b.pico_; }
  friend constexpr bool operator!=(Money a, Money b) noexcept { return a.pico_ != b.pico_; }
  friend constexpr bool operator<(Money a, Money b) noexcept { return a.pico_ < b.pico_; }
  friend constexpr bool operator<=(Money a, Money b) noexcept { return a.pico_ <= b.pico_; }
  friend constexpr bool operator>(Money a, Money b) noexcept { return a.pico_ > b.pico_; }
  friend constexpr bool operator>=(Money a, Money b) noexcept { return a.pico_ >= b.pico_; }

 private:
  std::int64_t pico_ = 0;
};

// Parses a plain decimal number ("0.2", "-3", "2.5e-06", "1E3") exactly and returns it multiplied by
// 10^scale as an integer. Digits finer than 10^-scale are rounded to the nearest integer (half away
// from zero) and reported through `rounded` when it is not null. Throws Error(invalid_argument) on
// malformed text or if the result does not fit in 64 bits.
std::int64_t decimal_to_scaled(std::string_view text, int scale, bool* rounded = nullptr);

}  // namespace tokenlane
