// The built-in encodings (as tiktoken 0.14 defines them) and the OpenAI model -> encoding table.
#include <cstdlib>
#include <map>
#include <mutex>

#include "tokenlane/tokenizer.hpp"

namespace tokenlane {
namespace {

constexpr const char* kEndOfText = "<|endoftext|>";
constexpr const char* kFimPrefix = "<|fim_prefix|>";
constexpr const char* kFimMiddle = "<|fim_middle|>";
constexpr const char* kFimSuffix = "<|fim_suffix|>";
constexpr const char* kEndOfPrompt = "<|endofprompt|>";

constexpr const char* kR50kSha = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930";
constexpr const char* kP50kSha = "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069";
constexpr const char* kCl100kSha = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7";
constexpr const char* kO200kSha = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d";

std::vector<std::pair<std::string, Rank>> harmony_specials() {
  std::vector<std::pair<std::string, Rank>> s = {
      {"<|startoftext|>", 199998}, {kEndOfText, 199999},       {"<|reserved_200000|>", 200000},
      {"<|reserved_200001|>", 200001}, {"<|return|>", 200002},  {"<|constrain|>", 200003},
      {"<|reserved_200004|>", 200004}, {"<|channel|>", 200005}, {"<|start|>", 200006},
      {"<|end|>", 200007},             {"<|message|>", 200008}, {"<|reserved_200009|>", 200009},
      {"<|reserved_200010|>", 200010}, {"<|reserved_200011|>", 200011}, {"<|call|>", 200012},
      // tiktoken keeps o200k_base's <|endofprompt|> (200018) beside <|reserved_200018|>.
      {kEndOfPrompt, 200018}};
  for (Rank r = 200013; r < 201088; ++r) s.emplace_back("<|reserved_" + std::to_string(r) + "|>", r);
  return s;
}

const std::vector<EncodingSpec>& specs() {
  static const std::vector<EncodingSpec> all = {
      // tiktoken's "gpt2" reads GPT-2's original vocab.bpe/encoder.json: the same ranks as r50k_base.
      {"gpt2", PretokenizerKind::gpt2, "r50k_base.tiktoken", kR50kSha, {{kEndOfText, 50256}}, 50257},
      {"r50k_base", PretokenizerKind::gpt2, "r50k_base.tiktoken", kR50kSha, {{kEndOfText, 50256}}, 50257},
      {"p50k_base", PretokenizerKind::gpt2, "p50k_base.tiktoken", kP50kSha, {{kEndOfText, 50256}}, 50281},
      {"p50k_edit", PretokenizerKind::gpt2, "p50k_base.tiktoken", kP50kSha,
       {{kEndOfText, 50256}, {kFimPrefix, 50281}, {kFimMiddle, 50282}, {kFimSuffix, 50283}}, 50284},
      {"cl100k_base", PretokenizerKind::cl100k, "cl100k_base.tiktoken", kCl100kSha,
       {{kEndOfText, 100257}, {kFimPrefix, 100258}, {kFimMiddle, 100259}, {kFimSuffix, 100260},
        {kEndOfPrompt, 100276}},
       100277},
      {"o200k_base", PretokenizerKind::o200k, "o200k_base.tiktoken", kO200kSha,
       {{kEndOfText, 199999}, {kEndOfPrompt, 200018}}, 200019},
      {"o200k_harmony", PretokenizerKind::o200k, "o200k_base.tiktoken", kO200kSha, harmony_specials(),
       201088},
  };
  return all;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

std::vector<std::string> encoding_names() {
  std::vector<std::string> names;
  for (const EncodingSpec& s : specs()) names.push_back(s.name);
  return names;
}

const EncodingSpec& encoding_spec(std::string_view name) {
  for (const EncodingSpec& s : specs()) {
    if (s.name == name) return s;
  }
  std::string known;
  for (const std::string& n : encoding_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error(ErrorCode::not_found,
              "unknown encoding '" + std::string(name) + "'; known encodings: " + known);
}

std::shared_ptr<const Encoding> get_encoding(std::string_view name, const std::string& vocab_dir) {
  const EncodingSpec& spec = encoding_spec(name);
  std::string dir = vocab_dir;
  if (dir.empty()) {
    const char* env = std::getenv("TOKENLANE_VOCAB_DIR");
    if (env == nullptr || *env == '\0') {
      throw Error(ErrorCode::vocab_missing,
                  "no vocabulary directory for " + spec.name + ": set TOKENLANE_VOCAB_DIR to a "
                  "directory holding " + spec.rank_file + " (the Python package downloads and "
                  "caches it for you: python -m tokenlane fetch)");
    }
    dir = env;
  }
  std::string path = dir + "/" + spec.rank_file;

  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const Encoding>> cache;  // key: name + '\0' + path
  std::string key = spec.name + '\0' + path;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  // Load outside the lock: parsing takes ~100 ms and other encodings should not wait for it.
  std::shared_ptr<const Encoding> enc = Encoding::from_rank_file(spec, path);
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(key, std::move(enc)).first->second;
}

std::string encoding_name_for_model(std::string_view model) {
  // Meaning taken from tiktoken 0.14's model.py: exact names first, then prefixes in order.
  static const std::map<std::string, std::string, std::less<>> exact = {
      {"o1", "o200k_base"}, {"o3", "o200k_base"}, {"o4-mini", "o200k_base"}, {"gpt-5", "o200k_base"},
      {"gpt-4.1", "o200k_base"}, {"gpt-4o", "o200k_base"}, {"gpt-4", "cl100k_base"},
      {"gpt-3.5-turbo", "cl100k_base"}, {"gpt-3.5", "cl100k_base"}, {"gpt-35-turbo", "cl100k_base"},
      {"davinci-002", "cl100k_base"}, {"babbage-002", "cl100k_base"},
      {"text-embedding-ada-002", "cl100k_base"}, {"text-embedding-3-small", "cl100k_base"},
      {"text-embedding-3-large", "cl100k_base"}, {"text-davinci-003", "p50k_base"},
      {"text-davinci-002", "p50k_base"}, {"text-davinci-001", "r50k_base"},
      {"text-curie-001", "r50k_base"}, {"text-babbage-001", "r50k_base"},
      {"text-ada-001", "r50k_base"}, {"davinci", "r50k_base"}, {"curie", "r50k_base"},
      {"babbage", "r50k_base"}, {"ada", "r50k_base"}, {"code-davinci-002", "p50k_base"},
      {"code-davinci-001", "p50k_base"}, {"code-cushman-002", "p50k_base"},
      {"code-cushman-001", "p50k_base"}, {"davinci-codex", "p50k_base"},
      {"cushman-codex", "p50k_base"}, {"text-davinci-edit-001", "p50k_edit"},
      {"code-davinci-edit-001", "p50k_edit"}, {"text-similarity-davinci-001", "r50k_base"},
      {"text-similarity-curie-001", "r50k_base"}, {"text-similarity-babbage-001", "r50k_base"},
      {"text-similarity-ada-001", "r50k_base"}, {"text-search-davinci-doc-001", "r50k_base"},
      {"text-search-curie-doc-001", "r50k_base"}, {"text-search-babbage-doc-001", "r50k_base"},
      {"text-search-ada-doc-001", "r50k_base"}, {"code-search-babbage-code-001", "r50k_base"},
      {"code-search-ada-code-001", "r50k_base"},
      {"gpt2", "gpt2"}, {"gpt-2", "gpt2"},
  };
  static const std::vector<std::pair<std::string, std::string>> prefixes = {
      {"o1-", "o200k_base"}, {"o3-", "o200k_base"}, {"o4-mini-", "o200k_base"},
      {"gpt-5", "o200k_base"}, {"gpt-4.5-", "o200k_base"}, {"gpt-4.1-", "o200k_base"},
      {"chatgpt-4o-", "o200k_base"}, {"gpt-4o-", "o200k_base"}, {"gpt-4-", "cl100k_base"},
      {"gpt-3.5-turbo-", "cl100k_base"}, {"gpt-35-turbo-", "cl100k_base"},
      {"gpt-oss-", "o200k_harmony"}, {"ft:gpt-4o", "o200k_base"}, {"ft:gpt-4", "cl100k_base"},
      {"ft:gpt-3.5-turbo", "cl100k_base"}, {"ft:davinci-002", "cl100k_base"},
      {"ft:babbage-002", "cl100k_base"},
  };
  auto it = exact.find(model);
  if (it != exact.end()) return it->second;
  for (const auto& [prefix, encoding] : prefixes) {
    if (starts_with(model, prefix)) return encoding;
  }
  throw Error(ErrorCode::not_found,
              "no exact tokenizer is known for model '" + std::string(model) +
                  "'; pass an encoding name (e.g. o200k_base) or use the approximate counter");
}

}  // namespace tokenlane
