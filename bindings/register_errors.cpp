// The one translation point from tokenlane::Error codes to Python exceptions.
#include "bindings.hpp"
#include "tokenlane/error.hpp"

namespace tokenlane::bindings {
namespace {

// Creates tokenlane._core.<name> with the given bases and adds it to the module. The reference is
// kept for the life of the process (handles, so nothing is released after interpreter shutdown).
py::handle new_exception(py::module_& m, const char* name, py::handle bases) {
  std::string qualified = std::string("tokenlane._core.") + name;
  PyObject* cls = PyErr_NewException(qualified.c_str(), bases.ptr(), nullptr);
  if (cls == nullptr) throw py::error_already_set();
  m.add_object(name, py::handle(cls));  // add_object takes its own reference; ours stays alive
  return cls;
}

py::handle invalid_argument, unknown_name, vocabulary, storage;

}  // namespace

void register_errors(py::module_& m) {
  // TokenlaneError is the base; each subclass also derives from the builtin a tiktoken user expects.
  py::handle base = new_exception(m, "TokenlaneError", PyExc_Exception);
  auto with = [&](PyObject* builtin) { return py::make_tuple(base, py::handle(builtin)); };
  invalid_argument = new_exception(m, "InvalidArgumentError", with(PyExc_ValueError));
  unknown_name = new_exception(m, "UnknownNameError", with(PyExc_KeyError));
  vocabulary = new_exception(m, "VocabularyError", with(PyExc_OSError));
  storage = new_exception(m, "StorageError", with(PyExc_OSError));
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::handle type = invalid_argument;
      if (e.code() == ErrorCode::not_found) type = unknown_name;
      if (e.code() == ErrorCode::vocab_missing || e.code() == ErrorCode::vocab_corrupt) type = vocabulary;
      if (e.code() == ErrorCode::storage) type = storage;
      PyErr_SetString(type.ptr(), e.what());
    }
  });
}

}  // namespace tokenlane::bindings
