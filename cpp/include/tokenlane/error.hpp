// tokenlane/error.hpp — the one exception type of the tokenlane core.
//
// Every failure in the core is a tokenlane::Error carrying an ErrorCode, so callers (and the Python
// binding, which maps each code to one Python exception class) can react to the kind of failure
// without parsing messages. Messages say what went wrong and how to fix it.
#pragma once

#include <stdexcept>
#include <string>

namespace tokenlane {

enum class ErrorCode {
  invalid_argument,  // a caller passed something malformed (bad JSON, unknown token id, ...)
  not_found,         // unknown encoding or model name
  vocab_missing,     // a rank file could not be found or read
  vocab_corrupt,     // a rank file failed its SHA-256 check or could not be parsed
  disallowed_special,  // text contains a special token the caller did not allow
  storage,           // the ledger database could not be opened, migrated, read or written
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace tokenlane
