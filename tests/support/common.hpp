// procpool tests: time, inputs and strings every test file uses.
#pragma once

#include <procpool/procpool.hpp>

#include <chrono>
#include <exception>
#include <numeric>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

namespace procpool_test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

inline void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

/// first, first + 1, ..., first + n - 1.
inline std::vector<int> iota_vec(int n, int first = 0) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// "type: what()" of @p e, for a test's messages.
inline std::string type_and_what(const std::exception& e) {
  return procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
}

}  // namespace procpool_test
