// Shared helpers of the binding files.
#pragma once

#include <pybind11/pybind11.h>

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

// A Python str as UTF-8, kept alive by `holder` (valid while the GIL is released). Lone surrogates
// are replaced by U+FFFD as tiktoken does, so no str ever raises here.
std::string_view utf8_of(const py::handle& text, py::object& holder);

}  // namespace tokenlane::bindings
