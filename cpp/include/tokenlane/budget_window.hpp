// tokenlane/budget_window.hpp — the UTC calendar windows budgets are counted in, shared by the
// scheduler (in-process reservations) and the ledger (the spend every process shares).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace tokenlane {

enum class BudgetWindow : std::uint8_t { hour, day, month, total };

std::string_view to_string(BudgetWindow w) noexcept;
// "hour" | "day" | "month" | "total"; anything else throws Error(invalid_argument).
BudgetWindow parse_budget_window(std::string_view name);

// The UTC calendar window containing `now` (Unix seconds): [start, end). `total` is (-inf, +inf).
std::pair<double, double> budget_window_bounds(BudgetWindow w, double now);

// The same in whole seconds, as the ledger stores them: start (0 for `total`) and the start of the
// next window (nullopt for `total`). Throws Error(invalid_argument) for a non-finite `now`.
std::int64_t budget_window_start(BudgetWindow w, double now);
std::optional<std::int64_t> budget_window_end(BudgetWindow w, double now);

}  // namespace tokenlane
