// procpool benchmarks: the work functions (see work.hpp). Kept out of line on
// purpose: the build does not use LTO, so every caller runs this code as is.
#include "work.hpp"

namespace bench {

std::int64_t square(int x) { return std::int64_t{x} * x; }

int tiny(int x) { return x * x; }

std::uint64_t length(const std::vector<char>& b) { return length(b.data(), b.size()); }

std::uint64_t length(const char*, std::size_t n) { return n; }

std::uint64_t burn(std::uint64_t iters) {
  std::uint64_t x = iters;
  for (std::uint64_t i = 0; i < iters; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    x ^= x >> 29;
  }
  return x;
}

}  // namespace bench
