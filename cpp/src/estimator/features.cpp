// Prompt features for the learned estimator and the template key of the history estimator.
// One pass over the bytes: words are ASCII-lowercased runs of letters/digits (UTF-8 bytes count as
// letters), found, counted and hashed 16 bytes at a time (SSE2; byte loops elsewhere); cue phrases
// are matched on word unigram/bigram/trigram hashes behind a bit filter, so a long prompt costs a
// few nanoseconds per word. The middle of a long prompt is only counted, also 16 bytes at a time.
#include <algorithm>
#include <bitset>
#include <cmath>
#include <cstring>
#include <unordered_map>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "internal.hpp"

namespace tokenlane::detail {
namespace {

enum class CueKind : std::uint8_t { slot, unit, number };

struct Cue {
  CueKind kind;
  std::uint32_t slot = 0;  // for slot cues
  float value = 0;         // tokens per unit, or the number's value
};

// Word-sequence hash: one multiply and a fold (the inputs are already well-mixed word hashes).
std::uint64_t bigram(std::uint64_t a, std::uint64_t b) {
  std::uint64_t z = (a ^ ((b << 31) | (b >> 33))) * 0x9e3779b97f4a7c15ULL;
  return z ^ (z >> 29);
}

std::uint64_t phrase_hash(std::string_view phrase) {
  // Same hashing as the scanner: unigram, or mix-chained bigram/trigram.
  std::uint64_t h = 0;
  bool first = true;
  std::size_t start = 0;
  while (start <= phrase.size()) {
    std::size_t end = phrase.find(' ', start);
    if (end == std::string_view::npos) end = phrase.size();
    std::uint64_t w = hash_word(phrase.substr(start, end - start));
    h = first ? w : bigram(h, w);
    first = false;
    start = end + 1;
  }
  return h;
}

struct CueTable {
  static constexpr std::uint64_t kFilterMask = (1u << 16) - 1;
  std::unordered_map<std::uint64_t, Cue> cues;
  std::bitset<kFilterMask + 1> filter;          // every cue's hash
  std::bitset<kFilterMask + 1> trigram_prefix;  // the first two words of three-word cues

  void add(std::string_view phrase, Cue cue) {
    std::uint64_t h = phrase_hash(phrase);
    cues[h] = cue;
    filter.set(h & kFilterMask);
    const std::size_t second_space = phrase.find(' ', phrase.find(' ') + 1);
    if (phrase.find(' ') != std::string_view::npos && second_space != std::string_view::npos)
      trigram_prefix.set(phrase_hash(phrase.substr(0, second_space)) & kFilterMask);
  }
  bool may_start_trigram(std::uint64_t bigram_hash) const { return trigram_prefix.test(bigram_hash & kFilterMask); }
  void slot(std::initializer_list<std::string_view> phrases, std::uint32_t s) {
    for (auto p : phrases) add(p, Cue{CueKind::slot, s, 1.0f});
  }
  void unit(std::initializer_list<std::string_view> words, float tokens_per_unit) {
    for (auto w : words) add(w, Cue{CueKind::unit, 0, tokens_per_unit});
  }
  const Cue* find(std::uint64_t h) const {
    if (!filter.test(h & kFilterMask)) return nullptr;
    auto it = cues.find(h);
    return it == cues.end() ? nullptr : &it->second;
  }

  CueTable() {
    // Tokens per unit are rough English averages (a word ~1.35 tokens, a sentence ~25, ...).
    unit({"word", "words"}, 1.35f);
    unit({"sentence", "sentences"}, 25.0f);
    unit({"paragraph", "paragraphs", "paras"}, 100.0f);
    unit({"line", "lines", "bullet", "bullets", "point", "points", "item", "items"}, 18.0f);
    unit({"tip", "tips", "idea", "ideas", "example", "examples", "reason", "reasons", "way", "ways", "step", "steps",
          "question", "questions", "fact", "facts", "thing", "things", "option", "options", "suggestion",
          "suggestions", "benefit", "benefits", "strategies", "strategy", "activities", "places", "books",
          "movies", "songs", "recipes", "names", "characteristics", "features", "advantages", "disadvantages"},
         40.0f);
    unit({"title", "titles", "headline", "headlines", "slogan", "slogans"}, 14.0f);
    unit({"character", "characters", "letters"}, 0.3f);
    unit({"page", "pages"}, 600.0f);
    unit({"verse", "verses", "stanza", "stanzas"}, 45.0f);
    unit({"haiku", "haikus", "tweet", "tweets"}, 35.0f);
    const std::pair<std::string_view, float> numbers[] = {
        {"a", 1},       {"one", 1},     {"single", 1},   {"two", 2},       {"couple", 2},    {"three", 3},
        {"few", 3},     {"four", 4},    {"several", 4},  {"five", 5},      {"six", 6},       {"seven", 7},
        {"eight", 8},   {"nine", 9},    {"ten", 10},     {"eleven", 11},   {"twelve", 12},   {"fifteen", 15},
        {"twenty", 20}, {"thirty", 30}, {"fifty", 50},   {"hundred", 100}, {"thousand", 1000}};
    for (auto& [w, v] : numbers) add(w, Cue{CueKind::number, 0, v});
    slot({"brief", "briefly", "short", "concise", "concisely", "succinct", "succinctly", "quick", "quickly",
          "tl dr", "tldr", "in a nutshell", "keep it short"},
         kShortCue);
    slot({"one word", "single word", "one-word", "yes or no", "true or false", "only the answer", "just the answer",
          "answer only", "only answer", "only respond", "only output", "only return", "a number", "multiple choice",
          "option a", "a or b"},
         kTinyCue);
    slot({"essay", "detailed", "comprehensive", "thorough", "thoroughly", "elaborate", "extensive", "in depth",
          "in-depth", "in detail", "lengthy", "long", "article", "report", "guide", "tutorial", "plan", "itinerary",
          "proposal", "outline"},
         kLongCue);
    slot({"step by step", "step-by-step", "explain", "explanation", "describe", "how to", "how do", "how does",
          "how can", "why", "discuss", "compare", "difference between", "pros and cons"},
         kStepCue);
    slot({"list", "bullet", "bullets", "enumerate", "ideas", "tips", "examples", "suggestions", "brainstorm",
          "ways", "top", "recommend", "recommendations"},
         kListCue);
    slot({"code", "function", "program", "script", "implement", "python", "javascript", "java", "sql", "html",
          "css", "regex", "algorithm", "typescript", "bash", "rust", "golang", "c++", "react", "api", "class",
          "method", "query", "debug"},
         kCodeCue);
    slot({"translate", "translation", "rewrite", "paraphrase", "rephrase", "proofread", "correct", "edit", "fix",
          "convert", "reword", "grammar", "simplify", "spelling", "formal", "informal", "tone"},
         kRewriteCue);
    slot({"classify", "categorize", "categorise", "sentiment", "which of", "choose", "select", "rate", "identify",
          "determine", "label", "detect", "is this", "is it", "does this", "true", "false"},
         kClassifyCue);
    slot({"story", "poem", "song", "lyrics", "letter", "email", "speech", "blog", "dialogue", "novel", "fiction",
          "narrative", "screenplay", "cover letter", "fairy tale"},
         kCreativeCue);
    slot({"haiku", "tweet", "slogan", "title", "headline", "tagline", "limerick", "caption", "acronym", "pun",
          "joke", "riddle", "name for", "names for", "hashtags", "hashtag"},
         kShortFormCue);
    slot({"calculate", "solve", "compute", "equation", "multiply", "divide", "how many", "how much", "math",
          "arithmetic", "percentage", "probability"},
         kMathCue);
    slot({"summarize", "summarise", "summary", "summarization", "key points", "main points", "recap", "abstract",
          "main idea"},
         kSummarizeCue);
    add_other_languages();
  }

  // The same cues in German, French, Spanish, Portuguese, Italian and Russian (words are matched
  // after ASCII lowercasing only, so forms that start with a non-ASCII capital are listed too).
  // Chinese and Japanese have no spaces between words: their cues are substrings (cjk_cues below).
  void add_other_languages() {
    unit({"wörter", "wörtern", "mots", "palabras", "palavras", "parole", "слов", "слова"}, 1.35f);
    unit({"sätze", "sätzen", "satz", "phrases", "frases", "oraciones", "frasi", "предложений", "предложения"}, 25.0f);
    unit({"absätze", "absätzen", "paragraphes", "párrafos", "parágrafos", "paragrafi", "абзаца", "абзацев"}, 100.0f);
    unit({"punkte", "stichpunkte", "puntos", "pontos", "punti", "пунктов", "пункта"}, 18.0f);
    unit({"ideen", "tipps", "beispiele", "gründe", "idées", "conseils", "exemples", "raisons", "consejos", "ejemplos",
          "razones", "dicas", "exemplos", "consigli", "esempi", "идей", "советов", "примеров", "причин"},
         40.0f);
    const std::pair<std::string_view, float> numbers[] = {
        {"ein", 1},   {"eine", 1},  {"zwei", 2},  {"drei", 3},  {"vier", 4},  {"fünf", 5},  {"zehn", 10},
        {"un", 1},    {"une", 1},   {"deux", 2},  {"trois", 3}, {"quatre", 4}, {"cinq", 5}, {"dix", 10},
        {"uno", 1},   {"una", 1},   {"dos", 2},   {"tres", 3},  {"cuatro", 4}, {"cinco", 5}, {"diez", 10},
        {"três", 3},  {"due", 2},   {"dieci", 10}, {"одно", 1}, {"два", 2},   {"три", 3},   {"пять", 5},
        {"десять", 10}};
    for (auto& [w, v] : numbers) add(w, Cue{CueKind::number, 0, v});
    slot({"kurz", "kurze", "kurzen", "knapp", "bref", "brève", "court", "courte", "concis", "concise", "breve",
          "corto", "corta", "conciso", "concisa", "curto", "curta", "кратко", "коротко", "краткий", "Кратко",
          "Коротко"},
         kShortCue);
    slot({"ein wort", "ja oder nein", "un mot", "oui ou non", "una palabra", "sí o no", "uma palavra", "sim ou não",
          "una parola", "sì o no", "одно слово", "одним словом", "да или нет"},
         kTinyCue);
    slot({"ausführlich", "ausführliche", "detailliert", "aufsatz", "essay", "détaillé", "détaillée", "dissertation",
          "detallado", "detallada", "ensayo", "detalhado", "detalhada", "redação", "dettagliato", "saggio",
          "подробно", "подробный", "подробное", "эссе", "статью", "Подробно"},
         kLongCue);
    slot({"erkläre", "erklären", "beschreibe", "explique", "expliquer", "décris", "explica", "explicar", "describe",
          "descreva", "spiega", "descrivi", "объясни", "опиши", "Объясни", "Опиши"},
         kStepCue);
    slot({"liste", "lista", "список", "Список", "перечисли", "Перечисли"}, kListCue);
    slot({"übersetze", "Übersetze", "übersetzen", "übersetzung", "traduire", "traduis", "traduction", "traduce",
          "traducir", "traduza", "traduci", "переведи", "Переведи", "перевод", "umschreiben", "reformule", "reescribe",
          "corrige", "korrigiere", "исправь", "Исправь"},
         kRewriteCue);
    slot({"geschichte", "gedicht", "histoire", "poème", "lettre", "historia", "poema", "carta", "cuento", "história",
          "storia", "poesia", "lettera", "рассказ", "стихотворение", "стих", "письмо"},
         kCreativeCue);
    slot({"zusammenfassung", "zusammenfassen", "fasse", "résumé", "résumer", "résume", "resumen", "resumir",
          "resuma", "riassumi", "riassunto", "резюме", "перескажи", "Перескажи"},
         kSummarizeCue);
  }
};

// Chinese and Japanese cues: substrings of a run of CJK text (there are no spaces to split on).
struct CjkCue {
  std::string_view text;
  std::uint32_t slot;
};
constexpr CjkCue kCjkCues[] = {
    {"简要", kShortCue},   {"简短", kShortCue},   {"简洁", kShortCue},     {"簡潔", kShortCue},   {"短く", kShortCue},
    {"一句话", kTinyCue},  {"一个词", kTinyCue},  {"是或否", kTinyCue},    {"一言", kTinyCue},    {"一語", kTinyCue},
    {"详细", kLongCue},    {"詳細", kLongCue},    {"詳しく", kLongCue},    {"文章", kLongCue},    {"论文", kLongCue},
    {"解释", kStepCue},    {"说明", kStepCue},    {"説明", kStepCue},      {"如何", kStepCue},    {"为什么", kStepCue},
    {"列出", kListCue},    {"列举", kListCue},    {"リスト", kListCue},    {"翻译", kRewriteCue}, {"翻訳", kRewriteCue},
    {"改写", kRewriteCue}, {"故事", kCreativeCue}, {"诗", kCreativeCue},    {"物語", kCreativeCue}, {"手紙", kCreativeCue},
    {"总结", kSummarizeCue}, {"摘要", kSummarizeCue}, {"要約", kSummarizeCue}, {"まとめ", kSummarizeCue},
    {"代码", kCodeCue},    {"コード", kCodeCue}};
// "300字", "3句", "2段", "5点": a number directly followed by a unit character, in tokens per unit
// (o200k_base spends about one token per CJK character).
struct CjkUnit {
  std::string_view text;
  float tokens;
};
constexpr CjkUnit kCjkUnits[] = {{"字", 1.0f}, {"文字", 1.0f}, {"个字", 1.0f}, {"句", 25.0f}, {"段", 100.0f},
                                 {"点", 40.0f}, {"条", 40.0f}, {"つ", 40.0f}, {"個", 40.0f}};

// Cues of one word that holds CJK bytes: sets dense slots, returns the largest "N<unit>" target.
double cjk_cues(std::string_view word, std::array<float, kDenseSlots>& dense) {
  for (const CjkCue& c : kCjkCues)
    if (word.find(c.text) != std::string_view::npos) dense[c.slot] = 1.0f;
  double target = 0;
  for (std::size_t i = 0; i < word.size();) {
    if (word[i] < '0' || word[i] > '9') {
      ++i;
      continue;
    }
    double value = 0;
    while (i < word.size() && word[i] >= '0' && word[i] <= '9') value = std::min(value * 10 + (word[i++] - '0'), 1e6);
    const std::string_view rest = word.substr(i);
    for (const CjkUnit& u : kCjkUnits)
      if (rest.substr(0, u.text.size()) == u.text) target = std::max(target, std::min(value, 5000.0) * u.tokens);
  }
  return target;
}

const CueTable& cue_table() {
  static const CueTable table;
  return table;
}

// Letters, digits, '+' ("c++") and every UTF-8 byte make words.
struct WordBytes {
  bool is[256] = {};
  constexpr WordBytes() {
    for (int c = 0; c < 256; ++c)
      is[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80 || c == '+';
  }
};
constexpr WordBytes kWordBytes;
inline bool is_word_byte(unsigned char c) { return kWordBytes.is[c]; }

std::uint32_t hashed_index(std::uint64_t h, std::uint32_t buckets) {
  return kDenseSlots + static_cast<std::uint32_t>(h & (buckets - 1));
}

// Salts keep the n-gram kinds apart in the hashed space.
constexpr std::uint64_t kSaltBigram = 0x2222;
constexpr std::uint64_t kSaltHead = 0x3333;
constexpr std::uint64_t kSaltHeadBigram = 0x4444;
constexpr std::size_t kHeadWords = 8;
// Long prompts are read word by word only where instructions live: the first kScanHead bytes, the
// first kScanLast bytes of the last message and the last kScanTail bytes. Bytes in between (the
// pasted document, the long history) only feed the byte statistics. This bounds the cost of a
// long prompt (a 1,000-token prompt reads ~2 KB of words, not 4.4 KB).
constexpr std::size_t kScanHead = 1024, kScanLast = 512, kScanTail = 512;

struct Gap {
  std::size_t begin, end;
};

// The byte ranges skipped by the word scan (at most two), each snapped forward to a non-word
// byte so no word is cut.
std::size_t gaps_of(std::string_view text, std::array<Gap, 2>& gaps) {
  const std::size_t n = text.size();
  if (n <= kScanHead + kScanLast + kScanTail) return 0;
  std::array<Gap, 3> keep{};
  std::size_t k = 0;
  keep[k++] = {0, kScanHead};
  // memchr first (vectorized): plain prompts, the common case, have no separator at all.
  std::size_t last = std::string_view::npos;
  if (std::memchr(text.data(), kMessageSeparator, n) != nullptr) last = text.rfind(kMessageSeparator);
  if (last != std::string_view::npos && last > kScanHead && last + kScanLast < n - kScanTail)
    keep[k++] = {last, last + kScanLast};
  keep[k++] = {n - kScanTail, n};
  auto snap = [&](std::size_t p) {
    while (p < n && is_word_byte(static_cast<unsigned char>(text[p]))) ++p;
    return p;
  };
  std::size_t g = 0;
  for (std::size_t j = 0; j + 1 < k; ++j) {
    const std::size_t begin = snap(keep[j].end), end = snap(keep[j + 1].begin);
    if (begin < end) gaps[g++] = {begin, end};
  }
  return g;
}

std::uint32_t task_slot(std::string_view task) {
  if (task.empty()) return 0;
  static const std::pair<std::string_view, std::uint32_t> tasks[] = {
      {"chat", kTaskChat},         {"code", kTaskCode},         {"summarize", kTaskSummarize},
      {"translate", kTaskTranslate}, {"rewrite", kTaskRewrite}, {"classify", kTaskClassify},
      {"extract", kTaskExtract},   {"qa", kTaskQa}};
  for (auto& [name, slot] : tasks)
    if (name == task) return slot;
  return 0;
}

}  // namespace

std::uint64_t hash_word(std::string_view word) {
  // Bytes packed into a 64-bit lane (byte k at bits 8k); each full lane, then the tail tagged
  // with the length, goes through one mix: much cheaper than a multiply per byte.
  std::uint64_t h = kFnvOffset, lane = 0;
  unsigned shift = 0;
  for (unsigned char c : word) {
    if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c + 32);
    lane |= static_cast<std::uint64_t>(c) << shift;
    shift += 8;
    if (shift == 64) {
      h = mix(h, lane);
      lane = 0;
      shift = 0;
    }
  }
  return mix(h, lane ^ (static_cast<std::uint64_t>(word.size()) << 56));
}

WordScan scan_word_bytes(std::string_view text, std::size_t begin) {
  WordScan w;
  std::size_t i = begin;
  for (; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (!is_word_byte(c)) break;
    if (c >= 0x80) {
      ++w.non_ascii;
      w.cjk += c >= 0xE3 && c <= 0xED;
    }
    w.digits = w.digits && c >= '0' && c <= '9';
  }
  w.end = i;
  w.hash = hash_word(text.substr(begin, i - begin));
  return w;
}

GapScan scan_gap_bytes(std::string_view text, std::size_t begin, std::size_t end) {
  GapScan g;
  const std::size_t n = text.size();
  for (std::size_t j = begin; j < end; ++j) {
    const unsigned char b = static_cast<unsigned char>(text[j]);
    if (b < 0x80) {
      g.newlines += b == '\n';
      g.question |= b == '?';
      g.code_fence |= b == '`' && j + 2 < n && text[j + 1] == '`' && text[j + 2] == '`';
      g.separator |= b == static_cast<unsigned char>(kMessageSeparator);
    } else {
      ++g.non_ascii;
      g.cjk += b >= 0xE3 && b <= 0xED;
    }
  }
  return g;
}

#ifdef __SSE2__
namespace {

// Bytes of `v` in [low, low + count), as 0xFF: a signed compare after a shift that moves `low`
// to -128.
__m128i in_range(__m128i v, int low, int count) {
  const __m128i shifted = _mm_add_epi8(v, _mm_set1_epi8(static_cast<char>(0x80 - low)));
  return _mm_cmplt_epi8(shifted, _mm_set1_epi8(static_cast<char>(-128 + count)));
}

unsigned bits(__m128i mask) { return static_cast<unsigned>(_mm_movemask_epi8(mask)); }

// Set bits of a 16-bit mask. Baseline x86-64 has no popcnt instruction: __builtin_popcount would
// be a call into libgcc for every word.
unsigned count16(unsigned x) {
#ifdef __POPCNT__
  return static_cast<unsigned>(__builtin_popcount(x));
#else
  x = x - ((x >> 1) & 0x5555u);
  x = (x & 0x3333u) + ((x >> 2) & 0x3333u);
  x = (x + (x >> 4)) & 0x0f0fu;
  return (x + (x >> 8)) & 0x1fu;
#endif
}

// The sum of 16 byte counters.
std::size_t sum_bytes(__m128i counters) {
  const __m128i sums = _mm_sad_epu8(counters, _mm_setzero_si128());  // two 16-bit sums, one per half
  return static_cast<std::size_t>(_mm_cvtsi128_si32(sums)) +
         static_cast<std::size_t>(_mm_cvtsi128_si32(_mm_unpackhi_epi64(sums, sums)));
}

}  // namespace

GapScan scan_gap(std::string_view text, std::size_t begin, std::size_t end) {
  // The long prompt's middle: the bulk of a 1,000-token prompt's bytes, so 16 at a time. Counts
  // accumulate in per-byte counters (a match is -1: subtracting it adds one), summed every 255
  // chunks before a counter could wrap.
  GapScan g;
  const std::size_t n = text.size();
  const __m128i zero = _mm_setzero_si128();
  __m128i newlines = zero, high = zero, cjk = zero, questions = zero, separators = zero;
  unsigned chunks = 0;
  auto flush = [&] {
    g.newlines += sum_bytes(newlines);
    g.non_ascii += sum_bytes(high);
    g.cjk += sum_bytes(cjk);
    newlines = high = cjk = zero;
    chunks = 0;
  };
  std::size_t j = begin;
  for (; j + 16 <= end; j += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(text.data() + j));
    newlines = _mm_sub_epi8(newlines, _mm_cmpeq_epi8(v, _mm_set1_epi8('\n')));
    high = _mm_sub_epi8(high, _mm_cmplt_epi8(v, zero));
    cjk = _mm_sub_epi8(cjk, in_range(v, 0xE3, 11));
    questions = _mm_or_si128(questions, _mm_cmpeq_epi8(v, _mm_set1_epi8('?')));
    separators = _mm_or_si128(separators, _mm_cmpeq_epi8(v, _mm_set1_epi8(kMessageSeparator)));
    for (unsigned ticks = bits(_mm_cmpeq_epi8(v, _mm_set1_epi8('`'))); ticks && !g.code_fence; ticks &= ticks - 1) {
      const std::size_t at = j + static_cast<std::size_t>(__builtin_ctz(ticks));
      g.code_fence = at + 2 < n && text[at + 1] == '`' && text[at + 2] == '`';
    }
    if (++chunks == 255) flush();
  }
  flush();
  g.question = bits(questions) != 0;
  g.separator = bits(separators) != 0;
  const GapScan rest = scan_gap_bytes(text, j, end);
  g.newlines += rest.newlines;
  g.non_ascii += rest.non_ascii;
  g.cjk += rest.cjk;
  g.question |= rest.question;
  g.code_fence |= rest.code_fence;
  g.separator |= rest.separator;
  return g;
}

WordScan scan_word(std::string_view text, std::size_t begin) {
  // Each 16-byte chunk is classified at once (word bytes, UTF-8 bytes, CJK lead bytes, digits) and
  // its word bytes, lowercased, are the hash's next two lanes: the word ends at the chunk's first
  // non-word byte, and most words take one chunk. 16 bytes from kKeep + 16 - k keep a chunk's
  // first k bytes.
  alignas(16) static constexpr unsigned char kKeep[32] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                          0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  WordScan w;
  const char* p = text.data();
  const std::size_t n = text.size();
  std::size_t i = begin;
  std::uint64_t h = kFnvOffset, tail = 0;
  for (;;) {
    __m128i v;
    if (i + 16 <= n) {
      v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    } else {  // the last bytes, padded with zeros (not word bytes: the word ends at the text's end)
      alignas(16) char last[16] = {};
      std::memcpy(last, p + i, n - i);
      v = _mm_load_si128(reinterpret_cast<const __m128i*>(last));
    }
    const unsigned high = static_cast<unsigned>(_mm_movemask_epi8(v));
    const __m128i upper = in_range(v, 'A', 26);
    const __m128i lower = _mm_or_si128(v, _mm_and_si128(upper, _mm_set1_epi8(0x20)));
    const __m128i digit = in_range(v, '0', 10);
    const __m128i word_bytes = _mm_or_si128(_mm_or_si128(in_range(lower, 'a', 26), digit),
                                            _mm_cmpeq_epi8(v, _mm_set1_epi8('+')));
    const unsigned stop = ~(high | static_cast<unsigned>(_mm_movemask_epi8(word_bytes))) & 0xFFFFu;
    const int taken = stop ? __builtin_ctz(stop) : 16;
    const unsigned in_word = (1u << taken) - 1;
    if (high & in_word) {  // UTF-8 bytes: none in most words
      w.non_ascii += count16(high & in_word);
      w.cjk += count16(bits(in_range(v, 0xE3, 11)) & in_word);
    }
    if ((static_cast<unsigned>(_mm_movemask_epi8(digit)) & in_word) != in_word) w.digits = false;
    alignas(16) std::uint64_t lanes[2];  // x86 is little-endian: byte k of a lane at bits 8k
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes),
                    _mm_and_si128(lower, _mm_loadu_si128(reinterpret_cast<const __m128i*>(kKeep + 16 - taken))));
    i += static_cast<std::size_t>(taken);
    if (taken == 16) {
      h = mix(mix(h, lanes[0]), lanes[1]);
      continue;
    }
    if (taken >= 8) {
      h = mix(h, lanes[0]);
      tail = lanes[1];
    } else {
      tail = lanes[0];
    }
    break;
  }
  w.end = i;
  w.hash = mix(h, tail ^ (static_cast<std::uint64_t>(i - begin) << 56));
  return w;
}
#else
WordScan scan_word(std::string_view text, std::size_t begin) { return scan_word_bytes(text, begin); }
GapScan scan_gap(std::string_view text, std::size_t begin, std::size_t end) { return scan_gap_bytes(text, begin, end); }
#endif

std::size_t extract_features(const EstimateQuery& q, double input_tokens, std::uint32_t buckets,
                             std::vector<Feature>& out) {
  const CueTable& table = cue_table();
  std::array<float, kDenseSlots> dense{};
  dense[kBias] = 1.0f;
  const double log_in = (std::log1p(input_tokens) - 4.5) / 2.0;
  dense[kLogInput] = static_cast<float>(log_in);
  const int bin = std::clamp(static_cast<int>(std::floor(std::log2(std::max(1.0, input_tokens)))) - 3, 0, 9);
  dense[kInputBin0 + bin] = 1.0f;

  const std::string_view text = q.prompt;
  const std::size_t n = text.size();
  // Written through a raw pointer into a buffer sized for the worst case (a feature per byte):
  // push_back's temporaries cost a store-forwarding stall per feature on a hot loop.
  if (out.size() < n + kDenseSlots + 2 * kHeadWords) out.resize(n + kDenseSlots + 2 * kHeadWords + 256);
  Feature* dst = out.data();
  std::size_t count = 0;
  // Head features of the current message (reset at every message/role boundary, so the last
  // message's survive), kept apart and appended at the end.
  std::array<std::uint64_t, kHeadWords> head{};
  std::size_t head_n = 0;

  std::size_t non_ascii = 0, cjk = 0, newlines = 0, list_lines = 0;
  bool code_fence = false, question = false;
  double count_target = 0;     // tokens implied by "N <units>", the largest one
  double last_number = -1;     // value of the previous word if it was a number
  bool last_article = false;   // ... and it was "a" (counts only for units that are not list items)
  double number_before = -1;   // value of the word before that, for "3-5 sentences"
  std::uint64_t prev = 0, prev_bi = 0;  // previous word and bigram hashes (0 = none)
  std::size_t words = 0;
  bool line_start = true;

  std::array<Gap, 2> gaps{};
  const std::size_t n_gaps = gaps_of(text, gaps);
  std::size_t next_gap = 0;

  std::size_t i = 0;
  while (i < n) {
    if (next_gap < n_gaps && i >= gaps[next_gap].begin) {
      const Gap gap = gaps[next_gap++];
      const GapScan g = scan_gap(text, std::max(i, gap.begin), gap.end);
      newlines += g.newlines;
      question |= g.question;
      code_fence |= g.code_fence;
      non_ascii += g.non_ascii;
      cjk += g.cjk;
      if (g.separator) head_n = 0;
      i = std::max(i, gap.end);
      prev = prev_bi = 0;
      last_number = number_before = -1;
      line_start = false;
      continue;
    }
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (!is_word_byte(c)) {
      if (c == '\n') {
        ++newlines;
        line_start = true;
      } else if (c == '?') {
        question = true;
      } else if (c == '`' && i + 2 < n && text[i + 1] == '`' && text[i + 2] == '`') {
        code_fence = true;
      } else if (c == static_cast<unsigned char>(kMessageSeparator) ||
                 c == static_cast<unsigned char>(kRoleSeparator)) {
        head_n = 0;
        prev = prev_bi = 0;
        last_number = number_before = -1;
      } else if (line_start && (c == '-' || c == '*')) {
        ++list_lines;
        line_start = false;
      } else if (c != ' ' && c != '\t' && c != '\r') {
        line_start = false;
      }
      ++i;
      continue;
    }
    // A word: found, counted and hashed (as phrase_hash does) 16 bytes at a time.
    const bool at_line_start = line_start;
    line_start = false;
    const std::size_t begin = i;
    const WordScan word = scan_word(text, begin);
    i = word.end;
    const std::size_t len = i - begin;
    non_ascii += word.non_ascii;
    cjk += word.cjk;
    const bool digits = word.digits;
    double value = 0;
    if (digits)
      for (std::size_t k = begin; k < i; ++k)
        if (value < 1e7) value = value * 10 + (text[k] - '0');
    const std::uint64_t h = word.hash;
    if (word.cjk) count_target = std::max(count_target, cjk_cues(text.substr(begin, len), dense));
    if (at_line_start && digits && i < n && (text[i] == '.' || text[i] == ')')) ++list_lines;
    ++words;
    const std::uint64_t bi = prev ? bigram(prev, h) : 0;
    const std::uint64_t tri = prev_bi && table.may_start_trigram(prev_bi) ? bigram(prev_bi, h) : 0;
    dst[count++] = Feature{hashed_index(h, buckets), 1.0f};
    if (bi) dst[count++] = Feature{hashed_index(bi ^ kSaltBigram, buckets), 1.0f};
    if (head_n < kHeadWords) head[head_n++] = h;

    // Cues: the word, the bigram ending here, the trigram ending here.
    double number_here = digits ? value : -1;
    bool article_here = false;
    const std::uint64_t candidates[3] = {h, bi, tri};
    for (std::uint64_t ch : candidates) {
      if (!ch) continue;
      const Cue* cue = table.find(ch);
      if (!cue) continue;
      switch (cue->kind) {
        case CueKind::slot:
          dense[cue->slot] = 1.0f;
          break;
        case CueKind::number:
          if (ch == h) {
            number_here = cue->value;
            article_here = len == 1 && (static_cast<unsigned char>(text[begin]) | 0x20) == 'a';
          }
          break;
        case CueKind::unit:
          if (ch == h && last_number > 0 && !(last_article && cue->value >= 40.0f)) {
            double count = last_number;
            if (number_before > 0 && number_before < last_number) count = (number_before + last_number) / 2;
            count_target = std::max(count_target, std::min(count, 5000.0) * cue->value);
          }
          break;
      }
    }
    number_before = last_number;
    last_number = number_here;
    last_article = article_here;
    prev_bi = bi;
    prev = h;
  }

  const double bytes = std::max<double>(1.0, static_cast<double>(n));
  dense[kNonAscii] = static_cast<float>(non_ascii / bytes);
  dense[kCjk] = static_cast<float>(std::min(1.0, 3.0 * cjk / bytes));
  dense[kLogLines] = static_cast<float>(std::log1p(static_cast<double>(newlines)) / 3.0);
  dense[kPromptList] = list_lines >= 2 ? 1.0f : 0.0f;
  dense[kQuestion] = question ? 1.0f : 0.0f;
  dense[kCodeInPrompt] = code_fence ? 1.0f : 0.0f;
  if (count_target > 0) {
    dense[kCountCue] = 1.0f;
    dense[kCountTarget] = static_cast<float>(std::log(std::max(1.0, count_target)) - std::log(300.0));
  }
  if (dense[kRewriteCue] > 0) dense[kRewriteLogInput] = static_cast<float>(log_in);
  if (dense[kSummarizeCue] > 0) dense[kSummarizeLogInput] = static_cast<float>(log_in);
  if (std::uint32_t t = task_slot(q.task)) dense[t] = 1.0f;

  // Word n-grams share a unit of weight (1/sqrt(words)), so long prompts do not swamp the cues.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(std::max<std::size_t>(words, 1))));
  for (std::size_t k = 0; k < count; ++k) dst[k].value *= scale;
  for (std::size_t k = 0; k < head_n; ++k) {
    dst[count++] = Feature{hashed_index(mix(head[k], kSaltHead), buckets), 0.5f};
    if (k > 0 && k < 3)
      dst[count++] = Feature{hashed_index(mix(bigram(head[k - 1], head[k]), kSaltHeadBigram + k), buckets), 0.5f};
  }
  for (std::uint32_t s = 0; s < kDenseSlots; ++s)
    if (dense[s] != 0.0f) dst[count++] = Feature{s, dense[s]};
  return count;
}

std::uint64_t template_hash(std::string_view prompt, std::size_t chars) {
  // Normalizes the first `chars` bytes of a message into the hash.
  auto shape = [chars](std::string_view msg, std::uint64_t h) {
    std::size_t taken = 0;
    bool space = false;
    for (std::size_t i = 0; i < msg.size() && taken < chars; ++i) {
      unsigned char c = static_cast<unsigned char>(msg[i]);
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
        space = taken > 0;
        continue;
      }
      if (space) {
        h = (h ^ ' ') * kFnvPrime;
        ++taken;
        space = false;
      }
      if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c + 32);
      if (c >= '0' && c <= '9') c = '0';
      h = (h ^ c) * kFnvPrime;
      ++taken;
    }
    return h;
  };
  const std::size_t first_end = prompt.find(kMessageSeparator);
  if (first_end == std::string_view::npos) return shape(prompt, kFnvOffset);
  const std::size_t last_begin = prompt.rfind(kMessageSeparator) + 1;
  std::uint64_t h = shape(prompt.substr(0, first_end), kFnvOffset);
  h = (h ^ 0x1e) * kFnvPrime;
  return shape(prompt.substr(last_begin), h);
}

}  // namespace tokenlane::detail
