// UTC calendar windows for budgets (proleptic Gregorian calendar, no time zones, no leap seconds).
#include "tokenlane/budget_window.hpp"

#include <cmath>
#include <limits>
#include <string>

#include "tokenlane/error.hpp"

namespace tokenlane {
namespace {

// Days since 1970-01-01 of a civil date (400-year eras).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// The year and month of a day number (inverse of days_from_civil).
void civil_from_days(std::int64_t z, std::int64_t& y, unsigned& m) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0);
}

}  // namespace

std::string_view to_string(BudgetWindow w) noexcept {
  switch (w) {
    case BudgetWindow::hour: return "hour";
    case BudgetWindow::day: return "day";
    case BudgetWindow::month: return "month";
    case BudgetWindow::total: return "total";
  }
  return "total";
}

BudgetWindow parse_budget_window(std::string_view name) {
  if (name == "hour") return BudgetWindow::hour;
  if (name == "day") return BudgetWindow::day;
  if (name == "month") return BudgetWindow::month;
  if (name == "total") return BudgetWindow::total;
  throw Error(ErrorCode::invalid_argument,
              "unknown budget window '" + std::string(name) + "'; expected one of hour, day, month, total");
}

std::pair<double, double> budget_window_bounds(BudgetWindow w, double now) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (w == BudgetWindow::total || !std::isfinite(now)) return {-inf, inf};
  if (w == BudgetWindow::hour) {
    const double start = std::floor(now / 3600.0) * 3600.0;
    return {start, start + 3600.0};
  }
  const double day_f = std::floor(now / 86400.0);
  if (w == BudgetWindow::day) return {day_f * 86400.0, day_f * 86400.0 + 86400.0};
  // ±1e12 days covers any clock value that matters and keeps the conversion in range.
  const auto day = static_cast<std::int64_t>(std::fmax(-1e12, std::fmin(1e12, day_f)));
  std::int64_t y = 0;
  unsigned m = 1;
  civil_from_days(day, y, m);
  const std::int64_t first = days_from_civil(y, m, 1);
  const std::int64_t next = m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1);
  return {static_cast<double>(first) * 86400.0, static_cast<double>(next) * 86400.0};
}

std::int64_t budget_window_start(BudgetWindow w, double now) {
  if (!std::isfinite(now)) throw Error(ErrorCode::invalid_argument, "now must be a finite number of seconds");
  return w == BudgetWindow::total ? 0 : static_cast<std::int64_t>(budget_window_bounds(w, now).first);
}

std::optional<std::int64_t> budget_window_end(BudgetWindow w, double now) {
  if (!std::isfinite(now)) throw Error(ErrorCode::invalid_argument, "now must be a finite number of seconds");
  if (w == BudgetWindow::total) return std::nullopt;
  return static_cast<std::int64_t>(budget_window_bounds(w, now).second);
}

}  // namespace tokenlane
