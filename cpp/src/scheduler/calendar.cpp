// Names of the scheduler's enums and UTC calendar windows for budgets.
#include <cmath>
#include <limits>
#include <string>

#include "tokenlane/error.hpp"
#include "tokenlane/scheduler.hpp"

namespace tokenlane {
namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (civil calendar, 400-year eras).
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

[[noreturn]] void bad_name(const char* what, std::string_view name, const char* valid) {
  throw Error(ErrorCode::invalid_argument,
              std::string("unknown ") + what + " '" + std::string(name) + "'; expected one of " + valid);
}

}  // namespace

std::string_view to_string(Priority p) noexcept {
  switch (p) {
    case Priority::interactive: return "interactive";
    case Priority::standard: return "standard";
    case Priority::batch: return "batch";
  }
  return "standard";
}

std::string_view to_string(Policy p) noexcept {
  switch (p) {
    case Policy::fifo: return "fifo";
    case Policy::cost_priority: return "cost_priority";
    case Policy::deadline: return "deadline";
    case Policy::fair: return "fair";
    case Policy::combined: return "default";
  }
  return "default";
}

std::string_view to_string(BudgetWindow w) noexcept {
  switch (w) {
    case BudgetWindow::hour: return "hour";
    case BudgetWindow::day: return "day";
    case BudgetWindow::month: return "month";
    case BudgetWindow::total: return "total";
  }
  return "total";
}

std::string_view to_string(RequestState s) noexcept {
  switch (s) {
    case RequestState::queued: return "queued";
    case RequestState::deferred: return "deferred";
    case RequestState::running: return "running";
  }
  return "queued";
}

std::string_view to_string(DecisionKind k) noexcept {
  switch (k) {
    case DecisionKind::admit: return "admit";
    case DecisionKind::queue: return "queue";
    case DecisionKind::defer: return "defer";
    case DecisionKind::reject: return "reject";
  }
  return "reject";
}

Priority parse_priority(std::string_view name) {
  if (name == "interactive") return Priority::interactive;
  if (name == "standard") return Priority::standard;
  if (name == "batch") return Priority::batch;
  bad_name("priority", name, "interactive, standard, batch");
}

Policy parse_policy(std::string_view name) {
  if (name == "fifo") return Policy::fifo;
  if (name == "cost_priority") return Policy::cost_priority;
  if (name == "deadline") return Policy::deadline;
  if (name == "fair") return Policy::fair;
  if (name == "default") return Policy::combined;
  bad_name("policy", name, "fifo, cost_priority, deadline, fair, default");
}

BudgetWindow parse_budget_window(std::string_view name) {
  if (name == "hour") return BudgetWindow::hour;
  if (name == "day") return BudgetWindow::day;
  if (name == "month") return BudgetWindow::month;
  if (name == "total") return BudgetWindow::total;
  bad_name("budget window", name, "hour, day, month, total");
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

}  // namespace tokenlane
