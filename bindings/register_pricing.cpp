// Binds the price table. Costs cross as plain dicts of ints (pico-dollars, token counts) so Python
// keeps them exact; python/tokenlane/pricing.py wraps them in Cost.
#include <pybind11/stl.h>

#include <cmath>
#include <string>

#include "bindings.hpp"
#include "tokenlane/pricing.hpp"

namespace tokenlane::bindings {
namespace {

// pybind11 holders cannot be shared_ptr<const T>; every bound method is const all the same.
using PricingPtr = std::shared_ptr<Pricing>;

PricingPtr mutable_ptr(std::shared_ptr<const Pricing> p) { return std::const_pointer_cast<Pricing>(std::move(p)); }

py::dict cost_dict(const CostBreakdown& c) {
  py::dict d;
  d["model"] = c.model;
  d["provider"] = c.provider;
  d["input_tokens"] = c.query.input_tokens;
  d["output_tokens"] = c.query.output_tokens;
  d["cached_input_tokens"] = c.query.cached_input_tokens;
  d["cache_write_tokens"] = c.query.cache_write_tokens;
  d["reasoning_tokens"] = c.query.reasoning_tokens;
  d["batch"] = c.query.batch;
  d["input"] = c.input.pico();
  d["cached_input"] = c.cached_input.pico();
  d["cache_write"] = c.cache_write.pico();
  d["output"] = c.output.pico();
  d["reasoning"] = c.reasoning.pico();
  d["total"] = c.total.pico();
  d["long_context_above"] = c.long_context_above;
  d["batch_discounted"] = c.batch_discounted;
  d["fallback"] = c.fallback;
  return d;
}

py::dict prices_dict(const TokenPrices& p) {
  py::dict d;
  d["input"] = p.input;
  d["output"] = p.output;
  d["cache_read"] = p.cache_read;
  d["cache_write"] = p.cache_write;
  d["reasoning"] = p.reasoning;
  return d;
}

py::dict entry_dict(const ModelPrice& m) {
  py::dict d;
  d["key"] = m.key;
  d["provider"] = m.provider;
  d["mode"] = m.mode;
  d["base"] = prices_dict(m.base);
  py::list tiers;
  for (const LongContextTier& t : m.tiers) {
    py::dict td = prices_dict(t.prices);
    td["above_tokens"] = t.above_tokens;
    tiers.append(td);
  }
  d["tiers"] = tiers;
  d["batch"] = prices_dict(m.batch);
  d["batch_discount_percent"] = m.batch_discount_percent;
  d["max_input_tokens"] = m.max_input_tokens;
  d["max_output_tokens"] = m.max_output_tokens;
  d["source"] = m.source;
  d["as_of"] = m.as_of;
  return d;
}


// The cost in the field order of python/tokenlane/pricing.py's Cost (built from it positionally).
py::tuple cost_fields(const CostBreakdown& c) {
  return py::make_tuple(c.model, c.provider, c.query.input_tokens, c.query.output_tokens, c.query.cached_input_tokens,
                        c.query.cache_write_tokens, c.query.reasoning_tokens, c.query.batch, c.input.pico(),
                        c.cached_input.pico(), c.cache_write.pico(), c.output.pico(), c.reasoning.pico(),
                        c.total.pico(), c.long_context_above, c.batch_discounted, c.fallback);
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(ch);
    } else if (c < 0x20) {
      out += "\\u00";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(ch);
    }
  }
  out.push_back('"');
}

// A usage object (dicts with str keys, lists, str, int, finite float, bool, None) as JSON text,
// without a round trip through Python's json module; false for anything else (the caller then
// takes that route, which reports it).
bool append_json(std::string& out, PyObject* o, int depth) {
  if (depth > 32) return false;
  if (o == Py_None) {
    out += "null";
  } else if (o == Py_True) {
    out += "true";
  } else if (o == Py_False) {
    out += "false";
  } else if (PyLong_CheckExact(o)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
      PyErr_Clear();
      return false;
    }
    out += std::to_string(v);
  } else if (PyFloat_CheckExact(o)) {
    const double v = PyFloat_AS_DOUBLE(o);
    if (!std::isfinite(v)) return false;
    char* text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, nullptr);
    if (text == nullptr) {
      PyErr_Clear();
      return false;
    }
    out += text;
    PyMem_Free(text);
  } else if (PyUnicode_CheckExact(o)) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(o, &size);
    if (data == nullptr) {
      PyErr_Clear();
      return false;
    }
    append_json_string(out, std::string_view(data, static_cast<std::size_t>(size)));
  } else if (PyDict_CheckExact(o)) {
    out.push_back('{');
    Py_ssize_t pos = 0;
    PyObject *key = nullptr, *value = nullptr;
    bool first = true;
    while (PyDict_Next(o, &pos, &key, &value)) {
      if (!PyUnicode_CheckExact(key)) return false;
      if (!first) out.push_back(',');
      first = false;
      if (!append_json(out, key, depth + 1)) return false;
      out.push_back(':');
      if (!append_json(out, value, depth + 1)) return false;
    }
    out.push_back('}');
  } else if (PyList_CheckExact(o)) {
    out.push_back('[');
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); ++i) {
      if (i > 0) out.push_back(',');
      if (!append_json(out, PyList_GET_ITEM(o, i), depth + 1)) return false;
    }
    out.push_back(']');
  } else {
    return false;
  }
  return true;
}

}  // namespace

void register_pricing(py::module_& m) {
  py::class_<Pricing, PricingPtr>(m, "Pricing")
      .def_static("from_json",
                  [](const std::string& text, const std::string& default_table_path, const std::string& base_dir) {
                    py::gil_scoped_release release;
                    return mutable_ptr(Pricing::from_json(text, Pricing::Options{default_table_path}, base_dir));
                  })
      .def_static("from_file",
                  [](const std::string& path, const std::string& default_table_path) {
                    py::gil_scoped_release release;
                    return mutable_ptr(Pricing::from_file(path, Pricing::Options{default_table_path}));
                  })
      .def_static("empty", [] { return mutable_ptr(Pricing::empty()); })
      .def("with_config",
           [](const Pricing& p, const std::string& text) {
             py::gil_scoped_release release;
             return mutable_ptr(p.with_config(text));
           })
      .def("cost",
           [](const Pricing& p, const std::string& model, std::uint64_t input_tokens, std::uint64_t output_tokens,
              std::uint64_t cached_input_tokens, std::uint64_t cache_write_tokens, std::uint64_t reasoning_tokens,
              bool batch) {
             CostQuery q;
             q.input_tokens = input_tokens;
             q.output_tokens = output_tokens;
             q.cached_input_tokens = cached_input_tokens;
             q.cache_write_tokens = cache_write_tokens;
             q.reasoning_tokens = reasoning_tokens;
             q.batch = batch;
             return cost_dict(p.cost(model, q));
           })
      .def("cost_of_usage",
           [](const Pricing& p, const std::string& model, const std::string& usage_json, bool batch) {
             return cost_dict(p.cost_of_usage(model, usage_json, batch));
           })
      // cost_of_usage for a usage dict, as Cost's fields in order; None when the dict holds what
      // only json.dumps writes (the caller then passes its JSON to cost_of_usage).
      .def("cost_of_usage_fields",
           [](const Pricing& p, const std::string& model, const py::handle& usage, bool batch) -> py::object {
             thread_local std::string text;
             text.clear();
             if (!append_json(text, usage.ptr(), 0)) return py::none();
             return cost_fields(p.cost_of_usage(model, text, batch));
           })
      .def("resolve", &Pricing::resolve)
      .def("entry", [](const Pricing& p, const std::string& model) { return entry_dict(p.entry(model)); })
      .def("max_input_tokens", &Pricing::max_input_tokens)
      .def("max_output_tokens", &Pricing::max_output_tokens)
      .def("provider", &Pricing::provider)
      .def("models", &Pricing::models)
      .def_property_readonly("has_fallback", &Pricing::has_fallback)
      .def_property_readonly("skipped_entries", &Pricing::skipped_entries);
  m.def("batch_discount_percent",
        [](const std::string& provider) { return provider_batch_discount_percent(provider); });
}

}  // namespace tokenlane::bindings
