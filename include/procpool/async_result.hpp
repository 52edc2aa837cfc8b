// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file async_result.hpp
/// procpool::async_result, the pending result of apply_async and map_async.

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "codec.hpp"
#include "detail/engine.hpp"
#include "errors.hpp"

namespace procpool {

template <class F>
class Pool;

namespace detail {

/// An async_result's claim on an express cell: drops it when destroyed unread.
class express_handle {
 public:
  express_handle() = default;
  express_handle(std::shared_ptr<engine> e, engine::express_ticket t)
      : eng_(std::move(e)), t_(t) {}
  express_handle(express_handle&& o) noexcept : eng_(std::move(o.eng_)), t_(o.t_) {}
  express_handle& operator=(express_handle&& o) noexcept {
    if (this != &o) {
      reset();
      eng_ = std::move(o.eng_);
      t_ = o.t_;
    }
    return *this;
  }
  ~express_handle() { reset(); }
  explicit operator bool() const noexcept { return eng_ != nullptr; }

  bool wait(std::int64_t deadline) { return eng_->express_wait(t_, deadline); }
  /// The finished cell's value; throws its error. Frees the cell.
  template <class T>
  T take() {
    const std::shared_ptr<engine> e = std::move(eng_);
    express_cell& c = e->cell(t_);
    if (c.status == status_exception) std::rethrow_exception(e->take_cell_error(t_));
    if (c.status == status_task_error) {
      const char* p = c.res;
      const std::size_t n = c.res_size;
      const std::size_t type_len = ::strnlen(p, n);
      std::string type(p, type_len);
      std::string what = type_len < n ? std::string(p + type_len + 1, n - type_len - 1) : "";
      e->express_release(t_);
      throw task_error(0, type, what);
    }
    if constexpr (std::is_void_v<T>) {
      e->express_release(t_);
    } else {
      T v = load_bitwise<T>(c.res);
      e->express_release(t_);
      return v;
    }
  }

 private:
  void reset() noexcept {
    if (eng_) eng_->express_drop(t_);
    eng_.reset();
  }
  // Its own reference: the cell is dropped whatever order an async_result's
  // members are destroyed or assigned in.
  std::shared_ptr<engine> eng_;
  engine::express_ticket t_;
};

}  // namespace detail

/// The pending result of apply_async or map_async (Python's AsyncResult).
/// The work runs as soon as workers are free; get() or wait() also drive it.
template <class T>
class async_result {
 public:
  /// Waits for the result and returns it; throws the task's error
  /// (for map_async, the error of the lowest failing index). Call once.
  T get();
  /// Waits until the result is ready.
  void wait() { wait_until(std::numeric_limits<std::int64_t>::max()); }
  /// Waits at most @p timeout; true when ready.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::deadline_after(timeout));
  }
  /// True when the result (or error) is there; does not wait.
  bool ready() { return wait_for(std::chrono::nanoseconds(0)); }
  /// True when the call took the express lane (see README, "Express lane"), until get().
  bool express() const noexcept { return static_cast<bool>(cell_); }

 private:
  template <class>
  friend class Pool;
  async_result(std::shared_ptr<detail::engine> eng, std::shared_ptr<detail::job> job,
               std::function<T()> take)
      : eng_(std::move(eng)), job_(std::move(job)), take_(std::move(take)) {}
  async_result(std::shared_ptr<detail::engine> eng, detail::express_handle cell)
      : eng_(std::move(eng)), cell_(std::move(cell)) {}

  bool wait_until(std::int64_t deadline) {
    if (cell_) return cell_.wait(deadline);
    if (!job_) return true;  // an express result already taken
    return eng_->run_until([this] { return job_->complete(); }, deadline);
  }

  std::shared_ptr<detail::engine> eng_;
  std::shared_ptr<detail::job> job_;
  std::function<T()> take_;  // moves the value out of the job; under the engine's lock
  bool taken_ = false;
  detail::express_handle cell_;  // the express lane's cell, until taken (then no job_ either)
};

template <class T>
T async_result<T>::get() {
  wait();
  if constexpr (std::is_void_v<T> || detail::bitwise<T>) {
    if (cell_) {
      taken_ = true;
      return cell_.template take<T>();
    }
  }
  if (!job_)
    throw usage_error("procpool::async_result::get: the result was already taken; call get() once");
  return eng_->locked([&]() -> T {
    if (taken_)
      throw usage_error("procpool::async_result::get: the result was already taken; call get() once");
    taken_ = true;
    return take_();
  });
}

}  // namespace procpool
