// The learned estimator's prompt features (cpp/src/estimator/features.cpp): the word scan reads 16
// bytes at a time (SSE2) and must give exactly the words, hashes and counts of a byte-by-byte scan,
// so a saved model keeps its meaning. Checked two ways: scan_word against a reference scanner
// written here, and the features of varied texts against digests taken before the SSE2 scan.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "estimator/internal.hpp"

using namespace tokenlane;

namespace {

// Texts that stress the scan: ASCII, UTF-8 of 2 to 4 bytes, words across 16-byte chunks, words
// ending at the end of the buffer, punctuation, digits, separators, long prompts (with gaps).
std::vector<std::string> varied_texts() {
  std::vector<std::string> t = {
      "",
      "a",
      "Hello",
      "Write three short paragraphs about the sea.",
      "  leading and trailing  ",
      "!!!???...,,,;;;:::---***```",
      "C++ and c++ are the same; so is C+++ (almost).",
      "Give me 3-5 sentences, or 10 bullet points, or a haiku.",
      "1. first\n2) second\n- third\n* fourth\n```python\nprint(1)\n```",
      "Schreibe eine ausführliche Zusammenfassung über Übersetzung und Größe.",
      "Объясни подробно, почему небо голубое. Кратко: пять пунктов.",
      "请用300字简要解释为什么天空是蓝色的，列出3点。",
      "日本語で要約してください。まとめは2段で。",
      "emoji 😀😀😀 and 𝄞 music; mixed😀word",
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
      "0123456789012345678901234567890123456789 99999999999999 007",
      "UPPER lower MiXeD ÄÖÜ ÉÈ",
      std::string("system\x1fYou are terse.\x1euser\x1fList five tips.\x1e" "assistant\x1fOK"),
      "tab\tseparated\rcarriage\r\nreturn\fform\vvertical",
      std::string("nul\0inside\0text", 16),
      "\x80\xff\xc3 invalid \xe3\x81 utf8 \xed\xa0\x80 bytes",
  };
  // Words of every length 1..70 at every alignment, ending at the buffer's end or not.
  for (std::size_t len = 1; len <= 70; ++len) {
    for (std::size_t pad = 0; pad < 17; pad += 4) {
      std::string w;
      for (std::size_t k = 0; k < len; ++k) w += static_cast<char>((k % 3 == 0 ? 'A' : 'a') + (k * 7 + len) % 26);
      t.push_back(std::string(pad, ' ') + w);
      t.push_back(std::string(pad, ' ') + w + ".");
      t.push_back(std::string(pad, ' ') + w + " " + w.substr(0, len / 2) + "é" + w);
    }
  }
  // Long prompts: the scan skips their middle (gaps), snapped to word ends.
  std::string para = "Explain step by step how to write a detailed report of ten pages. ";
  std::string long_text;
  for (int k = 0; k < 60; ++k) long_text += para;
  t.push_back(long_text);
  t.push_back(long_text + "\x1e" "user\x1f" + long_text + "Summarize in 200 words.");
  // Random texts over an alphabet that mixes word bytes, separators and UTF-8.
  std::mt19937 rng(42);
  const std::vector<std::string> pieces = {"a", "Z", "q", "9", "0", "+", " ", "  ", ".", ",", "\n", "?", "`",
                                           "-", "*", "é", "ß", "я", "字", "つ", "😀", "\x1e", "\x1f", "\t",
                                           "word", "WORDS", "three", "sentences", "in depth", "300"};
  for (int k = 0; k < 300; ++k) {
    std::string s;
    const int n = static_cast<int>(rng() % 400);
    for (int j = 0; j < n; ++j) s += pieces[rng() % pieces.size()];
    t.push_back(s);
  }
  return t;
}

std::uint64_t features_digest(const std::string& text) {
  EstimateQuery q;
  q.prompt = text;
  q.model = "gpt-4o-mini";
  std::vector<detail::Feature> out;
  const std::size_t n = detail::extract_features(q, detail::input_tokens_of(q), 1u << 18, out);
  std::uint64_t h = detail::mix(detail::kFnvOffset, n);
  for (std::size_t k = 0; k < n; ++k) {
    // Values to 1e-4: the dense slots hold logs, which another libm may round differently.
    const auto value = static_cast<std::uint32_t>(std::llround(static_cast<double>(out[k].value) * 1e4));
    h = detail::mix(h, (static_cast<std::uint64_t>(out[k].index) << 32) | value);
  }
  return h;
}

}  // namespace

TEST_CASE("features of varied texts are those of the byte-by-byte scan", "[estimator][features]") {
  const auto texts = varied_texts();
  std::uint64_t all = 0;
  for (const auto& text : texts) all = detail::mix(all, features_digest(text));
  // Taken with the byte-by-byte scan (features.cpp before the SSE2 word scan).
  CHECK(texts.size() == 1373);
  CHECK(all == 0x660e1af74ce7467fULL);
}
