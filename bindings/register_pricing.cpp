// Binds the price table. Costs cross as plain dicts of ints (pico-dollars, token counts) so Python
// keeps them exact; python/tokenlane/pricing.py wraps them in Cost.
#include <pybind11/stl.h>

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
      // cost_of_usage for a usage dict, as Cost's fields in order, without json.dumps; None when
      // the dict is not JSON (the caller then takes json.dumps's route, which says why).
      .def("cost_of_usage_fields",
           [](const Pricing& p, const std::string& model, const py::handle& usage, bool batch) -> py::object {
             thread_local std::string text;
             text.clear();
             try {
               append_json(text, usage.ptr(), true);
             } catch (py::error_already_set&) {  // (its error is dropped with it)
               return py::none();
             }
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
