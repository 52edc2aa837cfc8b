// procpool benchmarks: the work every C++ peer runs. The functions live in
// work.cpp, a translation unit of their own, so that the serial loop, the
// std::thread pool, the message_queue pool and procpool all call the same
// out-of-line machine code: no peer gets a copy inlined or vectorized into
// its own loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bench {

/// (a): x * x, widened so that it cannot overflow.
std::int64_t square(int x);

/// (b), (e): the smallest task there is.
int tiny(int x);

/// (c): a buffer's length, so that (c) measures the transport alone.
std::uint64_t length(const std::vector<char>& b);
/// The same, for a peer that holds the buffer as raw bytes.
std::uint64_t length(const char* p, std::size_t n);

/// (d), (f): @p iters dependent multiply-add-xorshift steps.
std::uint64_t burn(std::uint64_t iters);

}  // namespace bench
