// Internal: SHA-256 (FIPS 180-4), used to verify rank files against the hashes tiktoken expects.
#pragma once

#include <string>
#include <string_view>

namespace tokenlane::detail {

// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

}  // namespace tokenlane::detail
