// Budgets: per-tenant counters shared by every process that opens the file.
//
// The invariant (spent + reserved <= limit, per window) is kept by the database, not by the
// process: reserve() is a single UPSERT whose WHERE clause re-checks the limit against the row as
// it is at write time, under SQLite's write lock. Two workers can therefore never both take the
// last of a budget. Window roll-over is part of the same statement, so no process ever observes
// (or adds to) a stale window's spend.
#include <algorithm>
#include <cmath>
#include <string>

#include "internal.hpp"

namespace tokenlane {

using ledger_detail::bind_value;
using ledger_detail::Charge;
using ledger_detail::read_row;
using ledger_detail::release_row;
using ledger_detail::reserve_row;
using ledger_detail::settle_row;
using ledger_detail::WriteTransaction;

namespace {

constexpr std::int64_t kMaxAmount = std::int64_t{1} << 61;  // sums of three stay inside int64

std::int64_t checked_seconds(double now) {
  if (!std::isfinite(now) || std::fabs(now) > 1e12)
    throw Error(ErrorCode::invalid_argument, "now must be finite Unix seconds, got " + std::to_string(now));
  return static_cast<std::int64_t>(std::floor(now));
}

void check_amount(const char* what, std::int64_t v, const char* unit = "pico-USD") {
  if (v < 0 || v > kMaxAmount)
    throw Error(ErrorCode::invalid_argument,
                std::string(what) + " must be between 0 and 2^61 " + unit + ", got " + std::to_string(v));
}

Charge checked_charge(const char* usd, std::int64_t pico_usd, const char* tokens_name, std::int64_t tokens) {
  check_amount(usd, pico_usd);
  check_amount(tokens_name, tokens, "tokens");
  return Charge{pico_usd, tokens};
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
// `spent` (USD, tokens) as seen from `now`: zero once the window has rolled over.
#define TL_SPENT "(CASE WHEN " TL_WS " > window_start THEN 0 ELSE spent_pico_usd END)"
#define TL_SPENT_TOKENS "(CASE WHEN " TL_WS " > window_start THEN 0 ELSE spent_tokens END)"

// One audit event; `amount` / `reserved` are (pico-USD, tokens) pairs of values (NULL where unused).
void log_event(Ledger::Impl& impl, const std::string& tenant, const char* kind, LedgerValue amount,
               LedgerValue reserved, double now, LedgerValue tokens = {}, LedgerValue reserved_tokens = {}) {
  auto st_h = impl.prepare("INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens, "
                           "reserved_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)");
  SQLite::Statement& st = *st_h;
  st.bind(1, tenant);
  st.bind(2, kind);
  bind_value(st, 3, amount);
  bind_value(st, 4, reserved);
  st.bind(5, now);
  bind_value(st, 6, tokens);
  bind_value(st, 7, reserved_tokens);
  st.exec();
}

// The tenant's reservation right now (inside a write transaction, so it cannot change under us):
// the audit trail records what a settle or release really freed, not what the caller asked.
Charge freeable(Ledger::Impl& impl, const std::string& tenant, Charge asked) {
  auto st_h = impl.prepare("SELECT reserved_pico_usd, reserved_tokens FROM budgets WHERE tenant = ?");
  SQLite::Statement& st = *st_h;
  st.bind(1, tenant);
  if (!st.executeStep()) return {};
  return {std::min<std::int64_t>(asked.pico_usd, st.getColumn(0).getInt64()),
          std::min<std::int64_t>(asked.tokens, st.getColumn(1).getInt64())};
}

constexpr const char* kBudgetColumns =
    "tenant, limit_pico_usd, limit_tokens, period AS window, window_start, spent_pico_usd, reserved_pico_usd, "
    "spent_tokens, reserved_tokens, updated_at";

}  // namespace

void Ledger::set_budget(const std::string& tenant, std::optional<std::int64_t> limit_pico_usd, BudgetWindow window,
                        double now, std::optional<std::int64_t> limit_tokens) {
  check_tenant(tenant);
  if (limit_pico_usd) check_amount("limit_pico_usd", *limit_pico_usd);
  if (limit_tokens) check_amount("limit_tokens", *limit_tokens, "tokens");
  const std::int64_t ws = budget_window_start(window, now);
  const LedgerValue limit = limit_pico_usd ? LedgerValue(*limit_pico_usd) : LedgerValue();
  const LedgerValue token_limit = limit_tokens ? LedgerValue(*limit_tokens) : LedgerValue();
  impl_->locked("set_budget", [&] {
    WriteTransaction tx(impl_->db);
    std::optional<std::string> old_period;
    {
      auto st_h = impl_->prepare("SELECT period FROM budgets WHERE tenant = ?");
SQLite::Statement& st = *st_h;
      st.bind(1, tenant);
      if (st.executeStep()) old_period = st.getColumn(0).getString();
    }
    if (old_period && *old_period == std::string(to_string(window))) {
      auto st_h = impl_->prepare("UPDATE budgets SET limit_pico_usd = ?, limit_tokens = ?, updated_at = ? "
                                 "WHERE tenant = ?");
      SQLite::Statement& st = *st_h;
      bind_value(st, 1, limit);
      bind_value(st, 2, token_limit);
      st.bind(3, now);
      st.bind(4, tenant);
      st.exec();
    } else {
      // New tenant or another window: what was charged since the new window began is in the
      // settle events, so the new window starts with its true spend (never a free reset).
      std::int64_t spent = 0, spent_tokens = 0;
      {
        auto st_h = impl_->prepare("SELECT COALESCE(SUM(amount_pico_usd), 0), COALESCE(SUM(tokens), 0) "
                                   "FROM budget_events WHERE tenant = ? AND kind = 'settle' AND at >= ?");
        SQLite::Statement& st = *st_h;
        st.bind(1, tenant);
        st.bind(2, static_cast<double>(ws));
        st.executeStep();
        spent = st.getColumn(0).getInt64();
        spent_tokens = st.getColumn(1).getInt64();
      }
      auto st_h = impl_->prepare("INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                                 "reserved_pico_usd, updated_at, limit_tokens, spent_tokens) "
                                 "VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8) "
                                 "ON CONFLICT (tenant) DO UPDATE SET limit_pico_usd = ?2, period = ?3, window_start = ?4, "
                                 "spent_pico_usd = ?5, updated_at = ?6, limit_tokens = ?7, spent_tokens = ?8");
      SQLite::Statement& st = *st_h;
      st.bind(1, tenant);
      bind_value(st, 2, limit);
      st.bind(3, std::string(to_string(window)));
      st.bind(4, ws);
      st.bind(5, spent);
      st.bind(6, now);
      bind_value(st, 7, token_limit);
      st.bind(8, spent_tokens);
      st.exec();
    }
    log_event(*impl_, tenant, "set_budget", limit, LedgerValue(), now, token_limit);
    impl_->db.exec("INSERT INTO ledger_meta (key, value) VALUES ('budget_version', 1) "
                   "ON CONFLICT (key) DO UPDATE SET value = value + 1");
    tx.commit();
    impl_->bump_budget_epoch();  // every process's budget_version() reads SQLite again
  });
}

std::optional<LedgerRow> Ledger::get_budget(const std::string& tenant) const {
  return impl_->locked("get_budget", [&]() -> std::optional<LedgerRow> {
    auto st_h = impl_->prepare(std::string("SELECT ") + kBudgetColumns + " FROM budgets WHERE tenant = ?");
SQLite::Statement& st = *st_h;
    st.bind(1, tenant);
    if (!st.executeStep()) return std::nullopt;
    return read_row(st);
  });
}

std::vector<LedgerRow> Ledger::list_budgets() const {
  return impl_->locked("list_budgets", [&] {
    auto st_h = impl_->prepare(std::string("SELECT ") + kBudgetColumns + " FROM budgets ORDER BY tenant");
SQLite::Statement& st = *st_h;
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

// One level's reserve / settle / release, inside the caller's write transaction.

bool ledger_detail::reserve_row(Ledger::Impl& impl, const std::string& tenant, Charge amount, double now) {
  // A tenant without a row gets an unlimited one, so its spend is still counted. For an existing
  // row the DO UPDATE's WHERE is the budget check of both units, evaluated on the row as it is now.
  auto st_h = impl.prepare("INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                           "reserved_pico_usd, updated_at, reserved_tokens) VALUES (?1, NULL, 'total', 0, 0, ?5, ?6, ?7) "
                           "ON CONFLICT (tenant) DO UPDATE SET "
                           "spent_pico_usd = " TL_SPENT ", spent_tokens = " TL_SPENT_TOKENS ", "
                           "window_start = MAX(window_start, " TL_WS "), "
                           "reserved_pico_usd = reserved_pico_usd + ?5, reserved_tokens = reserved_tokens + ?7, "
                           "updated_at = ?6 "
                           "WHERE (limit_pico_usd IS NULL OR " TL_SPENT " + reserved_pico_usd + ?5 <= limit_pico_usd) "
                           "AND (limit_tokens IS NULL OR " TL_SPENT_TOKENS " + reserved_tokens + ?7 <= limit_tokens)");
  SQLite::Statement& st = *st_h;
  st.bind(1, tenant);
  bind_window_starts(st, now);
  st.bind(5, amount.pico_usd);
  st.bind(6, now);
  st.bind(7, amount.tokens);
  const bool ok = st.exec() == 1;
  if (ok) log_event(impl, tenant, "reserve", amount.pico_usd, LedgerValue(), now, amount.tokens);
  return ok;
}

void ledger_detail::settle_row(Ledger::Impl& impl, const std::string& tenant, Charge reserved, Charge actual,
                               double now) {
  const Charge freed = freeable(impl, tenant, reserved);
  // Reservations are never driven below zero: a double settle cannot free someone else's share.
  auto st_h = impl.prepare("INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                           "reserved_pico_usd, updated_at, spent_tokens) VALUES (?1, NULL, 'total', 0, ?7, 0, ?6, ?9) "
                           "ON CONFLICT (tenant) DO UPDATE SET "
                           "spent_pico_usd = " TL_SPENT " + ?7, spent_tokens = " TL_SPENT_TOKENS " + ?9, "
                           "window_start = MAX(window_start, " TL_WS "), "
                           "reserved_pico_usd = MAX(reserved_pico_usd - ?5, 0), "
                           "reserved_tokens = MAX(reserved_tokens - ?8, 0), updated_at = ?6");
  SQLite::Statement& st = *st_h;
  st.bind(1, tenant);
  bind_window_starts(st, now);
  st.bind(5, reserved.pico_usd);
  st.bind(6, now);
  st.bind(7, actual.pico_usd);
  st.bind(8, reserved.tokens);
  st.bind(9, actual.tokens);
  st.exec();
  log_event(impl, tenant, "settle", actual.pico_usd, freed.pico_usd, now, actual.tokens, freed.tokens);
}

void ledger_detail::release_row(Ledger::Impl& impl, const std::string& tenant, Charge reserved, double now) {
  const Charge freed = freeable(impl, tenant, reserved);
  auto st_h = impl.prepare("UPDATE budgets SET reserved_pico_usd = MAX(reserved_pico_usd - ?1, 0), "
                           "reserved_tokens = MAX(reserved_tokens - ?4, 0), updated_at = ?2 WHERE tenant = ?3");
  SQLite::Statement& st = *st_h;
  st.bind(1, reserved.pico_usd);
  st.bind(2, now);
  st.bind(3, tenant);
  st.bind(4, reserved.tokens);
  if (st.exec() == 1) log_event(impl, tenant, "release", freed.pico_usd, LedgerValue(), now, freed.tokens);
}

namespace {

void check_levels(const std::vector<std::string>& tenants) {
  if (tenants.empty() || tenants.size() > 16) throw Error(ErrorCode::invalid_argument, "give 1 to 16 tenants");
  for (const std::string& t : tenants) check_tenant(t);
}

}  // namespace

bool Ledger::reserve(const std::string& tenant, std::int64_t amount_pico_usd, double now, std::int64_t tokens) {
  return reserve_all({tenant}, amount_pico_usd, now, {}, {}, tokens) < 0;
}

int Ledger::reserve_all(const std::vector<std::string>& tenants, std::int64_t amount_pico_usd, double now,
                        const std::string& hold, const std::string& owner, std::int64_t tokens) {
  check_levels(tenants);
  const Charge amount = checked_charge("amount_pico_usd", amount_pico_usd, "tokens", tokens);
  checked_seconds(now);
  return impl_->locked("reserve", [&] {
    // One write transaction: either every level takes the amount or (rolled back) none does, and
    // no other process sees a partial reservation.
    WriteTransaction tx(impl_->db);
    for (std::size_t i = 0; i < tenants.size(); ++i)
      if (!reserve_row(*impl_, tenants[i], amount, now)) return static_cast<int>(i);
    if (!hold.empty()) ledger_detail::add_hold(*impl_, hold, owner, tenants, amount, now);
    tx.commit();
    return -1;
  });
}

void Ledger::settle(const std::string& tenant, std::int64_t reserved_pico_usd, std::int64_t actual_pico_usd,
                    double now, std::int64_t reserved_tokens, std::int64_t actual_tokens) {
  settle_all({tenant}, reserved_pico_usd, actual_pico_usd, now, {}, reserved_tokens, actual_tokens);
}

void Ledger::settle_all(const std::vector<std::string>& tenants, std::int64_t reserved_pico_usd,
                        std::int64_t actual_pico_usd, double now, const std::string& hold,
                        std::int64_t reserved_tokens, std::int64_t actual_tokens) {
  check_levels(tenants);
  const Charge reserved = checked_charge("reserved_pico_usd", reserved_pico_usd, "reserved_tokens", reserved_tokens);
  const Charge actual = checked_charge("actual_pico_usd", actual_pico_usd, "actual_tokens", actual_tokens);
  checked_seconds(now);
  impl_->locked("settle", [&] {
    WriteTransaction tx(impl_->db);
    if (!hold.empty()) ledger_detail::take_hold(*impl_, hold);
    for (const std::string& t : tenants) settle_row(*impl_, t, reserved, actual, now);
    tx.commit();
  });
}

void Ledger::release(const std::string& tenant, std::int64_t reserved_pico_usd, double now,
                     std::int64_t reserved_tokens) {
  release_all({tenant}, reserved_pico_usd, now, {}, reserved_tokens);
}

void Ledger::release_all(const std::vector<std::string>& tenants, std::int64_t reserved_pico_usd, double now,
                         const std::string& hold, std::int64_t reserved_tokens) {
  check_levels(tenants);
  const Charge reserved = checked_charge("reserved_pico_usd", reserved_pico_usd, "reserved_tokens", reserved_tokens);
  checked_seconds(now);
  impl_->locked("release", [&] {
    WriteTransaction tx(impl_->db);
    if (!hold.empty()) ledger_detail::take_hold(*impl_, hold);
    for (const std::string& t : tenants) release_row(*impl_, t, reserved, now);
    tx.commit();
  });
}

LedgerRow Ledger::usage(const std::string& tenant, double now) const {
  checked_seconds(now);
  std::optional<LedgerRow> budget = get_budget(tenant);
  const BudgetWindow window = budget ? parse_budget_window(budget->text("window")) : BudgetWindow::total;
  const std::int64_t ws = budget_window_start(window, now);
  // Per unit: spent (a read-only view of a roll-over the next write will make), reserved, limit,
  // remaining.
  struct Unit {
    std::int64_t spent = 0, reserved = 0;
    LedgerValue limit, remaining;
  };
  auto unit = [&](const char* spent_col, const char* reserved_col, const char* limit_col) {
    Unit u;
    if (!budget) return u;
    u.spent = ws > budget->integer("window_start") ? 0 : budget->integer(spent_col);
    u.reserved = budget->integer(reserved_col);
    if (!budget->is_null(limit_col)) {
      const std::int64_t l = budget->integer(limit_col);
      u.limit = l;
      u.remaining = std::max<std::int64_t>(l - u.spent - u.reserved, 0);
    }
    return u;
  };
  const Unit usd = unit("spent_pico_usd", "reserved_pico_usd", "limit_pico_usd");
  const Unit tok = unit("spent_tokens", "reserved_tokens", "limit_tokens");
  const std::int64_t requests = impl_->locked("usage", [&] {
    auto st_h = impl_->prepare("SELECT COUNT(*) FROM requests WHERE tenant = ? AND created_at >= ?");
SQLite::Statement& st = *st_h;
    st.bind(1, tenant);
    st.bind(2, static_cast<double>(ws));
    st.executeStep();
    return static_cast<std::int64_t>(st.getColumn(0).getInt64());
  });
  const std::optional<std::int64_t> end = budget_window_end(window, now);
  LedgerRow row;
  row.set("tenant", tenant)
      .set("spent_pico_usd", usd.spent)
      .set("reserved_pico_usd", usd.reserved)
      .set("limit_pico_usd", usd.limit)
      .set("remaining_pico_usd", usd.remaining)
      .set("spent_tokens", tok.spent)
      .set("reserved_tokens", tok.reserved)
      .set("limit_tokens", tok.limit)
      .set("remaining_tokens", tok.remaining)
      .set("requests", requests)
      .set("window", std::string(std::string(to_string(window))))
      .set("window_start", ws)
      .set("resets_at", end ? LedgerValue(*end) : LedgerValue());
  return row;
}

std::vector<LedgerRow> Ledger::budget_events(const std::optional<std::string>& tenant, std::int64_t limit) const {
  if (limit < 1 || limit > 10'000) throw Error(ErrorCode::invalid_argument, "limit must be between 1 and 10000");
  return impl_->locked("budget_events", [&] {
    auto st_h = impl_->prepare("SELECT id, tenant, kind, amount_pico_usd, reserved_pico_usd, tokens, reserved_tokens, at FROM budget_events "
                         "WHERE (?1 IS NULL OR tenant = ?1) ORDER BY id DESC LIMIT ?2");
SQLite::Statement& st = *st_h;
    bind_value(st, 1, tenant ? LedgerValue(*tenant) : LedgerValue());
    st.bind(2, static_cast<std::int64_t>(limit));
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

}  // namespace tokenlane
