// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Event: Python's multiprocessing.Event, shared by the processes forked after
// it is built. A futex word in shared memory and a count of waiters: set()
// and clear() are stores and never wait, so no process's death can make
// another's set() block (as Python's can, on a semaphore a killed process
// held). A waiter killed asleep leaves the count high: set() then makes one
// futex call more than it needs, nothing worse.

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
  Event() : state_("procpool::Event", 0) {}

  /// True when set.
  bool is_set() const noexcept { return state_->flag.load(std::memory_order_acquire) != 0; }
  /// Sets it and wakes every waiter.
  void set() noexcept {
    // seq_cst, as the waiter's count and look: either it sees the flag, or this sees it waiting.
    state_->flag.store(1);
    if (state_->waiters.load() != 0) detail::futex_wake_all(&state_->flag);
  }
  /// Clears it: waiters from now on wait for the next set().
  void clear() noexcept { state_->flag.store(0, std::memory_order_release); }
  /// Waits until it is set.
  void wait() const noexcept { wait_until(std::numeric_limits<std::int64_t>::max()); }
  /// Waits at most @p timeout; true when it is set.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const noexcept {
    return wait_until(detail::deadline_after(timeout));
  }

 private:
  bool wait_until(std::int64_t deadline) const noexcept {
    // Woken by set() (the waiter count makes sure it sees this waiter); the
    // slice only keeps a futex timeout in range.
    constexpr std::int64_t slice = 86'400'000'000'000;
    if (is_set()) return true;
    state_->waiters.fetch_add(1);
    bool set = false;
    while (!(set = state_->flag.load() != 0)) {
      const std::int64_t left = deadline - detail::monotonic_ns();
      if (left <= 0) break;
      detail::futex_wait(&state_->flag, 0, left < slice ? left : slice);
    }
    state_->waiters.fetch_sub(1);
    return set;
  }

  struct state {
    std::atomic<std::uint32_t> flag;
    std::atomic<std::uint32_t> waiters;
  };
  detail::shared_block<state> state_;
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "the flag is shared between processes");

}  // namespace procpool
