// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Where an async_result's outcome comes from: a job in the queues, or a cell
// of the express lane. Waiting for it, and taking it once.

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "../codec.hpp"
#include "../errors.hpp"
#include "engine.hpp"

namespace procpool::detail {

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
  /// Under the engine's lock: true when the cell is finished.
  bool settled() { return eng_->express_finished(t_); }
  /// Once finished: true when the call failed.
  bool failed() const { return eng_->cell(t_).status != status_ok; }
  /// Under the engine's lock: engine::cancel_express.
  bool cancel() { return eng_->cancel_express(t_); }
  /// Under the engine's lock: true while a worker runs it.
  bool running() const { return eng_->express_running(t_); }
  /// Under the engine's lock: true when it ended cancelled (also by shutdown(cancel_futures)).
  bool cancelled() const { return eng_->express_cancelled(t_); }
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

/// The source of one result of type T: a job or an express cell.
template <class T>
class result_source {
 public:
  result_source() = default;
  /// A job's result; @p take moves it out, under the engine's lock.
  result_source(std::shared_ptr<engine> eng, std::shared_ptr<job> j, std::function<T()> take)
      : eng_(std::move(eng)), job_(std::move(j)), take_(std::move(take)) {}
  /// An express call's result.
  result_source(std::shared_ptr<engine> eng, express_handle cell)
      : eng_(std::move(eng)), cell_(std::move(cell)) {}

  /// False for a moved-from source.
  bool valid() const noexcept { return eng_ != nullptr; }
  engine& owner() const noexcept { return *eng_; }
  const std::shared_ptr<engine>& owner_ptr() const noexcept { return eng_; }
  bool express() const noexcept { return static_cast<bool>(cell_); }
  bool taken() const noexcept { return taken_; }

  /// Drives the pool until the outcome is there or @p deadline; true when it is.
  bool wait_until(std::int64_t deadline) {
    if (taken_) return true;
    if (cell_) return cell_.wait(deadline);
    return eng_->run_until([this] { return job_->complete(); }, deadline);
  }
  /// Under the engine's lock: true when the outcome is there.
  bool settled() {
    if (taken_) return true;
    return cell_ ? cell_.settled() : job_->complete();
  }
  /// Once settled, before take(): true when the call failed.
  bool failed() {
    if (cell_) return cell_.failed();
    return eng_->locked([this] { return job_->failed(); });
  }
  /// Once settled: the value; throws the call's error. @throws usage_error the second time.
  T take();
  /// Under the engine's lock: cancels the call (engine::cancel_job, cancel_cell);
  /// true when it is cancelled, false when it had finished first.
  bool cancel_locked() {
    if (cancelled_locked()) return true;
    if (taken_) return false;
    cancelled_ = cell_ ? cell_.cancel() : eng_->cancel_job(*job_);
    return cancelled_;
  }
  /// Under the engine's lock: true when it was cancelled.
  bool cancelled_locked() const {
    return cancelled_ || (job_ && job_->cancelled) || (!taken_ && cell_ && cell_.cancelled());
  }
  /// Under the engine's lock: true while a worker runs it.
  bool running_locked() const {
    if (taken_) return false;
    return cell_ ? cell_.running() : eng_->job_running(*job_);
  }

 private:
  std::shared_ptr<engine> eng_;
  std::shared_ptr<job> job_;
  std::function<T()> take_;  // moves the value out of the job; under the engine's lock
  express_handle cell_;      // the express lane's cell, until taken
  bool taken_ = false;
  bool cancelled_ = false;  // cancel_locked() succeeded, or take() threw cancelled_error; under the lock
};

/// The message of a second get() on one result; built here only.
inline usage_error taken_twice() {
  return usage_error("procpool::async_result::get: the result was already taken; call get() once");
}

template <class T>
T result_source<T>::take() {
  if constexpr (std::is_void_v<T> || bitwise<T>) {
    if (cell_) {
      taken_ = true;
      try {
        return cell_.template take<T>();
      } catch (const cancelled_error&) {
        eng_->locked([this] { cancelled_ = true; });  // cancelled() stays true after get()
        throw;
      }
    }
  }
  if (taken_ || !job_) throw taken_twice();
  return eng_->locked([&]() -> T {
    if (taken_) throw taken_twice();
    taken_ = true;
    return take_();
  });
}

}  // namespace procpool::detail
