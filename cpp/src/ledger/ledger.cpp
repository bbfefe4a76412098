// The ledger's connection, migrations, users, API keys and configuration.
#include <SQLiteCpp/Transaction.h>
#include <sqlite3.h>
#include <sys/random.h>

#include <array>
#include <utility>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "../util/sha256.hpp"
#include "internal.hpp"
#include "schema.hpp"

namespace tokenlane {

using ledger_detail::read_row;
using ledger_detail::WriteTransaction;

// ---------------------------------------------------------------------------------------------
// LedgerRow

LedgerRow& LedgerRow::set(std::string name, LedgerValue value) {
  for (auto& [n, v] : fields) {
    if (n == name) {
      v = std::move(value);
      return *this;
    }
  }
  fields.emplace_back(std::move(name), std::move(value));
  return *this;
}

const LedgerValue* LedgerRow::find(std::string_view name) const {
  for (const auto& [n, v] : fields)
    if (n == name) return &v;
  return nullptr;
}

bool LedgerRow::is_null(std::string_view name) const {
  const LedgerValue* v = find(name);
  return v == nullptr || std::holds_alternative<std::monostate>(*v);
}

namespace {

template <class T>
const T& typed(const LedgerRow& row, std::string_view name, const char* type) {
  const LedgerValue* v = row.find(name);
  if (v == nullptr) throw Error(ErrorCode::invalid_argument, "ledger row has no field '" + std::string(name) + "'");
  if (const T* t = std::get_if<T>(v)) return *t;
  throw Error(ErrorCode::invalid_argument, "ledger field '" + std::string(name) + "' is not " + type);
}

}  // namespace

std::int64_t LedgerRow::integer(std::string_view name) const { return typed<std::int64_t>(*this, name, "an integer"); }
const std::string& LedgerRow::text(std::string_view name) const { return typed<std::string>(*this, name, "text"); }
bool LedgerRow::boolean(std::string_view name) const { return typed<bool>(*this, name, "a boolean"); }
double LedgerRow::real(std::string_view name) const {
  const LedgerValue* v = find(name);
  if (v != nullptr) {
    if (const auto* i = std::get_if<std::int64_t>(v)) return static_cast<double>(*i);
  }
  return typed<double>(*this, name, "a number");
}

// ---------------------------------------------------------------------------------------------
// helpers

namespace ledger_detail {

double wall_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

WriteTransaction::WriteTransaction(SQLite::Database& db) : db_(db) { db_.exec("BEGIN IMMEDIATE"); }
WriteTransaction::~WriteTransaction() {
  if (open_) db_.tryExec("ROLLBACK");
}
void WriteTransaction::commit() {
  db_.exec("COMMIT");
  open_ = false;
}

void bind_value(SQLite::Statement& st, int index, const LedgerValue& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) {
          st.bind(index);
        } else if constexpr (std::is_same_v<T, bool>) {
          st.bind(index, static_cast<std::int64_t>(x ? 1 : 0));
        } else {
          st.bind(index, x);
        }
      },
      v);
}

LedgerRow read_row(SQLite::Statement& st, std::initializer_list<std::string_view> booleans) {
  LedgerRow row;
  const int n = st.getColumnCount();
  row.fields.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    SQLite::Column c = st.getColumn(i);
    std::string name = st.getColumnName(i);
    LedgerValue v;
    bool is_bool = false;
    for (std::string_view b : booleans) is_bool = is_bool || b == name;
    if (c.isNull()) {
      v = std::monostate{};
    } else if (is_bool) {
      v = c.getInt64() != 0;
    } else if (c.isInteger()) {
      v = static_cast<std::int64_t>(c.getInt64());
    } else if (c.isFloat()) {
      v = c.getDouble();
    } else {
      v = c.getString();
    }
    row.fields.emplace_back(std::move(name), std::move(v));
  }
  return row;
}

void Where::add(std::string clause, LedgerValue value) {
  clauses_.push_back(std::move(clause));
  values_.push_back(std::move(value));
}

std::string Where::sql() const {
  std::string out;
  for (std::size_t i = 0; i < clauses_.size(); ++i) out += (i == 0 ? " WHERE " : " AND ") + clauses_[i];
  return out;
}

int Where::bind(SQLite::Statement& st, int first) const {
  for (const LedgerValue& v : values_) bind_value(st, first++, v);
  return first;
}

Prepared::Prepared(Prepared&& other) noexcept
    : st_(std::exchange(other.st_, nullptr)), busy_(std::exchange(other.busy_, nullptr)), owned_(std::move(other.owned_)) {}

Prepared::~Prepared() {
  if (st_ == nullptr) return;
  st_->tryReset();
  if (busy_ != nullptr) *busy_ = false;
}

}  // namespace ledger_detail

ledger_detail::Prepared Ledger::Impl::prepare(const std::string& sql) {
  constexpr std::size_t kMaxCached = 256;
  auto it = statements.find(sql);
  if (it == statements.end() && statements.size() < kMaxCached) {
    it = statements.emplace(sql, CachedStatement{std::make_unique<SQLite::Statement>(db, sql), false}).first;
  }
  // Not cached (cache full), or already on loan further up the stack: a private statement.
  if (it == statements.end() || it->second.busy) {
    return ledger_detail::Prepared(std::make_unique<SQLite::Statement>(db, sql));
  }
  it->second.busy = true;
  it->second.statement->clearBindings();
  return ledger_detail::Prepared(it->second.statement.get(), &it->second.busy);
}

// ---------------------------------------------------------------------------------------------
// opening and migrations

namespace {

int read_schema_version(SQLite::Database& db) {
  SQLite::Statement st(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
  st.executeStep();
  return st.getColumn(0).getInt();
}

void migrate(SQLite::Database& db, const std::string& path) {
  db.exec(
      "CREATE TABLE IF NOT EXISTS schema_version ("
      " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)");
  const auto& steps = ledger_detail::migrations();
  const int latest = steps.empty() ? 0 : steps.back().version;
  for (const ledger_detail::Migration& m : steps) {
    // Re-read inside the write lock: another process may have migrated while we waited.
    WriteTransaction tx(db);
    const int current = read_schema_version(db);
    if (current > latest) {
      throw Error(ErrorCode::storage, "ledger " + path + " has schema version " + std::to_string(current) +
                                          ", newer than this tokenlane supports (" + std::to_string(latest) +
                                          "); upgrade tokenlane or use another database file");
    }
    if (current >= m.version) continue;
    if (current != m.version - 1) {
      throw Error(ErrorCode::storage, "ledger " + path + " is at schema version " + std::to_string(current) +
                                          " but the next migration is " + std::to_string(m.version));
    }
    db.exec(m.sql);
    SQLite::Statement ins(db, "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)");
    ins.bind(1, m.version);
    ins.bind(2, m.description);
    ins.bind(3, ledger_detail::wall_now());
    ins.exec();
    tx.commit();
  }
  // Also catches a newer file when there were no steps left to run.
  if (const int current = read_schema_version(db); current > latest) {
    throw Error(ErrorCode::storage, "ledger " + path + " has schema version " + std::to_string(current) +
                                        ", newer than this tokenlane supports (" + std::to_string(latest) +
                                        "); upgrade tokenlane or use another database file");
  }
}

}  // namespace

Ledger::Impl::Impl(const std::string& p, int busy_timeout_ms)
    : path(p), db(p, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE | SQLite::OPEN_NOMUTEX) {
  db.setBusyTimeout(busy_timeout_ms);
  // WAL lets readers run while one process writes; NORMAL sync is durable at checkpoints and
  // never corrupts; foreign keys are off by default in SQLite and must be enabled per connection.
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA synchronous = NORMAL");
  db.exec("PRAGMA foreign_keys = ON");
  migrate(db, path);
}

Error Ledger::Impl::storage_error(const char* what, const SQLite::Exception& e) const {
  return Error(ErrorCode::storage, std::string("ledger ") + what + " failed on " + path + ": " + e.what());
}

Ledger::Ledger(const std::string& path) : Ledger(path, Options{}) {}

bool turn_off_sqlite_memory_statistics() noexcept {
  static const bool took = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK;
  return took;
}

Ledger::Ledger(const std::string& path, Options options) {
  if (path.empty()) throw Error(ErrorCode::invalid_argument, "ledger path is empty");
  if (options.busy_timeout_ms < 0) throw Error(ErrorCode::invalid_argument, "busy_timeout_ms must be >= 0");
  turn_off_sqlite_memory_statistics();
  try {
    impl_ = std::make_unique<Impl>(path, options.busy_timeout_ms);
  } catch (const SQLite::Exception& e) {
    throw Error(ErrorCode::storage, "cannot open ledger " + path + ": " + e.what() +
                                        " (does the directory exist and is it writable?)");
  }
}

Ledger::~Ledger() = default;

int Ledger::latest_schema_version() noexcept {
  const auto& steps = ledger_detail::migrations();
  return steps.empty() ? 0 : steps.back().version;
}

std::vector<Ledger::Migration> Ledger::migrations() {
  std::vector<Migration> out;
  for (const ledger_detail::Migration& m : ledger_detail::migrations()) out.push_back({m.version, m.description, m.sql});
  return out;
}

int Ledger::schema_version() const {
  return impl_->locked("schema_version", [&] { return read_schema_version(impl_->db); });
}

const std::string& Ledger::path() const noexcept { return impl_->path; }

// ---------------------------------------------------------------------------------------------
// users

namespace {

constexpr const char* kUserColumns =
    "id, email, name, role, COALESCE(tenant, email) AS tenant, team, org, disabled, created_at, password_hash";

void check_role(const std::string& role) {
  if (role != "client" && role != "admin")
    throw Error(ErrorCode::invalid_argument, "role must be \"client\" or \"admin\", got \"" + role + "\"");
}

void check_email(const std::string& email) {
  const auto at = email.find('@');
  if (email.empty() || email.size() > 320 || at == std::string::npos || at == 0 || at + 1 == email.size() ||
      email.find_first_of(" \t\r\n") != std::string::npos)
    throw Error(ErrorCode::invalid_argument, "not an email address: \"" + email + "\"");
}

bool is_constraint(const SQLite::Exception& e, int extended) { return e.getExtendedErrorCode() == extended; }

std::optional<LedgerRow> one_user(SQLite::Statement& st) {
  if (!st.executeStep()) return std::nullopt;
  return read_row(st, {"disabled"});
}

}  // namespace

std::int64_t Ledger::create_user(const std::string& email, const std::optional<std::string>& password_hash,
                                 const std::string& role, const std::optional<std::string>& name,
                                 const std::optional<std::string>& tenant) {
  check_email(email);
  check_role(role);
  return impl_->locked("create_user", [&]() -> std::int64_t {
    auto st_h = impl_->prepare("INSERT INTO users (email, name, role, tenant, password_hash, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)");
SQLite::Statement& st = *st_h;
    st.bind(1, email);
    ledger_detail::bind_value(st, 2, name ? LedgerValue(*name) : LedgerValue());
    st.bind(3, role);
    ledger_detail::bind_value(st, 4, tenant ? LedgerValue(*tenant) : LedgerValue());
    ledger_detail::bind_value(st, 5, password_hash ? LedgerValue(*password_hash) : LedgerValue());
    st.bind(6, ledger_detail::wall_now());
    try {
      st.exec();
    } catch (const SQLite::Exception& e) {
      if (is_constraint(e, SQLITE_CONSTRAINT_UNIQUE))
        throw Error(ErrorCode::invalid_argument, "a user with email \"" + email + "\" already exists");
      throw;
    }
    return impl_->db.getLastInsertRowid();
  });
}

std::optional<LedgerRow> Ledger::get_user(std::int64_t id) const {
  return impl_->locked("get_user", [&] {
    auto st_h = impl_->prepare(std::string("SELECT ") + kUserColumns + " FROM users WHERE id = ?");
SQLite::Statement& st = *st_h;
    st.bind(1, static_cast<std::int64_t>(id));
    return one_user(st);
  });
}

std::optional<LedgerRow> Ledger::get_user_by_email(const std::string& email) const {
  return impl_->locked("get_user_by_email", [&] {
    auto st_h = impl_->prepare(std::string("SELECT ") + kUserColumns + " FROM users WHERE email = ?");
SQLite::Statement& st = *st_h;
    st.bind(1, email);
    return one_user(st);
  });
}

std::vector<LedgerRow> Ledger::list_users() const {
  return impl_->locked("list_users", [&] {
    auto st_h = impl_->prepare("SELECT id, email, name, role, COALESCE(tenant, email) AS tenant, team, org, disabled, created_at "
                         "FROM users ORDER BY id");
SQLite::Statement& st = *st_h;
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st, {"disabled"}));
    return out;
  });
}

bool Ledger::update_user(std::int64_t id, const LedgerRow& fields) {
  std::string sets;
  for (const auto& [name, value] : fields.fields) {
    const bool null = std::holds_alternative<std::monostate>(value);
    if (name == "role") {
      if (!std::holds_alternative<std::string>(value))
        throw Error(ErrorCode::invalid_argument, "role must be \"client\" or \"admin\"");
      check_role(std::get<std::string>(value));
    } else if (name == "disabled") {
      if (!std::holds_alternative<bool>(value)) throw Error(ErrorCode::invalid_argument, "disabled must be a bool");
    } else if (name == "name" || name == "tenant" || name == "team" || name == "org" || name == "password_hash") {
      if (!null && !std::holds_alternative<std::string>(value))
        throw Error(ErrorCode::invalid_argument, name + " must be a string or None");
    } else {
      throw Error(ErrorCode::invalid_argument,
                  "cannot update user field \"" + name + "\" (allowed: name, role, tenant, team, org, disabled, password_hash)");
    }
    sets += (sets.empty() ? "" : ", ") + name + " = ?";
  }
  if (sets.empty()) return get_user(id).has_value();
  return impl_->locked("update_user", [&] {
    auto st_h = impl_->prepare("UPDATE users SET " + sets + " WHERE id = ?");
SQLite::Statement& st = *st_h;
    int i = 1;
    for (const auto& f : fields.fields) ledger_detail::bind_value(st, i++, f.second);
    st.bind(i, static_cast<std::int64_t>(id));
    return st.exec() == 1;
  });
}

// ---------------------------------------------------------------------------------------------
// API keys

namespace {

constexpr std::string_view kKeyPrefix = "tl-";
constexpr std::size_t kKeyRandomBytes = 30;                      // 240 bits
constexpr std::size_t kKeyChars = kKeyRandomBytes / 3 * 4;       // base64 without padding: 40
constexpr std::size_t kDisplayChars = 6;                         // random characters shown in lists
constexpr const char kUrlSafe[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Kernel CSPRNG; never a seeded PRNG, whose output could be predicted from earlier keys.
void random_bytes(unsigned char* out, std::size_t n) {
  while (n > 0) {
    const ssize_t got = getrandom(out, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::storage, "getrandom() failed: cannot generate an API key securely");
    }
    out += got;
    n -= static_cast<std::size_t>(got);
  }
}

std::string new_key_plaintext() {
  std::array<unsigned char, kKeyRandomBytes> raw{};
  random_bytes(raw.data(), raw.size());
  std::string key(kKeyPrefix);
  for (std::size_t i = 0; i < raw.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t{raw[i]} << 16) | (std::uint32_t{raw[i + 1]} << 8) | raw[i + 2];
    for (int shift = 18; shift >= 0; shift -= 6) key += kUrlSafe[(v >> shift) & 63];
  }
  return key;
}

bool well_formed_key(std::string_view key) {
  if (key.size() != kKeyPrefix.size() + kKeyChars || key.substr(0, kKeyPrefix.size()) != kKeyPrefix) return false;
  for (char c : key.substr(kKeyPrefix.size())) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

NewApiKey Ledger::create_api_key(std::int64_t user_id, const std::string& name) {
  if (name.empty() || name.size() > 200)
    throw Error(ErrorCode::invalid_argument, "API key name must be 1 to 200 characters");
  NewApiKey key;
  key.plaintext = new_key_plaintext();
  key.prefix = key.plaintext.substr(0, kKeyPrefix.size() + kDisplayChars);
  const std::string hash = detail::sha256_hex(key.plaintext);
  key.id = impl_->locked("create_api_key", [&]() -> std::int64_t {
    auto st_h = impl_->prepare("INSERT INTO api_keys (user_id, name, prefix, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)");
SQLite::Statement& st = *st_h;
    st.bind(1, static_cast<std::int64_t>(user_id));
    st.bind(2, name);
    st.bind(3, key.prefix);
    st.bind(4, hash);
    st.bind(5, ledger_detail::wall_now());
    try {
      st.exec();
    } catch (const SQLite::Exception& e) {
      if (is_constraint(e, SQLITE_CONSTRAINT_FOREIGNKEY))
        throw Error(ErrorCode::invalid_argument, "no user with id " + std::to_string(user_id));
      throw;
    }
    return impl_->db.getLastInsertRowid();
  });
  return key;
}

std::optional<LedgerRow> Ledger::verify_api_key(std::string_view plaintext) {
  if (!well_formed_key(plaintext)) return std::nullopt;
  const std::string hash = detail::sha256_hex(plaintext);
  return impl_->locked("verify_api_key", [&]() -> std::optional<LedgerRow> {
    auto st_h = impl_->prepare("SELECT k.id AS key_id, k.user_id, COALESCE(u.tenant, u.email) AS tenant, k.name, u.email, "
                         "u.role, u.team, u.org, k.last_used_at FROM api_keys k JOIN users u ON u.id = k.user_id "
                         "WHERE k.secret_hash = ? AND k.revoked_at IS NULL AND u.disabled = 0");
SQLite::Statement& st = *st_h;
    st.bind(1, hash);
    if (!st.executeStep()) return std::nullopt;
    LedgerRow row = read_row(st);
    const double now = ledger_detail::wall_now();
    // A write per request would serialize every worker on the file; once a minute is enough.
    if (row.is_null("last_used_at") || row.real("last_used_at") < now - 60) {
      auto up_h = impl_->prepare("UPDATE api_keys SET last_used_at = ? WHERE id = ?");
SQLite::Statement& up = *up_h;
      up.bind(1, now);
      up.bind(2, row.integer("key_id"));
      up.exec();
    }
    row.fields.pop_back();  // last_used_at is not part of the answer
    return row;
  });
}

bool Ledger::revoke_api_key(std::int64_t key_id, std::optional<std::int64_t> user_id) {
  return impl_->locked("revoke_api_key", [&] {
    auto st_h = impl_->prepare("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL "
                         "AND (? IS NULL OR user_id = ?)");
SQLite::Statement& st = *st_h;
    st.bind(1, ledger_detail::wall_now());
    st.bind(2, static_cast<std::int64_t>(key_id));
    ledger_detail::bind_value(st, 3, user_id ? LedgerValue(*user_id) : LedgerValue());
    ledger_detail::bind_value(st, 4, user_id ? LedgerValue(*user_id) : LedgerValue());
    return st.exec() == 1;
  });
}

std::vector<LedgerRow> Ledger::list_api_keys(std::int64_t user_id) const {
  return impl_->locked("list_api_keys", [&] {
    auto st_h = impl_->prepare("SELECT id, user_id, name, prefix, created_at, last_used_at, revoked_at, "
                         "revoked_at IS NULL AS active FROM api_keys WHERE user_id = ? ORDER BY id");
SQLite::Statement& st = *st_h;
    st.bind(1, static_cast<std::int64_t>(user_id));
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st, {"active"}));
    return out;
  });
}

// ---------------------------------------------------------------------------------------------
// configuration

namespace {

void check_json(const std::string& key, const std::string& value_json) {
  if (key.empty() || key.size() > 200) throw Error(ErrorCode::invalid_argument, "config key must be 1 to 200 characters");
  if (!nlohmann::json::accept(value_json))
    throw Error(ErrorCode::invalid_argument, "config value for \"" + key + "\" is not valid JSON");
}

}  // namespace

std::optional<std::string> Ledger::get_config(const std::string& key) const {
  return impl_->locked("get_config", [&]() -> std::optional<std::string> {
    auto st_h = impl_->prepare("SELECT value FROM config WHERE key = ?");
SQLite::Statement& st = *st_h;
    st.bind(1, key);
    if (!st.executeStep()) return std::nullopt;
    return st.getColumn(0).getString();
  });
}

void Ledger::set_config(const std::string& key, const std::string& value_json, const std::optional<std::string>& actor) {
  check_json(key, value_json);
  // Compare parsed values so formatting differences do not count as changes.
  const nlohmann::json new_value = nlohmann::json::parse(value_json);
  const std::string stored = new_value.dump();
  impl_->locked("set_config", [&] {
    WriteTransaction tx(impl_->db);
    std::optional<std::string> old;
    {
      auto st_h = impl_->prepare("SELECT value FROM config WHERE key = ?");
SQLite::Statement& st = *st_h;
      st.bind(1, key);
      if (st.executeStep()) old = st.getColumn(0).getString();
    }
    if (old && *old == stored) return;  // unchanged: no history entry
    const double now = ledger_detail::wall_now();
    const LedgerValue who = actor ? LedgerValue(*actor) : LedgerValue();
    auto up_h = impl_->prepare("INSERT INTO config (key, value, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
                         "updated_by = excluded.updated_by");
SQLite::Statement& up = *up_h;
    up.bind(1, key);
    up.bind(2, stored);
    up.bind(3, now);
    ledger_detail::bind_value(up, 4, who);
    up.exec();
    auto h_h = impl_->prepare("INSERT INTO config_history (key, old_value, new_value, actor, at) VALUES (?, ?, ?, ?, ?)");
SQLite::Statement& h = *h_h;
    h.bind(1, key);
    ledger_detail::bind_value(h, 2, old ? LedgerValue(*old) : LedgerValue());
    h.bind(3, stored);
    ledger_detail::bind_value(h, 4, who);
    h.bind(5, now);
    h.exec();
    tx.commit();
  });
}

std::vector<LedgerRow> Ledger::list_config() const {
  return impl_->locked("list_config", [&] {
    auto st_h = impl_->prepare("SELECT key, value, updated_at, updated_by FROM config ORDER BY key");
SQLite::Statement& st = *st_h;
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

std::vector<LedgerRow> Ledger::config_history(std::int64_t limit, const std::optional<std::string>& key) const {
  if (limit < 1 || limit > 10'000) throw Error(ErrorCode::invalid_argument, "limit must be between 1 and 10000");
  return impl_->locked("config_history", [&] {
    auto st_h = impl_->prepare("SELECT id, key, old_value, new_value, actor, at FROM config_history "
                         "WHERE (? IS NULL OR key = ?) ORDER BY id DESC LIMIT ?");
SQLite::Statement& st = *st_h;
    ledger_detail::bind_value(st, 1, key ? LedgerValue(*key) : LedgerValue());
    ledger_detail::bind_value(st, 2, key ? LedgerValue(*key) : LedgerValue());
    st.bind(3, static_cast<std::int64_t>(limit));
    std::vector<LedgerRow> out;
    while (st.executeStep()) out.push_back(read_row(st));
    return out;
  });
}

}  // namespace tokenlane
