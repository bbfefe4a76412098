// tokenlane._core: the one extension module. Each area registers itself from its own file.
#include "bindings.hpp"
#include "tokenlane/ledger.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "tokenlane's C++ core (private: use the tokenlane package)";
  tokenlane::turn_off_sqlite_memory_statistics();  // first: tokenlane's modules import sqlite3 later
  tokenlane::bindings::register_errors(m);
  tokenlane::bindings::register_tokenizer(m);
  tokenlane::bindings::register_pricing(m);
  tokenlane::bindings::register_estimator(m);
  tokenlane::bindings::register_ledger(m);
  tokenlane::bindings::register_scheduler(m);
  tokenlane::bindings::register_sim(m);
  tokenlane::bindings::register_prepare(m);
  tokenlane::bindings::register_json(m);
}
