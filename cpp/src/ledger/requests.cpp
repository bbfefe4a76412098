// Request rows and the read queries for dashboards and reports.
#include <sqlite3.h>

#include <array>
#include <cmath>

#include "internal.hpp"

namespace tokenlane {

using ledger_detail::bind_value;
using ledger_detail::read_row;
using ledger_detail::Where;

namespace {

enum class Kind { text, integer, real };

struct Column {
  std::string_view name;
  Kind kind;
};

// Every writable column of `requests`, in table order.
constexpr std::array<Column, 41> kRequestColumns = {{
    {"id", Kind::text},
    {"tenant", Kind::text},
    {"user_id", Kind::integer},
    {"key_id", Kind::integer},
    {"route", Kind::text},
    {"model", Kind::text},
    {"status", Kind::text},
    {"decision", Kind::text},
    {"reason", Kind::text},
    {"priority", Kind::text},
    {"deadline_s", Kind::real},
    {"max_tokens", Kind::integer},
    {"created_at", Kind::real},
    {"started_at", Kind::real},
    {"finished_at", Kind::real},
    {"queue_ms", Kind::real},
    {"est_input_tokens", Kind::integer},
    {"est_output_p50", Kind::integer},
    {"est_output_p90", Kind::integer},
    {"est_cost_pico_usd", Kind::integer},
    {"reserved_pico_usd", Kind::integer},
    {"input_tokens", Kind::integer},
    {"output_tokens", Kind::integer},
    {"cached_input_tokens", Kind::integer},
    {"reasoning_tokens", Kind::integer},
    {"cost_pico_usd", Kind::integer},
    {"error", Kind::text},
    {"prompt_preview", Kind::text},
    {"response_preview", Kind::text},
    {"cache", Kind::text},
    {"cache_saved_pico_usd", Kind::integer},
    {"prompt_cache_saved_pico_usd", Kind::integer},
    {"untrimmed_input_tokens", Kind::integer},
    {"end_user", Kind::text},
    {"requested_model", Kind::text},
    {"route_rule", Kind::text},
    {"attempts", Kind::integer},
    {"fallbacks", Kind::integer},
    {"batch", Kind::integer},
    {"unrouted_cost_pico_usd", Kind::integer},
    {"owner", Kind::text},
}};

constexpr std::array<std::string_view, 7> kStatuses = {"queued",   "running",  "succeeded", "failed",
                                                       "rejected", "cancelled", "deferred"};
constexpr std::array<std::string_view, 3> kPriorities = {"interactive", "standard", "batch"};
constexpr std::array<std::string_view, 3> kCacheOutcomes = {"hit", "miss", "bypass"};

template <std::size_t N>
std::string joined(const std::array<std::string_view, N>& names) {
  std::string out;
  for (std::string_view n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

template <std::size_t N>
bool one_of(const std::array<std::string_view, N>& names, const std::string& v) {
  for (std::string_view n : names)
    if (n == v) return true;
  return false;
}

void check_status(const std::string& status) {
  if (!one_of(kStatuses, status))
    throw Error(ErrorCode::invalid_argument, "unknown request status \"" + status + "\" (one of " + joined(kStatuses) + ")");
}

// Validates one field and returns the value to bind (integers widened to real where needed).
LedgerValue checked(const std::string& name, const LedgerValue& value) {
  const Column* col = nullptr;
  for (const Column& c : kRequestColumns)
    if (c.name == name) col = &c;
  if (col == nullptr) throw Error(ErrorCode::invalid_argument, "unknown request field \"" + name + "\"");
  if (std::holds_alternative<std::monostate>(value)) {
    if (name == "id" || name == "status" || name == "created_at")
      throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" cannot be None");
    return value;
  }
  switch (col->kind) {
    case Kind::text: {
      const auto* s = std::get_if<std::string>(&value);
      if (s == nullptr) throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" must be a string");
      if (name == "id" && (s->empty() || s->size() > 200))
        throw Error(ErrorCode::invalid_argument, "request id must be 1 to 200 characters");
      if (name == "status") check_status(*s);
      if (name == "priority" && !one_of(kPriorities, *s))
        throw Error(ErrorCode::invalid_argument,
                    "unknown priority \"" + *s + "\" (one of " + joined(kPriorities) + ")");
      if (name == "cache" && !one_of(kCacheOutcomes, *s))
        throw Error(ErrorCode::invalid_argument,
                    "unknown cache outcome \"" + *s + "\" (one of " + joined(kCacheOutcomes) + ")");
      return value;
    }
    case Kind::integer: {
      const auto* i = std::get_if<std::int64_t>(&value);
      if (i == nullptr) throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" must be an integer");
      if (*i < 0) throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" must be >= 0");
      return value;
    }
    case Kind::real: {
      double d = 0;
      if (const auto* i = std::get_if<std::int64_t>(&value)) {
        d = static_cast<double>(*i);
      } else if (const auto* r = std::get_if<double>(&value)) {
        d = *r;
      } else {
        throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" must be a number");
      }
      if (!std::isfinite(d)) throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" must be finite");
      if (name == "queue_ms" && d < 0) throw Error(ErrorCode::invalid_argument, "queue_ms must be >= 0");
      return d;
    }
  }
  return value;
}

std::string columns_list() {
  std::string out;
  for (const Column& c : kRequestColumns) out += (out.empty() ? "" : ", ") + std::string(c.name);
  return out;
}

// Turns a foreign-key failure into the caller's mistake it really is.
[[noreturn]] void rethrow_request_error(const SQLite::Exception& e, const std::string& id) {
  if (e.getExtendedErrorCode() == SQLITE_CONSTRAINT_FOREIGNKEY)
    throw Error(ErrorCode::invalid_argument,
                "request " + id + ": user_id or key_id does not name an existing user or API key (use None)");
  if (e.getExtendedErrorCode() == SQLITE_CONSTRAINT_PRIMARYKEY)
    throw Error(ErrorCode::invalid_argument, "request id \"" + id + "\" already exists (use update_request)");
  throw e;
}

Where request_where(const RequestFilter& f) {
  Where w;
  if (f.tenant) w.add("tenant = ?", *f.tenant);
  if (f.status) {
    check_status(*f.status);
    w.add("status = ?", *f.status);
  }
  if (f.model) w.add("model = ?", *f.model);
  if (f.user_id) w.add("user_id = ?", *f.user_id);
  if (f.since) w.add("created_at >= ?", *f.since);
  if (f.until) w.add("created_at < ?", *f.until);
  return w;
}

}  // namespace

LedgerValue ledger_detail::checked_request_field(const std::string& name, const LedgerValue& value) {
  return checked(name, value);
}

void Ledger::insert_request(const LedgerRow& row) {
  std::vector<std::pair<std::string, LedgerValue>> values;
  bool has_id = false, has_status = false, has_created = false;
  for (const auto& [name, value] : row.fields) {
    for (const auto& v : values)
      if (v.first == name) throw Error(ErrorCode::invalid_argument, "request field \"" + name + "\" given twice");
    values.emplace_back(name, checked(name, value));
    has_id = has_id || name == "id";
    has_status = has_status || name == "status";
    has_created = has_created || name == "created_at";
  }
  if (!has_id) throw Error(ErrorCode::invalid_argument, "request row needs an \"id\"");
  if (!has_status) throw Error(ErrorCode::invalid_argument, "request row needs a \"status\"");
  if (!has_created) values.emplace_back("created_at", ledger_detail::wall_now());
  std::string names, marks;
  for (const auto& v : values) {
    names += (names.empty() ? "" : ", ") + v.first;
    marks += marks.empty() ? "?" : ", ?";
  }
  const std::string& id = std::get<std::string>(*row.find("id"));
  impl_->locked("insert_request", [&] {
    auto st_h = impl_->prepare("INSERT INTO requests (" + names + ") VALUES (" + marks + ")");
SQLite::Statement& st = *st_h;
    int i = 1;
    for (const auto& v : values) bind_value(st, i++, v.second);
    try {
      st.exec();
    } catch (const SQLite::Exception& e) {
      rethrow_request_error(e, id);
    }
  });
}

bool Ledger::update_request(const std::string& id, const LedgerRow& fields) {
  std::string sets;
  std::vector<LedgerValue> values;
  for (const auto& [name, value] : fields.fields) {
    if (name == "id") throw Error(ErrorCode::invalid_argument, "a request's id cannot be changed");
    values.push_back(checked(name, value));
    sets += (sets.empty() ? "" : ", ") + name + " = ?";
  }
  if (sets.empty()) return get_request(id).has_value();
  return impl_->locked("update_request", [&] {
    auto st_h = impl_->prepare("UPDATE requests SET " + sets + " WHERE id = ?");
SQLite::Statement& st = *st_h;
    int i = 1;
    for (const LedgerValue& v : values) bind_value(st, i++, v);
    st.bind(i, id);
    try {
      return st.exec() == 1;
    } catch (const SQLite::Exception& e) {
      rethrow_request_error(e, id);
    }
  });
}

std::optional<LedgerRow> Ledger::get_request(const std::string& id) const {
  return impl_->locked("get_request", [&]() -> std::optional<LedgerRow> {
    auto st_h = impl_->prepare("SELECT " + columns_list() + " FROM requests WHERE id = ?");
SQLite::Statement& st = *st_h;
    st.bind(1, id);
    if (!st.executeStep()) return std::nullopt;
    return read_row(st);
  });
}

std::vector<LedgerRow> Ledger::list_requests(const RequestFilter& filter) const {
  if (filter.limit < 1 || filter.limit > 10'000)
    throw Error(ErrorCode::invalid_argument, "limit must be between 1 and 10000");
  if (filter.offset < 0) throw Error(ErrorCode::invalid_argument, "offset must be >= 0");
  const Where w = request_where(filter);
  return impl_->locked("list_requests", [&] {
    auto st_h = impl_->prepare("SELECT " + columns_list() + " FROM requests" + w.sql() +
                                        " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?");
SQLite::Statement& st = *st_h;
    const int next = w.bind(st);
    st.bind(next, static_cast<std::int64_t>(filter.limit));
    st.bind(next + 1, static_cast<std::int64_t>(filter.offset));
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

std::int64_t Ledger::count_requests(const RequestFilter& filter) const {
  const Where w = request_where(filter);
  return impl_->locked("count_requests", [&] {
    auto st_h = impl_->prepare("SELECT COUNT(*) FROM requests" + w.sql());
SQLite::Statement& st = *st_h;
    w.bind(st);
    st.executeStep();
    return static_cast<std::int64_t>(st.getColumn(0).getInt64());
  });
}

// ---------------------------------------------------------------------------------------------
// reports

namespace ledger_detail {

Where report_where(const ReportFilter& f) {
  Where w;
  if (f.tenant) w.add("r.tenant = ?", *f.tenant);
  if (f.user_id) w.add("r.user_id = ?", *f.user_id);
  if (f.since) w.add("r.created_at >= ?", *f.since);
  if (f.until) w.add("r.created_at < ?", *f.until);
  return w;
}

}  // namespace ledger_detail

namespace {

// The measures every report row carries. The *_matched pairs sum estimate and actual over the
// same rows (those that have both), so their ratio is an honest estimator error.
constexpr const char* kMeasures =
    "COUNT(*) AS requests,"
    " SUM(r.status = 'succeeded') AS succeeded,"
    " SUM(r.status = 'failed') AS failed,"
    " SUM(r.status = 'rejected') AS rejected,"
    " COALESCE(SUM(r.input_tokens), 0) AS input_tokens,"
    " COALESCE(SUM(r.output_tokens), 0) AS output_tokens,"
    " COALESCE(SUM(r.cached_input_tokens), 0) AS cached_input_tokens,"
    " COALESCE(SUM(r.reasoning_tokens), 0) AS reasoning_tokens,"
    " COALESCE(SUM(r.est_input_tokens), 0) AS est_input_tokens,"
    " COALESCE(SUM(r.est_output_p50), 0) AS est_output_p50,"
    " COALESCE(SUM(r.est_cost_pico_usd), 0) AS est_cost_pico_usd,"
    " COALESCE(SUM(r.cost_pico_usd), 0) AS cost_pico_usd,"
    " COALESCE(SUM(CASE WHEN r.output_tokens IS NOT NULL THEN r.est_output_p50 END), 0) AS est_output_p50_matched,"
    " COALESCE(SUM(CASE WHEN r.est_output_p50 IS NOT NULL THEN r.output_tokens END), 0) AS output_tokens_matched,"
    " COALESCE(SUM(CASE WHEN r.cost_pico_usd IS NOT NULL THEN r.est_cost_pico_usd END), 0) AS est_cost_pico_usd_matched,"
    " COALESCE(SUM(CASE WHEN r.est_cost_pico_usd IS NOT NULL THEN r.cost_pico_usd END), 0) AS cost_pico_usd_matched,"
    " SUM(r.cache = 'hit') AS cache_hits,"
    " SUM(r.cache = 'miss') AS cache_misses,"
    " COALESCE(SUM(r.cache_saved_pico_usd), 0) AS cache_saved_pico_usd,"
    " COALESCE(SUM(r.prompt_cache_saved_pico_usd), 0) AS prompt_cache_saved_pico_usd,"
    " AVG(r.queue_ms) AS avg_queue_ms,"
    " MAX(r.queue_ms) AS max_queue_ms";

// SELECT <keys>, <measures> FROM requests r <join> WHERE <filters> <group>
std::vector<LedgerRow> run_report(Ledger::Impl& impl, const char* what, const char* keys, const char* join,
                                  const char* group, const ReportFilter& filter) {
  const Where w = ledger_detail::report_where(filter);
  return impl.locked(what, [&] {
    auto st_h = impl.prepare(std::string("SELECT ") + keys + ", " + kMeasures + " FROM requests r" + join +
                                      w.sql() + group);
SQLite::Statement& st = *st_h;
    w.bind(st);
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

}  // namespace

std::vector<LedgerRow> Ledger::report_by_day(const ReportFilter& filter) const {
  return run_report(*impl_, "report_by_day", "date(r.created_at, 'unixepoch') AS day", "",
                    " GROUP BY day ORDER BY day", filter);
}

std::vector<LedgerRow> Ledger::report_by_model(const ReportFilter& filter) const {
  return run_report(*impl_, "report_by_model", "r.model AS model", "",
                    " GROUP BY r.model ORDER BY cost_pico_usd DESC, requests DESC, model", filter);
}

std::vector<LedgerRow> Ledger::report_by_user(const ReportFilter& filter) const {
  return run_report(*impl_, "report_by_user", "r.user_id AS user_id, u.email AS email, r.tenant AS tenant",
                    " LEFT JOIN users u ON u.id = r.user_id", " GROUP BY r.user_id, r.tenant "
                    "ORDER BY cost_pico_usd DESC, requests DESC, r.tenant",
                    filter);
}

std::vector<std::pair<std::string, std::int64_t>> Ledger::status_counts(const ReportFilter& filter) const {
  const Where w = ledger_detail::report_where(filter);
  return impl_->locked("status_counts", [&] {
    std::vector<std::pair<std::string, std::int64_t>> out;
    for (std::string_view s : kStatuses) out.emplace_back(std::string(s), 0);
    auto st_h = impl_->prepare("SELECT r.status, COUNT(*) FROM requests r" + w.sql() + " GROUP BY r.status");
SQLite::Statement& st = *st_h;
    w.bind(st);
    while (st.executeStep()) {
      const std::string status = st.getColumn(0).getString();
      const std::int64_t n = st.getColumn(1).getInt64();
      bool found = false;
      for (auto& [name, count] : out) {
        if (name == status) {
          count = n;
          found = true;
        }
      }
      if (!found) out.emplace_back(status, n);
    }
    return out;
  });
}

}  // namespace tokenlane
