// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Event: Python's multiprocessing.Event, shared by the processes forked after
// it is built. One futex word in shared memory: set() and clear() are stores
// and never wait, so no process's death can make another's set() block (as
// Python's can, on a semaphore a killed process held).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

#include "detail/posix.hpp"
#include "detail/shared_block.hpp"

namespace procpool {

/// A flag that processes wait for.
/// @code
///   procpool::Event ready;
///   procpool::Process p([&] { ready.wait(); /* ... */ });
///   p.start();
///   ready.set();
/// @endcode
class Event {
 public:
  /// A new event in shared memory, not set. Copies are the same event.
  Event() : flag_("procpool::Event", 0) {}

  /// True when set.
  bool is_set() const noexcept { return flag_->load(std::memory_order_acquire) != 0; }
  /// Sets it and wakes every waiter.
  void set() noexcept {
    flag_->store(1, std::memory_order_release);
    detail::futex_wake_all(flag_.get());
  }
  /// Clears it: waiters from now on wait for the next set().
  void clear() noexcept { flag_->store(0, std::memory_order_release); }
  /// Waits until it is set.
  void wait() const noexcept { wait_until(std::numeric_limits<std::int64_t>::max()); }
  /// Waits at most @p timeout; true when it is set.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const noexcept {
    return wait_until(detail::deadline_after(timeout));
  }

 private:
  bool wait_until(std::int64_t deadline) const noexcept {
    constexpr std::int64_t slice = 1'000'000'000;  // a futex wait's longest sleep
    while (!is_set()) {
      const std::int64_t left = deadline - detail::monotonic_ns();
      if (left <= 0) return false;
      detail::futex_wait(flag_.get(), 0, left < slice ? left : slice);
    }
    return true;
  }

  detail::shared_block<std::atomic<std::uint32_t>> flag_;
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "the flag is shared between processes");

}  // namespace procpool
