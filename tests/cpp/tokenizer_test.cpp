// Exactness against the known-good vectors, special tokens, batching and error handling.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "tokenlane/approx.hpp"
#include "tokenlane/tokenizer.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/pretokenize.hpp"
#include "tokenizer/special.hpp"

using tokenlane::Error;
using tokenlane::ErrorCode;
using tokenlane::Rank;

namespace {

std::string vocab_dir() {
  const char* dir = std::getenv("TOKENLANE_VOCAB_DIR");
  REQUIRE(dir != nullptr);
  return dir;
}

std::vector<Rank> parse_ids(std::string list) {
  std::vector<Rank> ids;
  for (char& c : list) {
    if (c == '[' || c == ']' || c == ',') c = ' ';
  }
  std::istringstream in(list);
  for (Rank r; in >> r;) ids.push_back(r);
  return ids;
}

// o200k's and cl100k's splits with their 64-byte windows must cut a text exactly where the
// piece-at-a-time path does (the reference: the parity tests check it against tiktoken).
void require_windows_match_scalar(const std::string& text) {
  using namespace tokenlane::detail;
  using tokenlane::PretokenizerKind;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const Cursor t(s, text.size());
  const AsciiScan a{s, text.size()};
  for (const bool o200k : {true, false}) {
    std::vector<std::size_t> windowed, scalar;
    auto sink = [&](std::size_t, std::size_t e) { windowed.push_back(e); };
    if (o200k) split_o200k(s, text.size(), sink);
    else split_cl100k(s, text.size(), sink);
    for (std::size_t i = 0; i < text.size(); i = scalar.back())
      scalar.push_back(o200k ? scalar_piece_end<PretokenizerKind::o200k>(t, a, i)
                             : scalar_piece_end<PretokenizerKind::cl100k>(t, a, i));
    INFO((o200k ? "o200k" : "cl100k") << " text: " << text);
    REQUIRE(windowed == scalar);
  }
}

// Runs check() with every window classifier this CPU runs (the runtime dispatch takes the widest).
template <class Check>
void with_every_window_isa(Check check) {
#if defined(TOKENLANE_WINDOW_DISPATCH)
  using namespace tokenlane::detail;
  const WindowIsa best = best_window_isa();
  for (WindowIsa isa : {WindowIsa::sse2, WindowIsa::avx2, WindowIsa::avx512}) {
    if (isa > best) break;
    INFO("window classifier " << static_cast<int>(isa));
    window_isa = isa;
    check();
  }
  window_isa = best;
#else
  check();
#endif
}

}  // namespace

TEST_CASE("encodings reproduce tiktoken's known-good vectors", "[tokenizer]") {
  std::ifstream in(vocab_dir() + "/test_plans.txt");
  REQUIRE(in);
  std::string line, name, sample;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.rfind("EncodingName: ", 0) == 0) name = line.substr(14);
    if (line.rfind("Sample: ", 0) == 0) sample = line.substr(8);
    if (line.rfind("Encoded: ", 0) == 0) {
      auto enc = tokenlane::get_encoding(name);
      INFO(name << ": " << sample);
      CHECK(enc->encode_ordinary(sample) == parse_ids(line.substr(9)));
      CHECK(enc->count(sample) == parse_ids(line.substr(9)).size());
      CHECK(enc->decode_bytes(enc->encode_ordinary(sample)) == sample);
      ++checked;
    }
  }
  CHECK(checked > 300);
}

TEST_CASE("Chinese, Japanese and Russian sentences give tiktoken's ids, cold and from the cache", "[tokenizer]") {
  // tiktoken 0.14's o200k ids: merged on the first pass, from the cache on the second, and on a
  // thread whose cache saw only other text.
  const std::vector<std::pair<std::string, std::vector<Rank>>> cases = {
      {"标记化器把文本切成词元，价格按词元计算。",
       {15530, 11325, 11415, 13837, 32180, 145683, 34921, 5543, 31892, 6753, 979, 43530, 33059, 31892, 6753, 48479, 788}},
      {"東京都の天気は晴れのち曇りです。",
       {123558, 3385, 867, 25717, 5205, 123139, 9472, 3385, 15376, 6891, 229, 7297, 15121, 788}},
      {"Токенизатор режет текст на токены.", {4426, 2533, 776, 3110, 43451, 37777, 1041, 60350, 1235, 75096, 16301, 13}},
  };
  auto enc = tokenlane::get_encoding("o200k_base");
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& [text, ids] : cases) {
      INFO(text << ", pass " << pass);
      CHECK(enc->encode_ordinary(text) == ids);
    }
  }
  std::vector<std::vector<Rank>> other_thread;  // (Catch2's checks are for the main thread)
  std::thread([&] {
    enc->encode_ordinary("中文 日本語 东京 価格");  // other pieces in this thread's cache
    for (const auto& c : cases) other_thread.push_back(enc->encode_ordinary(c.first));
  }).join();
  for (std::size_t i = 0; i < cases.size(); ++i) CHECK(other_thread[i] == cases[i].second);
}

TEST_CASE("the 64-byte windows split text exactly like the piece-at-a-time path", "[tokenizer]") {
  // The window rules restate the regex over ASCII, two-byte Latin-1/Cyrillic letters and multi-byte
  // punctuation; the scalar path is the reference (it is checked against tiktoken by the parity
  // tests). Random text over the bytes and characters the rules treat specially, including broken
  // UTF-8, and (last atoms) characters of other classes next to multi-byte punctuation.
  using namespace tokenlane::detail;
  const char* const atoms[] = {"a", "s", "t", "l", "v", "e", "r", "m", "d", "A", "S", "T", "L", " ", " ", "\t",
                               "\n", "\r", "\v", "\f", ".", ",", "/", "'", "'", "0", "1", "2", "-", "\"",
                               "\x1c", "\x7f", "\xc3\xa9", "\xc2\xa0", "\xe2\x80\x99", "\xc5\xbf", "  ", "\n\n",
                               "\r\n", "The", "it", "\xc3\x84", "\xc3\x97", "\xc3\xb7", "\xc3\x9f", "\xc3\xbf",
                               "\xd0\x80", "\xd0\xaf", "\xd0\xb0", "\xd1\x91", "\xd1\x9f", "\xd1\xa3", "\xd2\x82",
                               "\xc3", "\x80", "\xc2\xbb", "\xc2\xab", "\xe2\x80\x9e", "\xe2\x80\x9c", "\xc2\xad",
                               "\xc2\x85", "\xc2\xb2", "\xc2\xaa", "\xc2\xb5", "\xcc\x81", "\xe3\x80\x81",
                               "\xef\xbf\xbd", "\xf0\x9f\x98\x80", "\xe2\x80\x8b", "\xe2\x80\xa8", "\xe2\x80",
                               "\xd0\xb0", "\xc2\xbb",
                               // Chinese, Japanese, Korean: the three-byte letters the windows take (U+4E00,
                               // U+6587, U+9FFF, kana, U+30FC, U+AC00, U+D77F, U+C5B4) beside ones they
                               // leave to the scalar path (U+D7A3, U+ABFF, U+3400, U+4DC0, U+3040, U+3097,
                               // U+3099, U+309B, U+30A0, U+30FB, U+3000, U+FF21, U+FF41, cut characters),
                               // CJK punctuation and ASCII letters.
                               "a", "B", "s", "'", " ", "\xe4\xb8\x80", "\xe6\x96\x87", "\xe9\xbf\xbf",
                               "\xe3\x81\x81", "\xe3\x82\x9f", "\xe3\x83\xbc", "\xe3\x83\xbf",
                               "\xe3\x82\xa1", "\xe3\x90\x80", "\xe4\xb7\x80", "\xe3\x81\x80",
                               "\xe3\x82\x97", "\xe3\x82\x99", "\xe3\x82\x9b", "\xe3\x82\xa0",
                               "\xe3\x83\xbb", "\xe3\x80\x80", "\xe3\x80\x82", "\xef\xbc\x8c",
                               "\xea\xb0\x80", "\xed\x9d\xbf", "\xed\x9e\xa3", "\xea\xaf\xbf", "\xec\x96\xb4",
                               "\xef\xbc\xa1", "\xef\xbd\x81", "\xe4\xb8", "\xe3\x83", "Z", "c", "\n",
                               "\xe6\x96\x87", "\xe3\x81\x81", "\xc3\x84", "\xd0\xb0",
                               // The rest of Latin-1 (U+0080-U+00BF, × ÷) beside ASCII digits, letters,
                               // blanks and newlines: NBSP, NEL, ª º µ, ² ³ ¹ ¼ ½ ¾, controls and signs.
                               "7", "42", "A", "b", " ", "\t", "\n", "'", "\xc2\xa0", "\xc2\x85", "\xc2\xaa",
                               "\xc2\xba", "\xc2\xb5", "\xc2\xb2", "\xc2\xb3", "\xc2\xb9", "\xc2\xbc",
                               "\xc2\xbd", "\xc2\xbe", "\xc2\x80", "\xc2\x9f", "\xc2\xa1", "\xc2\xad",
                               "\xc2\xbf", "\xc3\x97", "\xc3\xb7", "\xc3\xa9", "\xc3\x89", "\xc2", "5",
                               "\xc2\xa0\xc2\xa0", "1\xc2\xbd", "\xc2\xbd" "1", "9"};
  const std::size_t n_atoms = sizeof atoms / sizeof atoms[0];
  with_every_window_isa([&] {
    std::mt19937_64 rng(20261205);
    for (int round = 0; round < 20000; ++round) {
      // A random slice of the atoms, so that some texts are all letters, some all spaces or digits.
      const std::size_t width = 3 + rng() % (n_atoms - 3), first = rng() % (n_atoms - width + 1);
      std::string text;
      for (std::size_t k = rng() % 300; k > 0; --k) text += atoms[first + rng() % width];
      require_windows_match_scalar(text);
    }
  });
}

TEST_CASE("the windows end words longer than a window exactly like the piece-at-a-time path", "[tokenizer]") {
  // Words of 10-70 letters (kanji, kana, Hangul, lower-case Latin and Cyrillic; upper-case letters
  // now and then, where the regex backtracks) between separators: punctuation, spaces, numbers,
  // contractions, marks, letters the masks leave, invalid bytes.
  const char* const both[] = {"\xe4\xb8\xad", "\xe6\x96\x87", "\xe3\x81\xae", "\xe3\x82\xab",
                              "\xe3\x83\xbc", "\xea\xb0\x80", "\xc2\xaa"};
  const char* const lower[] = {"a", "z", "\xc3\xa9", "\xc2\xb5", "\xd0\xb0"};
  const char* const upper[] = {"A", "Q", "\xc3\x89", "\xd0\x94"};
  const char* const separators[] = {" ", "\xe3\x80\x81", "\xe3\x80\x82", "'s", "'", "1", "\n", "!",
                                    "\xcc\x81", "\xe3\x80\x80", "\xe3", "\xe3\x90\x80", "\xc2\xbd", "\xc2\xa0",
                                    "\xef\xbc\x8c", "-"};
  with_every_window_isa([&] {
    std::mt19937_64 rng(20261207);
    for (int round = 0; round < 4000; ++round) {
      std::string text;
      // One letter in upper_odds is upper-case, one in lower_odds lower-case, the others of both classes.
      const unsigned upper_odds = 2 + rng() % 40, lower_odds = 2 + rng() % 100;
      for (std::size_t words = 1 + rng() % 8; words > 0; --words) {
        for (std::size_t k = 10 + rng() % 60; k > 0; --k) {
          if (rng() % upper_odds == 0) text += upper[rng() % 4];
          else if (rng() % lower_odds == 0) text += lower[rng() % 5];
          else text += both[rng() % 7];
        }
        text += separators[rng() % 16];
      }
      require_windows_match_scalar(text);
    }
  });
}

TEST_CASE("the three-byte letters o200k's windows take are letters of both case classes", "[tokenizer]") {
  // Every character of three bytes, alone at the start of a window: the window may take it as a
  // letter of both classes only if the class table (tiktoken's Unicode version) says it is one and
  // no mark (marks are also punctuation in o200k's pattern).
  using namespace tokenlane::detail;
  std::size_t taken = 0;
  for (std::uint32_t cp = 0x800; cp < 0x10000; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;
    unsigned char w[64];
    std::memset(w, ' ', sizeof w);
    w[0] = static_cast<unsigned char>(0xE0 | cp >> 12);
    w[1] = static_cast<unsigned char>(0x80 | ((cp >> 6) & 0x3F));
    w[2] = static_cast<unsigned char>(0x80 | (cp & 0x3F));
    AsciiMasks m{};
    m.high = 7;
    add_three_byte_letters(m, w);
    if (m.both == 0) {
      REQUIRE(m.high == 7);
      continue;
    }
    INFO("U+" << std::hex << cp);
    REQUIRE(m.both == 7);
    REQUIRE(m.high == 0);
    const std::uint8_t cls = class_of(cp);
    REQUIRE((cls & (kLetter | kUpperish | kLowerish | kMark)) == (kLetter | kUpperish | kLowerish));
    ++taken;
  }
  // (kana less U+3097-U+309C, U+30A0, U+30FB)
  CHECK(taken == (0x9FFF - 0x4E00 + 1) + (0xD77F - 0xAC00 + 1) + (0x30FF - 0x3041 + 1) - 8);
}

TEST_CASE("the rest of Latin-1 o200k's windows take is classified as the class table says", "[tokenizer]") {
  // Every character of two bytes, alone at the start of a window: what add_latin1_supplement makes
  // of it must be its class (tiktoken's Unicode version); characters it leaves stay `high`.
  using namespace tokenlane::detail;
  std::size_t taken = 0;
  for (std::uint32_t cp = 0x80; cp < 0x800; ++cp) {
    unsigned char w[64];
    std::memset(w, 'x', sizeof w);
    w[0] = static_cast<unsigned char>(0xC0 | cp >> 6);
    w[1] = static_cast<unsigned char>(0x80 | (cp & 0x3F));
    AsciiMasks m{};
    m.high = 3;
    add_latin1_supplement(m, w);
    INFO("U+" << std::hex << cp);
    const std::uint8_t cls = class_of(cp);
    if (m.high == 3) {
      CHECK((m.blank | m.both | m.lower | m.number2 | m.tail2 | m.cont) == 0);
      // Left only where the letters' masks (classify64) take it: the other Latin-1 letters.
      CHECK(((cp >= 0xC0 && cp <= 0xFF && cp != 0xD7 && cp != 0xF7) || cp > 0xFF));
      continue;
    }
    ++taken;
    REQUIRE(m.high == 0);
    if (m.both) {
      REQUIRE(m.both == 3);
      REQUIRE((cls & (kLetter | kUpperish | kLowerish | kMark)) == (kLetter | kUpperish | kLowerish));
    } else if (m.lower) {
      REQUIRE(m.lower == 3);
      REQUIRE((cls & (kLetter | kUpperish | kLowerish | kMark)) == (kLetter | kLowerish));
    } else if (m.blank) {
      REQUIRE((m.blank == 3 && m.tail2 == 2));
      REQUIRE(cls == kSpace);
      REQUIRE(cp != '\r');
    } else if (m.number2) {
      REQUIRE((m.number2 == 3 && m.tail2 == 2));
      REQUIRE(cls == kNumber);
    } else {
      REQUIRE(m.cont == 2);  // punctuation: [^\s\p{L}\p{N}] and not a mark
      REQUIRE((cls & (kLetter | kNumber | kSpace | kMark)) == 0);
    }
  }
  CHECK(taken == 0x40 + 2);  // U+0080-U+00BF, × and ÷
}

#if defined(TOKENLANE_WINDOW_DISPATCH)
TEST_CASE("every window classifier this CPU runs gives the baseline's masks", "[tokenizer]") {
  // The runtime dispatch picks the widest; the others must agree with the baseline byte for byte.
  using namespace tokenlane::detail;
  std::mt19937_64 rng(7);
  const unsigned char specials[] = {' ', '\n', '\r', '\t', '\'', '/', '0', '9', 'a', 'z', 'A', 'Z', 0x80, 0x97, 0x9e,
                                    0x9f, 0xaf, 0xb0, 0xb7, 0xbf, 0xc0, 0xc2, 0xc3, 0xd0, 0xd1, 0xe2, 0xff};
  for (int round = 0; round < 20000; ++round) {
    unsigned char w[64];
    for (unsigned char& b : w) b = rng() % 3 ? specials[rng() % sizeof specials] : static_cast<unsigned char>(rng());
    const AsciiMasks base = classify64_baseline(w);
    auto same = [&](const AsciiMasks& m) {
      return std::memcmp(&m, &base, sizeof m) == 0;
    };
    if (best_window_isa() >= WindowIsa::avx2) REQUIRE(same(classify64_avx2(w)));
    if (best_window_isa() >= WindowIsa::avx512) REQUIRE(same(classify64_avx512(w)));
  }
}
#endif

namespace {

// The pieces of a text as the pre-tokenizer of `kind` cuts them for a plain sink (one call per piece,
// no digit pieces told apart).
std::vector<std::string> plain_pieces(tokenlane::PretokenizerKind kind, const std::string& text) {
  using namespace tokenlane::detail;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::vector<std::string> pieces;
  auto sink = [&](std::size_t b, std::size_t e) { pieces.push_back(text.substr(b, e - b)); };
  if (kind == tokenlane::PretokenizerKind::o200k) split_o200k(s, text.size(), sink);
  else split_cl100k(s, text.size(), sink);
  return pieces;
}

// tiktoken's tokens for a text, piece by piece: a piece that is one token is that token, else the
// general merge (no piece cache, no digit table).
std::vector<Rank> reference_tokens(const tokenlane::detail::Vocabulary& vocab, tokenlane::PretokenizerKind kind,
                                   const std::string& text) {
  std::vector<Rank> ids;
  for (const std::string& piece : plain_pieces(kind, text)) {
    const Rank whole = vocab.find_rank(reinterpret_cast<const unsigned char*>(piece.data()), piece.size());
    if (whole != tokenlane::detail::kNoRank) {
      ids.push_back(whole);
    } else {
      for (Rank r : vocab.general_merge(piece)) ids.push_back(r);
    }
  }
  return ids;
}

tokenlane::detail::Vocabulary vocabulary_of(const tokenlane::Encoding& enc) {
  std::vector<std::pair<std::string, Rank>> tokens;
  for (const auto& [bytes, rank] : enc.ordinary_tokens()) tokens.emplace_back(std::string(bytes), rank);
  return tokenlane::detail::Vocabulary::from_tokens(enc.name(), std::move(tokens), {});
}

// Digit runs of every length 1-50 (and some up to 300, past a 64-byte window of digits only), with
// leading zeros, amid ASCII text, next to non-ASCII numerals (Arabic-Indic, superscript, fractions,
// Devanagari, Roman, full-width) and letters, at the start and end of the text and inside windows.
std::vector<std::string> digit_texts() {
  const std::vector<std::string> around = {"",         "a",  " ",        "x=",        "\n",      "-",
                                           "\xd9\xa3", "\xc2\xb2",     "\xc2\xbd", "\xe0\xa5\xa7",
                                           "\xe2\x85\xab", "\xef\xbc\x91", "\xc3\xa9", "\xd9\xa3\xd9\xa4",
                                           " \xd9\xa3", "'s", "Ab"};
  const std::string pad = "Quarterly revenue rose to USD, while the count of units held steady at about ";
  std::mt19937_64 rng(1110);
  std::vector<std::size_t> lengths;
  for (std::size_t n = 1; n <= 50; ++n) lengths.push_back(n);
  for (std::size_t n : {61u, 62u, 63u, 64u, 65u, 66u, 67u, 100u, 127u, 128u, 129u, 191u, 192u, 193u, 300u}) lengths.push_back(n);
  std::vector<std::string> texts;
  for (std::size_t n : lengths) {
    std::string run;
    for (std::size_t k = 0; k < n; ++k) run += static_cast<char>('0' + rng() % 10);
    std::string zeros = run;
    for (std::size_t k = 0; k < n && k < 4; ++k) zeros[k] = '0';
    for (const std::string& before : around) {
      for (const std::string& after : around) {
        for (const std::string* digits : {&run, &zeros}) {
          texts.push_back(before + *digits + after);
          texts.push_back(pad + before + *digits + after + pad);
          texts.push_back(pad.substr(0, rng() % pad.size()) + before + *digits + after + " 12 " + *digits + pad);
        }
      }
    }
  }
  return texts;
}

}  // namespace

TEST_CASE("digit pieces are cut and told apart like the plain pieces", "[tokenizer]") {
  // A sink that wants digits gets them through digits() (one piece of 1-3 ASCII digits) and
  // digit_run() (pieces of three); expanded, they are exactly the plain sink's pieces.
  using namespace tokenlane::detail;
  struct Recorder {
    const std::string& text;
    std::vector<std::string> pieces;
    std::size_t digit_calls = 0;
    bool bad = false;  // a digit piece that is not 1-3 ASCII digits, or an empty run
    void operator()(std::size_t b, std::size_t e) { pieces.push_back(text.substr(b, e - b)); }
    void digits(std::size_t b, std::size_t e) {
      bad |= e <= b || e - b > 3;
      for (std::size_t k = b; k < e; ++k) bad |= text[k] < '0' || text[k] > '9';
      pieces.push_back(text.substr(b, e - b));
      ++digit_calls;
    }
    void digit_run(std::size_t b, std::size_t e) {
      bad |= e <= b;
      for (; b < e; b += 3) digits(b, std::min(b + 3, e));
    }
  };
  static_assert(wants_digits<Recorder>, "the recorder wants digits");
  for (auto kind : {tokenlane::PretokenizerKind::cl100k, tokenlane::PretokenizerKind::o200k}) {
    std::size_t digit_calls = 0;
    for (const std::string& text : digit_texts()) {
      Recorder r{text, {}};
      const auto* s = reinterpret_cast<const unsigned char*>(text.data());
      if (kind == tokenlane::PretokenizerKind::o200k) split_o200k(s, text.size(), r);
      else split_cl100k(s, text.size(), r);
      INFO("text: " << text);
      REQUIRE_FALSE(r.bad);
      REQUIRE(r.pieces == plain_pieces(kind, text));
      digit_calls += r.digit_calls;
    }
    CHECK(digit_calls > 100000);  // the digit paths did run
  }
}

TEST_CASE("digit pieces take the general path's tokens from the digit table", "[tokenizer]") {
  for (const char* name : {"cl100k_base", "o200k_base"}) {
    auto enc = tokenlane::get_encoding(name);
    const auto vocab = vocabulary_of(*enc);
    CHECK(vocab.digits_are_tokens());
    for (const std::string& text : digit_texts()) {
      INFO(name << ": " << text);
      const std::vector<Rank> expected = reference_tokens(vocab, enc->pretokenizer(), text);
      REQUIRE(enc->encode_ordinary(text) == expected);
      REQUIRE(enc->count(text) == expected.size());
    }
    // One long run of digits (the benchmark's), in one call.
    std::mt19937_64 rng(3);
    std::string digits;
    for (int k = 0; k < 100000; ++k) digits += static_cast<char>('0' + rng() % 10);
    const std::vector<Rank> expected = reference_tokens(vocab, enc->pretokenizer(), digits);
    CHECK(enc->encode_ordinary(digits) == expected);
    CHECK(enc->count(digits) == expected.size());
  }
}

TEST_CASE("a vocabulary without every digit string merges digit pieces as before", "[tokenizer]") {
  // Custom vocabularies (Encoding::from_tokens) need not have every 1-3 digit string as a token: then
  // there is no digit table and digit pieces go through the general path.
  auto base = tokenlane::get_encoding("cl100k_base");
  std::vector<std::pair<std::string, Rank>> tokens;
  for (const auto& [bytes, rank] : base->ordinary_tokens()) {
    if (bytes != "007" && bytes != "42") tokens.emplace_back(std::string(bytes), rank);
  }
  tokenlane::EncodingSpec spec = tokenlane::encoding_spec("cl100k_base");
  spec.name = "cl100k_without_007";
  spec.special_tokens.clear();
  auto enc = tokenlane::Encoding::from_tokens(spec, tokens);
  const auto vocab = tokenlane::detail::Vocabulary::from_tokens(spec.name, tokens, {});
  CHECK_FALSE(vocab.digits_are_tokens());
  for (const std::string& text : {std::string("007 4242 1007 00742 x42y"), std::string(200, '7') + "0074200"}) {
    const std::vector<Rank> expected = reference_tokens(vocab, enc->pretokenizer(), text);
    CHECK(enc->encode_ordinary(text) == expected);
    CHECK(enc->count(text) == expected.size());
    CHECK(enc->decode_bytes(expected) == text);
  }
}

TEST_CASE("the special-token matcher finds the longest special at the first place, shared prefix or not",
          "[tokenizer]") {
  using tokenlane::detail::SpecialMatcher;
  const SpecialMatcher openai({"<|endoftext|>", "<|endofprompt|>", "<|fim_prefix|>", "<|end|>"});
  CHECK(openai.find("a < b, <| x <|end").first == std::string_view::npos);
  CHECK(openai.find("x<<|endofprompt|>") == std::pair<std::size_t, std::string_view>{2, "<|endofprompt|>"});
  CHECK(openai.find("<|end|><|endoftext|>").second == "<|end|>");
  const SpecialMatcher mixed({"<|im_start|>", "[SEP]", "<s>", "<s>x"});  // no shared prefix
  CHECK(mixed.find("a [SEP] <s>") == std::pair<std::size_t, std::string_view>{2, "[SEP]"});
  CHECK(mixed.find("<|im <s>").second == "<s>");
  CHECK(mixed.find("<s>x").second == "<s>x");  // the longest at a place
  CHECK(mixed.find("[SE").first == std::string_view::npos);
  const SpecialMatcher one_byte({"<s>", "</s>"});  // a one-byte shared prefix
  CHECK(one_byte.find("a < b </s>") == std::pair<std::size_t, std::string_view>{6, "</s>"});
}

TEST_CASE("special tokens are text unless allowed", "[tokenizer]") {
  auto enc = tokenlane::get_encoding("cl100k_base");
  const std::string text = "hi <|endoftext|> there";
  SECTION("ordinary encoding splits the special's characters") {
    auto ids = enc->encode_ordinary(text);
    CHECK(std::find(ids.begin(), ids.end(), 100257u) == ids.end());
    CHECK(enc->decode_bytes(ids) == text);
  }
  SECTION("allowed specials become their id") {
    auto ids = enc->encode(text, {"<|endoftext|>"});
    CHECK(std::count(ids.begin(), ids.end(), 100257u) == 1);
    CHECK(enc->count(text, {"<|endoftext|>"}) == ids.size());
    CHECK(enc->decode_bytes(ids) == text);
  }
  SECTION("disallowed specials are reported with their position") {
    REQUIRE_THROWS_AS(enc->check_disallowed_special(text, enc->special_token_strings()), Error);
    try {
      enc->check_disallowed_special(text, enc->special_token_strings());
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::disallowed_special);
      CHECK(std::string(e.what()).find("<|endoftext|>") != std::string::npos);
    }
    CHECK_NOTHROW(enc->check_disallowed_special("plain text", enc->special_token_strings()));
  }
  SECTION("an unknown special is an error, not silently ignored") {
    CHECK_THROWS_AS(enc->encode(text, {"<|nope|>"}), Error);
  }
  SECTION("single tokens round-trip, specials included") {
    CHECK(enc->encode_single_token("<|endoftext|>") == 100257);
    CHECK(enc->encode_single_token("hello") == 15339);
    CHECK(enc->encode_single_token("not one token at all") == -1);
  }
}

TEST_CASE("batches equal one-by-one results on every thread count", "[tokenizer]") {
  auto enc = tokenlane::get_encoding("o200k_base");
  std::vector<std::string> owned;
  for (int i = 0; i < 50; ++i) owned.push_back("Document " + std::to_string(i) + std::string(i * 7, 'x') + " déjà vu 東京 ");
  std::vector<std::string_view> texts(owned.begin(), owned.end());
  // (Uneven blocks, and more threads than texts: threads with an empty block only help the others.)
  for (unsigned threads : {1u, 2u, 3u, 7u, 64u, 0u}) {
    INFO("threads " << threads);
    auto batch = enc->encode_batch(texts, {}, threads);
    auto counts = enc->count_batch(texts, {}, threads);
    REQUIRE(batch.size() == texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      CHECK(batch[i] == enc->encode_ordinary(texts[i]));
      CHECK(counts[i] == batch[i].size());
    }
  }
}

TEST_CASE("batches deliver every result once, outside leave/enter, and stop on an error", "[tokenizer]") {
  auto enc = tokenlane::get_encoding("cl100k_base");
  std::vector<std::string> owned;
  for (int i = 0; i < 200; ++i) owned.push_back(std::string(i % 13 * 300, 'a' + i % 26) + " doc " + std::to_string(i) + " ñ 東");
  std::vector<std::string_view> texts(owned.begin(), owned.end());
  for (unsigned threads : {1u, 2u, 3u, 8u}) {
    INFO("threads " << threads);
    std::vector<int> times(texts.size());
    std::size_t leaves = 0, enters = 0;
    bool left = false, delivered_outside = true, nested = false;
    enc->encode_batch_each(
        texts, {}, threads,
        [&](std::size_t i, std::vector<Rank>& ids) {
          ++times.at(i);
          delivered_outside = delivered_outside && !left;
          CHECK(ids == enc->encode_ordinary(texts[i]));
        },
        [&] { nested = nested || left; left = true; ++leaves; },
        [&] { nested = nested || !left; left = false; ++enters; });
    CHECK(std::count(times.begin(), times.end(), 1) == static_cast<std::ptrdiff_t>(texts.size()));
    CHECK(delivered_outside);
    CHECK_FALSE(nested);
    CHECK(leaves == enters);
    CHECK_FALSE(left);
    // An exception from deliver stops the batch and comes out (the workers are joined first).
    std::size_t seen = 0;
    CHECK_THROWS_AS(enc->encode_batch_each(
                        texts, {}, threads,
                        [&](std::size_t, std::vector<Rank>&) {
                          if (++seen == 18) throw std::runtime_error("stop");
                        },
                        [] {}, [] {}),
                    std::runtime_error);
    CHECK(seen == 18);
  }
  std::size_t calls = 0;
  enc->encode_batch_each({}, {}, 2, [&](std::size_t, std::vector<Rank>&) { ++calls; }, [] {}, [] {});
  CHECK(calls == 0);
}

TEST_CASE("the per-thread piece cache gives the same ids when it grows, wipes and is cold", "[tokenizer]") {
  // More distinct multi-token pieces than the cache holds (it grows to 2^18 slots, then starts over),
  // some longer than 8 bytes and some long enough to be merged without the cache.
  std::string text;
  for (unsigned i = 0; i < 300000; ++i) {
    text += ' ';
    for (unsigned k = i; k != 0 || text.back() == ' '; k /= 26) text += static_cast<char>('a' + k % 26);
    if (i % 7 == 0) text += "zqxjkvbwy";
    if (i % 1001 == 0) text += std::string(130, 'q');
  }
  for (const char* name : {"cl100k_base", "o200k_base"}) {
    auto enc = tokenlane::get_encoding(name);
    const std::vector<Rank> warm_first = enc->encode_ordinary(text);
    const std::vector<Rank> warm_again = enc->encode_ordinary(text);
    std::vector<Rank> cold;
    std::thread([&] { cold = enc->encode_ordinary(text); }).join();  // a new thread: an empty cache
    CHECK(warm_first == warm_again);
    CHECK(warm_first == cold);
    CHECK(enc->count(text) == cold.size());
    CHECK(enc->decode_bytes(cold) == text);
  }
}

TEST_CASE("the piece cache drops the pieces an epoch did not use and shrinks, exactly", "[tokenizer]") {
  using tokenlane::detail::PieceCache;
  using tokenlane::detail::cache_hash;
  using tokenlane::detail::head_bytes;
  // Distinct pieces of 2..45 bytes with one to three tokens (inline, in the arena, longer than 8 bytes).
  auto piece = [](unsigned i) {
    return "p" + std::to_string(i) + std::string(i % 40, static_cast<char>('a' + i % 26));  // unique
  };
  auto tokens_of = [](unsigned i) { return std::vector<Rank>{i, i + 1, i + 2}; };
  auto count_of = [](unsigned i) { return 1u + i % 3; };
  PieceCache cache;
  auto find = [&](unsigned i, std::uint32_t& count) {
    const std::string p = piece(i);
    const auto* b = reinterpret_cast<const unsigned char*>(p.data());
    const std::uint64_t head = head_bytes(b, p.size());
    return cache.find(b, p.size(), head, cache_hash(b, p.size(), head), count);
  };
  auto insert = [&](unsigned i) {
    const std::string p = piece(i);
    const auto* b = reinterpret_cast<const unsigned char*>(p.data());
    const std::uint64_t head = head_bytes(b, p.size());
    cache.insert(b, p.size(), head, cache_hash(b, p.size(), head), tokens_of(i).data(), count_of(i));
  };
  auto holds = [&](unsigned i) {
    std::uint32_t count = 0;
    const Rank* t = find(i, count);
    std::vector<Rank> want = tokens_of(i);
    want.resize(count_of(i));
    return t != nullptr && count == count_of(i) && std::vector<Rank>(t, t + count) == want;
  };
  const unsigned kMany = 40000, kMore = 10000, kFew = 1000;  // grows the table to 2^16 slots
  const std::size_t kEpoch = std::size_t{1} << 30;               // longer than any epoch
  for (unsigned i = 0; i < kMany; ++i) insert(i);
  cache.tick(kEpoch);  // an epoch of many new pieces: the next two stamp the pieces they use
  for (unsigned i = 0; i < kFew; ++i) REQUIRE(holds(i));
  cache.tick(kEpoch);
  for (unsigned i = 0; i < kMany; ++i) REQUIRE(holds(i));
  cache.tick(kEpoch);  // every piece used in the two: nothing dropped
  for (unsigned i = 0; i < kFew; ++i) REQUIRE(holds(i));
  cache.tick(kEpoch);  // no new pieces in the last epoch: nothing tracked, nothing dropped
  for (unsigned i = 0; i < kMany; ++i) REQUIRE(holds(i));
  for (unsigned i = kMany; i < kMany + kMore; ++i) insert(i);
  cache.tick(kEpoch);  // many new pieces: the next two epochs are tracked
  for (unsigned i = 0; i < kFew; ++i) REQUIRE(holds(i));
  cache.tick(kEpoch);
  for (unsigned i = 0; i < kFew; ++i) REQUIRE(holds(i));
  cache.tick(kEpoch);  // only kFew used in them: the others go, the table shrinks
  for (unsigned i = 0; i < kFew; ++i) CHECK(holds(i));
  std::uint32_t count = 0;
  for (unsigned i = kFew; i < kMany + kMore; ++i) REQUIRE(find(i, count) == nullptr);
  // Inserts after the shrink land in the smaller table and grow it again.
  for (unsigned i = kFew; i < kMany + kMore; ++i) insert(i);
  for (unsigned i = 0; i < kMany + kMore; ++i) REQUIRE(holds(i));
}

TEST_CASE("the piece cache keeps the pieces of documents that come back after more than an epoch", "[tokenizer]") {
  using tokenlane::detail::PieceCache;
  using tokenlane::detail::cache_hash;
  using tokenlane::detail::head_bytes;
  // Two halves of a corpus in turn, each with pieces of its own (passes over many documents), each
  // longer than an epoch (32 bytes per slot): one tracked epoch sees one half only, and dropping the
  // other half's pieces would make the next half merge them again, pass after pass.
  const Rank token = 7;
  PieceCache cache;
  auto touch = [&](unsigned i) {  // looks the piece up; a miss merges (here: inserts) it again
    const std::string p = "piece-" + std::to_string(i);
    const auto* b = reinterpret_cast<const unsigned char*>(p.data());
    const std::uint64_t head = head_bytes(b, p.size());
    const std::uint64_t h = cache_hash(b, p.size(), head);
    std::uint32_t count = 0;
    if (cache.find(b, p.size(), head, h, count) != nullptr) return 0;
    cache.insert(b, p.size(), head, h, &token, 1);
    return 1;
  };
  const unsigned kHalf = 10000;                      // 20,000 pieces: 32,768 slots, 1 MiB epochs
  const std::size_t kHalfBytes = std::size_t{1100} << 10;  // each half ends an epoch
  std::vector<unsigned> misses;
  for (int pass = 0; pass < 12; ++pass) {
    unsigned missed = 0;
    for (unsigned half = 0; half < 2; ++half) {
      cache.tick(kHalfBytes);
      for (unsigned i = half * kHalf; i < (half + 1) * kHalf; ++i) missed += touch(i);
    }
    misses.push_back(missed);
  }
  CHECK(misses.front() == 2 * kHalf);
  for (int pass = 1; pass < 12; ++pass) CHECK(misses[pass] == 0);  // no piece dropped
}

TEST_CASE("encoding gives the same ids after the piece cache shrank", "[tokenizer]") {
  // A text of many distinct pieces grows the cache; then a short text repeated for several epochs
  // makes it drop them and shrink; then the first text again.
  std::string many;
  for (unsigned i = 0; i < 60000; ++i) {
    many += ' ';
    for (unsigned k = i; k != 0 || many.back() == ' '; k /= 26) many += static_cast<char>('a' + k % 26);
    if (i % 5 == 0) many += "zqxjkvbwy";
  }
  const std::string few = "The quick brown fox jumps over the lazy dog, über Straße und Brücke. ";
  for (const char* name : {"cl100k_base", "o200k_base"}) {
    auto enc = tokenlane::get_encoding(name);
    std::vector<Rank> many_cold, few_cold, many_again;
    std::vector<std::vector<Rank>> few_warm;
    std::thread([&] {
      many_cold = enc->encode_ordinary(many);
      few_cold = enc->encode_ordinary(few);
      for (int k = 0; k < 200000; ++k) {
        std::vector<Rank> ids = enc->encode_ordinary(few);
        if (ids != few_cold) few_warm.push_back(std::move(ids));
      }
      many_again = enc->encode_ordinary(many);
    }).join();
    CHECK(few_warm.empty());
    CHECK(many_again == many_cold);
    CHECK(enc->decode_bytes(many_cold) == many);
  }
}

TEST_CASE("long pieces and invalid UTF-8 round-trip", "[tokenizer]") {
  auto enc = tokenlane::get_encoding("cl100k_base");
  for (std::size_t n : {1u, 127u, 128u, 129u, 5000u, 100000u}) {
    for (char c : {'x', ' ', '7', '\n'}) {
      std::string text(n, c);
      auto ids = enc->encode_ordinary(text);
      CHECK(enc->decode_bytes(ids) == text);
      CHECK(ids.size() <= n);
    }
  }
  std::string bad = "ok \xff\xfe \xe2\x82 end \xc3";
  CHECK(enc->decode_bytes(enc->encode_ordinary(bad)) == bad);
  CHECK_THROWS_AS(enc->token_bytes(999999999u), Error);
}

TEST_CASE("pieces of a few runs of one byte merge exactly like the general merge", "[tokenizer]") {
  // merge_runs does many of tiktoken's merges per step; it must give the general merge's tokens for
  // every run length, and it should never need to give up on the real vocabularies.
  auto expand = [](const std::vector<tokenlane::detail::TokenRun>& runs) {
    std::vector<Rank> out;
    for (const auto& run : runs) out.insert(out.end(), run.count, run.token);
    return out;
  };
  for (const char* name : {"cl100k_base", "o200k_base"}) {
    std::ifstream in(vocab_dir() + "/" + name + ".tiktoken", std::ios::binary);
    REQUIRE(in);
    const std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto vocab = tokenlane::detail::Vocabulary::parse(name, contents, {});
    auto check = [&](const std::string& piece) {
      INFO(name << ": " << piece.size() << " bytes starting " << int(static_cast<unsigned char>(piece[0])));
      const auto runs = vocab.run_merge(piece);
      REQUIRE(!runs.empty());
      CHECK(expand(runs) == vocab.general_merge(piece));
    };
    for (int b = 0; b < 256; ++b) {
      for (std::size_t n = 1; n <= 300; ++n) check(std::string(n, static_cast<char>(b)));
    }
    for (char c : {'x', ' ', '-', '=', '\n', '\t', '.', '*', '#', '0', '_', '~'}) {
      for (std::size_t n = 301; n <= 3000; n += 7) check(std::string(n, c));
      check(std::string(1 << 20, c));
    }
    // Two and three runs: a word with its leading blank, blanks or dashes before newlines.
    for (std::size_t n = 1; n <= 1200; n += 3) {
      check(" " + std::string(n, 'x'));
      check("$" + std::string(n, 'a'));
      check(std::string(n, ' ') + "\n");
      check(std::string(n, ' ') + "\n\n" + std::string(n % 5, ' '));
      check(" " + std::string(n, '-') + "\r\n");
      check(std::string(n, '=') + std::string(n / 2 + 1, '-'));
    }
  }
}

TEST_CASE("the run-length merge steps one merge at a time when a pair made on the way ranks lower", "[tokenizer]") {
  // No such vocabulary is among OpenAI's, but custom ones (Encoding::from_tokens) may rank a longer
  // token first: each case breaks one of the conditions under which a run merges in one step.
  auto expand = [](const std::vector<tokenlane::detail::TokenRun>& runs) {
    std::vector<Rank> out;
    for (const auto& run : runs) out.insert(out.end(), run.count, run.token);
    return out;
  };
  const std::vector<std::vector<std::string>> extra_tokens = {
      {"aaa", "aa"},          // (aa, a) ranks below (a, a)
      {"aaaa", "aa"},         // (aa, aa) ranks below (a, a)
      {"baa", "aa"},          // (b, aa), the pair before the run, ranks below (a, a)
      {"aa", "aaaa", "aaa"},  // (aa, a) ranks above (aa, aa): no step is ever held back
  };
  for (const auto& extra : extra_tokens) {
    std::vector<std::pair<std::string, Rank>> tokens;
    for (int b = 0; b < 256; ++b) tokens.emplace_back(std::string(1, static_cast<char>(b)), static_cast<Rank>(b));
    for (const std::string& t : extra) tokens.emplace_back(t, static_cast<Rank>(tokens.size()));
    const auto vocab = tokenlane::detail::Vocabulary::from_tokens("custom", tokens, {});
    for (std::size_t n = 1; n <= 200; ++n) {
      for (const std::string& piece : {std::string(n, 'a'), "b" + std::string(n, 'a')}) {
        INFO(extra[0] << ": " << piece);
        const auto runs = vocab.run_merge(piece);
        if (n <= 64) REQUIRE(!runs.empty());  // longer ones may exceed its step budget and decline
        if (!runs.empty()) CHECK(expand(runs) == vocab.general_merge(piece));
      }
    }
  }
}

TEST_CASE("rank files are verified and errors say how to fix them", "[tokenizer]") {
  const tokenlane::EncodingSpec& spec = tokenlane::encoding_spec("cl100k_base");
  SECTION("missing file") {
    try {
      tokenlane::Encoding::from_rank_file(spec, "/nonexistent/cl100k_base.tiktoken");
      FAIL("expected an error");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::vocab_missing);
    }
  }
  SECTION("wrong hash") {
    try {
      tokenlane::Encoding::from_rank_file_contents(spec, "aGVsbG8= 0\n");
      FAIL("expected an error");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::vocab_corrupt);
      CHECK(std::string(e.what()).find(spec.expected_sha256) != std::string::npos);
    }
  }
  SECTION("unknown names") {
    CHECK_THROWS_AS(tokenlane::encoding_spec("nope_base"), Error);
    CHECK_THROWS_AS(tokenlane::encoding_name_for_model("my-own-model"), Error);
  }
}

TEST_CASE("models resolve to tiktoken's encodings", "[tokenizer]") {
  CHECK(tokenlane::encoding_name_for_model("gpt-4o") == "o200k_base");
  CHECK(tokenlane::encoding_name_for_model("gpt-4o-2024-08-06") == "o200k_base");
  CHECK(tokenlane::encoding_name_for_model("gpt-5-mini") == "o200k_base");
  CHECK(tokenlane::encoding_name_for_model("gpt-4-0613") == "cl100k_base");
  CHECK(tokenlane::encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base");
  CHECK(tokenlane::encoding_name_for_model("text-embedding-3-small") == "cl100k_base");
  CHECK(tokenlane::encoding_name_for_model("gpt-oss-120b") == "o200k_harmony");
  CHECK(tokenlane::encoding_name_for_model("ft:gpt-4o-mini:org::abc") == "o200k_base");
}

TEST_CASE("other families get a labelled approximate count", "[approx]") {
  auto o200k = tokenlane::get_encoding("o200k_base");
  auto c = tokenlane::count_approximate(*o200k, "Hello there, how are you doing today?", "anthropic/claude-sonnet-4-5");
  CHECK(c.family == "claude");
  CHECK(c.tokens > 0);
  CHECK(c.typical_error > 0);
  CHECK(tokenlane::approximate_family_for_model("meta-llama/Llama-3.1-8B-Instruct")->name == "llama3");
  CHECK(tokenlane::approximate_family_for_model("open-mixtral-8x22b")->name == "mistral_spm");
  CHECK(tokenlane::approximate_family_for_model("mistral-large-latest")->name == "mistral_tekken");
  CHECK(tokenlane::approximate_family_for_model("us.anthropic.claude-opus-4-7")->name == "claude_4_7");
  CHECK(tokenlane::approximate_family_for_model("gpt-4o") == nullptr);
  CHECK_THROWS_AS(tokenlane::count_approximate(*o200k, "x", "unknown-model"), Error);
}
