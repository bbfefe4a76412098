#include "tokenlane/ledger.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "tokenlane/error.hpp"

using namespace tokenlane;
namespace fs = std::filesystem;

namespace {

// A fresh database path in the temp directory, removed (with its WAL files) afterwards.
struct TempDb {
  fs::path path;
  TempDb() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("tokenlane-ledger-" + std::to_string(rd()) + "-" + std::to_string(counter++) + ".db");
  }
  ~TempDb() {
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm", "-budgets"}) fs::remove(path.string() + suffix, ec);
  }
  std::string str() const { return path.string(); }
};

void raw_exec(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
}

int64_t table_count(const std::string& path, const char* table) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  const std::string sql = std::string("SELECT COUNT(*) FROM ") + table;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

constexpr double kNoon = 1'763'899'200.0;  // 2025-11-23T12:00:00Z

}  // namespace

TEST_CASE("ledger: schema is created, migrated once, and reopened", "[ledger]") {
  TempDb tmp;
  {
    Ledger led(tmp.str());
    CHECK(led.schema_version() == Ledger::latest_schema_version());
    CHECK(Ledger::latest_schema_version() >= 1);
    led.create_user("a@example.com");
  }
  {
    Ledger again(tmp.str());  // re-open: no migration re-runs, data kept
    CHECK(again.schema_version() == Ledger::latest_schema_version());
    CHECK(again.get_user_by_email("a@example.com").has_value());
  }
  CHECK(table_count(tmp.str(), "schema_version") == Ledger::latest_schema_version());

  SECTION("a database from newer code is refused with a clear error") {
    raw_exec(tmp.str(), "INSERT INTO schema_version VALUES (999, 'from the future', 0)");
    try {
      Ledger newer(tmp.str());
      FAIL("opening a newer schema must throw");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::storage);
      CHECK_THAT(e.what(), Catch::Contains("schema version 999") && Catch::Contains("upgrade tokenlane"));
    }
  }
  SECTION("WAL mode and foreign keys are on") {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(tmp.str().c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 0))) == "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
    Ledger led(tmp.str());
    LedgerRow bad;
    bad.set("id", std::string("r1")).set("status", std::string("queued")).set("user_id", std::int64_t{42});
    CHECK_THROWS_WITH(led.insert_request(bad), Catch::Contains("does not name an existing user"));
  }
}

TEST_CASE("ledger: a missing directory is a clear error", "[ledger]") {
  try {
    Ledger led("/nonexistent-dir-tokenlane/x.db");
    FAIL("must throw");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::storage);
    CHECK_THAT(e.what(), Catch::Contains("cannot open ledger"));
  }
}

TEST_CASE("ledger: users", "[ledger]") {
  Ledger led(":memory:");
  const auto id = led.create_user("Ada@Example.com", std::string("argon2$hash"), "admin", std::string("Ada"));
  auto u = led.get_user(id);
  REQUIRE(u);
  CHECK(u->text("email") == "Ada@Example.com");
  CHECK(u->text("role") == "admin");
  CHECK(u->text("name") == "Ada");
  CHECK(u->text("tenant") == "Ada@Example.com");
  CHECK(u->boolean("disabled") == false);
  CHECK(u->text("password_hash") == "argon2$hash");
  CHECK(u->real("created_at") > 1.7e9);
  CHECK(led.get_user_by_email("ada@example.COM")->integer("id") == id);  // case-insensitive
  CHECK_FALSE(led.get_user(id + 100));

  CHECK_THROWS_WITH(led.create_user("ada@example.com"), Catch::Contains("already exists"));
  CHECK_THROWS_WITH(led.create_user("not-an-email"), Catch::Contains("not an email"));
  CHECK_THROWS_WITH(led.create_user("b@example.com", std::nullopt, "root"), Catch::Contains("role must be"));

  LedgerRow change;
  change.set("role", std::string("client")).set("disabled", true).set("tenant", std::string("team-a"));
  CHECK(led.update_user(id, change));
  u = led.get_user(id);
  CHECK(u->text("role") == "client");
  CHECK(u->boolean("disabled"));
  CHECK(u->text("tenant") == "team-a");
  CHECK_FALSE(led.update_user(id + 100, change));
  LedgerRow bad;
  bad.set("email", std::string("x@y.z"));
  CHECK_THROWS_WITH(led.update_user(id, bad), Catch::Contains("cannot update user field"));

  led.create_user("b@example.com");
  const auto all = led.list_users();
  REQUIRE(all.size() == 2);
  CHECK(all[0].find("password_hash") == nullptr);  // lists never carry the hash
}

TEST_CASE("ledger: API keys are stored hashed, verified, and revoked", "[ledger]") {
  TempDb tmp;
  Ledger led(tmp.str());
  const auto uid = led.create_user("k@example.com", std::nullopt, "client", std::nullopt, std::string("acme"));
  const NewApiKey key = led.create_api_key(uid, "laptop");
  CHECK(key.plaintext.rfind("tl-", 0) == 0);
  CHECK(key.plaintext.size() == 43);
  CHECK(key.plaintext.find_first_not_of(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 3) == std::string::npos);
  CHECK(key.prefix == key.plaintext.substr(0, 9));
  CHECK(led.create_api_key(uid).plaintext != key.plaintext);

  SECTION("the plaintext is nowhere in the file") {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(tmp.str().c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM api_keys WHERE secret_hash = ? OR prefix = ?", -1, &st,
                               nullptr) == SQLITE_OK);
    sqlite3_bind_text(st, 1, key.plaintext.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, key.plaintext.c_str(), -1, SQLITE_TRANSIENT);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK(sqlite3_column_int64(st, 0) == 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }

  auto v = led.verify_api_key(key.plaintext);
  REQUIRE(v);
  CHECK(v->integer("key_id") == key.id);
  CHECK(v->integer("user_id") == uid);
  CHECK(v->text("tenant") == "acme");
  CHECK(v->text("name") == "laptop");
  CHECK(v->text("role") == "client");

  std::string wrong = key.plaintext;
  wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
  CHECK_FALSE(led.verify_api_key(wrong));
  CHECK_FALSE(led.verify_api_key(""));
  CHECK_FALSE(led.verify_api_key("tl-short"));
  CHECK_FALSE(led.verify_api_key(key.plaintext + "x"));

  const auto keys = led.list_api_keys(uid);
  REQUIRE(keys.size() == 2);
  CHECK(keys[0].text("prefix") == key.prefix);
  CHECK(keys[0].boolean("active"));
  CHECK(keys[0].find("secret_hash") == nullptr);
  CHECK_FALSE(keys[0].is_null("last_used_at"));  // verify touched it

  SECTION("revocation, and only by the owner") {
    const auto other = led.create_user("o@example.com");
    CHECK_FALSE(led.revoke_api_key(key.id, other));
    CHECK(led.verify_api_key(key.plaintext));
    CHECK(led.revoke_api_key(key.id, uid));
    CHECK_FALSE(led.revoke_api_key(key.id));  // already revoked
    CHECK_FALSE(led.verify_api_key(key.plaintext));
    CHECK_FALSE(led.list_api_keys(uid)[0].boolean("active"));
  }
  SECTION("a disabled user's keys stop working") {
    LedgerRow off;
    off.set("disabled", true);
    led.update_user(uid, off);
    CHECK_FALSE(led.verify_api_key(key.plaintext));
  }
  CHECK_THROWS_WITH(led.create_api_key(uid + 1000), Catch::Contains("no user with id"));
}

namespace {

LedgerRow request(const std::string& id, const std::string& tenant, const std::string& model, double created_at,
                  const std::string& status = "queued") {
  LedgerRow r;
  r.set("id", id)
      .set("tenant", tenant)
      .set("model", model)
      .set("status", status)
      .set("decision", std::string("admit"))
      .set("priority", std::string("standard"))
      .set("created_at", created_at)
      .set("est_input_tokens", std::int64_t{100})
      .set("est_output_p50", std::int64_t{50})
      .set("est_output_p90", std::int64_t{90})
      .set("est_cost_pico_usd", std::int64_t{1000});
  return r;
}

}  // namespace

TEST_CASE("ledger: requests insert, update, get and list with filters", "[ledger]") {
  Ledger led(":memory:");
  led.insert_request(request("r1", "alice", "gpt-4o", kNoon));
  led.insert_request(request("r2", "alice", "gpt-4o-mini", kNoon + 10));
  led.insert_request(request("r3", "bob", "gpt-4o", kNoon + 86400));

  auto r = led.get_request("r1");
  REQUIRE(r);
  CHECK(r->text("status") == "queued");
  CHECK(r->integer("est_output_p90") == 90);
  CHECK(r->is_null("output_tokens"));
  CHECK_FALSE(led.get_request("nope"));

  LedgerRow done;
  done.set("status", std::string("succeeded"))
      .set("started_at", kNoon + 1)
      .set("finished_at", std::int64_t{1'763'899'203})  // an integer for a time column is fine
      .set("queue_ms", 12.5)
      .set("input_tokens", std::int64_t{101})
      .set("output_tokens", std::int64_t{40})
      .set("cached_input_tokens", std::int64_t{64})
      .set("reasoning_tokens", std::int64_t{0})
      .set("cost_pico_usd", std::int64_t{900})
      .set("response_preview", std::string("Hello"));
  CHECK(led.update_request("r1", done));
  CHECK_FALSE(led.update_request("nope", done));
  r = led.get_request("r1");
  CHECK(r->text("status") == "succeeded");
  CHECK(r->real("finished_at") == 1'763'899'203.0);
  CHECK(r->integer("cost_pico_usd") == 900);
  CHECK(r->real("queue_ms") == 12.5);

  RequestFilter all;
  CHECK(led.list_requests(all).size() == 3);
  CHECK(led.list_requests(all)[0].text("id") == "r3");  // newest first
  RequestFilter f;
  f.tenant = "alice";
  CHECK(led.count_requests(f) == 2);
  f.model = "gpt-4o";
  CHECK(led.list_requests(f).size() == 1);
  RequestFilter by_status;
  by_status.status = "succeeded";
  CHECK(led.list_requests(by_status).at(0).text("id") == "r1");
  RequestFilter window;
  window.since = kNoon + 5;
  window.until = kNoon + 86400;  // exclusive
  REQUIRE(led.list_requests(window).size() == 1);
  CHECK(led.list_requests(window)[0].text("id") == "r2");
  RequestFilter page;
  page.limit = 2;
  page.offset = 2;
  REQUIRE(led.list_requests(page).size() == 1);
  CHECK(led.list_requests(page)[0].text("id") == "r1");

  SECTION("bad rows get clear errors") {
    CHECK_THROWS_WITH(led.insert_request(request("r1", "x", "m", kNoon)), Catch::Contains("already exists"));
    LedgerRow bad = request("r9", "x", "m", kNoon);
    bad.set("status", std::string("done"));
    CHECK_THROWS_WITH(led.insert_request(bad), Catch::Contains("unknown request status"));
    bad = request("r9", "x", "m", kNoon);
    bad.set("colour", std::string("red"));
    CHECK_THROWS_WITH(led.insert_request(bad), Catch::Contains("unknown request field \"colour\""));
    bad = request("r9", "x", "m", kNoon);
    bad.set("output_tokens", std::int64_t{-1});
    CHECK_THROWS_WITH(led.insert_request(bad), Catch::Contains(">= 0"));
    bad = request("r9", "x", "m", kNoon);
    bad.set("input_tokens", std::string("many"));
    CHECK_THROWS_WITH(led.insert_request(bad), Catch::Contains("must be an integer"));
    LedgerRow no_status;
    no_status.set("id", std::string("r9"));
    CHECK_THROWS_WITH(led.insert_request(no_status), Catch::Contains("needs a \"status\""));
    LedgerRow change_id;
    change_id.set("id", std::string("r10"));
    CHECK_THROWS(led.update_request("r1", change_id));
    RequestFilter bad_filter;
    bad_filter.status = "nope";
    CHECK_THROWS(led.list_requests(bad_filter));
    bad_filter = RequestFilter{};
    bad_filter.limit = 0;
    CHECK_THROWS(led.list_requests(bad_filter));
  }
}

TEST_CASE("ledger: reports group by day, model and user", "[ledger]") {
  Ledger led(":memory:");
  const auto uid = led.create_user("u@example.com");
  LedgerRow a = request("a", "u@example.com", "gpt-4o", kNoon, "succeeded");
  a.set("user_id", uid).set("input_tokens", std::int64_t{100}).set("output_tokens", std::int64_t{70});
  a.set("cost_pico_usd", std::int64_t{1500}).set("queue_ms", 10.0);
  led.insert_request(a);
  LedgerRow b = request("b", "u@example.com", "gpt-4o-mini", kNoon + 60, "failed");
  b.set("user_id", uid).set("queue_ms", 30.0);
  led.insert_request(b);
  led.insert_request(request("c", "other", "gpt-4o", kNoon + 86400, "rejected"));

  const auto days = led.report_by_day({});
  REQUIRE(days.size() == 2);
  CHECK(days[0].text("day") == "2025-11-23");
  CHECK(days[0].integer("requests") == 2);
  CHECK(days[0].integer("succeeded") == 1);
  CHECK(days[0].integer("failed") == 1);
  CHECK(days[0].integer("output_tokens") == 70);
  CHECK(days[0].integer("est_output_p50") == 100);         // both rows' estimates
  CHECK(days[0].integer("est_output_p50_matched") == 50);  // only the row with an actual
  CHECK(days[0].integer("output_tokens_matched") == 70);
  CHECK(days[0].integer("cost_pico_usd") == 1500);
  CHECK(days[0].real("avg_queue_ms") == 20.0);
  CHECK(days[0].real("max_queue_ms") == 30.0);
  CHECK(days[1].text("day") == "2025-11-24");
  CHECK(days[1].integer("rejected") == 1);

  const auto models = led.report_by_model({});
  REQUIRE(models.size() == 2);
  CHECK(models[0].text("model") == "gpt-4o");  // highest cost first
  CHECK(models[0].integer("requests") == 2);

  ReportFilter only_u;
  only_u.tenant = "u@example.com";
  const auto users = led.report_by_user(only_u);
  REQUIRE(users.size() == 1);
  CHECK(users[0].integer("user_id") == uid);
  CHECK(users[0].text("email") == "u@example.com");
  CHECK(users[0].integer("requests") == 2);
  const auto everyone = led.report_by_user({});
  REQUIRE(everyone.size() == 2);
  CHECK(everyone[1].is_null("user_id"));

  const auto counts = led.status_counts({});
  REQUIRE(counts.size() == 7);
  auto count_of = [&](const std::string& s) {
    for (const auto& [name, n] : counts)
      if (name == s) return n;
    return std::int64_t{-1};
  };
  CHECK(count_of("succeeded") == 1);
  CHECK(count_of("failed") == 1);
  CHECK(count_of("rejected") == 1);
  CHECK(count_of("queued") == 0);
  ReportFilter since;
  since.since = kNoon + 86400;
  CHECK(led.report_by_day(since).size() == 1);
}

TEST_CASE("ledger: budget windows follow the UTC calendar", "[ledger]") {
  const double t = 1'709'251'199.5;  // 2024-02-29T23:59:59.5Z (leap day)
  CHECK(budget_window_start(BudgetWindow::hour, t) == 1'709'247'600);
  CHECK(budget_window_start(BudgetWindow::day, t) == 1'709'164'800);
  CHECK(budget_window_start(BudgetWindow::month, t) == 1'706'745'600);  // 2024-02-01
  CHECK(*budget_window_end(BudgetWindow::month, t) == 1'709'251'200);   // 2024-03-01
  CHECK(budget_window_start(BudgetWindow::month, 1'735'689'599.0) == 1'733'011'200);  // 2024-12-01
  CHECK(*budget_window_end(BudgetWindow::month, 1'735'689'599.0) == 1'735'689'600);   // 2025-01-01
  CHECK(budget_window_start(BudgetWindow::total, t) == 0);
  CHECK_FALSE(budget_window_end(BudgetWindow::total, t));
  CHECK(budget_window_start(BudgetWindow::day, -1.0) == -86400);  // virtual clocks may start anywhere
  CHECK(parse_budget_window("month") == BudgetWindow::month);
  CHECK_THROWS_WITH(parse_budget_window("week"), Catch::Contains("expected one of hour, day, month, total"));
}

TEST_CASE("ledger: budget reserve, settle and release arithmetic", "[ledger]") {
  Ledger led(":memory:");
  led.set_budget("t", 1000, BudgetWindow::day, kNoon);
  CHECK(led.reserve("t", 600, kNoon));
  CHECK_FALSE(led.reserve("t", 401, kNoon));  // 600 + 401 > 1000
  CHECK(led.reserve("t", 400, kNoon));        // exactly the limit is allowed
  CHECK_FALSE(led.reserve("t", 1, kNoon));
  auto u = led.usage("t", kNoon);
  CHECK(u.integer("reserved_pico_usd") == 1000);
  CHECK(u.integer("remaining_pico_usd") == 0);

  led.settle("t", 600, 250, kNoon);  // actual below the reservation frees the rest
  u = led.usage("t", kNoon);
  CHECK(u.integer("spent_pico_usd") == 250);
  CHECK(u.integer("reserved_pico_usd") == 400);
  CHECK(u.integer("remaining_pico_usd") == 350);
  CHECK(u.integer("limit_pico_usd") == 1000);
  CHECK(u.text("window") == "day");
  CHECK(u.integer("resets_at") == budget_window_start(BudgetWindow::day, kNoon) + 86400);

  led.release("t", 400, kNoon);
  CHECK(led.usage("t", kNoon).integer("reserved_pico_usd") == 0);
  led.release("t", 400, kNoon);  // a double release never goes negative
  CHECK(led.usage("t", kNoon).integer("reserved_pico_usd") == 0);
  CHECK(led.reserve("t", 750, kNoon));
  CHECK_FALSE(led.reserve("t", 1, kNoon));

  SECTION("an actual above the reservation is charged in full") {
    led.settle("t", 750, 900, kNoon);
    u = led.usage("t", kNoon);
    CHECK(u.integer("spent_pico_usd") == 1150);
    CHECK(u.integer("remaining_pico_usd") == 0);
    CHECK_FALSE(led.reserve("t", 0 + 1, kNoon));
  }
  SECTION("tenants without a budget are unlimited but tracked") {
    CHECK(led.reserve("free", 1'000'000'000, kNoon));
    led.settle("free", 1'000'000'000, 5, kNoon);
    u = led.usage("free", kNoon);
    CHECK(u.integer("spent_pico_usd") == 5);
    CHECK(u.is_null("limit_pico_usd"));
    CHECK(u.is_null("remaining_pico_usd"));
    CHECK(u.text("window") == "total");
    CHECK(led.usage("never-seen", kNoon).integer("spent_pico_usd") == 0);
  }
  SECTION("the audit trail records every change") {
    const auto events = led.budget_events(std::string("t"), 100);
    REQUIRE(events.size() == 7);  // set_budget, 3 reserves, settle, 2 releases (the second finds nothing left)
    CHECK(events[0].text("kind") == "reserve");
    CHECK(events[1].text("kind") == "release");
    CHECK(events[1].integer("amount_pico_usd") == 0);  // nothing was left to free
    CHECK(events[2].integer("amount_pico_usd") == 400);
    CHECK(events[3].text("kind") == "settle");
    CHECK(events[3].integer("amount_pico_usd") == 250);
    CHECK(events[3].integer("reserved_pico_usd") == 600);
    CHECK(events.back().text("kind") == "set_budget");
  }
  SECTION("bad amounts are refused") {
    CHECK_THROWS(led.reserve("t", -1, kNoon));
    CHECK_THROWS(led.settle("t", 0, -5, kNoon));
    CHECK_THROWS(led.reserve("", 1, kNoon));
    CHECK_THROWS(led.reserve("t", 1, std::nan("")));
    CHECK_THROWS(led.set_budget("t", -1, BudgetWindow::day, kNoon));
  }
}

TEST_CASE("ledger: reserve_all takes every level or none, settle_all and release_all charge and free them all", "[ledger]") {
  Ledger led(":memory:");
  const std::vector<std::string> chain = {"org:a", "team:a/x", "member", "apikey:1"};
  led.set_budget("org:a", 1000, BudgetWindow::day, kNoon);
  led.set_budget("apikey:1", 300, BudgetWindow::day, kNoon);
  CHECK(led.reserve_all(chain, 200, kNoon) == -1);
  CHECK(led.reserve_all(chain, 200, kNoon) == 3);  // the key has 100 left: nothing is taken anywhere
  for (const std::string& level : chain) CHECK(led.usage(level, kNoon).integer("reserved_pico_usd") == 200);
  led.settle_all(chain, 200, 150, kNoon);
  for (const std::string& level : chain) {
    const LedgerRow u = led.usage(level, kNoon);
    CHECK(u.integer("spent_pico_usd") == 150);
    CHECK(u.integer("reserved_pico_usd") == 0);
  }
  CHECK(led.reserve_all({"org:a", "apikey:1"}, 100, kNoon) == -1);
  led.release_all({"org:a", "apikey:1"}, 100, kNoon);
  CHECK(led.usage("org:a", kNoon).integer("reserved_pico_usd") == 0);
  CHECK_THROWS(led.reserve_all({}, 1, kNoon));
  CHECK_THROWS(led.reserve_all({"ok", ""}, 1, kNoon));
}

TEST_CASE("ledger: window roll-over resets spent and keeps reservations", "[ledger]") {
  Ledger led(":memory:");
  const double day1 = kNoon, day2 = kNoon + 86400;
  led.set_budget("t", 1000, BudgetWindow::day, day1);
  CHECK(led.reserve("t", 300, day1));
  led.settle("t", 300, 300, day1);
  CHECK(led.reserve("t", 500, day1));  // in flight across midnight
  CHECK_FALSE(led.reserve("t", 201, day1));

  // Next day: spent starts at 0, the in-flight 500 still counts.
  CHECK(led.usage("t", day2).integer("spent_pico_usd") == 0);
  CHECK(led.usage("t", day2).integer("reserved_pico_usd") == 500);
  CHECK_FALSE(led.reserve("t", 501, day2));
  CHECK(led.reserve("t", 500, day2));
  auto b = led.get_budget("t");
  CHECK(b->integer("window_start") == budget_window_start(BudgetWindow::day, day2));
  CHECK(b->integer("spent_pico_usd") == 0);

  // The request from yesterday finishes today: charged to today's window.
  led.settle("t", 500, 400, day2);
  CHECK(led.usage("t", day2).integer("spent_pico_usd") == 400);
  // A clock that steps back does not reopen yesterday.
  CHECK_FALSE(led.reserve("t", 101, day1));
  CHECK(led.get_budget("t")->integer("window_start") == budget_window_start(BudgetWindow::day, day2));

  SECTION("changing the window recomputes spent from the settle events") {
    led.set_budget("t", 5000, BudgetWindow::month, day2);
    const auto u = led.usage("t", day2);
    CHECK(u.text("window") == "month");
    CHECK(u.integer("spent_pico_usd") == 700);  // 300 on day 1 + 400 on day 2, same month
    CHECK(u.integer("reserved_pico_usd") == 500);
  }
  SECTION("the requests count follows the window") {
    led.insert_request(request("x", "t", "m", day1));
    led.insert_request(request("y", "t", "m", day2));
    CHECK(led.usage("t", day2).integer("requests") == 1);
  }
}

TEST_CASE("ledger: token budgets are reserved, settled, rolled over and reclaimed like USD", "[ledger]") {
  Ledger led(":memory:");
  const double day2 = kNoon + 86400;
  led.set_budget("team:a/b", std::nullopt, BudgetWindow::day, kNoon, 1000);  // tokens only
  led.set_budget("org:a", 1'000'000, BudgetWindow::day, kNoon);              // USD only
  const std::vector<std::string> chain = {"org:a", "team:a/b"};
  CHECK(led.reserve_all(chain, 10, kNoon, "r1", "w:1:1", 700) == -1);
  CHECK(led.reserve_all(chain, 10, kNoon, {}, {}, 301) == 1);  // no token room at the team: none taken
  CHECK(led.usage("org:a", kNoon).integer("reserved_tokens") == 700);
  CHECK(led.reserve_all(chain, 999'991, kNoon, {}, {}, 0) == 0);  // the organisation's USD is the limit there
  // A journal record settles the hold's tokens: its reservation freed, the actual tokens charged.
  CHECK(led.apply_journal(R"({"id":"r1","row":{"id":"r1","status":"running","tenant":"t"},"final":)"
                          R"({"status":"succeeded","finished_at":1},"budgets":["org:a","team:a/b"],)"
                          R"("reserved":10,"actual":7,"reserved_tokens":700,"tokens":420,"now":)" +
                          std::to_string(kNoon) + "}\n").empty());
  auto u = led.usage("team:a/b", kNoon);
  CHECK(u.integer("spent_tokens") == 420);
  CHECK(u.integer("reserved_tokens") == 0);
  CHECK(u.integer("limit_tokens") == 1000);
  CHECK(u.integer("remaining_tokens") == 580);
  CHECK(u.is_null("limit_pico_usd"));
  CHECK(led.usage("org:a", kNoon).is_null("limit_tokens"));
  CHECK(led.usage("org:a", kNoon).integer("spent_tokens") == 420);  // tracked without a limit
  // The next day starts at zero tokens; a dead worker's token hold is given back by reclaim.
  CHECK(led.reserve_all(chain, 0, day2, "r2", "w:9:9", 1000) == -1);
  CHECK(led.usage("team:a/b", day2).integer("spent_tokens") == 0);
  const LedgerRow freed = led.reclaim("w:9:9", day2);
  CHECK(freed.integer("released_tokens") == 1000);
  CHECK(led.usage("team:a/b", day2).integer("reserved_tokens") == 0);
  CHECK_THROWS(led.reserve_all(chain, 0, day2, {}, {}, -1));
  CHECK_THROWS(led.set_budget("t", std::nullopt, BudgetWindow::day, kNoon, -1));
}

TEST_CASE("ledger: config values and history", "[ledger]") {
  Ledger led(":memory:");
  CHECK_FALSE(led.get_config("policy"));
  led.set_config("policy", "\"fifo\"", std::string("admin@example.com"));
  led.set_config("policy", "\"deadline\"", std::string("ops@example.com"));
  led.set_config("policy", " \"deadline\" ");  // same value: no history entry
  led.set_config("limits", R"({"tpm": 1000, "rpm": 10})");
  CHECK(*led.get_config("policy") == "\"deadline\"");
  CHECK(*led.get_config("limits") == R"({"rpm":10,"tpm":1000})");
  CHECK_THROWS_WITH(led.set_config("x", "{not json"), Catch::Contains("not valid JSON"));

  const auto h = led.config_history(50);
  REQUIRE(h.size() == 3);
  CHECK(h[0].text("key") == "limits");
  CHECK(h[0].is_null("old_value"));
  CHECK(h[1].text("old_value") == "\"fifo\"");
  CHECK(h[1].text("new_value") == "\"deadline\"");
  CHECK(h[1].text("actor") == "ops@example.com");
  CHECK(h[2].is_null("old_value"));
  CHECK(led.config_history(1, std::string("policy")).size() == 1);
  CHECK(led.list_config().size() == 2);
}

TEST_CASE("ledger: several connections on one file never overspend", "[ledger]") {
  TempDb tmp;
  { Ledger(tmp.str()).set_budget("shared", 10'000, BudgetWindow::day, kNoon); }
  constexpr int kThreads = 4, kAttempts = 60;
  std::atomic<std::int64_t> charged{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      Ledger led(tmp.str());  // its own connection, as a separate process would have
      std::mt19937 rng(static_cast<unsigned>(w));
      for (int i = 0; i < kAttempts; ++i) {
        const std::int64_t amount = 100 + static_cast<std::int64_t>(rng() % 300);
        if (!led.reserve("shared", amount, kNoon)) continue;
        if (rng() % 2) {
          led.settle("shared", amount, amount, kNoon);
          charged += amount;
        } else {
          led.release("shared", amount, kNoon);
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  Ledger led(tmp.str());
  const auto u = led.usage("shared", kNoon);
  CHECK(u.integer("spent_pico_usd") == charged.load());
  CHECK(u.integer("spent_pico_usd") <= 10'000);
  CHECK(u.integer("spent_pico_usd") > 9'000);  // contention really happened: the budget ran out
  CHECK(u.integer("reserved_pico_usd") == 0);
}

TEST_CASE("ledger: cached statements never hide another connection's writes", "[ledger]") {
  // Each read below steps its statement once and returns; if the statement were not reset, the
  // connection would keep reading the snapshot it started and miss the other writer.
  TempDb tmp;
  Ledger a(tmp.str());
  Ledger b(tmp.str());
  const auto uid = a.create_user("s@example.com");
  a.set_config("policy", "\"fifo\"");
  a.set_budget("t", 100, BudgetWindow::total, kNoon);
  CHECK(a.get_user(uid)->is_null("name"));
  CHECK(*a.get_config("policy") == "\"fifo\"");
  CHECK(a.get_budget("t")->integer("reserved_pico_usd") == 0);

  LedgerRow named;
  named.set("name", std::string("Sam"));
  b.update_user(uid, named);
  b.set_config("policy", "\"deadline\"");
  REQUIRE(b.reserve("t", 60, kNoon));

  CHECK(a.get_user(uid)->text("name") == "Sam");
  CHECK(*a.get_config("policy") == "\"deadline\"");
  CHECK(a.get_budget("t")->integer("reserved_pico_usd") == 60);
  CHECK_FALSE(a.reserve("t", 41, kNoon));  // sees b's reservation
  CHECK(a.reserve("t", 40, kNoon));
}

TEST_CASE("ledger: one connection shared by several threads", "[ledger][threads]") {
  // A process shares one Ledger between its writer thread and readers (admin pages, key checks).
  TempDb tmp;
  Ledger led(tmp.str());
  led.set_budget("shared", 1'000'000, BudgetWindow::day, kNoon);
  const auto uid = led.create_user("threads@example.com");
  const auto key = led.create_api_key(uid);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < 50; ++i) {
        const std::string id = "r" + std::to_string(w) + "-" + std::to_string(i);
        LedgerRow row;
        row.set("id", id).set("status", std::string("running")).set("tenant", std::string("shared"));
        led.insert_request(row);
        if (led.reserve("shared", 100, kNoon)) led.settle("shared", 100, 60, kNoon);
        LedgerRow done;
        done.set("status", std::string("succeeded")).set("cost_pico_usd", std::int64_t{60});
        if (!led.update_request(id, done)) failures++;
        if (!led.verify_api_key(key.plaintext)) failures++;
        led.usage("shared", kNoon);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  RequestFilter all;
  all.limit = 1000;
  CHECK(led.count_requests(all) == 200);
  const auto u = led.usage("shared", kNoon);
  CHECK(u.integer("reserved_pico_usd") == 0);
  CHECK(u.integer("spent_pico_usd") == 200 * 60);
}

TEST_CASE("ledger: budget_version sees another connection's set_budget at once", "[ledger]") {
  TempDb tmp;
  Ledger writer(tmp.str());
  Ledger reader(tmp.str());  // as another process: its own connections and its own cached version
  const double now = 1'700'000'000.0;
  const std::int64_t v = reader.budget_version();
  CHECK(reader.budget_version() == v);  // unchanged: answered from the epoch, no SQLite read
  writer.set_budget("acme", std::int64_t{1'000'000}, BudgetWindow::day, now);
  CHECK(reader.budget_version() == v + 1);
  writer.set_budget("acme", std::nullopt, BudgetWindow::day, now);
  CHECK(reader.budget_version() == v + 2);
  CHECK(fs::exists(tmp.str() + "-budgets"));

  // A writer that never bumps the epoch (an older build; here plain SQL) is still seen once the
  // cached version is older than its maximum age.
  raw_exec(tmp.str(), "UPDATE ledger_meta SET value = value + 1 WHERE key = 'budget_version'");
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  CHECK(reader.budget_version() == v + 3);
}

TEST_CASE("ledger: journal records apply once; a dead owner's holds and rows are reclaimed", "[ledger]") {
  TempDb tmp;
  Ledger led(tmp.str());
  const double now = 1'700'000'000.0;
  led.set_budget("acme", std::int64_t{1'000'000}, BudgetWindow::day, now);
  const std::int64_t v = led.budget_version();
  CHECK(v >= 1);
  led.set_budget("acme", std::int64_t{2'000'000}, BudgetWindow::day, now);
  CHECK(led.budget_version() == v + 1);  // another connection would see it too

  REQUIRE(led.reserve_all({"acme", "acme/user:bo"}, 5000, now, "req_1", "host:1:2") == -1);
  REQUIRE(led.reserve_all({"acme"}, 700, now, "req_2", "host:1:2") == -1);
  const std::string record =
      R"({"id":"req_1","row":{"status":"running","tenant":"acme","owner":"host:1:2","created_at":1.0},)"
      R"("final":{"status":"succeeded","finished_at":2.0,"cost_pico_usd":1200},)"
      R"("budgets":["acme","acme/user:bo"],"reserved":5000,"actual":1200,"now":1700000000.0})";
  CHECK(led.apply_journal(record + "\n" + "not json\n").size() == 1);  // the bad line is skipped alone
  CHECK(led.apply_journal(record + "\n").empty());                     // a replay changes nothing
  CHECK(led.get_request("req_1")->text("status") == "succeeded");
  CHECK(led.get_budget("acme")->integer("spent_pico_usd") == 1200);
  CHECK(led.get_budget("acme")->integer("reserved_pico_usd") == 700);  // req_2's hold is still there
  CHECK(led.get_budget("acme/user:bo")->integer("reserved_pico_usd") == 0);

  LedgerRow running;
  running.set("id", std::string("req_3")).set("status", std::string("running")).set("owner", std::string("host:1:2"));
  led.insert_request(running);
  CHECK(led.owners() == std::vector<std::string>{"host:1:2"});
  const LedgerRow freed = led.reclaim("host:1:2", now);
  CHECK(freed.integer("holds") == 1);
  CHECK(freed.integer("requests") == 1);
  CHECK(freed.integer("released_pico_usd") == 700);
  CHECK(led.get_budget("acme")->integer("reserved_pico_usd") == 0);
  CHECK(led.get_request("req_3")->text("status") == "failed");
  CHECK(led.owners().empty());
  CHECK(led.reclaim("host:1:2", now).integer("holds") == 0);  // idempotent
}

TEST_CASE("ledger: the journal applier wakes for the first record after a lull, then keeps its own time", "[ledger]") {
  TempDb tmp;
  auto led = std::make_shared<Ledger>(tmp.str());
  JournalApplier applier(led, 0.001);
  auto applied_without_flush = [&](std::uint64_t seq) {
    for (int i = 0; i < 5000 && applier.take_status().applied < seq; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return applier.take_status().applied >= seq;
  };
  // Asleep with nothing to do: the push wakes it. Then records arriving while it is busy or
  // gathering are picked up by its own timer (push signals only a sleeping applier).
  for (int round = 0; round < 3; ++round) {
    std::uint64_t seq = 0;
    for (int i = 0; i < 20; ++i)
      seq = applier.push(R"({"id":"req_)" + std::to_string(round) + "_" + std::to_string(i) +
                         R"(","row":{"status":"running"}})" + "\n");
    CHECK(applied_without_flush(seq));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a lull: it goes back to sleep
  }
  CHECK(led->count_requests(RequestFilter{}) == 60);
}

TEST_CASE("ledger: the journal applier applies pushed records in batches, flush waits for them", "[ledger]") {
  TempDb tmp;
  auto led = std::make_shared<Ledger>(tmp.str());
  {
    JournalApplier applier(led, 10.0);  // a long delay: only flush (or the end) makes it apply
    for (int i = 0; i < 50; ++i)
      applier.push(R"({"id":"req_)" + std::to_string(i) + R"(","row":{"status":"running"}})" + "\n");
    CHECK(applier.flush(30.0));
    CHECK(led->count_requests(RequestFilter{}) == 50);
    applier.push("not json\n");
    applier.push(R"({"id":"req_last","row":{"status":"running"}})" "\n");
  }  // destroyed: applies what is left
  CHECK(led->get_request("req_last").has_value());
}
