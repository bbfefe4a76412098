// Shared helpers of the binding files.
#pragma once

#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <string_view>

namespace tokenlane::bindings {

namespace py = pybind11;

void register_errors(py::module_& m);
void register_tokenizer(py::module_& m);
void register_pricing(py::module_& m);
void register_estimator(py::module_& m);
void register_ledger(py::module_& m);
void register_scheduler(py::module_& m);
void register_sim(py::module_& m);
void register_prepare(py::module_& m);
void register_json(py::module_& m);

// Releases the GIL only for work that may take long. Releasing it is a hand-off, not a free
// action: if another Python thread wants the GIL (the ledger writer, a worker), it takes it, and the
// caller waits until that thread lets go, up to the interpreter's 5 ms switch interval. That wait,
// not the C++ work, was the middleware's tail latency. So per-request calls that take microseconds
// (scheduler submit/complete, estimates, counting a prompt) keep the GIL; big texts, batches and
// I/O release it.
class ReleaseGilIf {
 public:
  explicit ReleaseGilIf(bool release) {
    if (release) release_.emplace();
  }

 private:
  std::optional<py::gil_scoped_release> release_;
};
// Texts up to this size are counted without releasing the GIL (tens of µs of work).
inline constexpr std::size_t kKeepGilBytes = std::size_t{1} << 14;

// Appends obj as json.dumps(obj) writes it (compact: with separators=(',', ':')): dicts, lists,
// tuples, str, int, float, bool and None; raises as json.dumps does (py::error_already_set), after
// which `out` holds nothing to use.
void append_json(std::string& out, PyObject* obj, bool compact);

// A Python str as UTF-8, kept alive by `holder` (valid while the GIL is released). Lone surrogates
// are replaced by U+FFFD as tiktoken does, so no str ever raises here.
std::string_view utf8_of(const py::handle& text, py::object& holder);

}  // namespace tokenlane::bindings
