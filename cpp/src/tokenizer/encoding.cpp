#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <queue>
#include <sstream>
#include <thread>

#include "../util/sha256.hpp"
#include "bpe.hpp"
#include "special.hpp"
#include "pretokenize.hpp"
#include "tokenlane/tokenizer.hpp"

namespace tokenlane {

using detail::Vocabulary;

struct Encoding::Impl {
  EncodingSpec spec;
  Vocabulary vocab;
  SpecialSet special_strings;
  detail::SpecialMatcher all_specials;  // every special token; the common "all" case is prebuilt

  // Calls out.push(rank) for every token of the ordinary (no special tokens) text.
  template <class Out>
  void encode_ordinary(std::string_view text, Out& out) const {
    encode_ordinary(text, out, vocab.thread_cache());
  }
  // What the pre-tokenizers call for each piece: the vocabulary's merge (through the piece cache),
  // or, for pieces of ASCII digits, the digit table when the vocabulary has one.
  template <class Out>
  struct Pieces {
    const Vocabulary& vocab;
    const unsigned char* s;
    const unsigned char* end;
    detail::PieceCache& cache;
    Out& out;
    void operator()(std::size_t b, std::size_t e) { vocab.encode_piece(s + b, e - b, end, cache, out); }
    void digits(std::size_t b, std::size_t e) {
      if (vocab.digits_are_tokens()) return out.push(vocab.digit_rank(s + b, e - b));
      (*this)(b, e);
    }
    void digit_run(std::size_t b, std::size_t e) {
      if (vocab.digits_are_tokens()) return vocab.encode_digit_run(s + b, e - b, out);
      for (; b + 3 < e; b += 3) (*this)(b, b + 3);
      (*this)(b, e);
    }
  };

  template <class Out>
  void encode_ordinary(std::string_view text, Out& out, detail::PieceCache& cache) const {
    cache.tick(text.size());
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    Pieces<Out> piece{vocab, s, s + text.size(), cache, out};
    switch (spec.pretokenizer) {
      case PretokenizerKind::gpt2:
        detail::split_gpt2(s, text.size(), piece);
        break;
      case PretokenizerKind::cl100k:
        detail::split_cl100k(s, text.size(), piece);
        break;
      case PretokenizerKind::o200k:
        detail::split_o200k(s, text.size(), piece);
        break;
    }
  }

  // As encode_ordinary, but occurrences of `allowed` special tokens become their ids. Each stretch of
  // ordinary text between specials is split on its own, as tiktoken does.
  template <class Out>
  void encode(std::string_view text, const SpecialSet& allowed, Out& out) const {
    encode(text, allowed, out, vocab.thread_cache());
  }
  template <class Out>
  void encode(std::string_view text, const SpecialSet& allowed, Out& out, detail::PieceCache& cache) const {
    if (allowed.empty()) return encode_ordinary(text, out, cache);
    detail::SpecialMatcher local;
    const detail::SpecialMatcher& matcher = matcher_for(allowed, local);
    while (!text.empty()) {
      auto [pos, special] = matcher.find(text);
      if (pos == std::string_view::npos) return encode_ordinary(text, out, cache);
      encode_ordinary(text.substr(0, pos), out, cache);
      out.push(special_rank(special));
      text.remove_prefix(pos + special.size());
    }
  }

  // The prebuilt matcher when `specials` is the full set (the common case), else one built in `local`.
  const detail::SpecialMatcher& matcher_for(const SpecialSet& specials, detail::SpecialMatcher& local) const {
    if (&specials == &special_strings || specials == special_strings) return all_specials;
    local = detail::SpecialMatcher(specials);
    return local;
  }

  std::pair<std::size_t, std::string_view> find_special(std::string_view text,
                                                        const SpecialSet& specials) const {
    if (specials.empty()) return {std::string_view::npos, {}};
    detail::SpecialMatcher local;
    return matcher_for(specials, local).find(text);
  }

  Rank special_rank(std::string_view text) const {
    for (const auto& [s, r] : spec.special_tokens) {
      if (s == text) return r;
    }
    throw Error(ErrorCode::invalid_argument,
                "'" + std::string(text) + "' is not a special token of " + spec.name);
  }

  // Batch thread k's piece cache for one call: the calling thread's own for k = 0, else the
  // encoding's cache for worker k. Batch threads live for one call, and a thread's own cache dies
  // with it; the workers' caches outlive the call, so the next batch starts warm, and worker k gets
  // cache k again, which saw the same block of the previous batch (see BatchClaims). A batch running
  // beside another on the same encoding makes fresh ones for what is taken.
  class BatchCache {
   public:
    BatchCache(const Impl& impl, unsigned k) : impl_(impl), k_(k) {
      if (k == 0) {
        cache_ = &impl.vocab.thread_cache();
        return;
      }
      {
        std::lock_guard<std::mutex> lock(impl.spare_mutex);
        if (k <= impl.spare_caches.size()) spare_ = std::move(impl.spare_caches[k - 1]);
      }
      if (!spare_) spare_ = std::make_unique<detail::PieceCache>();
      cache_ = spare_.get();
    }
    ~BatchCache() {
      if (!spare_) return;
      std::lock_guard<std::mutex> lock(impl_.spare_mutex);
      if (impl_.spare_caches.size() < k_) impl_.spare_caches.resize(k_);
      if (!impl_.spare_caches[k_ - 1]) impl_.spare_caches[k_ - 1] = std::move(spare_);
    }
    BatchCache(const BatchCache&) = delete;
    BatchCache& operator=(const BatchCache&) = delete;
    detail::PieceCache& operator*() const { return *cache_; }

   private:
    const Impl& impl_;
    unsigned k_;
    std::unique_ptr<detail::PieceCache> spare_;
    detail::PieceCache* cache_;
  };
  mutable std::mutex spare_mutex;
  mutable std::vector<std::unique_ptr<detail::PieceCache>> spare_caches;  // [k - 1]: worker k's

  void check_specials(const SpecialSet& allowed) const {
    if (&allowed == &special_strings) return;
    for (const std::string& s : allowed) special_rank(s);
  }
};

namespace {

// Where encode_piece and encode_digit_run put tokens: a vector, or a count (kNeedsIds = false: the
// tokens' values are never read).
struct VectorOut {
  static constexpr bool kNeedsIds = true;
  std::vector<Rank>& v;
  void push(Rank r) { v.push_back(r); }
  void push_n(Rank r, std::size_t n) { v.insert(v.end(), n, r); }
};

struct CountOut {
  static constexpr bool kNeedsIds = false;
  std::size_t n = 0;
  void push(Rank) { ++n; }
  void push_n(Rank, std::size_t k) { n += k; }
};

// Which thread of a batch encodes which text. Thread k of T first takes the texts of its own block,
// [k n / T, (k + 1) n / T), in order, then helps with what is left, from the end of the batch down.
// Blocks keep neighbouring texts (often of one language or source) on one thread, and a batch
// encoded again (a dataset counted more than once) on the threads whose piece caches saw it. Python
// benchmark, o200k, 2 threads, count_batch MB/s, three runs handing out the texts one by one in index
// order against six in blocks, alternating: Chinese 177-179 -> 166-271, code 566-643 -> 647-811,
// German 329-397 -> 423-609, Japanese 151-220 -> 212-267.
class BatchClaims {
 public:
  BatchClaims(std::size_t n, unsigned threads) : n_(n), threads_(threads), taken_(new std::atomic<bool>[n]()) {}

  struct Cursor {
    std::size_t own, own_end, rest;
  };
  Cursor cursor(unsigned k) const { return {n_ * k / threads_, n_ * (k + 1) / threads_, n_}; }

  // The next text for the cursor's thread, or n when every text is taken.
  std::size_t next(Cursor& c) {
    while (c.own < c.own_end) {
      if (claim(c.own++)) return c.own - 1;
    }
    while (c.rest > 0) {
      if (claim(--c.rest)) return c.rest;
    }
    return n_;
  }

 private:
  bool claim(std::size_t i) {
    return !taken_[i].load(std::memory_order_relaxed) && !taken_[i].exchange(true, std::memory_order_relaxed);
  }
  std::size_t n_;
  unsigned threads_;
  std::unique_ptr<std::atomic<bool>[]> taken_;
};

// Runs fn(i, cache) for i in [0, n) on up to `threads` threads (BatchClaims), each with its
// BatchCache; the first exception is rethrown.
template <class Fn>
void parallel_for(const Encoding::Impl& impl, std::size_t n, unsigned threads, Fn fn) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<std::size_t>(threads, n));
  if (threads <= 1) {
    detail::PieceCache& cache = impl.vocab.thread_cache();
    for (std::size_t i = 0; i < n; ++i) fn(i, cache);
    return;
  }
  BatchClaims claims(n, threads);
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&](unsigned k) {
    try {
      Encoding::Impl::BatchCache cache(impl, k);
      BatchClaims::Cursor cursor = claims.cursor(k);
      for (std::size_t i; !failed.load() && (i = claims.next(cursor)) < n;) fn(i, *cache);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

Encoding::Encoding(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Encoding::~Encoding() = default;

std::shared_ptr<const Encoding> Encoding::from_rank_file_contents(EncodingSpec spec,
                                                                   std::string_view contents) {
  if (!spec.expected_sha256.empty()) {
    std::string actual = detail::sha256_hex(contents);
    if (actual != spec.expected_sha256) {
      throw Error(ErrorCode::vocab_corrupt,
                  "rank file for " + spec.name + " has SHA-256 " + actual + ", expected " +
                      spec.expected_sha256 +
                      "; the file is corrupt or from another encoding: delete it and let tokenlane "
                      "fetch it again, or put a verified copy in $TOKENLANE_VOCAB_DIR");
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->vocab = Vocabulary::parse(spec.name, contents, spec.special_tokens);
  impl->spec = std::move(spec);
  for (const auto& st : impl->spec.special_tokens) impl->special_strings.push_back(st.first);
  impl->all_specials = detail::SpecialMatcher(impl->special_strings);
  return std::shared_ptr<const Encoding>(new Encoding(std::move(impl)));
}

std::shared_ptr<const Encoding> Encoding::from_tokens(EncodingSpec spec,
                                                     std::vector<std::pair<std::string, Rank>> tokens) {
  auto impl = std::make_unique<Impl>();
  impl->vocab = Vocabulary::from_tokens(spec.name, std::move(tokens), spec.special_tokens);
  impl->spec = std::move(spec);
  for (const auto& st : impl->spec.special_tokens) impl->special_strings.push_back(st.first);
  impl->all_specials = detail::SpecialMatcher(impl->special_strings);
  return std::shared_ptr<const Encoding>(new Encoding(std::move(impl)));
}

std::shared_ptr<const Encoding> Encoding::from_rank_file(EncodingSpec spec, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(ErrorCode::vocab_missing,
                "cannot read rank file " + path + " for " + spec.name +
                    ": put a verified copy there (TOKENLANE_VOCAB_DIR or the directory you passed), "
                    "or unset TOKENLANE_VOCAB_DIR and run `tokenlane fetch " + spec.name +
                    "` to download, verify and cache it");
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  return from_rank_file_contents(std::move(spec), buf.str());
}

const std::string& Encoding::name() const noexcept { return impl_->spec.name; }
std::size_t Encoding::n_vocab() const noexcept { return impl_->spec.n_vocab; }
const std::vector<std::pair<std::string, Rank>>& Encoding::special_tokens() const noexcept {
  return impl_->spec.special_tokens;
}

PretokenizerKind Encoding::pretokenizer() const noexcept { return impl_->spec.pretokenizer; }

std::vector<std::pair<std::string_view, Rank>> Encoding::ordinary_tokens() const {
  std::vector<std::pair<std::string_view, Rank>> out;
  const detail::Vocabulary& v = impl_->vocab;
  for (Rank r = 0; r < v.size(); ++r) {
    std::string_view b = v.token_bytes(r);
    if (b.data() != nullptr && v.find_rank(reinterpret_cast<const unsigned char*>(b.data()), b.size()) == r) {
      out.emplace_back(b, r);
    }
  }
  return out;
}

std::vector<Rank> Encoding::encode_ordinary(std::string_view utf8) const {
  std::vector<Rank> v;
  v.reserve(utf8.size() / 4 + 4);
  VectorOut out{v};
  impl_->encode_ordinary(utf8, out);
  return v;
}

std::vector<Rank> Encoding::encode(std::string_view utf8, const SpecialSet& allowed) const {
  std::vector<Rank> v;
  encode_into(utf8, allowed, v);
  return v;
}

void Encoding::encode_into(std::string_view utf8, const SpecialSet& allowed, std::vector<Rank>& v) const {
  impl_->check_specials(allowed);
  v.clear();
  v.reserve(utf8.size() / 4 + 4);
  VectorOut out{v};
  impl_->encode(utf8, allowed, out);
}

std::size_t Encoding::count(std::string_view utf8) const {
  CountOut out;
  impl_->encode_ordinary(utf8, out);
  return out.n;
}

std::size_t Encoding::count(std::string_view utf8, const SpecialSet& allowed) const {
  impl_->check_specials(allowed);
  CountOut out;
  impl_->encode(utf8, allowed, out);
  return out.n;
}

std::vector<std::vector<Rank>> Encoding::encode_batch(const std::vector<std::string_view>& texts,
                                                      const SpecialSet& allowed,
                                                      unsigned num_threads) const {
  impl_->check_specials(allowed);
  std::vector<std::vector<Rank>> result(texts.size());
  parallel_for(*impl_, texts.size(), num_threads, [&](std::size_t i, detail::PieceCache& cache) {
    result[i].reserve(texts[i].size() / 4 + 4);
    VectorOut out{result[i]};
    impl_->encode(texts[i], allowed, out, cache);
  });
  return result;
}

void Encoding::encode_batch_each(const std::vector<std::string_view>& texts, const SpecialSet& allowed,
                                 unsigned num_threads,
                                 const std::function<void(std::size_t, std::vector<Rank>&)>& deliver,
                                 const std::function<void()>& leave, const std::function<void()>& enter) const {
  impl_->check_specials(allowed);
  const std::size_t n = texts.size();
  if (num_threads == 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
  const unsigned workers = static_cast<unsigned>(std::min<std::size_t>(num_threads, n > 0 ? n : 1) - 1);
  std::vector<std::vector<Rank>> result(n);
  BatchClaims claims(n, workers + 1);
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::condition_variable done;          // a worker finished a text, or failed
  std::vector<std::size_t> finished;     // texts the workers encoded, not yet delivered (under mutex)
  std::exception_ptr worker_error;       // (under mutex)
  auto encode_one = [&](std::size_t i, detail::PieceCache& cache) {
    result[i].reserve(texts[i].size() / 4 + 4);
    VectorOut out{result[i]};
    impl_->encode(texts[i], allowed, out, cache);
  };
  auto work = [&](unsigned k) {
    try {
      Impl::BatchCache cache(*impl_, k);
      BatchClaims::Cursor cursor = claims.cursor(k);
      for (std::size_t i; !stop.load() && (i = claims.next(cursor)) < n;) {
        encode_one(i, *cache);
        {
          std::lock_guard<std::mutex> lock(mutex);
          finished.push_back(i);
        }
        done.notify_one();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!worker_error) worker_error = std::current_exception();
      stop.store(true);
    }
    done.notify_one();
  };
  std::vector<std::thread> pool;
  pool.reserve(workers);
  // Joins the workers however this function is left (no text is started after `stop`).
  struct Joiner {
    std::vector<std::thread>& pool;
    std::atomic<bool>& stop;
    ~Joiner() {
      stop.store(true);
      for (auto& t : pool) t.join();
    }
  } joiner{pool, stop};
  for (unsigned t = 1; t <= workers; ++t) pool.emplace_back(work, t);
  // This thread delivers what the workers finished, then encodes a text of its own (and delivers
  // it), until every text is delivered; with nothing left to encode it waits for the workers.
  Impl::BatchCache own_cache(*impl_, 0);
  BatchClaims::Cursor own_cursor = claims.cursor(0);
  std::vector<std::size_t> to_deliver;
  for (std::size_t delivered = 0; delivered < n;) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (worker_error) std::rethrow_exception(worker_error);
      to_deliver.swap(finished);
    }
    for (std::size_t i : to_deliver) deliver(i, result[i]);
    delivered += to_deliver.size();
    to_deliver.clear();
    if (delivered == n) break;
    std::size_t mine = n;
    leave();
    try {
      if (!stop.load() && (mine = claims.next(own_cursor)) < n) {
        encode_one(mine, *own_cache);
      } else {
        std::unique_lock<std::mutex> lock(mutex);
        done.wait(lock, [&] { return !finished.empty() || worker_error != nullptr; });
      }
    } catch (...) {
      enter();
      throw;
    }
    enter();
    if (mine < n) {
      deliver(mine, result[mine]);
      ++delivered;
    }
  }
}

std::vector<std::size_t> Encoding::count_batch(const std::vector<std::string_view>& texts,
                                               const SpecialSet& allowed,
                                               unsigned num_threads) const {
  impl_->check_specials(allowed);
  std::vector<std::size_t> result(texts.size());
  parallel_for(*impl_, texts.size(), num_threads, [&](std::size_t i, detail::PieceCache& cache) {
    CountOut out;
    impl_->encode(texts[i], allowed, out, cache);
    result[i] = out.n;
  });
  return result;
}

std::pair<std::size_t, std::string_view> Encoding::find_special(std::string_view utf8,
                                                                const SpecialSet& specials) const {
  return impl_->find_special(utf8, specials);
}

void Encoding::check_disallowed_special(std::string_view utf8, const SpecialSet& disallowed) const {
  auto [pos, special] = impl_->find_special(utf8, disallowed);
  if (pos == std::string_view::npos) return;
  throw Error(ErrorCode::disallowed_special,
              "Encountered text corresponding to disallowed special token '" + std::string(special) +
                  "' at byte " + std::to_string(pos) +
                  ". To encode it as a special token, pass it in allowed_special (or 'all'); to "
                  "encode it as normal text, pass disallowed_special=() or remove it from that set.");
}

const SpecialSet& Encoding::special_token_strings() const noexcept { return impl_->special_strings; }

std::string_view Encoding::token_bytes(Rank token) const {
  std::string_view b = impl_->vocab.token_bytes(token);
  if (b.data() == nullptr) {
    throw Error(ErrorCode::invalid_argument, "token id " + std::to_string(token) +
                                                 " is not in the vocabulary of " + name());
  }
  return b;
}

std::string Encoding::decode_bytes(const Rank* tokens, std::size_t n) const {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out.append(token_bytes(tokens[i]));
  return out;
}

std::int64_t Encoding::encode_single_token(std::string_view bytes) const {
  std::int64_t r = bytes.empty() ? -1 : impl_->vocab.find(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  if (r >= 0) return r;
  for (const auto& [text, rank] : impl_->spec.special_tokens) {
    if (text == bytes) return rank;
  }
  return -1;
}

}  // namespace tokenlane
