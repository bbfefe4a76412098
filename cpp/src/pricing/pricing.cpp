// The price table: LiteLLM and tokenlane-config parsing, model-name resolution, exact costs, and the
// provider conventions for reading a response's `usage`.
#include "tokenlane/pricing.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace tokenlane {

using nlohmann::json;

namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorCode::invalid_argument, message); }

// ---------------------------------------------------------------------------------------------
// Batch discounts by provider (percent off list price). Sources, checked 2026-11:
//   OpenAI Batch API 50%: https://platform.openai.com/docs/guides/batch
//   Anthropic Message Batches 50%: https://docs.anthropic.com/en/docs/build-with-claude/batch-processing
//   Google Gemini API / Vertex AI batch 50%: https://ai.google.dev/gemini-api/docs/batch-mode
//   Mistral batch API 50%: https://docs.mistral.ai/capabilities/batch/
// Providers not listed get no discount unless their entry says otherwise.
struct ProviderDiscount {
  const char* provider;
  int percent;
};
constexpr std::array<ProviderDiscount, 9> kBatchDiscounts{{
    {"openai", 50},
    {"text-completion-openai", 50},
    {"anthropic", 50},
    {"gemini", 50},
    {"vertex_ai", 50},
    {"vertex_ai-language-models", 50},
    {"vertex_ai-anthropic_models", 50},
    {"mistral", 50},
    {"codestral", 50},
}};

// ---------------------------------------------------------------------------------------------
// Prices as whole pico-dollars per token.

constexpr int kPerTokenScale = 12;  // USD per token -> pico per token
constexpr int kPerMtokScale = 6;    // USD per million tokens -> pico per token

// A JSON number or numeric string, exactly: numbers go through their shortest round-trip decimal
// text ("2.5e-06"), which is the text LiteLLM wrote for every price with up to 15 significant digits.
std::int64_t scaled_price(const json& value, int scale, const std::string& where) {
  std::string text;
  if (value.is_number()) {
    text = value.dump();
  } else if (value.is_string()) {
    text = value.get<std::string>();
  } else {
    invalid(where + " must be a number, got " + value.dump());
  }
  std::int64_t pico = 0;
  try {
    pico = decimal_to_scaled(text, scale);  // sub-pico digits round to the nearest pico-dollar
  } catch (const Error& e) {
    invalid(where + ": " + e.what());
  }
  if (pico < 0) invalid(where + " must not be negative");
  return pico;
}

std::optional<std::uint64_t> token_limit(const json& value) {
  if (value.is_number_unsigned()) return value.get<std::uint64_t>();
  if (value.is_number_integer() && value.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(value.get<std::int64_t>());
  if (value.is_number_float() && value.get<double>() >= 0 && value.get<double>() < 1e15) {
    return static_cast<std::uint64_t>(value.get<double>());
  }
  return std::nullopt;
}

// The five token classes, their LiteLLM key and their tokenlane-config key.
struct PriceField {
  const char* litellm;
  const char* per_mtok;
  std::optional<std::int64_t> TokenPrices::*member;
};
const std::array<PriceField, 5> kFields{{
    {"input_cost_per_token", "input_per_mtok", &TokenPrices::input},
    {"output_cost_per_token", "output_per_mtok", &TokenPrices::output},
    {"cache_read_input_token_cost", "cached_input_per_mtok", &TokenPrices::cache_read},
    {"cache_creation_input_token_cost", "cache_write_per_mtok", &TokenPrices::cache_write},
    {"output_cost_per_reasoning_token", "reasoning_per_mtok", &TokenPrices::reasoning},
}};

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

LongContextTier& tier_at(ModelPrice& m, std::uint64_t above) {
  auto it = std::find_if(m.tiers.begin(), m.tiers.end(), [&](const LongContextTier& t) { return t.above_tokens == above; });
  if (it != m.tiers.end()) return *it;
  m.tiers.push_back(LongContextTier{above, {}});
  std::sort(m.tiers.begin(), m.tiers.end(),
            [](const LongContextTier& a, const LongContextTier& b) { return a.above_tokens < b.above_tokens; });
  return *std::find_if(m.tiers.begin(), m.tiers.end(), [&](const LongContextTier& t) { return t.above_tokens == above; });
}

// Applies one LiteLLM-schema key to an entry. Returns false if the key is not a LiteLLM key that
// tokenlane uses (the caller decides whether that is an error).
bool apply_litellm_key(ModelPrice& m, const std::string& key, const json& value, const std::string& where) {
  for (const PriceField& f : kFields) {
    std::string_view base = f.litellm;
    if (key == base) {
      m.base.*f.member = scaled_price(value, kPerTokenScale, where + "." + key);
      return true;
    }
    if (key.size() <= base.size() || key.compare(0, base.size(), base) != 0) continue;
    std::string_view rest = std::string_view(key).substr(base.size());
    if (rest == "_batches") {
      m.batch.*f.member = scaled_price(value, kPerTokenScale, where + "." + key);
      return true;
    }
    // Long-context tier: <base>_above_<N>k_tokens (exactly; "_above_1hr" and "..._priority" are not tiers).
    constexpr std::string_view kAbove = "_above_", kSuffix = "k_tokens";
    if (rest.size() > kAbove.size() + kSuffix.size() && rest.substr(0, kAbove.size()) == kAbove &&
        rest.substr(rest.size() - kSuffix.size()) == kSuffix) {
      std::string_view n = rest.substr(kAbove.size(), rest.size() - kAbove.size() - kSuffix.size());
      if (all_digits(n) && n.size() <= 9) {
        std::uint64_t above = std::stoull(std::string(n)) * 1000;
        tier_at(m, above).prices.*f.member = scaled_price(value, kPerTokenScale, where + "." + key);
        return true;
      }
    }
  }
  if (key == "litellm_provider") {
    if (!value.is_string()) invalid(where + ".litellm_provider must be a string");
    m.provider = value.get<std::string>();
  } else if (key == "mode") {
    if (value.is_string()) m.mode = value.get<std::string>();
  } else if (key == "max_input_tokens") {
    m.max_input_tokens = token_limit(value);
  } else if (key == "max_output_tokens") {
    m.max_output_tokens = token_limit(value);
  } else if (key == "max_tokens") {
    // LiteLLM's legacy field: the output limit when max_output_tokens is absent.
    if (!m.max_output_tokens) m.max_output_tokens = token_limit(value);
  } else if (key == "source") {
    if (value.is_string()) m.source = value.get<std::string>();
  } else if (key == "as_of") {
    if (value.is_string()) m.as_of = value.get<std::string>();
  } else {
    return false;
  }
  return true;
}

bool has_any_price(const ModelPrice& m) { return m.base.input.has_value() || m.base.output.has_value(); }

// A tokenlane-config entry (per-million-token prices; LiteLLM keys are accepted too), applied on
// top of `m`. Strict: unknown keys are errors, so a typo cannot silently leave a price unset.
void apply_config_entry(ModelPrice& m, const json& entry, const std::string& where) {
  if (!entry.is_object()) invalid(where + " must be an object");
  for (const auto& [key, value] : entry.items()) {
    bool done = false;
    for (const PriceField& f : kFields) {
      if (key == f.per_mtok) {
        m.base.*f.member = scaled_price(value, kPerMtokScale, where + "." + key);
        done = true;
      } else if (key == std::string("batch_") + f.per_mtok) {
        m.batch.*f.member = scaled_price(value, kPerMtokScale, where + "." + key);
        done = true;
      }
    }
    if (done) continue;
    if (key == "provider") {
      if (!value.is_string()) invalid(where + ".provider must be a string");
      m.provider = value.get<std::string>();
    } else if (key == "batch_discount_percent") {
      if (!value.is_number() || value.get<double>() < 0 || value.get<double>() > 100 ||
          value.get<double>() != static_cast<double>(static_cast<int>(value.get<double>()))) {
        invalid(where + ".batch_discount_percent must be a whole number from 0 to 100");
      }
      m.batch_discount_percent = static_cast<int>(value.get<double>());
    } else if (key == "long_context") {
      if (!value.is_array()) invalid(where + ".long_context must be a list of {above_tokens, ..._per_mtok}");
      for (std::size_t i = 0; i < value.size(); ++i) {
        const json& t = value[i];
        std::string at = where + ".long_context[" + std::to_string(i) + "]";
        if (!t.is_object() || !t.contains("above_tokens") || !token_limit(t["above_tokens"])) {
          invalid(at + " needs a whole-number above_tokens");
        }
        LongContextTier& tier = tier_at(m, *token_limit(t["above_tokens"]));
        for (const auto& item : t.items()) {
          const std::string& tk = item.key();  // named, not a structured binding: clang < 16 cannot capture those
          const json& tv = item.value();
          if (tk == "above_tokens") continue;
          auto f = std::find_if(kFields.begin(), kFields.end(), [&](const PriceField& pf) { return tk == pf.per_mtok; });
          if (f == kFields.end()) invalid(at + ": unknown key '" + tk + "'");
          tier.prices.*(f->member) = scaled_price(tv, kPerMtokScale, at + "." + tk);
        }
      }
    } else if (key == "notes" || key == "description" || key == "verified_against" || key.rfind("supports_", 0) == 0) {
      // documentation only
    } else if (!apply_litellm_key(m, key, value, where)) {
      invalid(where + ": unknown key '" + key +
              "' (tokenlane keys: input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, "
              "reasoning_per_mtok, batch_input_per_mtok, batch_output_per_mtok, batch_discount_percent, "
              "long_context, provider, mode, max_input_tokens, max_output_tokens, source, as_of; or LiteLLM keys)");
    }
  }
}

bool looks_like_litellm_entry(const json& v) {
  return v.is_object() && (v.contains("litellm_provider") || v.contains("input_cost_per_token") ||
                           v.contains("output_cost_per_token") || v.contains("mode"));
}

bool is_tokenlane_config(const json& doc) {
  for (const char* k : {"models", "fallback", "aliases", "extends"}) {
    if (doc.contains(k) && !looks_like_litellm_entry(doc[k])) return true;
  }
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::not_found, "cannot read price table '" + path + "'");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string dirname_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

std::string join_path(const std::string& dir, const std::string& path) {
  if (dir.empty() || (!path.empty() && path[0] == '/')) return path;
  return dir + "/" + path;
}

json parse_json(std::string_view text, const std::string& what) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (doc.is_discarded()) invalid(what + " is not valid JSON");
  if (!doc.is_object()) invalid(what + " must be a JSON object");
  return doc;
}

// "-20250929", "-2024-08-06" at the end of a model name.
std::optional<std::string> without_date(std::string_view name) {
  auto digits_at = [&](std::size_t pos, std::size_t n) { return pos + n <= name.size() && all_digits(name.substr(pos, n)); };
  if (name.size() > 9 && name[name.size() - 9] == '-' && digits_at(name.size() - 8, 8)) {
    return std::string(name.substr(0, name.size() - 9));
  }
  if (name.size() > 11 && name[name.size() - 11] == '-' && digits_at(name.size() - 10, 4) &&
      name[name.size() - 6] == '-' && digits_at(name.size() - 5, 2) && name[name.size() - 3] == '-' &&
      digits_at(name.size() - 2, 2)) {
    return std::string(name.substr(0, name.size() - 11));
  }
  constexpr std::string_view kLatest = "-latest";
  if (name.size() > kLatest.size() && name.substr(name.size() - kLatest.size()) == kLatest) {
    return std::string(name.substr(0, name.size() - kLatest.size()));
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Usage objects.

std::uint64_t count_at(const json& obj, const char* key, const char* shape) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return 0;
  const json& v = obj[key];
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v.get<std::int64_t>());
  invalid(std::string(shape) + " usage: '" + key + "' must be a non-negative whole number, got " + v.dump());
}

const json& sub(const json& obj, const char* key) {
  static const json kNull;
  return obj.is_object() && obj.contains(key) ? obj[key] : kNull;
}

std::uint64_t checked_sum(std::uint64_t a, std::uint64_t b) {
  std::uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) invalid("token counts overflow");
  return r;
}

bool anthropic_family(std::string_view provider) { return provider.find("anthropic") != std::string_view::npos; }

}  // namespace

// ---------------------------------------------------------------------------------------------

std::optional<int> provider_batch_discount_percent(std::string_view provider) {
  for (const ProviderDiscount& d : kBatchDiscounts) {
    if (provider == d.provider) return d.percent;
  }
  return std::nullopt;
}

CostQuery usage_to_query(std::string_view usage_json, std::string_view provider) {
  json doc = parse_json(usage_json, "usage");
  const json* u = &doc;
  if (doc.contains("usage") && doc["usage"].is_object()) u = &doc["usage"];            // a whole response
  else if (doc.contains("usageMetadata") && doc["usageMetadata"].is_object()) u = &doc["usageMetadata"];
  const json& usage = *u;
  CostQuery q;
  auto has = [&](const char* k) { return usage.contains(k); };

  if (has("prompt_tokens") || has("completion_tokens")) {
    // OpenAI Chat Completions (and OpenAI-compatible servers): totals include the details.
    q.input_tokens = count_at(usage, "prompt_tokens", "OpenAI");
    q.cached_input_tokens = count_at(sub(usage, "prompt_tokens_details"), "cached_tokens", "OpenAI");
    q.output_tokens = count_at(usage, "completion_tokens", "OpenAI");
    q.reasoning_tokens = count_at(sub(usage, "completion_tokens_details"), "reasoning_tokens", "OpenAI");
  } else if (has("promptTokenCount") || has("candidatesTokenCount")) {
    // Gemini: the prompt count includes cached content; thoughts are billed on top of candidates.
    q.input_tokens = checked_sum(count_at(usage, "promptTokenCount", "Gemini"),
                                 count_at(usage, "toolUsePromptTokenCount", "Gemini"));
    q.cached_input_tokens = count_at(usage, "cachedContentTokenCount", "Gemini");
    q.reasoning_tokens = count_at(usage, "thoughtsTokenCount", "Gemini");
    q.output_tokens = checked_sum(count_at(usage, "candidatesTokenCount", "Gemini"), q.reasoning_tokens);
  } else if (has("cache_read_input_tokens") || has("cache_creation_input_tokens") ||
             ((has("input_tokens") || has("output_tokens")) && !has("input_tokens_details") &&
              !has("output_tokens_details") && anthropic_family(provider))) {
    // Anthropic: input_tokens EXCLUDES cache reads and writes; the prompt is the sum of the three.
    q.cached_input_tokens = count_at(usage, "cache_read_input_tokens", "Anthropic");
    q.cache_write_tokens = count_at(usage, "cache_creation_input_tokens", "Anthropic");
    q.input_tokens = checked_sum(checked_sum(count_at(usage, "input_tokens", "Anthropic"), q.cached_input_tokens),
                                 q.cache_write_tokens);
    q.output_tokens = count_at(usage, "output_tokens", "Anthropic");
  } else if (has("input_tokens") || has("output_tokens")) {
    // OpenAI Responses API: totals include the details.
    q.input_tokens = count_at(usage, "input_tokens", "OpenAI Responses");
    q.cached_input_tokens = count_at(sub(usage, "input_tokens_details"), "cached_tokens", "OpenAI Responses");
    q.output_tokens = count_at(usage, "output_tokens", "OpenAI Responses");
    q.reasoning_tokens = count_at(sub(usage, "output_tokens_details"), "reasoning_tokens", "OpenAI Responses");
  } else {
    invalid("unrecognized usage object: expected OpenAI (prompt_tokens, completion_tokens), OpenAI Responses "
            "(input_tokens, output_tokens), Anthropic (input_tokens, cache_read_input_tokens, "
            "cache_creation_input_tokens, output_tokens) or Gemini (promptTokenCount, candidatesTokenCount) keys");
  }
  return q;
}

struct Pricing::Impl {
  static std::shared_ptr<Pricing> make() { return std::shared_ptr<Pricing>(new Pricing()); }

  static void load_litellm(Pricing& p, const json& doc) {
    for (const auto& [key, value] : doc.items()) {
      if (key == "sample_spec" || (!key.empty() && key[0] == '_')) continue;  // LiteLLM's schema doc, our notes
      if (!value.is_object()) {
        ++p.skipped_;
        continue;
      }
      // Lenient per entry: the shared list holds image, audio and search entries without per-token
      // prices, and the odd malformed one; they are counted, not fatal.
      ModelPrice m;
      m.key = key;
      try {
        for (const auto& [k, v] : value.items()) apply_litellm_key(m, k, v, key);
      } catch (const Error&) {
        ++p.skipped_;
        continue;
      }
      if (!has_any_price(m)) {
        ++p.skipped_;
        continue;
      }
      p.models_[key] = std::move(m);
    }
  }

  static void apply_config(Pricing& p, const json& doc, const std::string& where) {
    for (const auto& [key, value] : doc.items()) {
      if (key == "models" || key == "aliases" || key == "fallback" || key == "extends" || key == "version" ||
          (!key.empty() && key[0] == '_')) {
        continue;
      }
      invalid(where + ": unknown top-level key '" + key + "' (expected models, aliases, fallback, extends)");
    }
    if (doc.contains("models")) {
      const json& models = doc["models"];
      if (!models.is_object()) invalid(where + ": 'models' must be an object of model name -> prices");
      for (const auto& [name, entry] : models.items()) {
        std::string at = where + ": models." + name;
        std::optional<std::string> existing = p.resolve(name);
        if (existing && p.models_.count(*existing)) {
          ModelPrice patched = p.models_.at(*existing);
          apply_config_entry(patched, entry, at);
          p.models_[*existing] = std::move(patched);
        } else {
          ModelPrice m;
          m.key = name;
          apply_config_entry(m, entry, at);
          if (!m.base.input) invalid(at + " is a new model and needs input_per_mtok");
          if (!m.base.output && m.mode != "embedding") {
            invalid(at + " is a new model and needs output_per_mtok (or \"mode\": \"embedding\")");
          }
          if (m.provider.empty()) m.provider = "custom";
          p.models_[name] = std::move(m);
        }
        p.rebuild_index();
      }
    }
    if (doc.contains("aliases")) {
      const json& aliases = doc["aliases"];
      if (!aliases.is_object()) invalid(where + ": 'aliases' must be an object of name -> model");
      for (const auto& [name, target] : aliases.items()) {
        if (!target.is_string()) invalid(where + ": aliases." + name + " must name a model");
        std::optional<std::string> key = p.resolve(target.get<std::string>());
        if (!key) invalid(where + ": aliases." + name + " points at unknown model '" + target.get<std::string>() + "'");
        p.aliases_[name] = *key;
      }
    }
    if (doc.contains("fallback")) {
      const json& fb = doc["fallback"];
      if (fb.is_null()) {
        p.fallback_.reset();
      } else {
        ModelPrice m;
        m.provider = "fallback";
        apply_config_entry(m, fb, where + ": fallback");
        if (!m.base.input || !m.base.output) invalid(where + ": fallback needs input_per_mtok and output_per_mtok");
        m.key.clear();
        p.fallback_ = std::move(m);
      }
    }
  }

  static std::shared_ptr<Pricing> load(std::string_view text, const Options& options, const std::string& base_dir,
                                       int depth) {
    if (depth > 8) invalid("price tables extend each other more than 8 levels deep");
    json doc = parse_json(text, "price table");
    auto p = make();
    if (!is_tokenlane_config(doc)) {
      load_litellm(*p, doc);
      p->rebuild_index();
      return p;
    }
    // A tokenlane config: start from what it extends.
    std::string extends = "default";
    bool explicit_extends = doc.contains("extends");
    if (explicit_extends) {
      if (!doc["extends"].is_string()) invalid("'extends' must be \"default\", \"none\" or a path");
      extends = doc["extends"].get<std::string>();
    }
    if (extends == "default") {
      if (!options.default_table_path.empty()) {
        std::string path = options.default_table_path;
        p = load(read_file(path), Options{}, dirname_of(path), depth + 1);
      } else if (explicit_extends) {
        invalid("'extends': \"default\" needs Options::default_table_path (the Python package sets it)");
      }
    } else if (extends != "none") {
      std::string path = join_path(base_dir, extends);
      p = load(read_file(path), options, dirname_of(path), depth + 1);
    }
    apply_config(*p, doc, "pricing config");
    p->rebuild_index();
    return p;
  }
};

// ---------------------------------------------------------------------------------------------

void Pricing::rebuild_index() {
  suffix_index_.clear();
  std::map<std::string, int, std::less<>> seen;
  for (const auto& [key, m] : models_) {
    for (std::size_t pos = key.find('/'); pos != std::string::npos; pos = key.find('/', pos + 1)) {
      std::string suffix = key.substr(pos + 1);
      if (suffix.empty() || models_.count(suffix)) continue;
      if (++seen[suffix] == 1) suffix_index_[suffix] = key;
      else suffix_index_[suffix].clear();  // ambiguous: several providers host this name
    }
  }
}

std::shared_ptr<const Pricing> Pricing::from_json(std::string_view json_text, const Options& options,
                                                  const std::string& base_dir) {
  return Impl::load(json_text, options, base_dir, 0);
}

std::shared_ptr<const Pricing> Pricing::from_file(const std::string& path, const Options& options) {
  return Impl::load(read_file(path), options, dirname_of(path), 0);
}

std::shared_ptr<const Pricing> Pricing::empty() { return Impl::make(); }

std::shared_ptr<const Pricing> Pricing::with_config(std::string_view json_text) const {
  json doc = parse_json(json_text, "pricing config");
  auto p = Impl::make();
  *p = *this;
  if (is_tokenlane_config(doc)) {
    if (doc.contains("extends")) invalid("'extends' names a base table; it has no meaning in with_config/overrides");
    Impl::apply_config(*p, doc, "pricing config");
  } else {
    // A LiteLLM file on top: its entries replace whole entries.
    auto other = Impl::make();
    Impl::load_litellm(*other, doc);
    for (auto& [key, m] : other->models_) p->models_[key] = std::move(m);
    p->skipped_ += other->skipped_;
  }
  p->rebuild_index();
  return p;
}

std::optional<std::string> Pricing::resolve(std::string_view model) const {
  auto direct = [&](std::string_view name) -> std::optional<std::string> {
    if (auto it = models_.find(name); it != models_.end()) return it->first;
    if (auto it = aliases_.find(name); it != aliases_.end()) return it->second;
    if (auto it = suffix_index_.find(name); it != suffix_index_.end() && !it->second.empty()) return it->second;
    return std::nullopt;
  };
  // The name, then without provider prefixes ("openrouter/openai/gpt-4o" -> "openai/gpt-4o" -> "gpt-4o").
  std::vector<std::string> names{std::string(model)};
  for (std::size_t pos = model.find('/'); pos != std::string_view::npos; pos = model.find('/', pos + 1)) {
    if (pos + 1 < model.size()) names.emplace_back(model.substr(pos + 1));
  }
  for (const std::string& n : names) {
    if (auto key = direct(n)) return key;
  }
  // Then without a dated snapshot (or "-latest") suffix, or to the single dated snapshot of that name.
  for (const std::string& n : names) {
    std::optional<std::string> stem = without_date(n);
    if (stem) {
      if (auto key = direct(*stem)) return key;
    }
    const std::string& base = stem ? *stem : n;
    std::optional<std::string> only;
    int found = 0;
    for (auto it = models_.lower_bound(base + "-"); it != models_.end() && it->first.compare(0, base.size() + 1, base + "-") == 0; ++it) {
      auto d = without_date(it->first);
      if (d && *d == base && it->first.size() > base.size() + 7) only = it->first, ++found;
    }
    if (found == 1) return only;
  }
  return std::nullopt;
}

const ModelPrice& Pricing::entry(std::string_view model) const {
  if (std::optional<std::string> key = resolve(model)) return models_.at(*key);
  if (fallback_) return *fallback_;
  // Say how to fix it, with the nearest names in the table.
  std::string stem(model.substr(model.rfind('/') == std::string_view::npos ? 0 : model.rfind('/') + 1));
  std::vector<std::pair<std::size_t, std::string>> near;
  for (const auto& [key, m] : models_) {
    std::string_view k = key;
    if (auto slash = k.rfind('/'); slash != std::string_view::npos) k = k.substr(slash + 1);
    std::size_t common = 0;
    while (common < k.size() && common < stem.size() && k[common] == stem[common]) ++common;
    if (common >= 4) near.emplace_back(common, key);
  }
  std::stable_sort(near.begin(), near.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string hint;
  for (std::size_t i = 0; i < near.size() && i < 3; ++i) hint += (i ? ", " : " Did you mean: ") + near[i].second;
  if (!hint.empty()) hint += "?";
  std::string name(model);
  throw Error(ErrorCode::not_found,
              "unknown model '" + name + "': no price for it in this table." + hint +
                  " Add it with a tokenlane pricing config, e.g. {\"models\": {\"" + name +
                  "\": {\"input_per_mtok\": 0.5, \"output_per_mtok\": 1.5, \"provider\": \"self_hosted\"}}}, "
                  "loaded with Pricing.load(path) or pricing.with_overrides(...), or configure a \"fallback\" "
                  "price for unknown models (docs/pricing.md).");
}

std::optional<std::uint64_t> Pricing::max_input_tokens(std::string_view model) const {
  return entry(model).max_input_tokens;
}

std::optional<std::uint64_t> Pricing::max_output_tokens(std::string_view model) const {
  return entry(model).max_output_tokens;
}

const std::string& Pricing::provider(std::string_view model) const { return entry(model).provider; }

std::vector<std::string> Pricing::models() const {
  std::vector<std::string> out;
  out.reserve(models_.size());
  for (const auto& [key, m] : models_) out.push_back(key);
  return out;
}

CostBreakdown Pricing::cost(std::string_view model, const CostQuery& q) const {
  const ModelPrice& m = entry(model);
  CostBreakdown out;
  out.model = m.key;
  out.provider = m.provider;
  out.query = q;
  out.fallback = m.key.empty();

  std::string name(model);
  if (checked_sum(q.cached_input_tokens, q.cache_write_tokens) > q.input_tokens) {
    invalid("cost of '" + name + "': cached_input_tokens (" + std::to_string(q.cached_input_tokens) +
            ") + cache_write_tokens (" + std::to_string(q.cache_write_tokens) + ") exceed input_tokens (" +
            std::to_string(q.input_tokens) + "), which counts every prompt token");
  }
  if (q.reasoning_tokens > q.output_tokens) {
    invalid("cost of '" + name + "': reasoning_tokens (" + std::to_string(q.reasoning_tokens) +
            ") exceed output_tokens (" + std::to_string(q.output_tokens) + "), which counts every completion token");
  }

  // The long-context tier of the whole request: the highest threshold the prompt exceeds.
  const LongContextTier* tier = nullptr;
  for (const LongContextTier& t : m.tiers) {
    if (q.input_tokens > t.above_tokens) tier = &t;
  }
  if (tier) out.long_context_above = tier->above_tokens;

  std::optional<int> discount = m.batch_discount_percent ? m.batch_discount_percent
                                                         : provider_batch_discount_percent(m.provider);
  // A class's price: from the highest exceeded tier that prices it, else the base price.
  auto tier_price = [&](std::optional<std::int64_t> TokenPrices::*field) -> std::optional<std::int64_t> {
    for (auto t = m.tiers.rbegin(); t != m.tiers.rend(); ++t) {
      if (q.input_tokens > t->above_tokens && t->prices.*field) return t->prices.*field;
    }
    return std::nullopt;
  };
  auto price_of = [&](std::optional<std::int64_t> TokenPrices::*field) -> std::optional<std::int64_t> {
    std::optional<std::int64_t> in_tier = tier_price(field);
    std::optional<std::int64_t> p = in_tier ? in_tier : m.base.*field;
    if (!q.batch || !p) return p;
    if (!in_tier && (m.batch.*field)) {
      out.batch_discounted = true;
      return m.batch.*field;
    }
    if (!discount) return p;
    out.batch_discounted = out.batch_discounted || *discount > 0;
    // Per-token price after the discount, rounded half up to a whole pico-dollar (exact for every
    // current list price); costs stay tokens × integer price, so sums stay exact.
    std::int64_t scaled = 0;
    if (__builtin_mul_overflow(*p, static_cast<std::int64_t>(100 - *discount), &scaled) || scaled > INT64_MAX - 50) {
      invalid("price of '" + m.key + "' is out of range");
    }
    return (scaled + 50) / 100;
  };
  auto charge = [&](std::uint64_t tokens, std::optional<std::int64_t> price, const char* what,
                    const char* key) -> Money {
    if (tokens == 0) return Money{};
    if (!price) {
      invalid("model '" + (m.key.empty() ? name : m.key) + "' has no " + what + " price in the table; add " + key +
              " to its entry");
    }
    return Money::from_pico(*price).times(tokens);
  };

  std::optional<std::int64_t> input = price_of(&TokenPrices::input);
  std::optional<std::int64_t> output = price_of(&TokenPrices::output);
  std::optional<std::int64_t> cache_read = price_of(&TokenPrices::cache_read);
  std::optional<std::int64_t> cache_write = price_of(&TokenPrices::cache_write);
  // In a tier that prices output but not reasoning, reasoning follows the tier's output price.
  std::optional<std::int64_t> reasoning =
      tier_price(&TokenPrices::output) && !tier_price(&TokenPrices::reasoning) ? output
                                                                                : price_of(&TokenPrices::reasoning);
  // Unpriced classes bill like their parent: cache reads and writes as input, reasoning as output.
  if (!cache_read) cache_read = input;
  if (!cache_write) cache_write = input;
  if (!reasoning) reasoning = output;

  std::uint64_t uncached = q.input_tokens - q.cached_input_tokens - q.cache_write_tokens;
  out.input = charge(uncached, input, "input", "input_cost_per_token");
  out.cached_input = charge(q.cached_input_tokens, cache_read, "input", "input_cost_per_token");
  out.cache_write = charge(q.cache_write_tokens, cache_write, "input", "input_cost_per_token");
  out.output = charge(q.output_tokens - q.reasoning_tokens, output, "output", "output_cost_per_token");
  out.reasoning = charge(q.reasoning_tokens, reasoning, "output", "output_cost_per_token");
  out.total = out.input + out.cached_input + out.cache_write + out.output + out.reasoning;
  return out;
}

CostBreakdown Pricing::cost_of_usage(std::string_view model, std::string_view usage_json, bool batch) const {
  const ModelPrice& m = entry(model);
  CostQuery q = usage_to_query(usage_json, m.provider);
  q.batch = batch;
  return cost(model, q);
}

}  // namespace tokenlane
