// The encodings the tokenizer and chat targets fuzz, loaded once per process from
// $TOKENLANE_VOCAB_DIR (as the tests do). Include in one target source only: it defines
// LLVMFuzzerInitialize.
#pragma once

#include <cstdint>
#include <memory>

#include "tokenlane/tokenizer.hpp"

namespace fuzz {

// Loaded on first use; the targets call it from LLVMFuzzerInitialize so that loading (seconds under
// ASan) never counts against the per-input timeout.
inline const tokenlane::Encoding& encoding(std::uint8_t selector) {
  static const std::shared_ptr<const tokenlane::Encoding> all[] = {
      tokenlane::get_encoding("o200k_base"), tokenlane::get_encoding("cl100k_base"),
      tokenlane::get_encoding("p50k_base"), tokenlane::get_encoding("r50k_base")};
  return *all[selector % 4];
}

}  // namespace fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::encoding(0);
  return 0;
}
