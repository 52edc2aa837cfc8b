// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// A result with done callbacks: the state its async_result and the callback
// thread share. Whoever first sees the result settle (the callback thread, or
// the owner in get()/wait()) takes the outcome in and runs the callbacks; the
// other waits until they have run. get() then hands out the outcome kept here.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../errors.hpp"
#include "callback_runner.hpp"
#include "result_source.hpp"

namespace procpool::detail {

/// The callback a value of type T is given to (void: none).
template <class T>
struct value_callback_of {
  using type = std::function<void(const T&)>;
};
template <>
struct value_callback_of<void> {
  using type = std::function<void()>;
};

template <class T>
class callback_state final : public completion {
 public:
  using value_callback = typename value_callback_of<T>::type;
  using error_callback = std::function<void(std::exception_ptr)>;

  explicit callback_state(result_source<T>&& src)
      : src_(std::move(src)), eng_(&src_.owner()), express_(src_.express()) {}

  /// Whether the call took the express lane (fixed when the callbacks were added).
  bool express() const noexcept { return express_; }

  engine& owner() const noexcept { return *eng_; }
  /// Under the engine's lock. The source is touched only before it is claimed
  /// (claims are made under the engine's lock too): then fire() owns it.
  bool settled() override { return stage_.load() != stage::waiting || src_.settled(); }
  /// Drives the pool until settled() or @p deadline; true when settled.
  bool wait_until(std::int64_t deadline) {
    return eng_->run_until([this] { return settled(); }, deadline);
  }
  void fire() noexcept override;

  /// Adds a pair of callbacks; when the outcome is already in, runs them now.
  void add(value_callback on_value, error_callback on_error);
  /// Once the source has settled: true when the callbacks have run (here, if
  /// nobody has started them); false at @p deadline (monotonic ns), or inside
  /// a callback of this result for a timed wait.
  /// @throws usage_error for an untimed wait inside a callback of this result.
  bool settle(std::int64_t deadline);
  /// True on the thread running this result's callbacks, while it does.
  bool firing_here() {
    std::lock_guard lk(m_);
    return stage_ == stage::firing && firer_ == std::this_thread::get_id();
  }
  /// Once settled: true when the call failed.
  bool failed() {
    std::lock_guard lk(m_);
    return error_ != nullptr;
  }
  /// Once settled: the value; throws the call's error, or callback_error.
  T take();
  /// Under the engine's lock: cancels the call, unless its callbacks were
  /// claimed (then it has settled, and fire() owns the source).
  bool cancel_locked() {
    if (src_.cancelled_locked()) return true;
    return stage_.load() == stage::waiting && src_.cancel_locked();
  }
  /// Under the engine's lock: true when it was cancelled.
  bool cancelled_locked() const { return src_.cancelled_locked(); }
  /// Under the engine's lock: true while a worker runs it.
  bool running_locked() { return stage_.load() == stage::waiting && src_.running_locked(); }

 private:
  using stored = std::conditional_t<std::is_void_v<T>, std::monostate, T>;
  enum class stage { waiting, firing, fired };
  using pair = std::pair<value_callback, error_callback>;

  void run(pair& cb) noexcept;

  std::mutex m_;
  std::condition_variable fired_;
  std::atomic<stage> stage_{stage::waiting};  // left waiting under both locks, then m_
  std::thread::id firer_;  // the thread running the callbacks, while firing
  result_source<T> src_;
  engine* eng_;
  bool express_;
  std::optional<stored> value_;
  std::exception_ptr error_;           // the call's
  std::exception_ptr callback_error_;  // the first callback's that threw
  std::vector<pair> callbacks_;        // not run yet
  bool taken_ = false;
};

// ---------------------------------------------------------------------------

template <class T>
void callback_state<T>::fire() noexcept {
  bool claimed = false;
  try {
    eng_->locked([&] {
      std::lock_guard lk(m_);
      if (stage_ != stage::waiting) return;
      stage_ = stage::firing;
      firer_ = std::this_thread::get_id();
      claimed = true;
    });
  } catch (...) {
    return;  // a pool used outside its process: nothing fires here
  }
  if (!claimed) return;
  try {
    if constexpr (std::is_void_v<T>) {
      src_.take();
      value_.emplace();
    } else {
      value_.emplace(src_.take());
    }
  } catch (...) {
    error_ = std::current_exception();
  }
  for (;;) {
    std::vector<pair> due;
    {
      std::lock_guard lk(m_);
      if (callbacks_.empty()) {
        stage_ = stage::fired;
        firer_ = {};
        fired_.notify_all();
        return;
      }
      due.swap(callbacks_);
    }
    for (auto& cb : due) run(cb);
  }
}

template <class T>
void callback_state<T>::run(pair& cb) noexcept {
  try {
    if (error_) {
      if (cb.second) cb.second(error_);
    } else if (cb.first) {
      if constexpr (std::is_void_v<T>)
        cb.first();
      else
        cb.first(*value_);
    }
  } catch (...) {
    std::lock_guard lk(m_);
    if (!callback_error_) callback_error_ = std::current_exception();
  }
}

template <class T>
void callback_state<T>::add(value_callback on_value, error_callback on_error) {
  pair cb(std::move(on_value), std::move(on_error));
  {
    std::lock_guard lk(m_);
    if (taken_)
      throw usage_error(
          "procpool::async_result::add_done_callback: the result was already taken by get(); "
          "add callbacks before get()");
    if (stage_ != stage::fired) {
      callbacks_.push_back(std::move(cb));  // the firing thread runs it
      return;
    }
  }
  run(cb);
}

template <class T>
bool callback_state<T>::settle(std::int64_t deadline) {
  constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
  std::unique_lock lk(m_);
  if (stage_ == stage::fired) return true;
  if (stage_ == stage::firing && firer_ == std::this_thread::get_id()) {
    if (deadline != never) return false;
    throw usage_error(
        "procpool::async_result: waited for inside one of its own done callbacks, which would "
        "wait for itself; the callback already has the value");
  }
  if (stage_ == stage::waiting) {
    lk.unlock();
    fire();
    lk.lock();
  }
  const auto fired = [this] { return stage_ == stage::fired; };
  if (deadline == never) {
    fired_.wait(lk, fired);
    return true;
  }
  const auto left = std::chrono::nanoseconds(std::max<std::int64_t>(0, deadline - monotonic_ns()));
  return fired_.wait_for(lk, left, fired);
}

template <class T>
T callback_state<T>::take() {
  std::lock_guard lk(m_);
  if (taken_) throw taken_twice();
  taken_ = true;
  if (callback_error_) {
    try {
      std::rethrow_exception(callback_error_);
    } catch (...) {
      throw callback_error(
          "procpool::async_result::get: a done callback of this result threw; the callback's "
          "exception is nested (std::rethrow_if_nested), successful() tells how the call ended");
    }
  }
  if (error_) std::rethrow_exception(error_);
  if constexpr (!std::is_void_v<T>) return std::move(*value_);
}

}  // namespace procpool::detail
