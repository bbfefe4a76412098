// Restoring an estimator from arbitrary JSON: an estimator that round-trips, or tokenlane::Error.
#include <cstdlib>
#include <memory>

#include "tokenlane/error.hpp"
#include "tokenlane/estimator.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<tokenlane::Estimator> est;
  try {
    est = tokenlane::Estimator::from_json(json);
  } catch (const tokenlane::Error& e) {
    if (e.code() != tokenlane::ErrorCode::invalid_argument) std::abort();
    return 0;
  }
  tokenlane::EstimateQuery q;
  q.prompt = "Summarize this in 3 sentences: the quick brown fox";
  q.model = "gpt-4o";
  try {
    est->estimate(q);
    est->observe(q, 40);
  } catch (const tokenlane::Error&) {
    // a restored state may be refused at use (e.g. dimensions that do not match), never crash
  }
  const auto again = tokenlane::Estimator::from_json(est->to_json());
  if (again->to_json() != est->to_json()) std::abort();
  return 0;
}
