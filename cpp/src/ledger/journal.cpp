// Write-behind and crash recovery: journal records applied in batches, each exactly once; budget
// holds recorded with the worker that owns them, so a dead worker's share can be freed.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>

#include "../util/background_thread.hpp"
#include "internal.hpp"

namespace tokenlane {

using ledger_detail::WriteTransaction;
using nlohmann::json;

namespace ledger_detail {

void add_hold(Ledger::Impl& impl, const std::string& hold, const std::string& owner,
              const std::vector<std::string>& tenants, Charge amount, double now) {
  auto st_h = impl.prepare(
      "INSERT INTO holds (request_id, owner, budgets, amount_pico_usd, created_at, tokens) VALUES (?, ?, ?, ?, ?, ?) "
      "ON CONFLICT (request_id) DO UPDATE SET amount_pico_usd = amount_pico_usd + excluded.amount_pico_usd, "
      "tokens = tokens + excluded.tokens");
  SQLite::Statement& st = *st_h;
  st.bind(1, hold);
  st.bind(2, owner);
  st.bind(3, json(tenants).dump());
  st.bind(4, amount.pico_usd);
  st.bind(5, now);
  st.bind(6, amount.tokens);
  st.exec();
}

std::optional<HeldBudget> take_hold(Ledger::Impl& impl, const std::string& hold) {
  HeldBudget held;
  {
    auto st_h = impl.prepare("SELECT budgets, amount_pico_usd, tokens FROM holds WHERE request_id = ?");
    SQLite::Statement& st = *st_h;
    st.bind(1, hold);
    if (!st.executeStep()) return std::nullopt;
    held.tenants = json::parse(st.getColumn(0).getString()).get<std::vector<std::string>>();
    held.amount = {st.getColumn(1).getInt64(), st.getColumn(2).getInt64()};
  }
  auto st_h = impl.prepare("DELETE FROM holds WHERE request_id = ?");
  (*st_h).bind(1, hold);
  (*st_h).exec();
  return held;
}

}  // namespace ledger_detail

namespace {

LedgerValue to_value(const std::string& name, const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return std::monostate{};
    case json::value_t::boolean:
      return v.get<bool>();
    case json::value_t::number_integer:
      return v.get<std::int64_t>();
    case json::value_t::number_unsigned: {
      const auto u = v.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(INT64_MAX))
        throw Error(ErrorCode::invalid_argument, "field \"" + name + "\" does not fit in 64 bits");
      return static_cast<std::int64_t>(u);
    }
    case json::value_t::number_float:
      return v.get<double>();
    case json::value_t::string:
      return v.get<std::string>();
    default:
      throw Error(ErrorCode::invalid_argument, "field \"" + name + "\" must be null, a number or a string");
  }
}

// The validated (column, value) pairs of a JSON object of request fields.
std::vector<std::pair<std::string, LedgerValue>> fields_of(const json& obj) {
  if (!obj.is_object()) throw Error(ErrorCode::invalid_argument, "request fields must be an object");
  std::vector<std::pair<std::string, LedgerValue>> out;
  for (const auto& [name, value] : obj.items())
    out.emplace_back(name, ledger_detail::checked_request_field(name, to_value(name, value)));
  return out;
}

void insert_if_absent(Ledger::Impl& impl, const std::string& id, const json& row) {
  auto values = fields_of(row);
  bool has_created = false;
  std::string names = "id", marks = "?";
  for (const auto& [name, value] : values) {
    if (name == "id") continue;
    has_created = has_created || name == "created_at";
    names += ", " + name;
    marks += ", ?";
  }
  if (!has_created) {
    values.emplace_back("created_at", ledger_detail::wall_now());
    names += ", created_at";
    marks += ", ?";
  }
  auto st_h = impl.prepare("INSERT INTO requests (" + names + ") VALUES (" + marks + ") ON CONFLICT (id) DO NOTHING");
  SQLite::Statement& st = *st_h;
  st.bind(1, id);
  int i = 2;
  for (const auto& [name, value] : values)
    if (name != "id") ledger_detail::bind_value(st, i++, value);
  st.exec();
}

// False when the row is already finished: this record's final part was applied before.
bool update_unfinished(Ledger::Impl& impl, const std::string& id, const json& fields) {
  const auto values = fields_of(fields);
  std::string sets;
  for (const auto& [name, value] : values) {
    if (name == "id") throw Error(ErrorCode::invalid_argument, "a request's id cannot be changed");
    sets += (sets.empty() ? "" : ", ") + name + " = ?";
  }
  if (sets.empty()) throw Error(ErrorCode::invalid_argument, "a final record needs fields (finished_at at least)");
  auto st_h = impl.prepare("UPDATE requests SET " + sets + " WHERE id = ? AND finished_at IS NULL");
  SQLite::Statement& st = *st_h;
  int i = 1;
  for (const auto& [name, value] : values) ledger_detail::bind_value(st, i++, value);
  st.bind(i, id);
  return st.exec() == 1;
}

std::int64_t amount(const json& record, const char* name, const char* unit = "pico-USD") {
  const auto it = record.find(name);
  if (it == record.end() || it->is_null()) return 0;
  const std::int64_t v = it->get<std::int64_t>();
  if (v < 0 || v > (std::int64_t{1} << 61))
    throw Error(ErrorCode::invalid_argument, std::string(name) + " must be between 0 and 2^61 " + unit);
  return v;
}

void apply_record(Ledger::Impl& impl, const json& record) {
  if (!record.is_object()) throw Error(ErrorCode::invalid_argument, "a journal record must be an object");
  const std::string id = record.at("id").get<std::string>();
  if (id.empty() || id.size() > 200) throw Error(ErrorCode::invalid_argument, "request id must be 1 to 200 characters");
  if (const auto row = record.find("row"); row != record.end()) insert_if_absent(impl, id, *row);
  const auto final_fields = record.find("final");
  if (final_fields == record.end() || !update_unfinished(impl, id, *final_fields)) return;
  const auto budgets = record.find("budgets");
  if (budgets == record.end() || budgets->empty()) return;
  const auto levels = budgets->get<std::vector<std::string>>();
  if (levels.size() > 16) throw Error(ErrorCode::invalid_argument, "give 1 to 16 budget levels");
  const double now = record.at("now").get<double>();
  const ledger_detail::Charge actual{amount(record, "actual"), amount(record, "tokens", "tokens")};
  const auto held = ledger_detail::take_hold(impl, id);
  const ledger_detail::Charge reserved =
      held ? held->amount : ledger_detail::Charge{amount(record, "reserved"), amount(record, "reserved_tokens", "tokens")};
  for (const std::string& level : levels) ledger_detail::settle_row(impl, level, reserved, actual, now);
}

}  // namespace

std::vector<std::string> Ledger::apply_journal(std::string_view records) {
  std::vector<std::string> skipped;
  impl_->locked("apply_journal", [&] {
    WriteTransaction tx(impl_->db);
    std::size_t start = 0;
    while (start < records.size()) {
      std::size_t end = records.find('\n', start);
      if (end == std::string_view::npos) end = records.size();
      const std::string_view line = records.substr(start, end - start);
      start = end + 1;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      // Each record in a savepoint of its own: a bad one is skipped whole, the batch goes on.
      impl_->db.exec("SAVEPOINT journal_record");
      try {
        apply_record(*impl_, json::parse(line));
        impl_->db.exec("RELEASE journal_record");
      } catch (const SQLite::Exception&) {
        throw;  // storage: the whole batch rolls back and the caller retries it
      } catch (const std::exception& e) {
        impl_->db.exec("ROLLBACK TO journal_record");
        impl_->db.exec("RELEASE journal_record");
        skipped.push_back(std::string(e.what()) + ": " + std::string(line.substr(0, 200)));
      }
    }
    tx.commit();
  });
  return skipped;
}

std::vector<std::string> Ledger::owners() const {
  return impl_->locked("owners", [&] {
    auto st_h = impl_->prepare("SELECT owner FROM holds UNION "
                               "SELECT owner FROM requests WHERE finished_at IS NULL AND owner IS NOT NULL");
    SQLite::Statement& st = *st_h;
    std::vector<std::string> out;
    while (st.executeStep()) out.push_back(st.getColumn(0).getString());
    return out;
  });
}

LedgerRow Ledger::reclaim(const std::string& owner, double now) {
  if (owner.empty()) throw Error(ErrorCode::invalid_argument, "owner is empty");
  return impl_->locked("reclaim", [&] {
    WriteTransaction tx(impl_->db);
    std::vector<std::string> holds;
    {
      auto st_h = impl_->prepare("SELECT request_id FROM holds WHERE owner = ?");
      (*st_h).bind(1, owner);
      while ((*st_h).executeStep()) holds.push_back((*st_h).getColumn(0).getString());
    }
    std::int64_t released = 0, released_tokens = 0;
    for (const std::string& hold : holds) {
      const auto held = ledger_detail::take_hold(*impl_, hold);
      if (!held) continue;
      for (const std::string& level : held->tenants) ledger_detail::release_row(*impl_, level, held->amount, now);
      released += held->amount.pico_usd;
      released_tokens += held->amount.tokens;
    }
    auto st_h = impl_->prepare(
        "UPDATE requests SET status = CASE WHEN status = 'queued' OR status = 'deferred' THEN 'cancelled' "
        "ELSE 'failed' END, finished_at = ?, reason = COALESCE(reason, 'worker_died'), "
        "error = 'the worker process ended (killed or crashed) before this request finished' "
        "WHERE owner = ? AND finished_at IS NULL");
    SQLite::Statement& st = *st_h;
    st.bind(1, now);
    st.bind(2, owner);
    const std::int64_t requests = st.exec();
    tx.commit();
    LedgerRow out;
    out.set("holds", static_cast<std::int64_t>(holds.size())).set("requests", requests).set("released_pico_usd", released)
        .set("released_tokens", released_tokens);
    return out;
  });
}

std::int64_t Ledger::budget_version() const {
  constexpr const char* kSql = "SELECT value FROM ledger_meta WHERE key = 'budget_version'";
  auto read = [](SQLite::Statement& st) -> std::int64_t {
    const std::int64_t v = st.executeStep() ? st.getColumn(0).getInt64() : 0;
    st.reset();  // never keep a read snapshot open
    return v;
  };
  if (impl_->path == ":memory:") {
    std::unique_lock<std::mutex> lock(impl_->mutex, std::try_to_lock);
    if (!lock.owns_lock()) return -1;
    try {
      SQLite::Statement st(impl_->db, kSql);
      return read(st);
    } catch (const SQLite::Exception&) {
      return -1;
    }
  }
  std::lock_guard<std::mutex> lock(impl_->reader_mutex);
  Impl::BudgetEpoch& cache = impl_->budget_epoch;
  const std::uint64_t* counter = impl_->budget_epoch_counter();
  const std::uint64_t epoch = counter ? __atomic_load_n(counter, __ATOMIC_ACQUIRE) : 0;
  const auto now = std::chrono::steady_clock::now();
  if (counter && cache.version >= 0 && epoch == cache.epoch && now - cache.read_at < Impl::kBudgetVersionMaxAge) {
    return cache.version;  // no budget changed since the last read (no SQLite transaction)
  }
  try {
    if (!impl_->reader) {  // no busy timeout: a locked moment reads as "unknown"
      impl_->reader = std::make_unique<SQLite::Database>(impl_->path, SQLite::OPEN_READONLY | SQLite::OPEN_NOMUTEX);
      impl_->reader_version = std::make_unique<SQLite::Statement>(*impl_->reader, kSql);
    }
    // The epoch was read before this read: a change committed meanwhile bumps it after its
    // commit, so the next call reads again.
    cache.version = read(*impl_->reader_version);
    cache.epoch = epoch;
    cache.read_at = now;
    return cache.version;
  } catch (const SQLite::Exception&) {
    if (impl_->reader_version) impl_->reader_version->tryReset();
    cache.version = -1;
    return -1;
  }
}

Ledger::Impl::BudgetEpoch::~BudgetEpoch() {
  if (counter != nullptr) munmap(counter, sizeof(std::uint64_t));
}

std::uint64_t* Ledger::Impl::budget_epoch_counter() const {
  if (budget_epoch.tried) return budget_epoch.counter;
  budget_epoch.tried = true;
  if (path.empty() || path == ":memory:" || path.rfind("file:", 0) == 0) return nullptr;
  const std::string file = path + "-budgets";
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return nullptr;
  struct stat st {};
  void* map = MAP_FAILED;
  // Grown to 8 bytes (zeros) by whichever process comes first; a larger file is never shrunk.
  if (::fstat(fd, &st) == 0 && (st.st_size >= static_cast<off_t>(sizeof(std::uint64_t)) ||
                                ::ftruncate(fd, sizeof(std::uint64_t)) == 0)) {
    map = ::mmap(nullptr, sizeof(std::uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  }
  ::close(fd);
  if (map != MAP_FAILED) budget_epoch.counter = static_cast<std::uint64_t*>(map);
  return budget_epoch.counter;
}

void Ledger::Impl::bump_budget_epoch() const {
  std::lock_guard<std::mutex> lock(reader_mutex);
  if (std::uint64_t* counter = budget_epoch_counter()) __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
}

}  // namespace tokenlane

namespace tokenlane {

JournalApplier::JournalApplier(std::shared_ptr<Ledger> ledger, double batch_delay_s)
    : ledger_(std::move(ledger)), delay_s_(batch_delay_s) {
  if (!ledger_) throw Error(ErrorCode::invalid_argument, "JournalApplier needs a ledger");
  if (!(batch_delay_s >= 0)) throw Error(ErrorCode::invalid_argument, "batch_delay_s must be >= 0");
  thread_ = std::thread([this] { run(); });
}

JournalApplier::~JournalApplier() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::uint64_t JournalApplier::push(std::string record) {
  std::uint64_t seq = 0;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    wake = idle_;  // asleep until told; otherwise its own timer picks the record up
    idle_ = false;
    pending_ += record;
    seq = ++queued_;
  }
  if (wake) wake_.notify_one();  // once per burst: signalling a condition variable can block the signaller
  return seq;
}

bool JournalApplier::flush(double timeout_s) {
  std::unique_lock<std::mutex> lock(mutex_);
  const std::uint64_t target = queued_;
  if (applied_ >= target) return true;
  urgent_ = std::max(urgent_, target);
  ++flushes_;
  wake_.notify_one();
  return applied_cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return applied_ >= target; });
}

JournalApplier::Status JournalApplier::take_status() {
  std::lock_guard<std::mutex> lock(mutex_);
  Status out = status_;
  out.queued = queued_;
  out.applied = applied_;
  status_.failures = 0;
  status_.skipped.clear();
  return out;
}

void JournalApplier::set_ledger(std::shared_ptr<Ledger> ledger) {
  if (!ledger) throw Error(ErrorCode::invalid_argument, "JournalApplier needs a ledger");
  std::lock_guard<std::mutex> lock(mutex_);
  ledger_ = std::move(ledger);
}

void JournalApplier::run() {
  using namespace std::chrono;
  util::mark_background_thread("tokenlane-jrnl");
  // The batch buffer outlives each batch: the swap below hands its capacity back to pending_, so
  // push() appends without regrowing, and no batch is freed while the lock is held. (push() runs
  // on the thread that answers requests: whatever this thread does under the lock, that thread
  // may wait for, and for as long as the OS keeps this one off the CPU.)
  std::string batch;
  std::unique_lock<std::mutex> lock(mutex_);
  double backoff = 0.05;
  int retries_left_at_stop = 3;
  while (true) {
    idle_ = pending_.empty();
    wake_.wait(lock, [&] { return stop_ || !pending_.empty(); });
    idle_ = false;
    if (pending_.empty()) return;  // stopped with nothing left
    // Let more records gather, unless someone waits for them or we are stopping.
    wake_.wait_for(lock, duration<double>(delay_s_), [&] { return stop_ || urgent_ > applied_; });
    batch.swap(pending_);
    const std::uint64_t upto = queued_;
    const std::shared_ptr<Ledger> ledger = ledger_;
    lock.unlock();
    std::vector<std::string> skipped;
    std::string error;
    try {
      skipped = ledger->apply_journal(batch);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (error.empty()) {
      batch.clear();  // keeps its capacity for the next swap
      if (batch.capacity() > (std::size_t{16} << 20)) std::string().swap(batch);  // after a backlog
      lock.lock();
      applied_ = upto;
      backoff = 0.05;
      for (std::string& s : skipped) status_.skipped.push_back(std::move(s));
      applied_cv_.notify_all();
      continue;
    }
    lock.lock();
    // Kept, in order, ahead of what arrived meanwhile; retried after a pause.
    batch += pending_;
    pending_.swap(batch);
    batch.clear();
    ++status_.failures;
    status_.last_error = error;
    if (stop_ && --retries_left_at_stop < 0) return;  // at exit: the journal file still holds them
    // A new flush (a reader waiting) cuts the pause short: the condition may have cleared.
    const std::uint64_t flushes = flushes_;
    wake_.wait_for(lock, duration<double>(backoff), [&] { return stop_ || flushes_ != flushes; });
    backoff = std::min(backoff * 2, 2.0);
  }
}

}  // namespace tokenlane
