// The learned estimator's prompt features (cpp/src/estimator/features.cpp): the word scan and the
// scan of a long prompt's skipped middle read 16 bytes at a time (SSE2) and must give exactly the
// words, hashes and counts of the byte-by-byte scans, so a saved model keeps its meaning. Checked
// against a reference scanner written here, the portable loops, and digests of the features of
// varied texts taken before the SSE2 scans.
#include <catch2/catch.hpp>

#include <algorithm>
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
  // Long random texts: their middles are read by the gap scan (code fences across its chunks,
  // separators, questions, UTF-8 there).
  const std::vector<std::string> long_pieces = {"The quick brown fox. ", "```", "`", "``", "?", "\n", "\x1e", "\x1f",
                                                "字", "é", "😀", " ", "word ", "Explain in detail ", "- item\n"};
  for (int k = 0; k < 40; ++k) {
    std::string s;
    const std::size_t size = 2100 + rng() % 5000;
    while (s.size() < size) s += long_pieces[rng() % long_pieces.size()];
    t.push_back(s);
  }
  return t;
}

// The reference: the word at `begin` read one byte at a time, hashed as the scan always has (bytes
// ASCII-lowercased and packed little-end first into 64-bit lanes, each full lane mixed, the tail
// lane tagged with the length).
struct ReferenceWord {
  detail::WordScan scan;
  std::uint64_t hash;
};
ReferenceWord reference_word(const std::string& text, std::size_t begin) {
  auto is_word = [](unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c >= 0x80;
  };
  ReferenceWord r{};
  r.scan.digits = true;
  std::uint64_t h = detail::kFnvOffset, lane = 0;
  unsigned shift = 0;
  std::size_t i = begin;
  while (i < text.size() && is_word(static_cast<unsigned char>(text[i]))) {
    unsigned char c = static_cast<unsigned char>(text[i++]);
    if (c >= 0x80) ++r.scan.non_ascii;
    if (c >= 0xE3 && c <= 0xED) ++r.scan.cjk;
    if (c < '0' || c > '9') r.scan.digits = false;
    if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c - 'A' + 'a');
    lane |= static_cast<std::uint64_t>(c) << shift;
    shift += 8;
    if (shift == 64) {
      h = detail::mix(h, lane);
      lane = 0;
      shift = 0;
    }
  }
  r.scan.end = i;
  const std::uint64_t len = i - begin;
  r.hash = detail::mix(h, lane ^ (len << 56));
  return r;
}

void check_word(const std::string& text, std::size_t begin) {
  const ReferenceWord want = reference_word(text, begin);
  for (const detail::WordScan& got : {detail::scan_word(text, begin), detail::scan_word_bytes(text, begin)}) {
    INFO("text " << text.size() << " bytes, word at " << begin);
    REQUIRE(got.end == want.scan.end);
    REQUIRE(got.non_ascii == want.scan.non_ascii);
    REQUIRE(got.cjk == want.scan.cjk);
    REQUIRE(got.digits == want.scan.digits);
    REQUIRE(got.hash == want.hash);
  }
  REQUIRE(detail::hash_word(std::string_view(text).substr(begin, want.scan.end - begin)) == want.hash);
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
  // Taken with the byte-by-byte scans (features.cpp at main b4583bd, before the SSE2 scans).
  CHECK(texts.size() == 1413);
  CHECK(all == 0xd1af15b3001e16a7ULL);
}

TEST_CASE("the 16-byte word scan finds the words and counts of the byte-by-byte scan", "[estimator][features]") {
  for (const auto& text : varied_texts()) {
    if (text.size() <= 256) {
      for (std::size_t begin = 0; begin <= text.size(); ++begin) check_word(text, begin);  // every start
    } else {
      for (std::size_t begin = 0; begin < text.size();) {  // every word
        check_word(text, begin);
        begin = std::max(begin + 1, reference_word(text, begin).scan.end);
      }
    }
  }
  // Every byte value in every position of a chunk, at the text's end and before a space.
  for (int c = 0; c < 256; ++c) {
    for (std::size_t at = 0; at < 20; ++at) {
      std::string text(at, 'x');
      text += static_cast<char>(c);
      check_word(text, 0);
      check_word(text + "  yy", 0);
      check_word(text, at);
    }
  }
}

TEST_CASE("the 16-byte gap scan counts what the byte-by-byte one does", "[estimator][features]") {
  std::mt19937 rng(7);
  for (const auto& text : varied_texts()) {
    for (int k = 0; k < 8; ++k) {
      const std::size_t a = text.empty() ? 0 : rng() % (text.size() + 1), b = text.empty() ? 0 : rng() % (text.size() + 1);
      const std::size_t begin = std::min(a, b), end = std::max(a, b);
      const detail::GapScan got = detail::scan_gap(text, begin, end), want = detail::scan_gap_bytes(text, begin, end);
      INFO("text " << text.size() << " bytes, gap " << begin << ".." << end);
      REQUIRE(got.newlines == want.newlines);
      REQUIRE(got.non_ascii == want.non_ascii);
      REQUIRE(got.cjk == want.cjk);
      REQUIRE(got.question == want.question);
      REQUIRE(got.code_fence == want.code_fence);
      REQUIRE(got.separator == want.separator);
    }
  }
  // A fence whose backticks straddle a chunk edge or the gap's end (the fence is read past it).
  for (std::size_t at = 0; at < 40; ++at) {
    const std::string text = std::string(at, 'x') + "```" + std::string(40, 'y');
    for (std::size_t end = 0; end <= text.size(); ++end) {
      REQUIRE(detail::scan_gap(text, 0, end).code_fence == (end > at));
      REQUIRE(detail::scan_gap_bytes(text, 0, end).code_fence == (end > at));
    }
  }
}
