// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file errors.hpp
/// The exception hierarchy. Everything procpool throws on its own account derives
/// from procpool::error; failed system calls throw std::system_error with errno.

#include <climits>
#include <exception>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <sys/types.h>

namespace procpool {

/// Root of every procpool exception.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A Process or Pool was used in a way its state does not allow
/// (start() twice, join() before start(), map() after close(), ...).
class usage_error : public error {
 public:
  using error::error;
};

/// Base of the errors that belong to one item of a map/imap/apply_async call.
class item_error : public error {
 public:
  item_error(std::size_t index, const std::string& what) : error(what), index_(index) {}
  /// The item's position in the input (0-based; apply_async's task is item 0).
  std::size_t index() const noexcept { return index_; }

 private:
  std::size_t index_;
};

/// The task function threw for one item. what() holds the original exception's
/// type, its message and the item's index.
class task_error : public item_error {
 public:
  task_error(std::size_t index, std::string type, std::string message)
      : item_error(index, "task for item " + std::to_string(index) + " threw " + type + ": " +
                              message),
        type_(std::move(type)),
        message_(std::move(message)) {}
  /// The demangled type of the exception the task threw, e.g. "std::runtime_error".
  const std::string& type_name() const noexcept { return type_; }
  /// The original exception's what().
  const std::string& message() const noexcept { return message_; }

 private:
  std::string type_;
  std::string message_;
};

/// worker_lost::exitcode() of a worker that another part of the program
/// reaped first (SIGCHLD set to SIG_IGN, a waitpid(-1) loop): how it ended is unknown.
inline constexpr int exitcode_unknown = INT_MIN;

/// The worker running the item died (killed by a signal, or exited) before it finished.
class worker_lost : public item_error {
 public:
  worker_lost(std::size_t index, pid_t pid, int exitcode, const std::string& what)
      : item_error(index, what), pid_(pid), exitcode_(exitcode) {}
  /// The dead worker's pid.
  pid_t pid() const noexcept { return pid_; }
  /// Python-style exit code: n for exit(n), -N for death by signal N;
  /// exitcode_unknown when someone else reaped the worker.
  int exitcode() const noexcept { return exitcode_; }

 private:
  pid_t pid_;
  int exitcode_;
};

/// The item ran longer than pool_options::task_timeout; its worker was killed and replaced.
class task_timeout : public worker_lost {
 public:
  using worker_lost::worker_lost;
};

/// The pool was terminated (terminate() or the destructor) before this item finished.
class pool_terminated : public error {
 public:
  using error::error;
};

/// The call was cancelled before it finished: async_result::cancel(), or
/// Pool::shutdown with cancel_futures (Python's CancelledError).
class cancelled_error : public error {
 public:
  using error::error;
};

/// A Queue was closed and is empty: get() would wait for ever.
class closed_error : public error {
 public:
  using error::error;
};

/// JoinableQueue::join: items were taken by a consumer process that died
/// before task_done() for them, or could not be decoded; they will never be done.
class items_lost_error : public error {
 public:
  using error::error;
};

/// A Pipe's other end was closed, or its process ended, and nothing is left
/// to receive (Python's EOFError).
class eof_error : public error {
 public:
  using error::error;
};

/// A send to a Pipe whose other end was closed, or whose process ended
/// (Python's BrokenPipeError).
class broken_pipe_error : public error {
 public:
  using error::error;
};

/// A Barrier is broken: a party died waiting at it, a wait timed out, or
/// abort() or reset() was called (Python's BrokenBarrierError).
class broken_barrier_error : public error {
 public:
  using error::error;
};

/// pool_options::initializer threw or crashed in a worker; the pool cannot run tasks.
class initializer_error : public error {
 public:
  using error::error;
};

/// A wait with a time limit ran out before the result was there (Python's
/// multiprocessing.TimeoutError): async_result::get_for, as_completed. The call
/// goes on; its result can still be waited for.
class timeout_error : public error {
 public:
  using error::error;
};

/// A done callback threw (async_result::add_done_callback). get() throws this,
/// with the callback's own exception nested (std::rethrow_if_nested); the call
/// itself may have succeeded: successful() says.
class callback_error : public error, public std::nested_exception {
 public:
  using error::error;
};

/// Bytes that crossed the process boundary were truncated or corrupted.
class decode_error : public error {
 public:
  using error::error;
};

}  // namespace procpool
