// tokenlane/tokenizer.hpp — exact byte-level BPE tokenizers, identical to tiktoken 0.14.
//
// An Encoding turns UTF-8 text into token ids exactly as OpenAI's tiktoken does for cl100k_base,
// o200k_base, p50k_base and r50k_base: a hand-written pre-tokenizer per encoding (no regex engine),
// then byte-pair merges that stay linear-time on long pieces. Encodings are immutable after loading
// and safe to share between threads.
//
//   auto enc = tokenlane::get_encoding("o200k_base");      // reads $TOKENLANE_VOCAB_DIR
//   std::size_t n = enc->count("Hello, world!");           // 4
//   std::vector<tokenlane::Rank> ids = enc->encode_ordinary("Hello");
//
// Not for: model families without a public vocabulary (Claude, Gemini, ...). Those are counted by
// tokenlane::count_approximate (approx.hpp), which never claims to be exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenlane/error.hpp"

namespace tokenlane {

using Rank = std::uint32_t;

// Which hand-written pre-tokenizer an encoding uses (each is one of tiktoken's split patterns).
enum class PretokenizerKind { gpt2, cl100k, o200k };

// Everything that defines an encoding except its rank file.
struct EncodingSpec {
  std::string name;
  PretokenizerKind pretokenizer;
  std::string rank_file;        // file name inside a vocabulary directory, e.g. "cl100k_base.tiktoken"
  std::string expected_sha256;  // the hash tiktoken expects for that file (lower-case hex)
  std::vector<std::pair<std::string, Rank>> special_tokens;
  std::size_t n_vocab;          // max id + 1, as tiktoken reports it
};

// A set of special-token strings that may appear in text and be encoded as their special id.
// Empty means "treat every special-token string as ordinary text" (encode_ordinary semantics).
using SpecialSet = std::vector<std::string>;

class Encoding {
 public:
  // Parses a `.tiktoken` rank file (base64 token, space, rank per line) after checking its SHA-256.
  // Throws Error(vocab_corrupt) if the hash differs or a line is malformed.
  static std::shared_ptr<const Encoding> from_rank_file_contents(EncodingSpec spec,
                                                                  std::string_view contents);
  // Reads the file at `path`, then as above. Throws Error(vocab_missing) if it cannot be read.
  static std::shared_ptr<const Encoding> from_rank_file(EncodingSpec spec, const std::string& path);
  // Builds an encoding from (token bytes, rank) pairs, such as tiktoken's `mergeable_ranks`, to
  // extend or customise one (no hash to check). Throws Error(vocab_corrupt) on duplicate ranks or
  // bytes, a missing single byte, or ranks of 2^18 and above.
  static std::shared_ptr<const Encoding> from_tokens(EncodingSpec spec,
                                                     std::vector<std::pair<std::string, Rank>> tokens);

  ~Encoding();
  Encoding(const Encoding&) = delete;
  Encoding& operator=(const Encoding&) = delete;

  const std::string& name() const noexcept;
  std::size_t n_vocab() const noexcept;
  const std::vector<std::pair<std::string, Rank>>& special_tokens() const noexcept;
  PretokenizerKind pretokenizer() const noexcept;
  // Every ordinary (mergeable) token with its rank, in rank order.
  std::vector<std::pair<std::string_view, Rank>> ordinary_tokens() const;

  // Encodes text, treating special-token strings as ordinary text.
  std::vector<Rank> encode_ordinary(std::string_view utf8) const;
  // Encodes text; occurrences of the strings in `allowed_special` become their special ids.
  // (The policy for *disallowed* specials, raising as tiktoken does, lives in the caller.)
  std::vector<Rank> encode(std::string_view utf8, const SpecialSet& allowed_special) const;
  // encode() into a caller's vector (cleared first), so that a caller encoding text after text can
  // keep one buffer instead of allocating per call.
  void encode_into(std::string_view utf8, const SpecialSet& allowed_special, std::vector<Rank>& out) const;
  // Same counts as encode_ordinary(...).size() / encode(...).size(), without building a vector.
  std::size_t count(std::string_view utf8) const;
  std::size_t count(std::string_view utf8, const SpecialSet& allowed_special) const;

  // Encodes / counts many texts on up to `num_threads` threads (0 = all hardware threads).
  std::vector<std::vector<Rank>> encode_batch(const std::vector<std::string_view>& texts,
                                              const SpecialSet& allowed_special,
                                              unsigned num_threads = 0) const;
  std::vector<std::size_t> count_batch(const std::vector<std::string_view>& texts,
                                       const SpecialSet& allowed_special,
                                       unsigned num_threads = 0) const;
  // encode_batch for a caller that converts each result as it comes (the Python binding builds its
  // lists, which needs the GIL, while the other threads go on encoding): deliver(i, ids) runs on
  // the calling thread once for every text i, as soon as it is encoded, in the order texts finish
  // (ids may be moved from). The calling thread also encodes texts while nothing is left to
  // deliver, each between leave() and enter() (the binding releases the GIL there). After an
  // exception (from deliver or anywhere) no further text is started or delivered, the other threads
  // are joined, and it is rethrown.
  void encode_batch_each(const std::vector<std::string_view>& texts, const SpecialSet& allowed_special,
                         unsigned num_threads,
                         const std::function<void(std::size_t, std::vector<Rank>&)>& deliver,
                         const std::function<void()>& leave, const std::function<void()>& enter) const;

  // Returns the byte offset and the text of the first special token from `specials` in `utf8`,
  // or {npos, {}} if there is none.
  std::pair<std::size_t, std::string_view> find_special(std::string_view utf8,
                                                        const SpecialSet& specials) const;
  // tiktoken's guard: throws Error(disallowed_special) naming the token if `utf8` contains one of
  // `disallowed`, so that user text cannot smuggle in control tokens.
  void check_disallowed_special(std::string_view utf8, const SpecialSet& disallowed) const;
  // Every special-token string of this encoding.
  const SpecialSet& special_token_strings() const noexcept;

  // Concatenated bytes of the tokens (may be invalid UTF-8). Throws Error(invalid_argument) on an
  // id that is not in the vocabulary.
  std::string decode_bytes(const Rank* tokens, std::size_t n) const;
  std::string decode_bytes(const std::vector<Rank>& tokens) const {
    return decode_bytes(tokens.data(), tokens.size());
  }
  // The bytes of one token id. Throws Error(invalid_argument) if unknown.
  std::string_view token_bytes(Rank token) const;
  // The id of a byte string that is exactly one token (ordinary or special), or -1.
  std::int64_t encode_single_token(std::string_view bytes) const;

  struct Impl;

 private:
  explicit Encoding(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The built-in encodings: gpt2 (r50k_base's ranks under tiktoken's other name), r50k_base, p50k_base, p50k_edit, cl100k_base, o200k_base, o200k_harmony.
std::vector<std::string> encoding_names();
// The spec of a built-in encoding. Throws Error(not_found) naming the known encodings.
const EncodingSpec& encoding_spec(std::string_view name);

// Loads (once per process, then shared) a built-in encoding from `vocab_dir`, or from
// $TOKENLANE_VOCAB_DIR when `vocab_dir` is empty. Throws Error(vocab_missing) with instructions when
// the rank file is not there, Error(vocab_corrupt) when its hash is wrong.
std::shared_ptr<const Encoding> get_encoding(std::string_view name, const std::string& vocab_dir = {});

// The encoding tiktoken uses for an OpenAI model name ("gpt-4o" -> "o200k_base"; dated snapshots
// and fine-tune names resolve by prefix). Throws Error(not_found) for models tokenlane cannot count
// exactly.
std::string encoding_name_for_model(std::string_view model);

}  // namespace tokenlane
