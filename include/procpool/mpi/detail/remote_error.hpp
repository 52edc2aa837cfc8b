// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// An item's error on its way from a serving rank to rank 0: the same
// procpool error type on both sides, its message naming the rank and host.

#include <cstdint>
#include <exception>
#include <string>

#include "../../errors.hpp"
#include "transport.hpp"

namespace procpool::mpi::detail {

enum class error_kind : std::uint32_t {
  task = 1,         // task_error: the type and message
  lost = 2,         // worker_lost
  timeout = 3,      // task_timeout
  initializer = 4,  // initializer_error
  terminated = 5,   // pool_terminated
  other = 6,        // any other error
};

/// Appends @p e (an item's error in the local pool) to @p b.
inline void put_error(byte_buffer& b, const std::exception_ptr& e) {
  error_kind k = error_kind::other;
  std::int64_t pid = 0, exitcode = 0;
  std::string what, type, message;
  try {
    std::rethrow_exception(e);
  } catch (const task_timeout& x) {
    k = error_kind::timeout, pid = x.pid(), exitcode = x.exitcode(), what = x.what();
  } catch (const worker_lost& x) {
    k = error_kind::lost, pid = x.pid(), exitcode = x.exitcode(), what = x.what();
  } catch (const task_error& x) {
    k = error_kind::task, type = x.type_name(), message = x.message(), what = x.what();
  } catch (const initializer_error& x) {
    k = error_kind::initializer, what = x.what();
  } catch (const pool_terminated& x) {
    k = error_kind::terminated, what = x.what();
  } catch (const std::exception& x) {
    what = x.what();
  } catch (...) {
    what = "an exception of unknown type";
  }
  b.append_value(static_cast<std::uint32_t>(k));
  b.append_value(pid);
  b.append_value(exitcode);
  put_text(b, what);
  put_text(b, type);
  put_text(b, message);
}

/// The error put_error() wrote, for item @p index, as rank 0 reports it.
inline std::exception_ptr get_error(reader& r, std::uint64_t index, int rank,
                                    const std::string& host) {
  const auto k = static_cast<error_kind>(r.read_value<std::uint32_t>());
  const auto pid = static_cast<pid_t>(r.read_value<std::int64_t>());
  const auto exitcode = static_cast<int>(r.read_value<std::int64_t>());
  const std::string what = get_text(r) + " (on rank " + std::to_string(rank) + ", host " + host + ")";
  std::string type = get_text(r);
  std::string message = get_text(r);
  switch (k) {
    case error_kind::task:
      return std::make_exception_ptr(task_error(static_cast<std::size_t>(index), std::move(type),
                                                std::move(message)));
    case error_kind::lost:
      return std::make_exception_ptr(
          worker_lost(static_cast<std::size_t>(index), pid, exitcode, what));
    case error_kind::timeout:
      return std::make_exception_ptr(
          task_timeout(static_cast<std::size_t>(index), pid, exitcode, what));
    case error_kind::initializer:
      return std::make_exception_ptr(initializer_error(what));
    case error_kind::terminated:
      return std::make_exception_ptr(pool_terminated(what));
    case error_kind::other:
      break;
  }
  return std::make_exception_ptr(error(what));
}

/// True when @p e is an @p E.
template <class E>
bool error_is(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
}

/// Item @p index was on rank @p rank when rank 0 stopped hearing from it.
inline std::exception_ptr rank_lost(std::uint64_t index, int rank, const std::string& host,
                                    pid_t pid) {
  return std::make_exception_ptr(worker_lost(
      static_cast<std::size_t>(index), pid, exitcode_unknown,
      "procpool::mpi: item " + std::to_string(index) + " was on rank " + std::to_string(rank) +
          " (host " + host + ", pid " + std::to_string(pid) + "), which stopped answering: " +
          "nothing from it for " + std::to_string(silence_limit_ns / 1'000'000'000) +
          " s (stopped, hung, or cut off); pool_options::retries runs such items again on "
          "another rank"));
}

}  // namespace procpool::mpi::detail
