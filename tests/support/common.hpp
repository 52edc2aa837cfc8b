// procpool tests: time, inputs and strings every test file uses.
#pragma once

#include <procpool/procpool.hpp>

#include <chrono>
#include <csignal>
#include <exception>
#include <stdexcept>
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

/// The task most tests run: sleeps @p ms milliseconds and returns it. A
/// negative @p ms throws, except -9: the worker kills itself with SIGKILL.
inline int nap(int ms) {
  if (ms == -9) ::raise(SIGKILL);
  if (ms < 0) throw std::runtime_error("negative nap " + std::to_string(ms));
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

/// Polls @p cond for up to 10 s without touching any pool; true when it held.
template <class Cond>
bool eventually(Cond cond) {
  const auto until = Clock::now() + 10s;
  while (!cond()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

/// The what() of the exception @p e holds.
inline std::string what_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
}

/// "type: what()" of @p e, for a test's messages.
inline std::string type_and_what(const std::exception& e) {
  return procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
}

}  // namespace procpool_test
