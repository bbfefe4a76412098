// Counts the tokens of the text on stdin for a model:  echo "Hello" | count_tokens gpt-4o
// Rank files are read from $TOKENLANE_VOCAB_DIR.
#include <iostream>
#include <iterator>
#include <string>

#include "tokenlane/tokenizer.hpp"

int main(int argc, char** argv) {
  std::string model = argc > 1 ? argv[1] : "gpt-4o";
  std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  try {
    auto encoding = tokenlane::get_encoding(tokenlane::encoding_name_for_model(model));
    std::cout << encoding->count(text) << " tokens (" << encoding->name() << ", " << model << ")\n";
  } catch (const tokenlane::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
