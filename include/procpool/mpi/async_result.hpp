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
#include <optional>
#include <type_traits>
#include <vector>
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
  /// Called with the value (no argument for void) when the call succeeds.
  using value_callback =
      std::conditional_t<std::is_void_v<T>, std::function<void()>, std::function<void(const T&)>>;
  /// Called with the call's error when it fails.
  using error_callback = std::function<void(std::exception_ptr)>;
  /// Waits for the result and returns it; throws the task's error
  /// (for map_async, the error of the lowest failing index). Call once.
  T get() {
    wait();
    if (taken_)
      throw usage_error("procpool::mpi::async_result::get: the result was taken already; "
                        "get() once");
    taken_ = true;
    if (cbs_) return take_fired();
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
    if (cbs_) return m_->locked([&] { return !cbs_->error; });
    return m_->locked([&] { return !job_->failed(); });
  }
  /// Runs @p on_value with the value, or @p on_error with the error,
  /// when the call finishes (Python's apply_async callback/error_callback).
  /// They run on the pool's progress thread, or in the thread that waits for
  /// this result if it gets there first; when the result is already there,
  /// before this returns. get(), wait() and ready() return after they ran. If
  /// a callback throws, get() throws callback_error with it nested. A callback
  /// may call the pool, and wait for its results, but not destroy it.
  /// @throws usage_error after get().
  void add_done_callback(value_callback on_value, error_callback on_error = {}) {
    if (!m_)
      throw usage_error("procpool::mpi::async_result: this async_result is empty (moved from)");
    if (taken_)
      throw usage_error("procpool::mpi::async_result::add_done_callback: after get(); add "
                        "callbacks before taking the result");
    bool run_now = false;
    if (!cbs_) {
      cbs_ = std::make_shared<state>();
      cbs_->list.emplace_back(std::move(on_value), std::move(on_error));
      auto st = cbs_;
      auto m = m_;
      auto take = take_;
      m_->when_done(job_, [st, m, take] { fire(*st, *m, take); });
      return;
    }
    m_->locked([&] {
      if (cbs_->stage_ == stage::fired) {
        run_now = true;
      } else {
        cbs_->list.emplace_back(std::move(on_value), std::move(on_error));
      }
    });
    if (run_now) {
      std::vector<std::pair<value_callback, error_callback>> one;
      one.emplace_back(std::move(on_value), std::move(on_error));
      run(*cbs_, *m_, one);
    }
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
    if (!m_->run_until([&] { return job_->complete(); }, deadline)) return false;
    if (!cbs_) return true;
    // The callbacks run before wait() returns: here, unless a thread runs them already.
    fire(*cbs_, *m_, take_);
    return m_->run_until([&] { return cbs_->stage_ == stage::fired; }, deadline);
  }

  enum class stage { pending, firing, fired };
  /// What a result with callbacks shares with the thread that runs them; under the pool's lock.
  struct state {
    std::vector<std::pair<value_callback, error_callback>> list;
    stage stage_ = stage::pending;
    std::conditional_t<std::is_void_v<T>, bool, std::optional<T>> value{};
    std::exception_ptr error;           // the call's
    std::exception_ptr callback_error;  // the first a callback threw
  };

  /// Takes the outcome in and runs the callbacks, once: whoever calls first
  /// (the progress thread, or a waiting owner) does it; later calls return.
  static void fire(state& st, detail::master& m, const std::function<T()>& take) {
    bool mine = false;
    m.locked([&] {
      if (st.stage_ != stage::pending) return;
      st.stage_ = stage::firing;
      mine = true;
      try {
        if constexpr (std::is_void_v<T>) {
          take();
          st.value = true;
        } else {
          st.value.emplace(take());
        }
      } catch (...) {
        st.error = std::current_exception();
      }
    });
    if (!mine) return;
    for (;;) {
      std::vector<std::pair<value_callback, error_callback>> batch;
      m.locked([&] {
        batch.swap(st.list);
        if (batch.empty()) st.stage_ = stage::fired;
      });
      if (batch.empty()) break;
      run(st, m, batch);
    }
    m.notify_callers();
  }

  /// Runs @p batch with the outcome, without the lock.
  static void run(state& st, detail::master& m,
                  std::vector<std::pair<value_callback, error_callback>>& batch) {
    for (auto& [on_value, on_error] : batch) {
      try {
        if (st.error) {
          if (on_error) on_error(st.error);
        } else if (on_value) {
          if constexpr (std::is_void_v<T>)
            on_value();
          else
            on_value(*st.value);
        }
      } catch (...) {
        m.locked([&] {
          if (!st.callback_error) st.callback_error = std::current_exception();
        });
      }
    }
  }

  /// get() once the callbacks ran: the value or error, or callback_error.
  T take_fired() {
    std::exception_ptr cb, err;
    m_->locked([&] { cb = cbs_->callback_error, err = cbs_->error; });
    ok_ = err ? -1 : 1;
    if (cb) {
      try {
        std::rethrow_exception(cb);
      } catch (...) {
        throw callback_error("procpool::mpi::async_result::get: a done callback threw; its "
                             "exception is nested (std::rethrow_if_nested)");
      }
    }
    if (err) std::rethrow_exception(err);
    if constexpr (!std::is_void_v<T>) return std::move(*cbs_->value);
  }

  std::shared_ptr<detail::master> m_;
  std::shared_ptr<procpool::detail::job> job_;
  std::function<T()> take_;  // moves the value out of the job; under the lock
  std::shared_ptr<state> cbs_;  // once a callback is added
  bool taken_ = false;
  int ok_ = 0;  // after get(): 1 succeeded, -1 failed
};

}  // namespace procpool::mpi
