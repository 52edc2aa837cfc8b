// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file async_result.hpp
/// procpool::mpi::async_result, what apply_async and map_async of an mpi::Pool return.

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "../async_result.hpp"
#include "../errors.hpp"
#include "detail/master.hpp"

namespace procpool::mpi {

template <class F>
class Pool;

/// The pending result of an mpi::Pool's apply_async or map_async (Python's
/// AsyncResult): get(), wait() and their timed forms, ready(), successful().
/// @code
/// auto r = pool.apply_async(7);
/// int v = r.get_for(std::chrono::seconds(5));  // timeout_error after 5 s
/// @endcode
template <class T>
class async_result {
 public:
  using value_type = T;
  /// Waits for the result and returns it; throws the task's error
  /// (for map_async, the error of the lowest failing index). Call once.
  T get() {
    wait();
    if (taken_)
      throw usage_error("procpool::mpi::async_result::get: the result was taken already; "
                        "get() once");
    taken_ = true;
    try {
      if constexpr (std::is_void_v<T>) {
        m_->locked(take_);
        ok_ = 1;
      } else {
        T v = m_->locked(take_);
        ok_ = 1;
        return v;
      }
    } catch (...) {
      ok_ = -1;
      throw;
    }
  }
  /// Like get(), waiting at most @p timeout. @throws timeout_error when the
  /// result is not there by then; the call goes on and get() can be called again.
  template <class Rep, class Period>
  T get_for(std::chrono::duration<Rep, Period> timeout) {
    if (!wait_for(timeout))
      throw procpool::detail::timed_out("procpool::mpi::async_result::get_for", timeout);
    return get();
  }
  /// Waits until the result is ready.
  void wait() { wait_until_ns(std::numeric_limits<std::int64_t>::max()); }
  /// Waits at most @p timeout; true when ready.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until_ns(procpool::detail::deadline_after(timeout));
  }
  /// True when the result (or error) is there; does not wait.
  bool ready() { return wait_for(std::chrono::nanoseconds(0)); }
  /// Python's successful(): true when the call finished without an error.
  /// @throws usage_error when the result is not ready yet.
  bool successful() {
    if (ok_ != 0) return ok_ > 0;
    if (!ready())
      throw usage_error("procpool::mpi::async_result::successful: the result is not ready; "
                        "wait() first");
    return m_->locked([&] { return !job_->failed(); });
  }

 private:
  template <class>
  friend class Pool;
  async_result(std::shared_ptr<detail::master> m, std::shared_ptr<procpool::detail::job> j,
               std::function<T()> take)
      : m_(std::move(m)), job_(std::move(j)), take_(std::move(take)) {}
  bool wait_until_ns(std::int64_t deadline) {
    if (!m_)
      throw usage_error("procpool::mpi::async_result: this async_result is empty (moved from)");
    return m_->run_until([&] { return job_->complete(); }, deadline);
  }

  std::shared_ptr<detail::master> m_;
  std::shared_ptr<procpool::detail::job> job_;
  std::function<T()> take_;  // moves the value out of the job; under the lock
  bool taken_ = false;
  int ok_ = 0;  // after get(): 1 succeeded, -1 failed
};

}  // namespace procpool::mpi
