// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Lock and RLock: Python's multiprocessing.Lock and RLock, shared by the
// processes forked after they are built (Process children, Pool workers).
// A holder that dies, even by SIGKILL, does not leave them locked: the next
// acquirer gets the lock and is told (holder_died()), and decides whether the
// data it guards is still sound.

#include <chrono>
#include <cstdint>
#include <limits>

#include "detail/posix.hpp"
#include "detail/robust_mutex.hpp"
#include "detail/shared_block.hpp"

namespace procpool {
namespace detail {

/// Lock (not @p Recursive) and RLock.
template <bool Recursive>
class basic_lock {
 public:
  /// A new lock in shared memory, released. Copies are the same lock.
  basic_lock() : state_(name(), 0) { state_->init(Recursive, name()); }

  /// Acquires, waiting while another thread or process holds it; true.
  /// Not @p block: false at once when it is held. @throws usage_error when a
  /// Lock is acquired again by the thread that holds it.
  bool acquire(bool block = true) { return take(block ? forever : -1); }
  /// Acquires, waiting at most @p timeout; false when it is still held then.
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return take(detail::deadline_after(timeout));
  }
  /// Releases. @throws usage_error when the calling thread does not hold it.
  void release() { state_->unlock(name()); }

  /// True while the caller holds it and its last holder died holding it (a
  /// SIGKILL, a crash, an exit): what that holder guarded may be half-changed.
  bool holder_died() const noexcept { return state_->holder_died != 0; }
  /// How many times the calling thread holds it (0: not at all).
  std::uint32_t held_by_me() const noexcept {
    return state_->owner.load(std::memory_order_relaxed) == detail::current_tid() ? state_->depth : 0;
  }

  // Lockable and TimedLockable, for std::lock_guard, std::unique_lock, std::scoped_lock.
  void lock() { acquire(); }
  bool try_lock() { return acquire(false); }
  void unlock() { release(); }
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) {
    return acquire(timeout);
  }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> t) {
    return acquire(t - Clock::now());
  }

 private:
  static constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();
  static constexpr const char* name() noexcept { return Recursive ? "procpool::RLock" : "procpool::Lock"; }
  bool take(std::int64_t deadline) {
    return state_->lock_until(deadline, name()) != detail::lock_result::timed_out;
  }

  detail::shared_block<detail::robust_mutex> state_;
};

}  // namespace detail

/// Python's multiprocessing.Lock: held by one thread of one process at a time.
/// Unlike Python's, only the thread that acquired it may release it, and
/// acquiring it twice in one thread is a usage_error rather than a hang.
/// @code
///   procpool::Lock lock;
///   procpool::Process p([&] { std::lock_guard g(lock); /* ... */ });
///   p.start();
/// @endcode
class Lock : public detail::basic_lock<false> {};

/// Python's multiprocessing.RLock: the holding thread may acquire it again,
/// and releases it as many times.
class RLock : public detail::basic_lock<true> {};

}  // namespace procpool
