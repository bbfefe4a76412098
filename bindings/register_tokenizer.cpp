// Binds Encoding, the registry, chat and approximate counting. Policy lives in python/tokenlane/;
// this file converts arguments, releases the GIL around the work, and builds result lists.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tokenlane/approx.hpp"
#include "tokenlane/chat.hpp"
#include "tokenlane/tokenizer.hpp"

namespace tokenlane::bindings {
namespace {

// pybind11 holders cannot be shared_ptr<const T>; every bound method is const all the same.
using EncodingPtr = std::shared_ptr<Encoding>;

py::list to_list(const std::vector<Rank>& ids) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(ids.size()));
  if (list == nullptr) throw py::error_already_set();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyLong_FromUnsignedLong(ids[i]));
  }
  return py::reinterpret_steal<py::list>(list);
}

bool is_all(const py::handle& arg) { return py::isinstance<py::str>(arg) && arg.cast<std::string>() == "all"; }

// tiktoken's allowed_special: "all" or a collection of special-token strings.
SpecialSet allowed_set(const Encoding& enc, const py::handle& allowed) {
  if (is_all(allowed)) return enc.special_token_strings();
  SpecialSet out;
  for (const py::handle& s : allowed) out.push_back(s.cast<std::string>());
  return out;
}

// tiktoken's disallowed_special: "all" means every special not allowed.
SpecialSet disallowed_set(const Encoding& enc, const py::handle& disallowed, const SpecialSet& allowed) {
  if (!is_all(disallowed)) return allowed_set(enc, disallowed);
  if (allowed.empty()) return enc.special_token_strings();
  SpecialSet out;
  for (const std::string& s : enc.special_token_strings()) {
    if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) out.push_back(s);
  }
  return out;
}

struct Texts {
  std::vector<py::object> holders;
  std::vector<std::string_view> views;
};

Texts texts_of(const py::sequence& seq) {
  Texts t;
  t.holders.resize(seq.size());
  t.views.reserve(seq.size());
  for (std::size_t i = 0; i < seq.size(); ++i) t.views.push_back(utf8_of(seq[i], t.holders[i]));
  return t;
}

// tiktoken's special-token arguments, resolved once per call.
struct SpecialPolicy {
  SpecialSet allowed, disallowed;

  SpecialPolicy(const Encoding& enc, const py::handle& allowed_arg, const py::handle& disallowed_arg)
      : allowed(allowed_set(enc, allowed_arg)), disallowed(disallowed_set(enc, disallowed_arg, allowed)) {}

  // Raises (as tiktoken) if a text holds a disallowed special token. Call without the GIL.
  void check(const Encoding& enc, std::string_view utf8) const {
    if (!disallowed.empty()) enc.check_disallowed_special(utf8, disallowed);
  }
};

}  // namespace

std::string_view utf8_of(const py::handle& text, py::object& holder) {
  if (!PyUnicode_Check(text.ptr())) {
    throw py::type_error("expected str, got " + std::string(Py_TYPE(text.ptr())->tp_name));
  }
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
  if (data != nullptr) {
    holder = py::reinterpret_borrow<py::object>(text);
    return {data, static_cast<std::size_t>(size)};
  }
  PyErr_Clear();  // lone surrogates: round-trip through UTF-16 as tiktoken does
  holder = text.attr("encode")("utf-16", "surrogatepass").attr("decode")("utf-16", "replace");
  data = PyUnicode_AsUTF8AndSize(holder.ptr(), &size);
  if (data == nullptr) throw py::error_already_set();
  return {data, static_cast<std::size_t>(size)};
}

void register_tokenizer(py::module_& m) {
  py::class_<Encoding, EncodingPtr>(m, "Encoding")
      .def_property_readonly("name", &Encoding::name)
      .def_property_readonly("n_vocab", &Encoding::n_vocab)
      .def_property_readonly("special_tokens", [](const Encoding& e) {
        py::dict d;
        for (const auto& [text, rank] : e.special_tokens()) d[py::str(text)] = rank;
        return d;
      })
      .def("encode", [](const Encoding& e, const py::str& text, const py::handle& allowed_arg,
                        const py::handle& disallowed_arg) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        py::object holder;
        std::string_view utf8 = utf8_of(text, holder);
        std::vector<Rank> ids;
        {
          py::gil_scoped_release release;
          policy.check(e, utf8);
          ids = e.encode(utf8, policy.allowed);
        }
        return to_list(ids);
      }, py::arg("text"), py::arg("allowed_special"), py::arg("disallowed_special"))
      .def("encode_ordinary", [](const Encoding& e, const py::str& text) {
        py::object holder;
        std::string_view utf8 = utf8_of(text, holder);
        std::vector<Rank> ids;
        {
          py::gil_scoped_release release;
          ids = e.encode_ordinary(utf8);
        }
        return to_list(ids);
      })
      .def("count", [](const Encoding& e, const py::str& text, const py::handle& allowed_arg,
                       const py::handle& disallowed_arg) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        py::object holder;
        std::string_view utf8 = utf8_of(text, holder);
        py::gil_scoped_release release;
        policy.check(e, utf8);
        return e.count(utf8, policy.allowed);
      })
      .def("encode_batch", [](const Encoding& e, const py::sequence& texts, const py::handle& allowed_arg,
                              const py::handle& disallowed_arg, unsigned num_threads) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        Texts t = texts_of(texts);
        std::vector<std::vector<Rank>> ids;
        {
          py::gil_scoped_release release;
          for (std::string_view v : t.views) policy.check(e, v);
          ids = e.encode_batch(t.views, policy.allowed, num_threads);
        }
        py::list out(ids.size());
        for (std::size_t i = 0; i < ids.size(); ++i) out[i] = to_list(ids[i]);
        return out;
      })
      .def("count_batch", [](const Encoding& e, const py::sequence& texts, const py::handle& allowed_arg,
                             const py::handle& disallowed_arg, unsigned num_threads) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        Texts t = texts_of(texts);
        py::gil_scoped_release release;
        for (std::string_view v : t.views) policy.check(e, v);
        return e.count_batch(t.views, policy.allowed, num_threads);
      })
      .def("decode_bytes", [](const Encoding& e, const std::vector<Rank>& ids) {
        std::string bytes;
        {
          py::gil_scoped_release release;
          bytes = e.decode_bytes(ids);
        }
        return py::bytes(bytes);
      })
      .def("token_bytes", [](const Encoding& e, Rank id) { return py::bytes(std::string(e.token_bytes(id))); })
      .def("encode_single_token", [](const Encoding& e, const py::bytes& b) {
        return e.encode_single_token(std::string_view(b));
      })
      .def("count_chat", [](const Encoding& e, const std::string& request_json, const std::string& model) {
        py::gil_scoped_release release;
        return count_chat_tokens(e, request_json, model);
      });

  m.def("encoding_names", &encoding_names);
  m.def("encoding_rank_file", [](const std::string& name) { return encoding_spec(name).rank_file; });
  m.def("encoding_sha256", [](const std::string& name) { return encoding_spec(name).expected_sha256; });
  m.def("load_encoding", [](const std::string& name, const std::string& path) {
    py::gil_scoped_release release;
    return std::const_pointer_cast<Encoding>(get_encoding(name, path));
  }, py::arg("name"), py::arg("vocab_dir"));
  m.def("encoding_name_for_model", [](const std::string& model) { return encoding_name_for_model(model); });
  m.def("approximate_family", [](const std::string& model) -> py::object {
    const ApproximateFamily* f = approximate_family_for_model(model);
    if (f == nullptr) return py::none();
    py::dict d;
    d["name"] = f->name;
    d["ratio"] = f->ratio;
    d["typical_error"] = f->typical_error;
    d["calibrated"] = f->calibrated;
    d["basis"] = f->basis;
    return d;
  });
  m.def("count_approximate", [](const Encoding& o200k, const py::str& text, const std::string& model) {
    py::object holder;
    std::string_view utf8 = utf8_of(text, holder);
    py::gil_scoped_release release;
    return count_approximate(o200k, utf8, model).tokens;
  });
}

}  // namespace tokenlane::bindings
