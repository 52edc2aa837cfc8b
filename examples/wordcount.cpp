// Counts the words of the files, and of every regular file under the
// directories, given on the command line, one file per task, over imap_unordered, with a
// progress line from pool.stats(); then prints the total and the ten most common words.
// A file that cannot be read is reported and skipped, not fatal.
//
//   $ ./wordcount /usr/share/doc
//   [1234/1234] files, 0 running, 0 queued, 0 unreadable, 0 workers replaced
//   1234 files, 5678901 words (0 unreadable)
//   the          123456
//   ...
#include <procpool/procpool.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fs = std::filesystem;

struct file_count {
  std::string path;
  std::uint64_t words = 0;
  std::unordered_map<std::string, std::uint64_t> freq;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(path, words, freq);
  }
};

// Runs in a worker process. A binary file (a NUL byte in its first 4 KiB)
// counts no words.
file_count count_words(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  file_count c{path, 0, {}};
  if (text.find('\0') < 4096) return c;
  std::string word;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    const unsigned char ch = i < text.size() ? static_cast<unsigned char>(text[i]) : ' ';
    if (std::isalpha(ch)) {
      word += static_cast<char>(std::tolower(ch));
    } else if (!word.empty()) {
      ++c.words;
      ++c.freq[word];
      word.clear();
    }
  }
  return c;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (fs::is_regular_file(argv[i], ec)) {
      files.push_back(argv[i]);
      continue;
    }
    for (auto it = fs::recursive_directory_iterator(argv[i], fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    }
    if (ec) std::fprintf(stderr, "%s: %s\n", argv[i], ec.message().c_str());
  }

  procpool::Pool pool(count_words);
  std::uint64_t total = 0, done = 0, failed = 0;
  std::unordered_map<std::string, std::uint64_t> freq;
  auto results = pool.imap_unordered(files, {.chunksize = 1});
  for (auto it = results.begin(); it != results.end(); ++it) {
    ++done;
    try {
      const file_count& c = *it;
      total += c.words;
      for (const auto& [w, n] : c.freq) freq[w] += n;
    } catch (const procpool::task_error& e) {
      ++failed;  // e.g. a file removed since it was listed
    }
    if (done % 64 == 0 || done == files.size()) {
      const procpool::pool_stats s = pool.stats();
      std::fprintf(stderr, "\r[%llu/%zu] files, %llu running, %llu queued, %llu unreadable, %llu workers replaced",
                   static_cast<unsigned long long>(s.done + s.failed), files.size(),
                   static_cast<unsigned long long>(s.running), static_cast<unsigned long long>(s.queued),
                   static_cast<unsigned long long>(s.failed),
                   static_cast<unsigned long long>(s.workers_replaced));
    }
  }
  std::fprintf(stderr, "\n");

  std::printf("%zu files, %llu words (%llu unreadable)\n", files.size(),
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(failed));
  std::vector<std::pair<std::string, std::uint64_t>> top(freq.begin(), freq.end());
  const auto k = std::min<std::size_t>(10, top.size());
  std::partial_sort(top.begin(), top.begin() + static_cast<long>(k), top.end(),
                    [](auto& a, auto& b) { return a.second > b.second; });
  for (std::size_t i = 0; i < k; ++i)
    std::printf("%-12s %llu\n", top[i].first.c_str(), static_cast<unsigned long long>(top[i].second));
}
