// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file async_result.hpp
/// procpool::async_result, the pending result of apply_async and map_async.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "detail/callback_state.hpp"
#include "detail/engine.hpp"
#include "detail/result_source.hpp"
#include "errors.hpp"

namespace procpool {

template <class F>
class Pool;

namespace detail {
struct wait_access;

/// The timeout_error of @p fn after @p timeout; its message is built here only.
template <class Rep, class Period>
timeout_error timed_out(const char* fn, std::chrono::duration<Rep, Period> timeout) {
  char ms[32];
  std::snprintf(ms, sizeof ms, "%g", std::chrono::duration<double, std::milli>(timeout).count());
  return timeout_error(std::string(fn) + ": no result within " + ms +
                       " ms; the call goes on: wait again, or get() it later");
}
}  // namespace detail

/// The pending result of apply_async or map_async (Python's AsyncResult, and
/// concurrent.futures.Future). The work runs as soon as workers are free;
/// get() or wait() also drive it. One thread at a time uses an async_result.
///
/// @code
/// auto r = pool.apply_async(7);
/// r.add_done_callback([](int v) { std::cout << v << '\n'; },
///                     [](std::exception_ptr e) { log(e); });
/// int v = r.get_for(std::chrono::seconds(5));  // timeout_error after 5 s
/// @endcode
template <class T>
class async_result {
 public:
  using value_type = T;
  /// Called with the value (no argument for void) when the call succeeds.
  using value_callback = typename detail::callback_state<T>::value_callback;
  /// Called with the call's error when it fails.
  using error_callback = typename detail::callback_state<T>::error_callback;

  /// Waits for the result and returns it; throws the task's error
  /// (for map_async, the error of the lowest failing index). Call once.
  T get();
  /// Like get(), waiting at most @p timeout. @throws timeout_error when the
  /// result is not there by then; the call goes on and get() can be called again.
  template <class Rep, class Period>
  T get_for(std::chrono::duration<Rep, Period> timeout);
  /// Like get_for, up to the time point @p t.
  template <class Clock, class Duration>
  T get_until(std::chrono::time_point<Clock, Duration> t) {
    return get_for(t - Clock::now());
  }
  /// Waits until the result is ready.
  void wait() { wait_until_ns(std::numeric_limits<std::int64_t>::max()); }
  /// Waits at most @p timeout; true when ready.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until_ns(detail::deadline_after(timeout));
  }
  /// Waits up to the time point @p t; true when ready.
  template <class Clock, class Duration>
  bool wait_until(std::chrono::time_point<Clock, Duration> t) {
    return wait_for(t - Clock::now());
  }
  /// True when the result (or error) is there and its callbacks have run; does not wait.
  bool ready() { return wait_for(std::chrono::nanoseconds(0)); }
  /// Python's successful(): true when the call finished without an error.
  /// @throws usage_error when the result is not ready yet.
  bool successful();
  /// Runs @p callback with the value, or @p error_callback with the error,
  /// when the call finishes (Python's apply_async callback/error_callback,
  /// Future.add_done_callback). They run on the pool's callback thread, or in
  /// the thread that waits for this result if it gets there first; when the
  /// result is already there, before add_done_callback returns. get(),
  /// wait() and ready() return after the callbacks ran. If a callback throws,
  /// get() throws callback_error with that exception nested.
  /// @throws usage_error after get().
  void add_done_callback(value_callback callback, error_callback error_callback = {});
  /// Cancels the call (Python's Future.cancel()): true when it is cancelled,
  /// and then get() throws cancelled_error and the error callbacks run before
  /// this returns; false when it had finished first (it keeps its outcome).
  /// Beyond Python, a call that is running is stopped too: the worker running
  /// it is killed, reaped and replaced before this returns, and what else that
  /// worker held runs on another worker (see README, "Cancelling").
  bool cancel();
  /// True when the call was cancelled: by cancel(), or by
  /// Pool::shutdown(wait, cancel_futures = true).
  bool cancelled();
  /// True while a worker runs the call (Python's Future.running()).
  bool running();
  /// True when the call took the express lane (see README, "Express lane"), until get().
  bool express() const noexcept { return cbs_ ? cbs_->express() && outcome_ == 0 : src_.express(); }

 private:
  template <class>
  friend class Pool;
  friend struct detail::wait_access;
  explicit async_result(detail::result_source<T> src) : src_(std::move(src)) {}

  bool wait_until_ns(std::int64_t deadline);
  /// Under the engine's lock: true when the outcome is there (callbacks may still run).
  bool settled_locked() { return cbs_ ? cbs_->settled() : src_.settled(); }
  detail::engine* owner() const noexcept {
    return cbs_ ? &cbs_->owner() : src_.valid() ? &src_.owner() : nullptr;
  }
  void check_valid(const char* fn) const {
    if (!cbs_ && !src_.valid())
      throw usage_error(std::string("procpool::async_result::") + fn +
                        ": this async_result is empty (moved from)");
  }

  detail::result_source<T> src_;                     // until a callback is added
  std::shared_ptr<detail::callback_state<T>> cbs_;  // then the source lives here
  int outcome_ = 0;  // after get(): 1 succeeded, -1 failed
};

// ---------------------------------------------------------------------------

template <class T>
bool async_result<T>::wait_until_ns(std::int64_t deadline) {
  check_valid("wait");
  if (cbs_) {
    if (!cbs_->wait_until(deadline)) return false;
    return cbs_->settle(deadline);
  }
  return src_.wait_until(deadline);
}

template <class T>
T async_result<T>::get() {
  wait();
  try {
    if constexpr (std::is_void_v<T>) {
      cbs_ ? cbs_->take() : src_.take();
      outcome_ = 1;
    } else {
      T v = cbs_ ? cbs_->take() : src_.take();
      outcome_ = 1;
      return v;
    }
  } catch (const callback_error&) {
    if (outcome_ == 0) outcome_ = cbs_->failed() ? -1 : 1;
    throw;
  } catch (const usage_error&) {
    throw;  // taken twice: the first get() recorded the outcome
  } catch (...) {
    outcome_ = -1;
    throw;
  }
}

template <class T>
template <class Rep, class Period>
T async_result<T>::get_for(std::chrono::duration<Rep, Period> timeout) {
  if (!wait_for(timeout))
    throw detail::timed_out("procpool::async_result::get_for", timeout);
  return get();
}

template <class T>
bool async_result<T>::successful() {
  if (outcome_ != 0) return outcome_ > 0;
  if (!ready())
    throw usage_error("procpool::async_result::successful: the result is not ready yet; "
                      "wait() first (Python raises ValueError here)");
  return !(cbs_ ? cbs_->failed() : src_.failed());
}

template <class T>
bool async_result<T>::cancel() {
  check_valid("cancel");
  if (outcome_ != 0) return cancelled();
  const bool done =
      owner()->locked([this] { return cbs_ ? cbs_->cancel_locked() : src_.cancel_locked(); });
  if (done && cbs_) wait();  // as Python's cancel(): the callbacks have run when it returns
  return done;
}

template <class T>
bool async_result<T>::cancelled() {
  check_valid("cancelled");
  return owner()->locked([this] { return cbs_ ? cbs_->cancelled_locked() : src_.cancelled_locked(); });
}

template <class T>
bool async_result<T>::running() {
  check_valid("running");
  if (outcome_ != 0) return false;
  return owner()->locked([this] { return cbs_ ? cbs_->running_locked() : src_.running_locked(); });
}

template <class T>
void async_result<T>::add_done_callback(value_callback callback, error_callback error_callback) {
  check_valid("add_done_callback");
  if (!cbs_) {
    if (src_.taken())
      throw usage_error(
          "procpool::async_result::add_done_callback: the result was already taken by get(); "
          "add callbacks before get()");
    cbs_ = std::make_shared<detail::callback_state<T>>(std::move(src_));
    cbs_->add(std::move(callback), std::move(error_callback));
    if (cbs_->owner().locked([this] { return cbs_->settled(); })) {
      wait();  // already there: here and now, never on the callback thread
      return;
    }
    if (!cbs_->owner().watch_callbacks(cbs_)) {
      // The pool is terminated: nothing drives this result but us, and it has settled.
      wait();
      return;
    }
  } else {
    cbs_->add(std::move(callback), std::move(error_callback));
  }
  // Already there: the callbacks run now, here; inside one of this result's
  // own callbacks, the firing loop runs it next.
  if (!cbs_->firing_here() && owner()->locked([this] { return cbs_->settled(); })) wait();
}

}  // namespace procpool
