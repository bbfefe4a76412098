// Internal to the ledger: the connection, the lock, and small helpers shared by its sources.
#pragma once

#include <chrono>
#include <cstdint>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>

#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>
#include <unordered_map>
#include <string>
#include <string_view>
#include <utility>

#include "tokenlane/error.hpp"
#include "tokenlane/ledger.hpp"

namespace tokenlane {
namespace ledger_detail {

// A prepared statement on loan from the connection's cache. The destructor resets it: a statement
// left stepping would hold a read snapshot open, hiding other processes' writes from later calls.
class Prepared {
 public:
  Prepared(SQLite::Statement* cached, bool* busy) : st_(cached), busy_(busy) {}
  explicit Prepared(std::unique_ptr<SQLite::Statement> owned) : st_(owned.get()), owned_(std::move(owned)) {}
  Prepared(Prepared&& other) noexcept;
  Prepared& operator=(Prepared&&) = delete;
  ~Prepared();
  SQLite::Statement& operator*() const { return *st_; }

 private:
  SQLite::Statement* st_ = nullptr;
  bool* busy_ = nullptr;
  std::unique_ptr<SQLite::Statement> owned_;
};

}  // namespace ledger_detail

struct Ledger::Impl {
  Impl(const std::string& path, int busy_timeout_ms);

  std::string path;
  SQLite::Database db;
  std::mutex mutex;

  // Prepared statements by SQL text (call under the lock). Preparing is a large share of a small
  // query's cost; the cache is bounded because some SQL is built from the caller's field names.
  ledger_detail::Prepared prepare(const std::string& sql);
  struct CachedStatement {
    std::unique_ptr<SQLite::Statement> statement;
    bool busy = false;
  };
  std::unordered_map<std::string, CachedStatement> statements;

  // A second connection for budget_version(), so that read never queues behind this process's
  // writer (opened on first use; a private in-memory ledger reads its one connection instead).
  mutable std::mutex reader_mutex;
  mutable std::unique_ptr<SQLite::Database> reader;
  mutable std::unique_ptr<SQLite::Statement> reader_version;

  // budget_version()'s shortcut: a counter in a small file beside the database ("<path>-budgets",
  // mapped shared) that set_budget bumps after its commit, in every process. While it holds
  // still, the version last read from SQLite still holds (re-read at least every
  // kBudgetVersionMaxAge all the same, for a writer that never bumps it: an older build).
  // Mapped on first use under reader_mutex; null when the file cannot be had (SQLite each time).
  struct BudgetEpoch {
    std::uint64_t* counter = nullptr;
    bool tried = false;
    std::int64_t version = -1;  // the version read from SQLite at `epoch`
    std::uint64_t epoch = 0;
    std::chrono::steady_clock::time_point read_at;
    ~BudgetEpoch();
  };
  static constexpr std::chrono::milliseconds kBudgetVersionMaxAge{100};
  mutable BudgetEpoch budget_epoch;
  std::uint64_t* budget_epoch_counter() const;  // maps it if not tried yet (call under reader_mutex)
  void bump_budget_epoch() const;               // after a committed budget change

  // Runs `f` under the lock; SQLite failures become Error(storage) naming `what`.
  template <class F>
  auto locked(const char* what, F&& f) -> decltype(f()) {
    std::lock_guard<std::mutex> lock(mutex);
    try {
      return f();
    } catch (const SQLite::Exception& e) {
      throw storage_error(what, e);
    }
  }
  Error storage_error(const char* what, const SQLite::Exception& e) const;
};

namespace ledger_detail {

// Wall-clock Unix seconds, for timestamps the caller does not supply.
double wall_now();

// BEGIN IMMEDIATE ... COMMIT, rolled back by the destructor unless committed. IMMEDIATE takes the
// write lock up front, so a transaction never fails half-way on a lock upgrade between processes.
class WriteTransaction {
 public:
  explicit WriteTransaction(SQLite::Database& db);
  ~WriteTransaction();
  WriteTransaction(const WriteTransaction&) = delete;
  WriteTransaction& operator=(const WriteTransaction&) = delete;
  void commit();

 private:
  SQLite::Database& db_;
  bool open_ = true;
};

void bind_value(SQLite::Statement& st, int index, const LedgerValue& v);
// The current result row as a LedgerRow; columns named in `booleans` read as bool.
LedgerRow read_row(SQLite::Statement& st, std::initializer_list<std::string_view> booleans = {});

// A WHERE clause built from optional filters, bound in order.
class Where {
 public:
  void add(std::string clause, LedgerValue value);
  std::string sql() const;  // "" or " WHERE a AND b"
  int bind(SQLite::Statement& st, int first = 1) const;  // returns the next free index

 private:
  std::vector<std::string> clauses_;
  std::vector<LedgerValue> values_;
};

// Where-clause for the report filters on the requests table aliased `r`.
Where report_where(const ReportFilter& f);

// A request column's value, validated (unknown names, wrong types and bad values throw
// Error(invalid_argument)); integers widened to real where the column is real.
LedgerValue checked_request_field(const std::string& name, const LedgerValue& value);

// One level's budget operations, inside the caller's write transaction (budgets.cpp). A Charge is
// an amount in both units a budget counts: pico-USD and tokens (input + output).
struct Charge {
  std::int64_t pico_usd = 0;
  std::int64_t tokens = 0;
};
bool reserve_row(Ledger::Impl& impl, const std::string& tenant, Charge amount, double now);
void settle_row(Ledger::Impl& impl, const std::string& tenant, Charge reserved, Charge actual, double now);
void release_row(Ledger::Impl& impl, const std::string& tenant, Charge reserved, double now);
// Hold bookkeeping (journal.cpp): record, and find + delete (nullopt when the hold is unknown).
void add_hold(Ledger::Impl& impl, const std::string& hold, const std::string& owner,
              const std::vector<std::string>& tenants, Charge amount, double now);
struct HeldBudget {
  std::vector<std::string> tenants;
  Charge amount;
};
std::optional<HeldBudget> take_hold(Ledger::Impl& impl, const std::string& hold);

}  // namespace ledger_detail
}  // namespace tokenlane
