// Binds Encoding, the registry, chat and approximate counting. Policy lives in python/tokenlane/;
// this file converts arguments, releases the GIL around the work, and builds result lists.
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>

#include "bindings.hpp"
#include "tokenlane/approx.hpp"
#include "tokenlane/chat.hpp"
#include "tokenlane/tokenizer.hpp"

namespace tokenlane::bindings {
namespace {

// pybind11 holders cannot be shared_ptr<const T>; every bound method is const all the same.
using EncodingPtr = std::shared_ptr<Encoding>;

// Token ids as Python ints. Ids repeat (a text of 1 MB has ~250k tokens but a few thousand distinct
// ids), so each id's int object is made once per process and shared: building the list is then a
// reference-count increment per token instead of an allocation.
//
// Before CPython 3.12 not even that: the shared ints get a reference count no program can bring to
// zero (2^60; the lists' decrements when they are freed only lower it), and lists take them without
// an increment. They are immortal as 3.12 makes its own small ints (PEP 683), which has no public
// way to do it for ours, so from 3.12 on each token is increfed. The increment was a write to the
// int's cache line per token, and those lines are spread over the heap: o200k, ten rounds
// alternating builds, encode's time per byte against count's (which builds no list) improved by
// 7-8% on English, code and German; encode_batch's by 6-12% on code and German (Japanese 1%).
class IntCache {
 public:
  PyObject* get(Rank id) {
    if (id >= ints_.size()) {
      if (id >= kLimit) return PyLong_FromUnsignedLong(id);
      ints_.resize(std::size_t{id} + 1, nullptr);
    }
    PyObject*& o = ints_[id];
    if (o == nullptr) {
      if ((o = PyLong_FromUnsignedLong(id)) == nullptr) return nullptr;
      if constexpr (kImmortal) Py_SET_REFCNT(o, kImmortalRefs);
    }
    take(o);
    return o;
  }
  // The ids' ints, new references, into items[0, n); false (with a Python error set) on failure.
  bool fill(const Rank* ids, std::size_t n, PyObject** items) {
    // Local copies of the table: the stores into the list cannot then force reloads of them.
    PyObject* const* table = ints_.data();
    std::size_t size = ints_.size();
    for (std::size_t i = 0; i < n; ++i) {
      PyObject* o = ids[i] < size ? table[ids[i]] : nullptr;
      if (o != nullptr) {
        take(o);
      } else {
        if ((o = get(ids[i])) == nullptr) {
          for (std::size_t k = 0; k < i; ++k) Py_DECREF(items[k]);
          return false;
        }
        table = ints_.data();
        size = ints_.size();
      }
      items[i] = o;
    }
    return true;
  }

 private:
  static constexpr bool kImmortal = PY_VERSION_HEX < 0x030C0000;
  static constexpr Py_ssize_t kImmortalRefs = Py_ssize_t{1} << 60;
  // A list's reference to a shared int.
  static void take(PyObject* o) {
    if constexpr (!kImmortal) Py_INCREF(o);
  }
  static constexpr Rank kLimit = 1u << 20;
  std::vector<PyObject*> ints_;  // owned references, kept for the life of the process
};

py::list to_list(const Rank* ids, std::size_t n) {
  static IntCache* ints = new IntCache;  // never destroyed: the interpreter may be gone at exit
  PyObject* list = PyList_New(0);
  if (list == nullptr) throw py::error_already_set();
  if (n == 0) return py::reinterpret_steal<py::list>(list);
  // The item array is filled here, so it is allocated without PyList_New's zero-fill (a second
  // pass over 8 bytes per token), then handed to the list, which frees it with PyMem_Free.
  auto** items = PyMem_New(PyObject*, n);
  if (items == nullptr) {
    Py_DECREF(list);
    PyErr_NoMemory();
    throw py::error_already_set();
  }
  if (!ints->fill(ids, n, items)) {
    PyMem_Free(items);
    Py_DECREF(list);
    throw py::error_already_set();
  }
  auto* l = reinterpret_cast<PyListObject*>(list);
  l->ob_item = items;
  l->allocated = static_cast<Py_ssize_t>(n);
  Py_SET_SIZE(l, static_cast<Py_ssize_t>(n));
  return py::reinterpret_steal<py::list>(list);
}
py::list to_list(const std::vector<Rank>& ids) { return to_list(ids.data(), ids.size()); }

// The token ids of one call, in a per-thread vector that keeps its memory between calls (a fresh
// vector per call costs an allocation and, for long texts, page faults on every call). A buffer
// grown past kKeepRanks by a long text is released again. A nested call on the same thread (a
// finalizer run by the garbage collector while the list is built) gets a vector of its own.
class RankBuffer {
 public:
  RankBuffer() : shared_(slot()), v_(shared_.busy ? own_ : shared_.v), owns_shared_(!shared_.busy) {
    shared_.busy = true;
  }
  ~RankBuffer() {
    if (!owns_shared_) return;
    if (v_.capacity() > kKeepRanks) std::vector<Rank>().swap(v_);
    shared_.busy = false;
  }
  RankBuffer(const RankBuffer&) = delete;
  std::vector<Rank>& operator*() { return v_; }

 private:
  static constexpr std::size_t kKeepRanks = std::size_t{1} << 20;
  struct Slot {
    std::vector<Rank> v;
    bool busy = false;
  };
  static Slot& slot() {
    thread_local Slot s;
    return s;
  }
  Slot& shared_;
  std::vector<Rank> own_;
  std::vector<Rank>& v_;
  bool owns_shared_;
};

bool is_all(const py::handle& arg) {
  if (!PyUnicode_Check(arg.ptr())) return false;
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(arg.ptr(), &n);
  return s != nullptr && n == 3 && std::memcmp(s, "all", 3) == 0;
}

// tiktoken's special-token arguments, resolved once per call. The common cases ("all", or nothing)
// point at the encoding's own set instead of copying it.
struct SpecialPolicy {
  const SpecialSet* allowed;
  const SpecialSet* disallowed;

  SpecialPolicy(const Encoding& enc, const py::handle& allowed_arg, const py::handle& disallowed_arg) {
    allowed = resolve(enc, allowed_arg, allowed_own_);
    if (!is_all(disallowed_arg)) {
      disallowed = resolve(enc, disallowed_arg, disallowed_own_);
    } else if (allowed->empty()) {
      disallowed = &enc.special_token_strings();  // "all": every special not allowed
    } else {
      for (const std::string& s : enc.special_token_strings()) {
        if (std::find(allowed->begin(), allowed->end(), s) == allowed->end()) disallowed_own_.push_back(s);
      }
      disallowed = &disallowed_own_;
    }
  }
  SpecialPolicy(const SpecialPolicy&) = delete;

  // Raises (as tiktoken) if a text holds a disallowed special token. Call without the GIL.
  void check(const Encoding& enc, std::string_view utf8) const {
    if (!disallowed->empty()) enc.check_disallowed_special(utf8, *disallowed);
  }

 private:
  static const SpecialSet* resolve(const Encoding& enc, const py::handle& arg, SpecialSet& own) {
    if (is_all(arg)) return &enc.special_token_strings();
    for (const py::handle& s : arg) own.push_back(s.cast<std::string>());
    return &own;
  }
  SpecialSet allowed_own_, disallowed_own_;
};

const char* pretokenizer_name(PretokenizerKind k) {
  switch (k) {
    case PretokenizerKind::gpt2: return "gpt2";
    case PretokenizerKind::cl100k: return "cl100k";
    case PretokenizerKind::o200k: return "o200k";
  }
  return "?";
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
        RankBuffer ids;
        {
          ReleaseGilIf release(utf8.size() > kKeepGilBytes);
          policy.check(e, utf8);
          e.encode_into(utf8, *policy.allowed, *ids);
        }
        return to_list(*ids);
      }, py::arg("text"), py::arg("allowed_special"), py::arg("disallowed_special"))
      .def("encode_ordinary", [](const Encoding& e, const py::str& text) {
        py::object holder;
        std::string_view utf8 = utf8_of(text, holder);
        RankBuffer ids;
        {
          ReleaseGilIf release(utf8.size() > kKeepGilBytes);
          e.encode_into(utf8, {}, *ids);
        }
        return to_list(*ids);
      })
      .def("count", [](const Encoding& e, const py::str& text, const py::handle& allowed_arg,
                       const py::handle& disallowed_arg) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        py::object holder;
        std::string_view utf8 = utf8_of(text, holder);
        ReleaseGilIf release(utf8.size() > kKeepGilBytes);
        policy.check(e, utf8);
        return e.count(utf8, *policy.allowed);
      })
      .def("encode_batch", [](const Encoding& e, const py::sequence& texts, const py::handle& allowed_arg,
                              const py::handle& disallowed_arg, unsigned num_threads) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        Texts t = texts_of(texts);
        {
          py::gil_scoped_release release;
          for (std::string_view v : t.views) policy.check(e, v);
        }
        // Each document's list is built (with the GIL) as soon as it is encoded, while the other
        // threads go on encoding; this thread encodes too, without the GIL, when it has no list to
        // build. Building all lists after the parallel part had made encode_batch scale 1.1-1.2x.
        py::list out(t.views.size());
        PyThreadState* saved = nullptr;
        e.encode_batch_each(
            t.views, *policy.allowed, num_threads,
            [&](std::size_t i, std::vector<Rank>& ids) {
              out[i] = to_list(ids);
              std::vector<Rank>().swap(ids);  // its memory goes back now, not at the end
            },
            [&] { saved = PyEval_SaveThread(); }, [&] { PyEval_RestoreThread(saved); });
        return out;
      })
      .def("count_batch", [](const Encoding& e, const py::sequence& texts, const py::handle& allowed_arg,
                             const py::handle& disallowed_arg, unsigned num_threads) {
        SpecialPolicy policy(e, allowed_arg, disallowed_arg);
        Texts t = texts_of(texts);
        py::gil_scoped_release release;
        for (std::string_view v : t.views) policy.check(e, v);
        return e.count_batch(t.views, *policy.allowed, num_threads);
      })
      .def("decode_bytes", [](const Encoding& e, const std::vector<Rank>& ids) {
        std::string bytes;
        {
          py::gil_scoped_release release;
          bytes = e.decode_bytes(ids);
        }
        return py::bytes(bytes);
      })
      .def("token_bytes", [](const Encoding& e, Rank id) {
        try {
          std::string_view b = e.token_bytes(id);
          return py::bytes(b.data(), b.size());
        } catch (const Error& err) {
          throw py::key_error(err.what());  // tiktoken's decode_single_token_bytes raises KeyError
        }
      })
      .def("tokens_bytes", [](const Encoding& e, const std::vector<Rank>& ids) {
        py::list out(ids.size());
        for (std::size_t i = 0; i < ids.size(); ++i) {
          std::string_view b = e.token_bytes(ids[i]);
          out[i] = py::bytes(b.data(), b.size());
        }
        return out;
      })
      .def_property_readonly("pretokenizer", [](const Encoding& e) { return pretokenizer_name(e.pretokenizer()); })
      .def("ordinary_tokens", [](const Encoding& e) {
        py::dict d;
        for (const auto& [b, r] : e.ordinary_tokens()) d[py::bytes(b.data(), b.size())] = r;
        return d;
      })
      .def("encode_single_token", [](const Encoding& e, const py::bytes& b) {
        return e.encode_single_token(std::string_view(b));
      })
      .def("count_chat", [](const Encoding& e, const std::string& request_json, const std::string& model) {
        ReleaseGilIf release(request_json.size() > kKeepGilBytes);
        return count_chat_tokens(e, request_json, model);
      });

  m.def("encoding_from_tokens", [](const std::string& name, const std::string& pretokenizer,
                                   const py::dict& mergeable_ranks, const py::dict& special_tokens,
                                   std::size_t n_vocab) {
    EncodingSpec spec{name, PretokenizerKind::gpt2, "", "", {}, n_vocab};
    if (pretokenizer == "cl100k") spec.pretokenizer = PretokenizerKind::cl100k;
    else if (pretokenizer == "o200k") spec.pretokenizer = PretokenizerKind::o200k;
    else if (pretokenizer != "gpt2") throw py::value_error("unknown pre-tokenizer " + pretokenizer);
    for (const auto& [text, rank] : special_tokens) spec.special_tokens.emplace_back(text.cast<std::string>(), rank.cast<Rank>());
    std::vector<std::pair<std::string, Rank>> tokens;
    tokens.reserve(mergeable_ranks.size());
    for (const auto& [bytes, rank] : mergeable_ranks) tokens.emplace_back(bytes.cast<std::string>(), rank.cast<Rank>());
    py::gil_scoped_release release;
    return std::const_pointer_cast<Encoding>(Encoding::from_tokens(std::move(spec), std::move(tokens)));
  }, py::arg("name"), py::arg("pretokenizer"), py::arg("mergeable_ranks"), py::arg("special_tokens"),
     py::arg("n_vocab"));
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
