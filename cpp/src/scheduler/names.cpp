// Names of the scheduler's enums, both ways.
#include <cmath>
#include <limits>
#include <string>

#include "tokenlane/error.hpp"
#include "tokenlane/scheduler.hpp"

namespace tokenlane {
namespace {

[[noreturn]] void bad_name(const char* what, std::string_view name, const char* valid) {
  throw Error(ErrorCode::invalid_argument,
              std::string("unknown ") + what + " '" + std::string(name) + "'; expected one of " + valid);
}

}  // namespace

std::string_view to_string(Priority p) noexcept {
  switch (p) {
    case Priority::interactive: return "interactive";
    case Priority::standard: return "standard";
    case Priority::batch: return "batch";
  }
  return "standard";
}

std::string_view to_string(Policy p) noexcept {
  switch (p) {
    case Policy::fifo: return "fifo";
    case Policy::cost_priority: return "cost_priority";
    case Policy::deadline: return "deadline";
    case Policy::fair: return "fair";
    case Policy::combined: return "default";
  }
  return "default";
}

std::string_view to_string(RequestState s) noexcept {
  switch (s) {
    case RequestState::queued: return "queued";
    case RequestState::deferred: return "deferred";
    case RequestState::running: return "running";
  }
  return "queued";
}

std::string_view to_string(DecisionKind k) noexcept {
  switch (k) {
    case DecisionKind::admit: return "admit";
    case DecisionKind::queue: return "queue";
    case DecisionKind::defer: return "defer";
    case DecisionKind::reject: return "reject";
  }
  return "reject";
}

Priority parse_priority(std::string_view name) {
  if (name == "interactive") return Priority::interactive;
  if (name == "standard") return Priority::standard;
  if (name == "batch") return Priority::batch;
  bad_name("priority", name, "interactive, standard, batch");
}

Policy parse_policy(std::string_view name) {
  if (name == "fifo") return Policy::fifo;
  if (name == "cost_priority") return Policy::cost_priority;
  if (name == "deadline") return Policy::deadline;
  if (name == "fair") return Policy::fair;
  if (name == "default") return Policy::combined;
  bad_name("policy", name, "fifo, cost_priority, deadline, fair, default");
}

}  // namespace tokenlane
