// The ledger's configuration values and API-key lookups on arbitrary text: stored canonically or
// refused with tokenlane::Error(invalid_argument); a random string never verifies as a key.
#include <cstdlib>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "tokenlane/error.hpp"
#include "tokenlane/ledger.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Every changed value adds a history row: a fresh in-memory ledger now and then bounds memory.
  static std::unique_ptr<tokenlane::Ledger> fresh;
  static unsigned runs = 0;
  if (runs++ % 4096 == 0) fresh = std::make_unique<tokenlane::Ledger>(":memory:");
  tokenlane::Ledger& ledger = *fresh;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    ledger.set_config("fuzz", text, text);
    const auto stored = ledger.get_config("fuzz");
    if (!stored || *stored != nlohmann::json::parse(text).dump()) std::abort();
  } catch (const tokenlane::Error& e) {
    if (e.code() != tokenlane::ErrorCode::invalid_argument) std::abort();
  }
  if (ledger.verify_api_key(text)) std::abort();
  return 0;
}
