// JSON text of Python objects for the ledger journal (tokenlane.stages.reconcile): the same bytes
// json.dumps writes with its defaults (ensure_ascii, allow_nan, ", " and ": " separators), so the
// journal, its applier and every replayed record are unchanged, at a fraction of the cost: the
// stdlib encoder builds a Python str per chunk, joins them, then the caller encodes to bytes.
// The objects are read in place, with the GIL held (the walk reads Python objects; a ledger row
// is a few µs of work, less than a GIL hand-off can cost).
#include <charconv>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"

namespace tokenlane::bindings {
namespace {

[[noreturn]] void raise_python() { throw py::error_already_set(); }

// A Python reference owned for the scope.
struct Owned {
  PyObject* p;
  explicit Owned(PyObject* o) : p(o) {
    if (p == nullptr) raise_python();
  }
  ~Owned() { Py_XDECREF(p); }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
};

// The escape of each ASCII character under ensure_ascii (empty: written as it is).
struct AsciiEscapes {
  char text[128][7] = {};
  AsciiEscapes() {
    const char* hex = "0123456789abcdef";
    for (int c = 0; c < 128; ++c) {
      if (c >= 0x20 && c <= 0x7e && c != '"' && c != '\\') continue;
      char* e = text[c];
      switch (c) {
        case '"': std::copy_n("\\\"", 3, e); break;
        case '\\': std::copy_n("\\\\", 3, e); break;
        case '\b': std::copy_n("\\b", 3, e); break;
        case '\f': std::copy_n("\\f", 3, e); break;
        case '\n': std::copy_n("\\n", 3, e); break;
        case '\r': std::copy_n("\\r", 3, e); break;
        case '\t': std::copy_n("\\t", 3, e); break;
        default:  // control characters and DEL (0x7f): \u00XX, lowercase hex as json writes it
          std::copy_n("\\u00", 4, e);
          e[4] = hex[c >> 4];
          e[5] = hex[c & 15];
          e[6] = '\0';
      }
    }
  }
};
const AsciiEscapes kEscapes;

class JsonWriter {
 public:
  // Writes after what `into` holds (a caller's buffer, so its memory is reused).
  explicit JsonWriter(bool compact, std::string into = {})
      : out(std::move(into)), item_sep_(compact ? "," : ", "), key_sep_(compact ? ":" : ": ") {
    out.reserve(1024);  // a ledger row with its 2,000-character prompt preview fits a few of these
  }

  std::string out;

  void value(PyObject* o) {
    if (o == Py_None) {
      out += "null";
    } else if (o == Py_True) {
      out += "true";
    } else if (o == Py_False) {
      out += "false";
    } else if (PyUnicode_Check(o)) {
      string(o);
    } else if (PyLong_Check(o)) {
      integer(o);
    } else if (PyFloat_Check(o)) {
      real(PyFloat_AS_DOUBLE(o));
    } else if (PyList_Check(o) || PyTuple_Check(o)) {
      array(o);
    } else if (PyDict_Check(o)) {
      object(o);
    } else {  // json.dumps without `default=` raises the same
      PyErr_Format(PyExc_TypeError, "Object of type %s is not JSON serializable", Py_TYPE(o)->tp_name);
      raise_python();
    }
  }

  // int.__repr__, as json.dumps uses (so int subclasses such as IntEnum write their value).
  void integer(PyObject* o) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0 && !(v == -1 && PyErr_Occurred())) {
      char buf[24];
      out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
      return;
    }
    PyErr_Clear();
    Owned text(PyLong_Type.tp_repr(o));  // arbitrary size (and Python's digit limit, as json.dumps)
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.p, &size);
    if (data == nullptr) raise_python();
    out.append(data, static_cast<std::size_t>(size));
  }

  // float.__repr__ (shortest round trip), with json.dumps's names for the non-finite values.
  void real(double d) {
    if (std::isnan(d)) {
      out += "NaN";
    } else if (std::isinf(d)) {
      out += d > 0 ? "Infinity" : "-Infinity";
    } else {
      float_repr(d, out);
    }
  }

  static void float_repr(double d, std::string& to) {
    char* text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, nullptr);
    if (text == nullptr) raise_python();
    to += text;
    PyMem_Free(text);
  }

 private:
  const char* item_sep_;
  const char* key_sep_;
  std::vector<PyObject*> open_;  // containers being written: json.dumps's circular-reference check

  // Enters a container: Python's recursion limit and the circular check, as json.dumps does.
  struct Nested {
    JsonWriter& w;
    Nested(JsonWriter& writer, PyObject* container) : w(writer) {
      for (PyObject* o : w.open_) {
        if (o == container) {
          PyErr_SetString(PyExc_ValueError, "Circular reference detected");
          raise_python();
        }
      }
      if (Py_EnterRecursiveCall(" while encoding a JSON object") != 0) raise_python();
      w.open_.push_back(container);
    }
    ~Nested() {
      w.open_.pop_back();
      Py_LeaveRecursiveCall();
    }
  };

  void string(PyObject* s) {
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) raise_python();
#endif
    const Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    out += '"';
    if (PyUnicode_IS_ASCII(s)) {  // the common case: copy runs of plain characters at once
      const char* p = static_cast<const char*>(PyUnicode_DATA(s));
      Py_ssize_t run = 0;
      for (Py_ssize_t i = 0; i < n; ++i) {
        const char* e = kEscapes.text[static_cast<unsigned char>(p[i])];
        if (*e == '\0') continue;
        out.append(p + run, static_cast<std::size_t>(i - run));
        out += e;
        run = i + 1;
      }
      out.append(p + run, static_cast<std::size_t>(n - run));
    } else {
      const int kind = PyUnicode_KIND(s);
      const void* data = PyUnicode_DATA(s);
      for (Py_ssize_t i = 0; i < n; ++i) {
        const Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
          const char* e = kEscapes.text[c];
          if (*e == '\0') {
            out += static_cast<char>(c);
          } else {
            out += e;
          }
        } else if (c < 0x10000) {  // lone surrogates included: written as they are, as json does
          escape_unit(c);
        } else {  // a UTF-16 surrogate pair
          const Py_UCS4 v = c - 0x10000;
          escape_unit(0xd800 | (v >> 10));
          escape_unit(0xdc00 | (v & 0x3ff));
        }
      }
    }
    out += '"';
  }

  void escape_unit(Py_UCS4 u) {
    const char* hex = "0123456789abcdef";
    const char e[6] = {'\\', 'u', hex[(u >> 12) & 15], hex[(u >> 8) & 15], hex[(u >> 4) & 15], hex[u & 15]};
    out.append(e, 6);
  }

  void array(PyObject* o) {
    Owned seq(PySequence_Fast(o, "expected a sequence"));  // the object itself for lists and tuples
    if (PySequence_Fast_GET_SIZE(seq.p) == 0) {
      out += "[]";
      return;
    }
    Nested nested(*this, o);
    out += '[';
    // The size is read again each time and each item held while written: a dict subclass's own
    // items() (the only Python code a walk can run) could change the list.
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq.p); ++i) {
      if (i) out += item_sep_;
      Owned item(Py_NewRef(PySequence_Fast_GET_ITEM(seq.p, i)));
      value(item.p);
    }
    out += ']';
  }

  void object(PyObject* o) {
    if (PyDict_GET_SIZE(o) == 0) {
      out += "{}";
      return;
    }
    Nested nested(*this, o);
    out += '{';
    bool first = true;
    auto item = [&](PyObject* k, PyObject* v) {
      if (!first) out += item_sep_;
      first = false;
      key(k);
      out += key_sep_;
      value(v);
    };
    if (PyDict_CheckExact(o)) {
      // Key and value held while written (see array()); PyDict_Next itself stays in bounds. A dict
      // changed while it is written (by a nested subclass's items()) may differ from json.dumps,
      // which reads a copy of the items first: never the case for ledger rows.
      Py_ssize_t pos = 0;
      PyObject *k = nullptr, *v = nullptr;
      while (PyDict_Next(o, &pos, &k, &v)) {
        Owned key_ref(Py_NewRef(k)), value_ref(Py_NewRef(v));
        item(key_ref.p, value_ref.p);
      }
    } else {  // a dict subclass: its items(), as json.dumps reads them
      Owned items(PyMapping_Items(o));
      const Py_ssize_t n = PyList_GET_SIZE(items.p);
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* pair = PyList_GET_ITEM(items.p, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
          PyErr_SetString(PyExc_ValueError, "items must return 2-tuples");
          raise_python();
        }
        item(PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
      }
    }
    out += '}';
  }

  // Keys are strings in JSON: json.dumps converts floats, booleans, None and ints (in that order).
  void key(PyObject* k) {
    if (PyUnicode_Check(k)) {
      string(k);
      return;
    }
    out += '"';
    if (PyFloat_Check(k)) {
      real(PyFloat_AS_DOUBLE(k));
    } else if (k == Py_True) {
      out += "true";
    } else if (k == Py_False) {
      out += "false";
    } else if (k == Py_None) {
      out += "null";
    } else if (PyLong_Check(k)) {
      integer(k);
    } else {
      PyErr_Format(PyExc_TypeError, "keys must be str, int, float, bool or None, not %s", Py_TYPE(k)->tp_name);
      raise_python();
    }
    out += '"';
  }
};

py::bytes to_bytes(const std::string& s) {
  PyObject* b = PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
  if (b == nullptr) raise_python();
  return py::reinterpret_steal<py::bytes>(b);
}

// A settle field: `%d` of an int, as the journal line's bytes formatting wrote it.
void settle_int(JsonWriter& w, const char* name, py::handle v) {
  if (!PyLong_Check(v.ptr())) throw py::type_error(std::string(name) + " must be an int");
  w.out += name;
  w.integer(v.ptr());
}

}  // namespace

void append_json(std::string& out, PyObject* obj, bool compact) {
  JsonWriter w(compact, std::move(out));
  w.value(obj);
  out = std::move(w.out);
}

void register_json(py::module_& m) {
  m.def(
      "json_text",
      [](py::handle obj, bool compact) {
        JsonWriter w(compact);
        w.value(obj.ptr());
        return to_bytes(w.out);
      },
      py::arg("obj"), py::arg("compact") = false,
      "json.dumps(obj).encode() (compact: with separators=(',', ':')), for dicts, lists, tuples, str, int, "
      "float, bool and None; raises as json.dumps does (TypeError, ValueError for cycles).");

  // One journal record: the line the ledger's journal applier reads (tokenlane/ledger.hpp). `row`
  // is the decided row as rendered JSON bytes (reused verbatim by the final record) or a dict.
  m.def(
      "journal_record",
      [](py::handle id, py::handle row, py::handle final, py::handle budgets, py::handle reserved,
         py::handle actual, py::handle reserved_tokens, py::handle tokens, py::handle now) {
        JsonWriter w(false);
        w.out += "{\"id\":";
        w.value(id.ptr());
        w.out += ",\"row\":";
        if (PyBytes_Check(row.ptr())) {
          w.out.append(PyBytes_AS_STRING(row.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(row.ptr())));
        } else {
          w.value(row.ptr());
        }
        const int settles = PyObject_IsTrue(budgets.ptr());
        if (settles < 0) raise_python();
        if (!final.is_none()) {
          w.out += ",\"final\":";
          w.value(final.ptr());
          if (settles) {  // the budget levels settled with the row, applied in the same transaction
            w.out += ",\"budgets\":";
            w.value(budgets.ptr());
            settle_int(w, ",\"reserved\":", reserved);
            settle_int(w, ",\"actual\":", actual);
            settle_int(w, ",\"reserved_tokens\":", reserved_tokens);
            settle_int(w, ",\"tokens\":", tokens);
            w.out += ",\"now\":";
            if (PyFloat_CheckExact(now.ptr())) {  // repr(), as `%r` wrote it (nan, inf: not JSON; never a clock's)
              JsonWriter::float_repr(PyFloat_AS_DOUBLE(now.ptr()), w.out);
            } else {
              Owned text(PyObject_ASCII(now.ptr()));
              const char* ascii = PyUnicode_AsUTF8(text.p);
              if (ascii == nullptr) raise_python();
              w.out += ascii;
            }
          }
        } else if (settles) {
          throw py::value_error("budgets are settled by a final record: give final");
        }
        w.out += "}\n";
        return to_bytes(w.out);
      },
      py::arg("id"), py::arg("row"), py::arg("final") = py::none(), py::arg("budgets") = py::tuple(),
      py::arg("reserved") = 0, py::arg("actual") = 0, py::arg("reserved_tokens") = 0, py::arg("tokens") = 0,
      py::arg("now") = 0.0,
      "A ledger journal record, newline-terminated: {\"id\":..,\"row\":..} or, with `final`, the final "
      "fields and (when `budgets` is not empty) the budget settlement.");
}

}  // namespace tokenlane::bindings
