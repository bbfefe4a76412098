// HistoryEstimator: what this template / route / tenant / model actually produced before.
// Each key holds a log-bucket histogram of log(output tokens) (buckets 1/8 wide in natural log,
// ~13% apart), stored sparsely, halved when it passes kDecayAt observations so it follows drift.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "internal.hpp"
#include "tokenlane/error.hpp"

namespace tokenlane {
namespace {

constexpr double kBucketWidth = 0.125;
constexpr float kDecayAt = 1000.0f;
constexpr double kGenericLogCenter = 5.70;  // ln(300): a typical chat answer, before any data

class Sketch {
 public:
  void add(double z) {
    const auto b = static_cast<std::int16_t>(std::clamp(std::floor(z / kBucketWidth), -4000.0, 4000.0));
    auto it = std::lower_bound(bins_.begin(), bins_.end(), b, [](const Bin& x, std::int16_t v) { return x.b < v; });
    if (it != bins_.end() && it->b == b) {
      it->c += 1.0f;
    } else {
      bins_.insert(it, Bin{b, 1.0f});
    }
    total_ += 1.0f;
    if (total_ > kDecayAt) {
      total_ = 0;
      for (Bin& x : bins_) total_ += (x.c *= 0.5f);
    }
  }
  double quantile(double q) const {
    const double target = q * total_;
    double cum = 0;
    for (const Bin& x : bins_) {
      if (cum + x.c >= target) return (x.b + (target - cum) / x.c) * kBucketWidth;
      cum += x.c;
    }
    return bins_.empty() ? 0.0 : (bins_.back().b + 1) * kBucketWidth;
  }
  double count() const { return total_; }

  nlohmann::json to_json() const {
    nlohmann::json bins = nlohmann::json::array();
    for (const Bin& x : bins_) bins.push_back({x.b, x.c});
    return bins;
  }
  static Sketch from_json(const nlohmann::json& j) {
    Sketch s;
    for (const auto& row : j) {
      s.bins_.push_back(Bin{detail::state_number<std::int16_t>(row.at(0)), detail::state_number<float>(row.at(1))});
      s.total_ += s.bins_.back().c;
    }
    std::sort(s.bins_.begin(), s.bins_.end(), [](const Bin& a, const Bin& b) { return a.b < b.b; });
    return s;
  }

 private:
  struct Bin {
    std::int16_t b;
    float c;
  };
  std::vector<Bin> bins_;
  float total_ = 0;
};

enum Level : std::uint64_t { kTemplate = 1, kXModel, kRoute, kTenant, kModel, kGlobal };
const char* level_name(Level l) {
  switch (l) {
    case kTemplate: return "template";
    case kXModel: return "template:xmodel";
    case kRoute: return "route";
    case kTenant: return "tenant";
    case kModel: return "model";
    case kGlobal: return "global";
  }
  return "?";
}

}  // namespace

struct HistoryEstimator::State {
  Options options;
  struct Entry {
    Sketch sketch;
    std::uint64_t tick = 0;
  };
  std::unordered_map<std::uint64_t, Entry> keys;
  std::uint64_t tick = 0;
  mutable std::shared_mutex mu;

  struct Keys {
    std::uint64_t at[kGlobal + 1] = {};  // 0 = level not applicable
  };
  Keys keys_of(const EstimateQuery& q) const {
    using detail::fnv1a;
    using detail::mix;
    const std::uint64_t model = fnv1a(q.model), route = fnv1a(q.route), tenant = fnv1a(q.tenant);
    const std::uint64_t shape = detail::template_hash(q.prompt, options.template_chars);
    Keys k;
    k.at[kTemplate] = mix(mix(mix(kTemplate, model), route), shape);
    k.at[kXModel] = mix(mix(kXModel, route), shape);
    if (!q.route.empty()) k.at[kRoute] = mix(mix(kRoute, model), route);
    if (!q.tenant.empty()) k.at[kTenant] = mix(mix(kTenant, model), tenant);
    k.at[kModel] = mix(kModel, model);
    k.at[kGlobal] = mix(kGlobal, 0);
    return k;
  }
  const Sketch* find(std::uint64_t key) const {
    if (!key) return nullptr;
    auto it = keys.find(key);
    return it == keys.end() ? nullptr : &it->second.sketch;
  }
  // The model's typical log length: the reference the cross-model template sketch is relative to.
  double center(const Keys& k) const {
    if (const Sketch* s = find(k.at[kModel]); s && s->count() > 0) return s->quantile(0.5);
    if (const Sketch* s = find(k.at[kGlobal]); s && s->count() > 0) return s->quantile(0.5);
    return kGenericLogCenter;
  }
  void add(std::uint64_t key, double z) {
    Entry& e = keys[key];
    e.sketch.add(z);
    e.tick = ++tick;
  }
  void evict() {
    if (keys.size() <= options.max_keys) return;
    // Drop the least recently observed tenth (ticks are unique, so this is deterministic).
    std::vector<std::uint64_t> ticks;
    ticks.reserve(keys.size());
    for (const auto& kv : keys) ticks.push_back(kv.second.tick);
    const std::size_t drop = keys.size() - options.max_keys + options.max_keys / 10;
    std::nth_element(ticks.begin(), ticks.begin() + static_cast<std::ptrdiff_t>(drop - 1), ticks.end());
    const std::uint64_t cutoff = ticks[drop - 1];
    for (auto it = keys.begin(); it != keys.end();) it = it->second.tick <= cutoff ? keys.erase(it) : std::next(it);
  }
};

HistoryEstimator::HistoryEstimator() : HistoryEstimator(Options{}) {}
HistoryEstimator::HistoryEstimator(const Options& options) : s_(std::make_unique<State>()) {
  if (options.min_count < 1 || options.max_keys < 16 || options.template_chars < 8)
    throw Error(ErrorCode::invalid_argument,
                "HistoryEstimator: min_count >= 1, max_keys >= 16 and template_chars >= 8 are required");
  s_->options = options;
}
HistoryEstimator::~HistoryEstimator() = default;

std::optional<HistoryEstimator::Lookup> HistoryEstimator::lookup(const EstimateQuery& q, bool specific_only,
                                                                 std::uint32_t min_count) const {
  if (min_count == 0) min_count = s_->options.min_count;
  const State::Keys k = s_->keys_of(q);
  std::shared_lock lock(s_->mu);
  const Level order[] = {kTemplate, kXModel, kRoute, kTenant, kModel};
  for (Level l : order) {
    if (specific_only && l > kXModel) break;
    const Sketch* s = s_->find(k.at[l]);
    if (!s || s->count() + 1e-6 < min_count) continue;
    Lookup r;
    r.level = level_name(l);
    r.count = s->count();
    const double shift = l == kXModel ? s_->center(k) : 0.0;
    r.log_p50 = s->quantile(0.5) + shift;
    r.log_p90 = s->quantile(0.9) + shift;
    return r;
  }
  return std::nullopt;
}

Estimate HistoryEstimator::estimate(const EstimateQuery& q) const {
  detail::validate(q);
  if (auto r = lookup(q, false, 0)) return detail::finalize(q, r->log_p50, r->log_p90, "history:" + r->level);
  auto [p50, p90] = HeuristicEstimator::prior(q.task, detail::input_tokens_of(q));
  return detail::finalize(q, std::log(p50), std::log(p90), "heuristic");
}

void HistoryEstimator::observe(const EstimateQuery& q, std::uint64_t output_tokens, bool truncated) {
  detail::validate(q);
  const double y = std::log(static_cast<double>(std::max<std::uint64_t>(output_tokens, 1)));
  const State::Keys k = s_->keys_of(q);
  std::unique_lock lock(s_->mu);
  // A truncated length is only a lower bound: it enters a sketch only where it lies above the
  // sketch's median (it then pulls the median the right way, up), never where it would pull down.
  auto add = [&](std::uint64_t key, double z) {
    if (truncated) {
      const Sketch* s = s_->find(key);
      if (s && s->count() > 0 && s->quantile(0.5) >= z) return;
    }
    s_->add(key, z);
  };
  add(k.at[kXModel], y - s_->center(k));  // relative to the model before this observation
  for (Level l : {kTemplate, kRoute, kTenant, kModel, kGlobal})
    if (k.at[l]) add(k.at[l], y);
  s_->evict();
}

std::uint64_t HistoryEstimator::template_hash(std::string_view prompt) const {
  return detail::template_hash(prompt, s_->options.template_chars);
}

std::size_t HistoryEstimator::key_count() const {
  std::shared_lock lock(s_->mu);
  return s_->keys.size();
}

std::string HistoryEstimator::to_json() const { return detail::EstimatorCodec::history_state(*this).dump(); }

namespace detail {

nlohmann::json EstimatorCodec::history_state(const HistoryEstimator& e) {
  const HistoryEstimator::State& s = *e.s_;
  std::shared_lock lock(s.mu);
  nlohmann::json j = header("history");
  j["options"] = {{"min_count", s.options.min_count},
                  {"max_keys", s.options.max_keys},
                  {"template_chars", s.options.template_chars}};
  j["tick"] = s.tick;
  std::vector<std::uint64_t> ids;
  ids.reserve(s.keys.size());
  for (const auto& kv : s.keys) ids.push_back(kv.first);
  std::sort(ids.begin(), ids.end());
  nlohmann::json keys = nlohmann::json::array();
  for (std::uint64_t id : ids) {
    const auto& entry = s.keys.at(id);
    keys.push_back({id, entry.tick, entry.sketch.to_json()});
  }
  j["keys"] = std::move(keys);  // [key hash, last observed tick, [[bucket, count], ...]]
  return j;
}

std::unique_ptr<HistoryEstimator> EstimatorCodec::history(const nlohmann::json& j) {
  HistoryEstimator::Options o;
  const auto& opts = j.at("options");
  o.min_count = state_number<std::uint32_t>(opts.at("min_count"));
  o.max_keys = state_number<std::size_t>(opts.at("max_keys"));
  o.template_chars = state_number<std::size_t>(opts.at("template_chars"));
  auto e = std::make_unique<HistoryEstimator>(o);
  HistoryEstimator::State& s = *e->s_;
  s.tick = state_number<std::uint64_t>(j.at("tick"));
  for (const auto& row : j.at("keys")) {
    HistoryEstimator::State::Entry entry;
    entry.tick = state_number<std::uint64_t>(row.at(1));
    entry.sketch = Sketch::from_json(row.at(2));
    s.keys.emplace(state_number<std::uint64_t>(row.at(0)), std::move(entry));
  }
  return e;
}

}  // namespace detail
}  // namespace tokenlane
