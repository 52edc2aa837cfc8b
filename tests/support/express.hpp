// procpool tests: getting a call onto apply_async's express lane.
#pragma once

#include <chrono>
#include <optional>
#include <thread>

#include <catch2/catch.hpp>

namespace procpool_test {

/// Whether this machine can give the lane a worker on another CPU at all;
/// when not, says so in the test's output (the test then skips its checks).
inline bool have_two_cpus() {
  if (std::thread::hardware_concurrency() >= 2) return true;
  WARN("one CPU: the express lane needs a worker polling on another CPU");
  return false;
}

/// Calls pool.apply_async(args...) until a call takes the express lane (a
/// worker must be polling on another CPU: the answer to the call before keeps
/// the workers polling), for at most 30 s; nullopt if none did. The calls that
/// did not take it are waited for. 30 s, not 10: under ASan, beside another
/// test on the two CPUs, 10 s of tries once found no polling worker.
template <class Pool, class... Args>
auto express_call(Pool& pool, const Args&... args)
    -> std::optional<decltype(pool.apply_async(args...))> {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until) {
    auto r = pool.apply_async(args...);
    if (r.express()) return r;
    r.wait();
  }
  return std::nullopt;
}

}  // namespace procpool_test
