// tokenlane/ledger.hpp — the durable record: users, API keys, requests, budgets, configuration.
//
// A Ledger is one SQLite file (WAL mode) that every worker process on a host opens for itself.
// It stores who may call (users, hashed API keys), what happened to every request (decision,
// estimated vs actual tokens and cost), the shared budget counters, and configuration with its
// change history; and it answers the read queries that dashboards and reports need.
//
//   tokenlane::Ledger led("tokenlane.db");                 // creates or migrates the schema
//   auto uid = led.create_user("ada@example.com");
//   auto key = led.create_api_key(uid, "laptop");          // key.plaintext is shown once, never stored
//   led.set_budget("ada@example.com", 5'000'000'000'000, BudgetWindow::day, now);   // 5 USD a day
//   if (led.reserve("ada@example.com", p90_cost, now)) { ...call the model...;
//     led.settle("ada@example.com", p90_cost, actual_cost, now); }
//
// Budgets are safe across processes: reserve() is one conditional UPDATE that checks and adds in
// the same statement (spent + reserved + amount <= limit), so workers sharing the file can never
// reserve more than the limit together. Calendar windows (UTC hour/day/month) roll over inside that
// same statement: a new window resets `spent`, while reservations carry over.
//
// Every method is thread-safe (one connection per Ledger, guarded by a mutex) and blocking.
// Do not share a Ledger across fork(): open a new one in the child.
//
// Not for: hot in-memory state (the scheduler holds that), or hosts other than this one (SQLite
// over a network file system does not give the locking guarantees the budgets rely on).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tokenlane/budget_window.hpp"

namespace tokenlane {

// One column value as stored: NULL, a boolean flag, an integer (ids, tokens, pico-USD), a real
// (timestamps in Unix seconds, milliseconds), or text.
using LedgerValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;

// A row as ordered (name, value) pairs: what reads return and what inserts/updates take.
struct LedgerRow {
  std::vector<std::pair<std::string, LedgerValue>> fields;

  LedgerRow& set(std::string name, LedgerValue value);
  // The value named `name`, or nullptr when the row has no such field.
  const LedgerValue* find(std::string_view name) const;
  // True when the field is missing or NULL.
  bool is_null(std::string_view name) const;
  // Typed accessors; throw Error(invalid_argument) when the field is missing or of another type.
  std::int64_t integer(std::string_view name) const;
  double real(std::string_view name) const;  // accepts integers too
  const std::string& text(std::string_view name) const;
  bool boolean(std::string_view name) const;
};

// Filters for list_requests / count_requests (all optional; times are Unix seconds on created_at,
// `since` inclusive, `until` exclusive). Results are newest first.
struct RequestFilter {
  std::optional<std::string> tenant;
  std::optional<std::string> status;
  std::optional<std::string> model;
  std::optional<std::int64_t> user_id;
  std::optional<double> since;
  std::optional<double> until;
  std::int64_t limit = 100;  // 1..10000
  std::int64_t offset = 0;
};

// Filters for the reports (same meaning as above).
struct ReportFilter {
  std::optional<std::string> tenant;
  std::optional<std::int64_t> user_id;
  std::optional<double> since;
  std::optional<double> until;
};

// A freshly created API key. `plaintext` exists only here: the ledger stores its SHA-256.
struct NewApiKey {
  std::int64_t id = 0;
  std::string plaintext;  // "tl-" + 40 url-safe characters (240 random bits)
  std::string prefix;     // the first characters, for display ("tl-AbCd12")
};

// SQLite keeps memory statistics by default, and for them takes one process-wide mutex around
// every allocation of every connection: the thread answering requests then waits on it whenever a
// background writer (the journal applier) holds it and the OS takes that writer off the CPU.
// Turns them off (nothing in tokenlane reads them; sqlite3_memory_used and the soft/hard heap
// limits stop working). Only possible before SQLite's first use in the process: true if it took.
// Ledger's constructor asks; tokenlane._core asks when imported, before Python's sqlite3 is.
bool turn_off_sqlite_memory_statistics() noexcept;

class Ledger {
 public:
  struct Options {
    int busy_timeout_ms = 10'000;  // how long a writer waits for another process's transaction
  };

  // Opens (creating if needed) the SQLite file at `path` and applies pending migrations.
  // ":memory:" gives a private in-memory ledger. Throws Error(storage) when the file cannot be
  // opened or its schema is newer than this code.
  explicit Ledger(const std::string& path);
  Ledger(const std::string& path, Options options);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // The schema version this code writes, and the one the open file has.
  static int latest_schema_version() noexcept;
  int schema_version() const;
  // The schema as its ordered migrations, in SQLite's dialect: another engine (the PostgreSQL
  // ledger in Python) runs the very same steps after translating the few dialect words.
  struct Migration {
    int version;
    std::string description;
    std::string sql;
  };
  static std::vector<Migration> migrations();
  const std::string& path() const noexcept;

  // ---- users. Rows: id, email, name, role, tenant, disabled, created_at, password_hash.
  // role is "client" or "admin"; tenant (the budget and report key of the user's requests)
  // defaults to the email. Emails are unique, compared case-insensitively.
  std::int64_t create_user(const std::string& email, const std::optional<std::string>& password_hash = std::nullopt,
                           const std::string& role = "client", const std::optional<std::string>& name = std::nullopt,
                           const std::optional<std::string>& tenant = std::nullopt);
  std::optional<LedgerRow> get_user(std::int64_t id) const;
  std::optional<LedgerRow> get_user_by_email(const std::string& email) const;
  // All users, oldest first, without password_hash.
  std::vector<LedgerRow> list_users() const;
  // Changes any of: name, role, tenant, disabled, password_hash. Returns false for an unknown id.
  bool update_user(std::int64_t id, const LedgerRow& fields);

  // ---- API keys. Rows: id, user_id, name, prefix, created_at, last_used_at, revoked_at, active.
  NewApiKey create_api_key(std::int64_t user_id, const std::string& name = "default");
  // For an active key (not revoked, user not disabled): key_id, user_id, tenant, name, email, role.
  // nullopt for anything else, including malformed input. Touches last_used_at at most once a minute.
  std::optional<LedgerRow> verify_api_key(std::string_view plaintext);
  // Revokes an active key (only the user's own when `user_id` is given); false if nothing changed.
  bool revoke_api_key(std::int64_t key_id, std::optional<std::int64_t> user_id = std::nullopt);
  std::vector<LedgerRow> list_api_keys(std::int64_t user_id) const;

  // ---- requests: one row per request that got a response.
  // Columns: id, tenant, user_id, key_id, route, model, status, decision, reason, priority,
  // deadline_s, max_tokens, created_at, started_at, finished_at, queue_ms, est_input_tokens,
  // est_output_p50, est_output_p90, est_cost_pico_usd, reserved_pico_usd, input_tokens,
  // output_tokens, cached_input_tokens, reasoning_tokens, cost_pico_usd, error, prompt_preview,
  // response_preview. `id` and `status` are required on insert; created_at defaults to now.
  // Unknown names, wrong types, negative counts and unknown status/priority values throw.
  void insert_request(const LedgerRow& row);
  // Sets the given columns (any but id); returns false for an unknown id.
  bool update_request(const std::string& id, const LedgerRow& fields);
  std::optional<LedgerRow> get_request(const std::string& id) const;
  std::vector<LedgerRow> list_requests(const RequestFilter& filter) const;
  std::int64_t count_requests(const RequestFilter& filter) const;  // ignores limit/offset

  // ---- budgets. Rows: tenant, limit_pico_usd (NULL = no USD limit), limit_tokens (NULL = no token
  // limit), window, window_start, spent_pico_usd, reserved_pico_usd, spent_tokens, reserved_tokens,
  // updated_at. Amounts are pico-USD, tokens are input + output tokens, `now` Unix seconds. A
  // level's USD and token limits share its window; spend of both is tracked even without a limit.
  // Sets (or replaces) a tenant's whole budget: its USD limit and its token limit (nullopt: none),
  // over `window`. When the window changes, spent is recomputed for the new window from the settle
  // events.
  void set_budget(const std::string& tenant, std::optional<std::int64_t> limit_pico_usd, BudgetWindow window,
                  double now, std::optional<std::int64_t> limit_tokens = std::nullopt);
  std::optional<LedgerRow> get_budget(const std::string& tenant) const;
  std::vector<LedgerRow> list_budgets() const;
  // Atomically: if spent + reserved + amount <= limit for USD and for tokens in the window of `now`
  // (a unit without a limit always has room), reserved += amount (both units) and true; else false
  // and nothing changes.
  bool reserve(const std::string& tenant, std::int64_t amount_pico_usd, double now, std::int64_t tokens = 0);
  // reserved -= reserved (never below 0); spent += actual in the window of `now`; both units.
  void settle(const std::string& tenant, std::int64_t reserved_pico_usd, std::int64_t actual_pico_usd, double now,
              std::int64_t reserved_tokens = 0, std::int64_t actual_tokens = 0);
  void release(const std::string& tenant, std::int64_t reserved_pico_usd, double now, std::int64_t reserved_tokens = 0);
  // The same on several tenants (the levels of one principal chain, 1 to 16) in one transaction:
  // reserve_all takes the amount (USD and tokens) at every level or at none, returning -1 when all
  // had room, else the index of the first level without room (usage() says which unit).
  // With a `hold` (the request's id) and its `owner` (the worker process: see reclaim below),
  // reserve_all also records the hold in the same transaction; settle_all and release_all with that
  // hold delete it, so a worker that dies leaves a record of exactly what it held.
  int reserve_all(const std::vector<std::string>& tenants, std::int64_t amount_pico_usd, double now,
                  const std::string& hold = {}, const std::string& owner = {}, std::int64_t tokens = 0);
  void settle_all(const std::vector<std::string>& tenants, std::int64_t reserved_pico_usd,
                  std::int64_t actual_pico_usd, double now, const std::string& hold = {},
                  std::int64_t reserved_tokens = 0, std::int64_t actual_tokens = 0);
  void release_all(const std::vector<std::string>& tenants, std::int64_t reserved_pico_usd, double now,
                   const std::string& hold = {}, std::int64_t reserved_tokens = 0);
  // A counter every set_budget bumps (in its transaction), read on a connection of its own so it
  // never waits behind this process's writer: a caller that saw the same version twice knows no
  // limit was set or changed in between, in any process. -1 when the file could not be read at
  // once (the caller then assumes a budget may apply).
  std::int64_t budget_version() const;
  // spent_pico_usd, reserved_pico_usd, limit_pico_usd (NULL = none), remaining_pico_usd (NULL = no
  // limit; never negative), the same four for tokens (spent_tokens, reserved_tokens, limit_tokens,
  // remaining_tokens), requests (rows created in this window), window, window_start, resets_at
  // (NULL for "total"). A tenant with no row reads as unlimited with nothing spent.
  LedgerRow usage(const std::string& tenant, double now) const;
  // The audit trail, newest first: id, tenant, kind (reserve|settle|release|set_budget),
  // amount_pico_usd (reserved, charged, released, or the new limit), reserved_pico_usd (settle:
  // the reservation it freed), tokens and reserved_tokens (the same in tokens), at. Freed amounts are what was really freed, so replaying the
  // events in id order reproduces the counters.
  std::vector<LedgerRow> budget_events(const std::optional<std::string>& tenant, std::int64_t limit) const;

  // ---- write-behind journal and crashed workers.
  // Applies journal records (one JSON object per line) in one write transaction, each exactly once:
  //   {"id": request id, "row": {...insert...}, "final": {...update...},
  //    "budgets": [levels], "reserved": pico-USD, "actual": pico-USD,
  //    "reserved_tokens": tokens, "tokens": actual tokens, "now": seconds}
  // "row" is inserted unless the id exists; "final" (with the settlement of "budgets": the
  // request's hold if it has one, else "reserved" / "reserved_tokens", is freed and "actual" /
  // "tokens" charged at every level)
  // is applied unless the row is already finished (finished_at set), so replaying a journal twice
  // changes nothing. A record that is malformed or names bad columns is skipped (inside its own
  // savepoint) and described in the returned list; storage failures roll the batch back and throw.
  std::vector<std::string> apply_journal(std::string_view records);
  // The owners (worker process tokens) of holds and of unfinished request rows.
  std::vector<std::string> owners() const;
  // Frees a dead owner's holds at every level and marks its unfinished rows failed, in one
  // transaction: holds, requests (how many), released_pico_usd and released_tokens (sums over holds).
  LedgerRow reclaim(const std::string& owner, double now);

  // ---- configuration: values are JSON text (validated); every change is kept in the history.
  std::optional<std::string> get_config(const std::string& key) const;
  // Writes value_json; records (key, old, new, actor, at) unless the value is unchanged.
  void set_config(const std::string& key, const std::string& value_json,
                  const std::optional<std::string>& actor = std::nullopt);
  std::vector<LedgerRow> list_config() const;  // key, value, updated_at, updated_by
  // Newest first: id, key, old_value (NULL when new), new_value, actor, at.
  std::vector<LedgerRow> config_history(std::int64_t limit, const std::optional<std::string>& key = std::nullopt) const;

  // ---- reports. Each row carries: requests, succeeded, failed, rejected, input_tokens,
  // output_tokens, cached_input_tokens, reasoning_tokens, est_input_tokens, est_output_p50,
  // est_cost_pico_usd, cost_pico_usd, avg_queue_ms, max_queue_ms; plus `day` ("YYYY-MM-DD", UTC),
  // `model`, or `user_id`/`email`/`tenant` for the grouping. Token and cost sums cover rows that
  // have them; estimated-vs-actual pairs are compared on the rows that have both (est_*_matched,
  // *_matched columns).
  std::vector<LedgerRow> report_by_day(const ReportFilter& filter) const;
  std::vector<LedgerRow> report_by_model(const ReportFilter& filter) const;
  std::vector<LedgerRow> report_by_user(const ReportFilter& filter) const;
  // Count per status; every known status is present (0 when none).
  std::vector<std::pair<std::string, std::int64_t>> status_counts(const ReportFilter& filter) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Write-behind: applies journal records to a Ledger in batches, on a thread of its own, so that
// the process that queues them never waits (nor hands its interpreter lock over) for the database.
// push() takes a record and returns at once; the thread lets records gather for `batch_delay_s`,
// applies them with Ledger::apply_journal (one transaction), and on a storage failure keeps the
// batch and retries it with backoff (50 ms doubling to 2 s) until it is applied or the applier is
// destroyed. flush() waits (and cuts the delay short) until the records pushed before it are applied.
class JournalApplier {
 public:
  JournalApplier(std::shared_ptr<Ledger> ledger, double batch_delay_s);
  ~JournalApplier();  // applies what is queued (a few retries at most), then stops
  JournalApplier(const JournalApplier&) = delete;
  JournalApplier& operator=(const JournalApplier&) = delete;

  // Queues one record (a JSON object and its newline); returns its sequence number (1, 2, ...).
  std::uint64_t push(std::string record);
  // True once every record pushed before the call is applied; false after `timeout_s`.
  bool flush(double timeout_s);
  struct Status {
    std::uint64_t queued = 0, applied = 0;  // sequence numbers
    std::uint64_t failures = 0;             // failed batch attempts since the last take_status
    std::string last_error;
    std::vector<std::string> skipped;       // malformed records skipped since the last take_status
  };
  Status take_status();
  // Applies through another connection from the next batch on (after a reconnect).
  void set_ledger(std::shared_ptr<Ledger> ledger);

 private:
  void run();
  std::shared_ptr<Ledger> ledger_;
  double delay_s_;
  std::mutex mutex_;
  std::condition_variable wake_, applied_cv_;
  std::string pending_;
  std::uint64_t queued_ = 0, applied_ = 0, urgent_ = 0, flushes_ = 0;
  bool stop_ = false;
  bool idle_ = false;  // the thread waits for a record (push wakes it); else it polls on its own
  Status status_;
  std::thread thread_;
};

}  // namespace tokenlane
