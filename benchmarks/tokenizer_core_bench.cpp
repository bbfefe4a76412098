// Where the C++ core's encode time goes, per corpus file: the pre-tokenizer alone (split), the
// pre-tokenizer piece at a time (the windows' scalar reference; o200k, cl100k), and whole
// encode/count, in MB/s of this thread's CPU time (steady on a shared machine), best of --reps.
//
//   tokenizer_core_bench ENCODING FILE... [--reps N] [--only split|scalar|encode|count|batch] [--isa ...]
//
// --only runs one mode (for a profiler; batch: all files in one count_batch, 1 and 2 threads); --isa lowers the window classifier from the best
// this CPU has (the runtime dispatch) to compare the variants.
//
// A FILE holds documents separated by NUL bytes (benchmarks/tokenizer.py --dump-corpus DIR writes
// one per category); each document is encoded by its own call, as the Python benchmark does. Needs
// $TOKENLANE_VOCAB_DIR. Built with the C++ tests (so it always compiles), never run by them.
#include <time.h>

#include <string_view>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/pretokenize.hpp"
#include "tokenlane/tokenizer.hpp"

namespace {

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

std::vector<std::string> read_docs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string all = buf.str();
  std::vector<std::string> docs;
  for (std::size_t b = 0; b < all.size();) {
    std::size_t e = all.find('\0', b);
    if (e == std::string::npos) e = all.size();
    if (e > b) docs.push_back(all.substr(b, e - b));
    b = e + 1;
  }
  return docs;
}

// Best MB/s of `reps` passes of fn(doc) over the documents.
template <class Fn>
double best_mbps(const std::vector<std::string>& docs, int reps, Fn fn) {
  std::size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  for (const auto& d : docs) fn(d);  // warm-up: piece caches, branch predictors
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_seconds();
    for (const auto& d : docs) fn(d);
    best = std::min(best, cpu_seconds() - t0);
  }
  return static_cast<double>(bytes) / 1e6 / best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s ENCODING FILE... [--reps N]\n", argv[0]);
    return 2;
  }
  int reps = 5;
  std::string only;
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
#if defined(TOKENLANE_WINDOW_DISPATCH)
    else if (std::strcmp(argv[i], "--isa") == 0 && i + 1 < argc) {
      using tokenlane::detail::WindowIsa;
      const std::string isa = argv[++i];
      const WindowIsa want = isa == "avx512" ? WindowIsa::avx512 : isa == "avx2" ? WindowIsa::avx2 : WindowIsa::sse2;
      tokenlane::detail::window_isa = std::min(want, tokenlane::detail::best_window_isa());
    }
#endif
    else files.emplace_back(argv[i]);
  }
  auto wanted = [&](const char* mode) { return only.empty() || only == mode; };
  const auto enc = tokenlane::get_encoding(argv[1]);
  using tokenlane::PretokenizerKind;
  const PretokenizerKind kind = enc->pretokenizer();
  std::printf("| file | split | split, piece at a time | encode | count | pieces/KB | tokens/KB |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  volatile std::size_t sink_total = 0;
  for (const auto& path : files) {
    const auto docs = read_docs(path);
    std::size_t pieces = 0, tokens = 0, bytes = 0;
    auto split = [&](const std::string& d, bool scalar) {
      const auto* s = reinterpret_cast<const unsigned char*>(d.data());
      std::size_t acc = 0, np = 0;
      auto sink = [&](std::size_t, std::size_t e) { acc += e; ++np; };
      using namespace tokenlane::detail;
      if (kind != PretokenizerKind::gpt2 && scalar) {
        const Cursor t(s, d.size());
        const AsciiScan a{s, d.size()};
        const bool o200k = kind == PretokenizerKind::o200k;
        for (std::size_t i = 0; i < d.size();)
          sink(i, i = o200k ? scalar_piece_end<PretokenizerKind::o200k>(t, a, i)
                            : scalar_piece_end<PretokenizerKind::cl100k>(t, a, i));
      } else if (kind == PretokenizerKind::o200k) {
        split_o200k(s, d.size(), sink);
      } else if (kind == PretokenizerKind::cl100k) {
        split_cl100k(s, d.size(), sink);
      } else {
        split_gpt2(s, d.size(), sink);
      }
      sink_total = sink_total + acc;
      return np;
    };
    for (const auto& d : docs) {
      pieces += split(d, false);
      tokens += enc->count(d);
      bytes += d.size();
    }
    const double split_mbps =
        wanted("split") ? best_mbps(docs, reps, [&](const std::string& d) { split(d, false); }) : 0.0;
    const double scalar_mbps = kind != PretokenizerKind::gpt2 && wanted("scalar")
                                   ? best_mbps(docs, reps, [&](const std::string& d) { split(d, true); })
                                   : 0.0;
    std::vector<tokenlane::Rank> ids;
    const double encode_mbps = !wanted("encode") ? 0.0 : best_mbps(docs, reps, [&](const std::string& d) {
      enc->encode_into(d, {}, ids);
      sink_total = sink_total + ids.size();
    });
    const double count_mbps = !wanted("count") ? 0.0 : best_mbps(docs, reps, [&](const std::string& d) {
      sink_total = sink_total + enc->count(d);
    });
    std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", path.c_str(), split_mbps, scalar_mbps,
                encode_mbps, count_mbps, 1000.0 * static_cast<double>(pieces) / static_cast<double>(bytes),
                1000.0 * static_cast<double>(tokens) / static_cast<double>(bytes));
  }
  if (wanted("batch")) {
    // All files' documents in one batch (as a server's mixed traffic), count_batch on 1 and 2
    // threads: wall-clock MB/s and MB per CPU-second of the process (steady when threads add no
    // work, whatever else the machine runs).
    std::vector<std::string> all;
    for (const auto& path : files) {
      for (auto& d : read_docs(path)) all.push_back(std::move(d));
    }
    std::vector<std::string_view> views(all.begin(), all.end());
    std::size_t bytes = 0;
    for (const auto& d : all) bytes += d.size();
    std::printf("\n| batch of all files | threads | wall MB/s | MB per CPU-second |\n|---|---|---|---|\n");
    for (unsigned threads : {1u, 2u}) {
      for (int warm = 0; warm < 2; ++warm) enc->count_batch(views, {}, threads);
      double best_wall = 1e30, best_cpu = 1e30;
      for (int r = 0; r < reps; ++r) {
        timespec w0{}, w1{}, c0{}, c1{};
        clock_gettime(CLOCK_MONOTONIC, &w0);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
        sink_total = sink_total + enc->count_batch(views, {}, threads).size();
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        clock_gettime(CLOCK_MONOTONIC, &w1);
        auto secs = [](timespec a, timespec b) {
          return static_cast<double>(b.tv_sec - a.tv_sec) + 1e-9 * static_cast<double>(b.tv_nsec - a.tv_nsec);
        };
        best_wall = std::min(best_wall, secs(w0, w1));
        best_cpu = std::min(best_cpu, secs(c0, c1));
      }
      std::printf("| %zu docs, %.1f MB | %u | %.1f | %.1f |\n", all.size(), static_cast<double>(bytes) / 1e6, threads,
                  static_cast<double>(bytes) / 1e6 / best_wall, static_cast<double>(bytes) / 1e6 / best_cpu);
    }
  }
  return 0;
}
