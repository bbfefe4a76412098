// Binds the ledger. Rows cross as plain dicts; every database call runs without the GIL, so other
// Python threads (and the event loop that delegated to a worker thread) keep running meanwhile.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/ledger.hpp"

namespace tokenlane::bindings {
namespace {

LedgerValue to_value(const std::string& name, const py::handle& v) {
  if (v.is_none()) return std::monostate{};
  if (PyBool_Check(v.ptr())) return v.cast<bool>();
  if (PyLong_Check(v.ptr())) {
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
    if (overflow != 0) throw Error(ErrorCode::invalid_argument, "field \"" + name + "\" does not fit in 64 bits");
    return static_cast<std::int64_t>(x);
  }
  if (PyFloat_Check(v.ptr())) return v.cast<double>();
  if (PyUnicode_Check(v.ptr())) return v.cast<std::string>();
  throw Error(ErrorCode::invalid_argument, "field \"" + name + "\" must be None, bool, int, float or str, not " +
                                               std::string(py::str(v.get_type().attr("__name__"))));
}

LedgerRow to_row(const py::dict& d) {
  LedgerRow row;
  for (const auto& [k, v] : d) {
    if (!PyUnicode_Check(k.ptr())) throw Error(ErrorCode::invalid_argument, "field names must be strings");
    std::string name = k.cast<std::string>();
    LedgerValue value = to_value(name, v);
    row.fields.emplace_back(std::move(name), std::move(value));
  }
  return row;
}

py::dict to_dict(const LedgerRow& row) {
  py::dict d;
  for (const auto& [name, value] : row.fields) {
    d[py::str(name)] = std::visit(
        [](const auto& x) -> py::object {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::monostate>) {
            return py::none();
          } else {
            return py::cast(x);
          }
        },
        value);
  }
  return d;
}

py::object to_optional_dict(const std::optional<LedgerRow>& row) { return row ? py::object(to_dict(*row)) : py::none(); }

py::list to_list(const std::vector<LedgerRow>& rows) {
  py::list out;
  for (const LedgerRow& r : rows) out.append(to_dict(r));
  return out;
}

// Runs `f` with the GIL released and converts its result with the GIL held again.
template <class F, class C>
py::object unlocked(F&& f, C&& convert) {
  auto result = [&] {
    py::gil_scoped_release release;
    return f();
  }();
  return convert(result);
}

template <class F>
auto unlocked(F&& f) {
  py::gil_scoped_release release;
  return f();
}

RequestFilter request_filter(std::optional<std::string> tenant, std::optional<std::string> status,
                             std::optional<std::string> model, std::optional<std::int64_t> user_id,
                             std::optional<double> since, std::optional<double> until, std::int64_t limit,
                             std::int64_t offset) {
  RequestFilter f;
  f.tenant = std::move(tenant);
  f.status = std::move(status);
  f.model = std::move(model);
  f.user_id = user_id;
  f.since = since;
  f.until = until;
  f.limit = limit;
  f.offset = offset;
  return f;
}

ReportFilter report_filter(std::optional<std::string> tenant, std::optional<std::int64_t> user_id,
                           std::optional<double> since, std::optional<double> until) {
  ReportFilter f;
  f.tenant = std::move(tenant);
  f.user_id = user_id;
  f.since = since;
  f.until = until;
  return f;
}

}  // namespace

static void register_journal_applier(py::module_& m) {
  py::class_<JournalApplier>(m, "JournalApplier")
      .def(py::init([](std::shared_ptr<Ledger> ledger, double batch_delay_s) {
             return std::make_unique<JournalApplier>(std::move(ledger), batch_delay_s);
           }),
           py::arg("ledger"), py::arg("batch_delay_s"))
      // Keeps the GIL: a copy under a mutex, never a hand-off to another thread.
      .def("push", [](JournalApplier& a, const py::bytes& record) { return a.push(std::string(record)); })
      .def("flush", [](JournalApplier& a, double timeout_s) { return unlocked([&] { return a.flush(timeout_s); }); })
      .def("set_ledger", &JournalApplier::set_ledger)
      .def("take_status", [](JournalApplier& a) {
        JournalApplier::Status st = a.take_status();
        py::dict d;
        d["queued"] = st.queued;
        d["applied"] = st.applied;
        d["failures"] = st.failures;
        d["last_error"] = st.last_error;
        d["skipped"] = st.skipped;
        return d;
      });
}

void register_ledger(py::module_& m) {
  register_journal_applier(m);
  using Opt = std::optional<std::string>;
  py::class_<Ledger, std::shared_ptr<Ledger>>(m, "Ledger")
      .def(py::init([](const std::string& path, int busy_timeout_ms) {
             py::gil_scoped_release release;
             return std::make_shared<Ledger>(path, Ledger::Options{busy_timeout_ms});
           }),
           py::arg("path"), py::arg("busy_timeout_ms"))
      .def_property_readonly("path", &Ledger::path)
      .def_property_readonly("schema_version", [](const Ledger& l) { return unlocked([&] { return l.schema_version(); }); })
      .def_property_readonly_static("latest_schema_version",
                                    [](const py::object&) { return Ledger::latest_schema_version(); })
      .def_static("migrations",
                  [] {
                    py::list out;
                    for (const Ledger::Migration& m : Ledger::migrations())
                      out.append(py::make_tuple(m.version, m.description, m.sql));
                    return out;
                  })
      // users
      .def("create_user",
           [](Ledger& l, const std::string& email, const Opt& password_hash, const std::string& role, const Opt& name,
              const Opt& tenant) {
             return unlocked([&] { return l.create_user(email, password_hash, role, name, tenant); });
           })
      .def("get_user",
           [](const Ledger& l, std::int64_t id) {
             return unlocked([&] { return l.get_user(id); }, to_optional_dict);
           })
      .def("get_user_by_email",
           [](const Ledger& l, const std::string& email) {
             return unlocked([&] { return l.get_user_by_email(email); }, to_optional_dict);
           })
      .def("list_users", [](const Ledger& l) { return unlocked([&] { return l.list_users(); }, to_list); })
      .def("update_user",
           [](Ledger& l, std::int64_t id, const py::dict& fields) {
             LedgerRow row = to_row(fields);
             return unlocked([&] { return l.update_user(id, row); });
           })
      // API keys
      .def("create_api_key",
           [](Ledger& l, std::int64_t user_id, const std::string& name) {
             NewApiKey k = unlocked([&] { return l.create_api_key(user_id, name); });
             return py::make_tuple(k.id, k.plaintext, k.prefix);
           })
      .def("verify_api_key",
           [](Ledger& l, const std::string& plaintext) {
             return unlocked([&] { return l.verify_api_key(plaintext); }, to_optional_dict);
           })
      .def("revoke_api_key",
           [](Ledger& l, std::int64_t key_id, std::optional<std::int64_t> user_id) {
             return unlocked([&] { return l.revoke_api_key(key_id, user_id); });
           })
      .def("list_api_keys",
           [](const Ledger& l, std::int64_t user_id) {
             return unlocked([&] { return l.list_api_keys(user_id); }, to_list);
           })
      // requests
      .def("insert_request",
           [](Ledger& l, const py::dict& row) {
             LedgerRow r = to_row(row);
             unlocked([&] { l.insert_request(r); });
           })
      .def("update_request",
           [](Ledger& l, const std::string& id, const py::dict& fields) {
             LedgerRow r = to_row(fields);
             return unlocked([&] { return l.update_request(id, r); });
           })
      .def("get_request",
           [](const Ledger& l, const std::string& id) {
             return unlocked([&] { return l.get_request(id); }, to_optional_dict);
           })
      .def("list_requests",
           [](const Ledger& l, Opt tenant, Opt status, Opt model, std::optional<std::int64_t> user_id,
              std::optional<double> since, std::optional<double> until, std::int64_t limit, std::int64_t offset) {
             RequestFilter f = request_filter(tenant, status, model, user_id, since, until, limit, offset);
             return unlocked([&] { return l.list_requests(f); }, to_list);
           })
      .def("count_requests",
           [](const Ledger& l, Opt tenant, Opt status, Opt model, std::optional<std::int64_t> user_id,
              std::optional<double> since, std::optional<double> until) {
             RequestFilter f = request_filter(tenant, status, model, user_id, since, until, 1, 0);
             return unlocked([&] { return l.count_requests(f); });
           })
      // budgets
      .def("set_budget",
           [](Ledger& l, const std::string& tenant, std::optional<std::int64_t> limit, const std::string& window,
              double now, std::optional<std::int64_t> limit_tokens) {
             const BudgetWindow w = parse_budget_window(window);
             unlocked([&] { l.set_budget(tenant, limit, w, now, limit_tokens); });
           })
      .def("get_budget",
           [](const Ledger& l, const std::string& tenant) {
             return unlocked([&] { return l.get_budget(tenant); }, to_optional_dict);
           })
      .def("list_budgets", [](const Ledger& l) { return unlocked([&] { return l.list_budgets(); }, to_list); })
      .def("reserve",
           [](Ledger& l, const std::string& tenant, std::int64_t amount, double now, std::int64_t tokens) {
             return unlocked([&] { return l.reserve(tenant, amount, now, tokens); });
           })
      .def("settle",
           [](Ledger& l, const std::string& tenant, std::int64_t reserved, std::int64_t actual, double now,
              std::int64_t reserved_tokens, std::int64_t actual_tokens) {
             unlocked([&] { l.settle(tenant, reserved, actual, now, reserved_tokens, actual_tokens); });
           })
      .def("release",
           [](Ledger& l, const std::string& tenant, std::int64_t reserved, double now, std::int64_t reserved_tokens) {
             unlocked([&] { l.release(tenant, reserved, now, reserved_tokens); });
           })
      .def("reserve_all",
           [](Ledger& l, const std::vector<std::string>& tenants, std::int64_t amount, double now,
              const std::string& hold, const std::string& owner, std::int64_t tokens) {
             return unlocked([&] { return l.reserve_all(tenants, amount, now, hold, owner, tokens); });
           })
      .def("settle_all",
           [](Ledger& l, const std::vector<std::string>& tenants, std::int64_t reserved, std::int64_t actual,
              double now, const std::string& hold, std::int64_t reserved_tokens, std::int64_t actual_tokens) {
             unlocked([&] { l.settle_all(tenants, reserved, actual, now, hold, reserved_tokens, actual_tokens); });
           })
      .def("release_all",
           [](Ledger& l, const std::vector<std::string>& tenants, std::int64_t reserved, double now,
              const std::string& hold, std::int64_t reserved_tokens) {
             unlocked([&] { l.release_all(tenants, reserved, now, hold, reserved_tokens); });
           })
      // A few microseconds on its own connection: keeps the GIL (a release would be a hand-off).
      .def("budget_version", &Ledger::budget_version)
      // write-behind journal, crashed workers
      .def("apply_journal",
           [](Ledger& l, const py::bytes& records) {
             std::string_view text = records;  // the bytes object outlives the call
             return unlocked([&] { return l.apply_journal(text); });
           })
      .def("owners", [](const Ledger& l) { return unlocked([&] { return l.owners(); }); })
      .def("reclaim",
           [](Ledger& l, const std::string& owner, double now) {
             return unlocked([&] { return l.reclaim(owner, now); }, to_dict);
           })
      .def("usage",
           [](const Ledger& l, const std::string& tenant, double now) {
             return unlocked([&] { return l.usage(tenant, now); }, to_dict);
           })
      .def("budget_events",
           [](const Ledger& l, const Opt& tenant, std::int64_t limit) {
             return unlocked([&] { return l.budget_events(tenant, limit); }, to_list);
           })
      // configuration
      .def("get_config",
           [](const Ledger& l, const std::string& key) { return unlocked([&] { return l.get_config(key); }); })
      .def("set_config",
           [](Ledger& l, const std::string& key, const std::string& value_json, const Opt& actor) {
             unlocked([&] { l.set_config(key, value_json, actor); });
           })
      .def("list_config", [](const Ledger& l) { return unlocked([&] { return l.list_config(); }, to_list); })
      .def("config_history",
           [](const Ledger& l, std::int64_t limit, const Opt& key) {
             return unlocked([&] { return l.config_history(limit, key); }, to_list);
           })
      // reports
      .def("report_by_day",
           [](const Ledger& l, Opt tenant, std::optional<std::int64_t> user_id, std::optional<double> since,
              std::optional<double> until) {
             ReportFilter f = report_filter(tenant, user_id, since, until);
             return unlocked([&] { return l.report_by_day(f); }, to_list);
           })
      .def("report_by_model",
           [](const Ledger& l, Opt tenant, std::optional<std::int64_t> user_id, std::optional<double> since,
              std::optional<double> until) {
             ReportFilter f = report_filter(tenant, user_id, since, until);
             return unlocked([&] { return l.report_by_model(f); }, to_list);
           })
      .def("report_by_user",
           [](const Ledger& l, Opt tenant, std::optional<std::int64_t> user_id, std::optional<double> since,
              std::optional<double> until) {
             ReportFilter f = report_filter(tenant, user_id, since, until);
             return unlocked([&] { return l.report_by_user(f); }, to_list);
           })
      .def("status_counts", [](const Ledger& l, Opt tenant, std::optional<std::int64_t> user_id,
                               std::optional<double> since, std::optional<double> until) {
        ReportFilter f = report_filter(tenant, user_id, since, until);
        auto counts = unlocked([&] { return l.status_counts(f); });
        py::dict d;
        for (const auto& [status, n] : counts) d[py::str(status)] = n;
        return d;
      });
}

}  // namespace tokenlane::bindings
