// Budgets: per-tenant counters shared by every process that opens the file.
//
// The invariant (spent + reserved <= limit, per window) is kept by the database, not by the
// process: reserve() is a single UPSERT whose WHERE clause re-checks the limit against the row as
// it is at write time, under SQLite's write lock. Two workers can therefore never both take the
// last of a budget. Window roll-over is part of the same statement, so no process ever observes
// (or adds to) a stale window's spend.
#include <cmath>
#include <string>

#include "internal.hpp"

namespace tokenlane {

using ledger_detail::bind_value;
using ledger_detail::read_row;
using ledger_detail::WriteTransaction;

namespace {

constexpr std::int64_t kMaxAmount = std::int64_t{1} << 61;  // sums of three stay inside int64

// Days since 1970-01-01 for a proleptic Gregorian date, and back (Howard Hinnant's algorithms).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, std::int64_t& y, unsigned& m) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2);
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

std::int64_t checked_seconds(double now) {
  if (!std::isfinite(now) || std::fabs(now) > 1e12)
    throw Error(ErrorCode::invalid_argument, "now must be finite Unix seconds, got " + std::to_string(now));
  return static_cast<std::int64_t>(std::floor(now));
}

void check_amount(const char* what, std::int64_t v) {
  if (v < 0 || v > kMaxAmount)
    throw Error(ErrorCode::invalid_argument,
                std::string(what) + " must be between 0 and 2^61 pico-USD, got " + std::to_string(v));
}

void check_tenant(const std::string& tenant) {
  if (tenant.empty() || tenant.size() > 200) throw Error(ErrorCode::invalid_argument, "tenant must be 1 to 200 characters");
}

// The window start for every kind at `now`, bound as ?2 (hour), ?3 (day), ?4 (month), so one
// statement can pick the right one from the row's own `period`.
void bind_window_starts(SQLite::Statement& st, double now) {
  st.bind(2, budget_window_start(BudgetWindow::hour, now));
  st.bind(3, budget_window_start(BudgetWindow::day, now));
  st.bind(4, budget_window_start(BudgetWindow::month, now));
}

// The current row's window start as of `now` (a clock that steps back never reopens an old one).
#define TL_WS "(CASE period WHEN 'hour' THEN ?2 WHEN 'day' THEN ?3 WHEN 'month' THEN ?4 ELSE 0 END)"
// `spent` as seen from `now`: zero once the window has rolled over.
#define TL_SPENT "(CASE WHEN " TL_WS " > window_start THEN 0 ELSE spent_pico_usd END)"

void log_event(SQLite::Database& db, const std::string& tenant, const char* kind, LedgerValue amount,
               LedgerValue reserved, double now) {
  SQLite::Statement st(db,
                       "INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at) "
                       "VALUES (?, ?, ?, ?, ?)");
  st.bind(1, tenant);
  st.bind(2, kind);
  bind_value(st, 3, amount);
  bind_value(st, 4, reserved);
  st.bind(5, now);
  st.exec();
}

constexpr const char* kBudgetColumns =
    "tenant, limit_pico_usd, period AS window, window_start, spent_pico_usd, reserved_pico_usd, updated_at";

}  // namespace

BudgetWindow parse_budget_window(std::string_view name) {
  if (name == "hour") return BudgetWindow::hour;
  if (name == "day") return BudgetWindow::day;
  if (name == "month") return BudgetWindow::month;
  if (name == "total") return BudgetWindow::total;
  throw Error(ErrorCode::invalid_argument,
              "budget window must be \"hour\", \"day\", \"month\" or \"total\", got \"" + std::string(name) + "\"");
}

const char* budget_window_name(BudgetWindow window) noexcept {
  switch (window) {
    case BudgetWindow::hour: return "hour";
    case BudgetWindow::day: return "day";
    case BudgetWindow::month: return "month";
    case BudgetWindow::total: return "total";
  }
  return "total";
}

std::int64_t budget_window_start(BudgetWindow window, double now) {
  const std::int64_t s = checked_seconds(now);
  switch (window) {
    case BudgetWindow::hour: return floor_div(s, 3600) * 3600;
    case BudgetWindow::day: return floor_div(s, 86400) * 86400;
    case BudgetWindow::month: {
      std::int64_t y = 0;
      unsigned m = 0;
      civil_from_days(floor_div(s, 86400), y, m);
      return days_from_civil(y, m, 1) * 86400;
    }
    case BudgetWindow::total: return 0;
  }
  return 0;
}

std::optional<std::int64_t> budget_window_end(BudgetWindow window, double now) {
  const std::int64_t start = budget_window_start(window, now);
  switch (window) {
    case BudgetWindow::hour: return start + 3600;
    case BudgetWindow::day: return start + 86400;
    case BudgetWindow::month: {
      std::int64_t y = 0;
      unsigned m = 0;
      civil_from_days(floor_div(start, 86400), y, m);
      return (m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1)) * 86400;
    }
    case BudgetWindow::total: return std::nullopt;
  }
  return std::nullopt;
}

void Ledger::set_budget(const std::string& tenant, std::optional<std::int64_t> limit_pico_usd, BudgetWindow window,
                        double now) {
  check_tenant(tenant);
  if (limit_pico_usd) check_amount("limit_pico_usd", *limit_pico_usd);
  const std::int64_t ws = budget_window_start(window, now);
  const LedgerValue limit = limit_pico_usd ? LedgerValue(*limit_pico_usd) : LedgerValue();
  impl_->locked("set_budget", [&] {
    WriteTransaction tx(impl_->db);
    std::optional<std::string> old_period;
    {
      SQLite::Statement st(impl_->db, "SELECT period FROM budgets WHERE tenant = ?");
      st.bind(1, tenant);
      if (st.executeStep()) old_period = st.getColumn(0).getString();
    }
    if (old_period && *old_period == budget_window_name(window)) {
      SQLite::Statement st(impl_->db, "UPDATE budgets SET limit_pico_usd = ?, updated_at = ? WHERE tenant = ?");
      bind_value(st, 1, limit);
      st.bind(2, now);
      st.bind(3, tenant);
      st.exec();
    } else {
      // New tenant or another window: what was charged since the new window began is in the
      // settle events, so the new window starts with its true spend (never a free reset).
      std::int64_t spent = 0;
      {
        SQLite::Statement st(impl_->db,
                             "SELECT COALESCE(SUM(amount_pico_usd), 0) FROM budget_events "
                             "WHERE tenant = ? AND kind = 'settle' AND at >= ?");
        st.bind(1, tenant);
        st.bind(2, static_cast<double>(ws));
        st.executeStep();
        spent = st.getColumn(0).getInt64();
      }
      SQLite::Statement st(impl_->db,
                           "INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                           "reserved_pico_usd, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6) "
                           "ON CONFLICT (tenant) DO UPDATE SET limit_pico_usd = ?2, period = ?3, window_start = ?4, "
                           "spent_pico_usd = ?5, updated_at = ?6");
      st.bind(1, tenant);
      bind_value(st, 2, limit);
      st.bind(3, budget_window_name(window));
      st.bind(4, ws);
      st.bind(5, spent);
      st.bind(6, now);
      st.exec();
    }
    log_event(impl_->db, tenant, "set_budget", limit, LedgerValue(), now);
    tx.commit();
  });
}

std::optional<LedgerRow> Ledger::get_budget(const std::string& tenant) const {
  return impl_->locked("get_budget", [&]() -> std::optional<LedgerRow> {
    SQLite::Statement st(impl_->db, std::string("SELECT ") + kBudgetColumns + " FROM budgets WHERE tenant = ?");
    st.bind(1, tenant);
    if (!st.executeStep()) return std::nullopt;
    return read_row(st);
  });
}

std::vector<LedgerRow> Ledger::list_budgets() const {
  return impl_->locked("list_budgets", [&] {
    SQLite::Statement st(impl_->db, std::string("SELECT ") + kBudgetColumns + " FROM budgets ORDER BY tenant");
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

bool Ledger::reserve(const std::string& tenant, std::int64_t amount_pico_usd, double now) {
  check_tenant(tenant);
  check_amount("amount_pico_usd", amount_pico_usd);
  checked_seconds(now);
  return impl_->locked("reserve", [&] {
    WriteTransaction tx(impl_->db);
    // A tenant without a row gets an unlimited one, so its spend is still counted. For an existing
    // row the DO UPDATE's WHERE is the budget check, evaluated on the row as it is now.
    SQLite::Statement st(impl_->db,
                         "INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                         "reserved_pico_usd, updated_at) VALUES (?1, NULL, 'total', 0, 0, ?5, ?6) "
                         "ON CONFLICT (tenant) DO UPDATE SET "
                         "spent_pico_usd = " TL_SPENT ", "
                         "window_start = MAX(window_start, " TL_WS "), "
                         "reserved_pico_usd = reserved_pico_usd + ?5, updated_at = ?6 "
                         "WHERE limit_pico_usd IS NULL OR " TL_SPENT " + reserved_pico_usd + ?5 <= limit_pico_usd");
    st.bind(1, tenant);
    bind_window_starts(st, now);
    st.bind(5, amount_pico_usd);
    st.bind(6, now);
    const bool ok = st.exec() == 1;
    if (ok) log_event(impl_->db, tenant, "reserve", amount_pico_usd, LedgerValue(), now);
    tx.commit();
    return ok;
  });
}

void Ledger::settle(const std::string& tenant, std::int64_t reserved_pico_usd, std::int64_t actual_pico_usd,
                    double now) {
  check_tenant(tenant);
  check_amount("reserved_pico_usd", reserved_pico_usd);
  check_amount("actual_pico_usd", actual_pico_usd);
  checked_seconds(now);
  impl_->locked("settle", [&] {
    WriteTransaction tx(impl_->db);
    // Reservations are never driven below zero: a double settle cannot free someone else's share.
    SQLite::Statement st(impl_->db,
                         "INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                         "reserved_pico_usd, updated_at) VALUES (?1, NULL, 'total', 0, ?7, 0, ?6) "
                         "ON CONFLICT (tenant) DO UPDATE SET "
                         "spent_pico_usd = " TL_SPENT " + ?7, "
                         "window_start = MAX(window_start, " TL_WS "), "
                         "reserved_pico_usd = MAX(reserved_pico_usd - ?5, 0), updated_at = ?6");
    st.bind(1, tenant);
    bind_window_starts(st, now);
    st.bind(5, reserved_pico_usd);
    st.bind(6, now);
    st.bind(7, actual_pico_usd);
    st.exec();
    log_event(impl_->db, tenant, "settle", actual_pico_usd, reserved_pico_usd, now);
    tx.commit();
  });
}

void Ledger::release(const std::string& tenant, std::int64_t reserved_pico_usd, double now) {
  check_tenant(tenant);
  check_amount("reserved_pico_usd", reserved_pico_usd);
  checked_seconds(now);
  impl_->locked("release", [&] {
    WriteTransaction tx(impl_->db);
    SQLite::Statement st(impl_->db,
                         "UPDATE budgets SET reserved_pico_usd = MAX(reserved_pico_usd - ?1, 0), updated_at = ?2 "
                         "WHERE tenant = ?3");
    st.bind(1, reserved_pico_usd);
    st.bind(2, now);
    st.bind(3, tenant);
    if (st.exec() == 1) log_event(impl_->db, tenant, "release", reserved_pico_usd, LedgerValue(), now);
    tx.commit();
  });
}

LedgerRow Ledger::usage(const std::string& tenant, double now) const {
  checked_seconds(now);
  std::optional<LedgerRow> budget = get_budget(tenant);
  const BudgetWindow window = budget ? parse_budget_window(budget->text("window")) : BudgetWindow::total;
  const std::int64_t ws = budget_window_start(window, now);
  std::int64_t spent = 0, reserved = 0;
  LedgerValue limit, remaining;
  if (budget) {
    // Read-only view of a roll-over the next write will make.
    spent = ws > budget->integer("window_start") ? 0 : budget->integer("spent_pico_usd");
    reserved = budget->integer("reserved_pico_usd");
    if (!budget->is_null("limit_pico_usd")) {
      const std::int64_t l = budget->integer("limit_pico_usd");
      limit = l;
      remaining = std::max<std::int64_t>(l - spent - reserved, 0);
    }
  }
  const std::int64_t requests = impl_->locked("usage", [&] {
    SQLite::Statement st(impl_->db, "SELECT COUNT(*) FROM requests WHERE tenant = ? AND created_at >= ?");
    st.bind(1, tenant);
    st.bind(2, static_cast<double>(ws));
    st.executeStep();
    return static_cast<std::int64_t>(st.getColumn(0).getInt64());
  });
  const std::optional<std::int64_t> end = budget_window_end(window, now);
  LedgerRow row;
  row.set("tenant", tenant)
      .set("spent_pico_usd", spent)
      .set("reserved_pico_usd", reserved)
      .set("limit_pico_usd", limit)
      .set("remaining_pico_usd", remaining)
      .set("requests", requests)
      .set("window", std::string(budget_window_name(window)))
      .set("window_start", ws)
      .set("resets_at", end ? LedgerValue(*end) : LedgerValue());
  return row;
}

std::vector<LedgerRow> Ledger::budget_events(const std::optional<std::string>& tenant, std::int64_t limit) const {
  if (limit < 1 || limit > 10'000) throw Error(ErrorCode::invalid_argument, "limit must be between 1 and 10000");
  return impl_->locked("budget_events", [&] {
    SQLite::Statement st(impl_->db,
                         "SELECT id, tenant, kind, amount_pico_usd, reserved_pico_usd, at FROM budget_events "
                         "WHERE (?1 IS NULL OR tenant = ?1) ORDER BY id DESC LIMIT ?2");
    bind_value(st, 1, tenant ? LedgerValue(*tenant) : LedgerValue());
    st.bind(2, static_cast<std::int64_t>(limit));
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

}  // namespace tokenlane
