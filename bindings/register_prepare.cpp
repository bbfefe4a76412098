// Binds the middleware's fast path (tokenlane/prepare.hpp): chat messages cross as the parsed
// Python list, read in place (no second JSON parse, no copies of the texts), tool definitions as
// their JSON; the result crosses as one tuple.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tokenlane/prepare.hpp"

namespace tokenlane::bindings {
namespace {

// A str's UTF-8 without copying (cached in the str by CPython); nullopt for anything else and for
// strings with lone surrogates, which only the general path reports correctly.
std::optional<std::string_view> plain_utf8(PyObject* o) {
  if (!PyUnicode_CheckExact(o)) return std::nullopt;
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(o, &size);
  if (data == nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  return std::string_view(data, static_cast<std::size_t>(size));
}

// Reads a content given as a list of {"type": "text", "text": str} parts (one Field per part).
bool read_text_parts(PyObject* parts, std::string_view key, PlainChat& chat) {
  const Py_ssize_t n = PyList_GET_SIZE(parts);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* part = PyList_GET_ITEM(parts, i);
    if (!PyDict_CheckExact(part)) return false;
    PyObject* type = PyDict_GetItemString(part, "type");
    PyObject* text = PyDict_GetItemString(part, "text");
    if (type == nullptr || text == nullptr || plain_utf8(type) != std::optional<std::string_view>("text")) return false;
    auto v = plain_utf8(text);
    if (!v) return false;
    chat.fields.push_back({key, *v, true});
  }
  return true;
}

// Reads tool calls whose function has a string name and arguments (counted as those two texts).
bool read_tool_calls(PyObject* calls, std::string_view key, PlainChat& chat) {
  const Py_ssize_t n = PyList_GET_SIZE(calls);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* call = PyList_GET_ITEM(calls, i);
    if (!PyDict_CheckExact(call) || PyDict_GetItemString(call, "text") != nullptr ||
        PyDict_GetItemString(call, "image_url") != nullptr) {
      return false;
    }
    PyObject* function = PyDict_GetItemString(call, "function");
    if (function == nullptr || !PyDict_CheckExact(function)) return false;
    PyObject* name = PyDict_GetItemString(function, "name");
    PyObject* arguments = PyDict_GetItemString(function, "arguments");
    auto n_text = name ? plain_utf8(name) : std::nullopt;
    auto a_text = arguments ? plain_utf8(arguments) : std::nullopt;
    if (!n_text || !a_text) return false;
    chat.fields.push_back({key, *n_text, true});
    chat.fields.push_back({key, *a_text, true});
  }
  return true;
}

// Reads `messages` into `chat` when every message is plain (see tokenlane/prepare.hpp).
bool read_plain(const py::handle& messages, PlainChat& chat) {
  PyObject* list = messages.ptr();
  if (!PyList_CheckExact(list)) return false;
  const Py_ssize_t n = PyList_GET_SIZE(list);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* m = PyList_GET_ITEM(list, i);
    if (!PyDict_CheckExact(m)) return false;
    Py_ssize_t pos = 0;
    PyObject *key = nullptr, *value = nullptr;
    bool has_role = false;
    while (PyDict_Next(m, &pos, &key, &value)) {
      auto k = plain_utf8(key);
      if (!k) return false;
      if (value == Py_None && *k != "role") continue;  // null fields count nothing
      if (*k == "content" && PyList_CheckExact(value)) {
        if (!read_text_parts(value, *k, chat)) return false;
        continue;
      }
      if (*k == "tool_calls" && PyList_CheckExact(value)) {
        if (!read_tool_calls(value, *k, chat)) return false;
        continue;
      }
      auto v = plain_utf8(value);
      if (!v) return false;
      has_role = has_role || *k == "role";
      chat.fields.push_back({*k, *v});
    }
    if (!has_role) return false;
    chat.end_message();
  }
  return true;
}

using Opt = std::optional<std::uint64_t>;

py::object optional_int(const std::optional<std::uint64_t>& v) {
  return v ? py::object(py::int_(*v)) : py::object(py::none());
}

}  // namespace

void register_prepare(py::module_& m) {
  py::class_<PreparedChat, std::shared_ptr<PreparedChat>>(m, "PreparedChat")
      .def_readonly("input_tokens", &PreparedChat::input_tokens)
      .def_readonly("prompt", &PreparedChat::prompt);

  // (prepared, input_tokens, priced, max_input_tokens, max_output, p50, p90, source, cost_p50,
  //  cost_p90, cost_max, last_message_tokens, prefix_hash), or None when the messages are not plain (the caller takes the general path).
  m.def("prepare_chat",
        [](const Encoding& encoding, const Estimator& estimator, const Pricing& pricing, const py::handle& messages,
           std::string_view model, std::string_view route, std::string_view tenant, Opt max_tokens, std::uint64_t n,
           std::uint64_t default_max_output, std::string_view tools_json) -> py::object {
          thread_local PlainChat chat;  // reused: its vectors keep their capacity
          chat.fields.clear();
          chat.message_ends.clear();
          if (!read_plain(messages, chat) || chat.message_ends.empty()) return py::none();
          std::size_t bytes = 0;
          for (const auto& f : chat.fields) bytes += f.value.size();
          bytes += tools_json.size();
          std::shared_ptr<PreparedChat> p;
          {
            ReleaseGilIf release(bytes > kKeepGilBytes);
            p = prepare_chat(encoding, estimator, pricing, chat,
                             PrepareQuery{model, route, tenant, max_tokens, n, default_max_output, tools_json});
          }
          chat.fields.clear();  // views into Python strings: never kept past the call
          const PreparedChat& r = *p;
          return py::make_tuple(p, r.input_tokens, r.priced, optional_int(r.max_input_tokens), r.max_output,
                                r.estimate.p50 * n, r.estimate.p90 * n, r.estimate.source, r.cost_p50, r.cost_p90,
                                r.cost_max, r.last_message_tokens, r.prefix_hash);
        });

  py::class_<BackgroundObserver>(m, "BackgroundObserver")
      .def(py::init<std::shared_ptr<Estimator>, std::size_t>(), py::arg("estimator"), py::arg("max_queued") = 10000)
      .def("observe", &BackgroundObserver::observe)
      .def("flush", &BackgroundObserver::flush, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("dropped", &BackgroundObserver::dropped);
}

}  // namespace tokenlane::bindings
