// tokenlane/estimator.hpp — predicts how many output tokens a request will produce, before it runs.
//
// Input tokens are counted exactly; output tokens can only be predicted. An Estimator returns two
// quantiles of the output length, p50 (what to expect) and p90 (what to reserve budget for), and
// learns from the actual usage it is shown afterwards:
//
//   auto est = tokenlane::BlendEstimator::make_default();
//   tokenlane::EstimateQuery q;
//   q.prompt = "Summarize this article in 3 sentences: ...";
//   q.model = "gpt-4o";
//   q.max_tokens = 512;                       // the request's own cap
//   tokenlane::Estimate e = est->estimate(q); // e.p50, e.p90, e.source
//   est->observe(q, 87);                      // the response's usage.completion_tokens
//
// Four estimators share the interface (docs/estimators.md has the details and measurements):
//   HeuristicEstimator  the baseline: a prior per task type scaled by the input length.
//   LearnedEstimator    cheap prompt features (hashed word n-grams, explicit length cues such as
//                       "in 3 sentences" or "one word", code, script) -> linear quantile regression
//                       of log(output length) for p50 and p90, with a per-model verbosity offset;
//                       trained offline (fit) and updated online (observe).
//   HistoryEstimator    online log-bucket quantile sketches keyed by prompt template, route,
//                       tenant and model, backing off to coarser keys when a key has few data.
//   BlendEstimator      the default: history where a specific key has data, else the learned model
//                       (calibrated per route/tenant by history), else the heuristic; its p90 is
//                       kept at the target coverage online.
//
// Every estimate is >= 1 and capped by the query's max_tokens and by the model's maximum output
// (given by the caller, e.g. from Pricing::max_output_tokens; unknown models use a generic prior).
// All estimators are thread-safe (one mutex each; estimating takes it shared) and deterministic:
// the same observations in the same order give the same state. They are not for exact accounting:
// actual usage always comes from the provider's response.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenlane {

namespace detail {
struct EstimatorCodec;  // reads and writes the JSON state (cpp/src/estimator/codec.cpp)
}

// Separates chat messages in a flattened prompt (Python's flattening writes "role\x1fcontent" per
// message, joined by this). The template key of a chat prompt is taken from its first and last
// message, so a long shared system prompt does not hide the user's request.
inline constexpr char kMessageSeparator = '\x1e';
inline constexpr char kRoleSeparator = '\x1f';

struct EstimateQuery {
  std::string_view prompt;  // the prompt text (chat messages flattened, see kMessageSeparator)
  std::string_view model;
  std::optional<std::uint64_t> max_tokens;        // the request's cap on output tokens
  std::optional<std::uint64_t> model_max_output;  // the model's maximum output tokens, if known
  std::optional<std::uint64_t> input_tokens;      // exact prompt tokens; else approximated (bytes/4)
  std::string_view route;   // all three optional ("" = absent)
  std::string_view tenant;
  std::string_view task;    // "chat", "code", "summarize", "translate", "rewrite", "classify", "extract", "qa"
};

struct Estimate {
  std::uint64_t p50 = 1;
  std::uint64_t p90 = 1;
  double quantile = 0.9;  // the quantile level of p90
  std::string source;     // "heuristic", "learned", "history:template", "history:route", ...
};

// One training or replay record (Python passes these in bulk to fit/observe_many).
struct Observation {
  std::string prompt;
  std::string model;
  std::uint64_t output_tokens = 0;
  bool truncated = false;  // cut by max_tokens: output_tokens is a lower bound (see observe)
  std::optional<std::uint64_t> input_tokens;
  std::string route, tenant, task;
  EstimateQuery query() const;
};

// Output tokens a model may produce when its maximum is unknown (the generic prior's ceiling).
inline constexpr std::uint64_t kGenericMaxOutput = 32768;

class Estimator {
 public:
  virtual ~Estimator() = default;
  // The prediction for one request. Throws Error(invalid_argument) for an empty model name or a
  // max_tokens of 0.
  virtual Estimate estimate(const EstimateQuery& query) const = 0;
  // Feeds back the actual output tokens of a request estimated before (online learning).
  // `truncated`: the response was cut by max_tokens (finish_reason "length"), so output_tokens is a
  // lower bound of the length the model wanted, not an observation of it: it can only raise an
  // estimate that was below it, never lower one.
  virtual void observe(const EstimateQuery& query, std::uint64_t output_tokens, bool truncated = false) = 0;
  // "heuristic", "learned", "history" or "blend".
  virtual std::string kind() const = 0;
  // The whole state as versioned JSON ({"format": "tokenlane.estimator", "version": 1, "kind": ...}).
  virtual std::string to_json() const = 0;

  // Rebuilds any estimator from to_json(). Throws Error(invalid_argument) on malformed JSON, another
  // format, or a version this build does not know (naming it and the supported one).
  static std::unique_ptr<Estimator> from_json(std::string_view json_text);
  void save(const std::string& path) const;                      // Error(invalid_argument) if unwritable
  static std::unique_ptr<Estimator> load(const std::string& path);  // Error(not_found) if unreadable
};

class HeuristicEstimator final : public Estimator {
 public:
  HeuristicEstimator() = default;
  Estimate estimate(const EstimateQuery& query) const override;
  void observe(const EstimateQuery&, std::uint64_t, bool = false) override {}  // a fixed baseline: learns nothing
  std::string kind() const override { return "heuristic"; }
  std::string to_json() const override;
  // The uncapped prior (p50, p90) for a task and input length; the other estimators start here.
  static std::pair<double, double> prior(std::string_view task, double input_tokens);
};

class LearnedEstimator final : public Estimator {
 public:
  LearnedEstimator();  // hand-set priors on the explicit length cues (see docs/estimators.md)
  ~LearnedEstimator() override;
  Estimate estimate(const EstimateQuery& query) const override;
  void observe(const EstimateQuery& query, std::uint64_t output_tokens, bool truncated = false) override;
  std::string kind() const override { return "learned"; }
  std::string to_json() const override;
  // Offline training: `epochs` passes of the same SGD over the records in a deterministic order
  // seeded by `seed` (the records are not reordered in place).
  void fit(const std::vector<Observation>& records, int epochs = 4, std::uint64_t seed = 1);
  // log(p50), log(p90) before capping: what the blend combines.
  std::pair<double, double> predict_log(const EstimateQuery& query) const;
  // observe, returning predict_log's answer from just before the update (one pass over the prompt
  // for both: the blend needs the prediction it is learning from).
  std::pair<double, double> observe_log(const EstimateQuery& query, std::uint64_t output_tokens, bool truncated);
  // exp of the learned per-model offset (1.0 for models never observed).
  double verbosity(std::string_view model) const;
  struct State;

 private:
  friend struct detail::EstimatorCodec;
  std::unique_ptr<State> s_;
};

class HistoryEstimator final : public Estimator {
 public:
  struct Options {
    std::uint32_t min_count = 3;     // observations a key needs before it is used
    std::size_t max_keys = 200000;   // least recently used keys are evicted beyond this
    std::size_t template_chars = 96; // normalized prompt characters that make the template key
  };
  HistoryEstimator();
  explicit HistoryEstimator(const Options& options);
  ~HistoryEstimator() override;
  Estimate estimate(const EstimateQuery& query) const override;  // heuristic prior when no key has data
  void observe(const EstimateQuery& query, std::uint64_t output_tokens, bool truncated = false) override;
  std::string kind() const override { return "history"; }
  std::string to_json() const override;

  // The most specific key with at least `min_count` observations (0: the option's min_count): its
  // level ("template", "template:xmodel" = the same template on other models, shifted by this
  // model's typical length, "route", "tenant", "model"), count and natural-log quantiles.
  // `specific_only` stops after the two template levels. nullopt if no key qualifies.
  struct Lookup {
    std::string level;
    double count = 0;
    double log_p50 = 0, log_p90 = 0;
  };
  std::optional<Lookup> lookup(const EstimateQuery& query, bool specific_only, std::uint32_t min_count = 0) const;
  // The template key of a prompt: FNV-1a of its normalized shape (lowercase, digits -> 0,
  // whitespace collapsed, first `template_chars` characters of the first and last message).
  std::uint64_t template_hash(std::string_view prompt) const;
  std::size_t key_count() const;
  struct State;

 private:
  friend struct detail::EstimatorCodec;
  std::unique_ptr<State> s_;
};

struct BlendOptions {
  // History at a template key with n observations gets weight n / (n + history_prior) against
  // the learned prediction.
  double history_prior = 1.0;
  // Step of the online coverage control of p90 (and of the median): after each observation the
  // log-offset moves by coverage_step * (missed - 0.1), so the share of actuals above p90 tends
  // to 10% (adaptive conformal inference, Gibbs & Candes 2021).
  double coverage_step = 0.03;
  double median_step = 0.01;
};

class BlendEstimator final : public Estimator {
 public:
  using Options = BlendOptions;
  // `learned` may be null: the heuristic takes its place.
  BlendEstimator(std::unique_ptr<LearnedEstimator> learned, std::unique_ptr<HistoryEstimator> history,
                 const Options& options = Options{});
  // Hand-set learned priors and an empty history: usable cold, improving online.
  static std::unique_ptr<BlendEstimator> make_default();
  ~BlendEstimator() override;
  Estimate estimate(const EstimateQuery& query) const override;
  void observe(const EstimateQuery& query, std::uint64_t output_tokens, bool truncated = false) override;
  std::string kind() const override { return "blend"; }
  std::string to_json() const override;
  LearnedEstimator* learned() { return learned_.get(); }
  HistoryEstimator& history() { return *history_; }

  struct Calibration;

 private:
  struct Raw;
  Raw predict(const EstimateQuery& query) const;
  // The blend of the learned (or heuristic) log prediction `base` with calibration and history.
  Raw blend(const EstimateQuery& query, std::pair<double, double> base) const;
  friend struct detail::EstimatorCodec;
  std::unique_ptr<LearnedEstimator> learned_;
  std::unique_ptr<HistoryEstimator> history_;
  Options options_;
  std::unique_ptr<Calibration> cal_;
};

}  // namespace tokenlane
