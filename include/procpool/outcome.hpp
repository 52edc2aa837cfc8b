// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file outcome.hpp
/// procpool::outcome, one item's value or error (what try_map and imap give).

#include <exception>
#include <utility>
#include <variant>

namespace procpool {

/// One item's outcome: its value, or the exception it failed with
/// (task_error, worker_lost, task_timeout, ...). What try_map returns.
template <class T>
class outcome {
 public:
  outcome(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  outcome(std::exception_ptr e) : v_(std::in_place_index<1>, std::move(e)) {}

  /// True when the item produced a value.
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  /// The value; rethrows the item's exception when it failed.
  T& value() & {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(v_);
  }
  const T& value() const& {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(v_);
  }
  T&& value() && { return std::move(value()); }
  /// The exception, or nullptr when ok().
  std::exception_ptr error() const noexcept { return ok() ? nullptr : std::get<1>(v_); }

 private:
  std::variant<T, std::exception_ptr> v_;
};

}  // namespace procpool
