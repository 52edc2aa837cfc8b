// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Semaphore and BoundedSemaphore: Python's multiprocessing.Semaphore and
// BoundedSemaphore, for the processes forked after they are built. Units a
// process acquired and did not release come back when it dies (SIGKILL, a
// crash, an exit): a waiter looks every peer_probe_ns. Python's (a POSIX
// semaphore) loses them for good.
//
// The rules it keeps:
// - The count is a futex word (waiters sleep on it with a deadline); it and
//   the table of holders (pid, units held) change together, under a robust
//   lock, held only to change or look, never while waiting.
// - Each change is journaled first (the count and the holder's slot as they
//   were): the next holder of the lock, finding its last holder dead, rolls
//   the change back. A change rolled back is one its process never returned
//   from, and the units stay with that dead process, to come back with the
//   rest of them.
// - A release by a process that holds units gives back one of its own; one
//   by a process that holds none (a semaphore used as a signal) just adds a
//   unit. So a unit acquired in one process and released in another stays
//   the acquirer's on the books: when the acquirer dies, it comes back again
//   (a Semaphore then counts one more; a BoundedSemaphore never passes its
//   initial value).
// Boost.Interprocess's interprocess_semaphore is not used: it gives no units
// back when a holder dies (and in Boost 1.74 its mutex stays locked).

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include <sys/types.h>

#include "detail/crash_point.hpp"
#include "detail/posix.hpp"
#include "detail/robust_mutex.hpp"
#include "detail/shared_block.hpp"
#include "detail/tuning.hpp"
#include "errors.hpp"

namespace procpool {
namespace detail {

inline constexpr std::uint32_t semaphore_holders = 1024;

struct semaphore_holder {
  pid_t pid;  // 0: a free slot
  std::uint32_t units;
};

struct semaphore_state {
  robust_mutex m;
  std::atomic<std::uint32_t> value;    // the futex word; changed under m
  std::atomic<std::uint32_t> waiters;  // a waiter killed asleep leaves it high: a wake more
  std::uint32_t initial;
  std::uint32_t bounded;
  std::uint32_t slots_used;  // slots [0, slots_used) may hold a pid
  // The change in progress, as things were before it (under m).
  std::uint32_t journal_active;
  std::uint32_t journal_value;
  std::uint32_t journal_slot;  // slot + 1; 0: none
  semaphore_holder journal_holder;
  std::uint32_t journal_slots_used;
};

/// Semaphore (not @p Bounded) and BoundedSemaphore.
template <bool Bounded>
class basic_semaphore {
 public:
  /// With @p value units (at most 2^31). Copies are the same semaphore.
  explicit basic_semaphore(std::size_t value = 1);

  /// Takes a unit, waiting while there is none; true. Not @p block: false at
  /// once when there is none.
  bool acquire(bool block = true) { return take(block ? forever : -1); }
  /// Takes a unit, waiting at most @p timeout; false when none came.
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return take(detail::deadline_after(timeout));
  }
  /// Gives a unit back (one of this process's, if it holds any).
  /// @throws usage_error for a BoundedSemaphore already at its initial value.
  void release();
  /// Units free now (approximate while others acquire and release).
  std::size_t get_value() const noexcept { return state_->value.load(std::memory_order_acquire); }

  // Lockable, for std::lock_guard and std::scoped_lock.
  void lock() { acquire(); }
  bool try_lock() { return acquire(false); }
  void unlock() { release(); }

 private:
  static constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();
  static constexpr const char* name() noexcept {
    return Bounded ? "procpool::BoundedSemaphore" : "procpool::Semaphore";
  }
  semaphore_holder* holders() const noexcept { return static_cast<semaphore_holder*>(state_.extra()); }

  bool take(std::int64_t deadline);
  /// Takes the lock, rolling back the change of a holder that died; false at @p deadline.
  bool lock_state(std::int64_t deadline);
  void unlock_state() { state_->m.unlock(name()); }
  /// Under the lock: notes the count and slot @p slot (or none) before a change.
  void journal(std::uint32_t slot) noexcept;
  void journal_done() noexcept { state_->journal_active = 0; }
  /// Under the lock: this process's slot, or semaphore_holders when it has none.
  std::uint32_t find(pid_t pid) const noexcept;
  /// Under the lock: gives back the units of holders that died; true when any came back.
  bool reclaim() noexcept;

  detail::shared_block<semaphore_state> state_;
};

// ---------------------------------------------------------------------------

template <bool Bounded>
basic_semaphore<Bounded>::basic_semaphore(std::size_t value)
    : state_(name(), semaphore_holders * sizeof(semaphore_holder)) {
  if (value > (std::size_t{1} << 31))
    throw usage_error(std::string(name()) + ": an initial value of " + std::to_string(value) +
                      "; use at most 2^31");
  state_->m.init(false, name());
  state_->value.store(static_cast<std::uint32_t>(value));
  state_->initial = static_cast<std::uint32_t>(value);
  state_->bounded = Bounded;
}

template <bool Bounded>
bool basic_semaphore<Bounded>::lock_state(std::int64_t deadline) {
  semaphore_state& s = *state_;
  const lock_result got = s.m.lock_until(deadline, name());
  if (got == lock_result::timed_out) return false;
  if (got == lock_result::acquired_holder_died && s.journal_active) {
    s.value.store(s.journal_value);
    if (s.journal_slot) holders()[s.journal_slot - 1] = s.journal_holder;
    s.slots_used = s.journal_slots_used;
    s.journal_active = 0;
  }
  return true;
}

template <bool Bounded>
void basic_semaphore<Bounded>::journal(std::uint32_t slot) noexcept {
  semaphore_state& s = *state_;
  s.journal_value = s.value.load(std::memory_order_relaxed);
  s.journal_slot = slot < semaphore_holders ? slot + 1 : 0;
  if (s.journal_slot) s.journal_holder = holders()[slot];
  s.journal_slots_used = s.slots_used;
  std::atomic_signal_fence(std::memory_order_seq_cst);  // noted before the change, in this order
  s.journal_active = 1;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

template <bool Bounded>
std::uint32_t basic_semaphore<Bounded>::find(pid_t pid) const noexcept {
  for (std::uint32_t i = 0; i < state_->slots_used; ++i)
    if (holders()[i].pid == pid) return i;
  return semaphore_holders;
}

template <bool Bounded>
bool basic_semaphore<Bounded>::reclaim() noexcept {
  semaphore_state& s = *state_;
  bool any = false;
  for (std::uint32_t i = 0; i < s.slots_used; ++i) {
    semaphore_holder& h = holders()[i];
    if (h.pid == 0 || h.units == 0 || !process_gone(h.pid)) continue;
    journal(i);
    std::uint32_t v = s.value.load(std::memory_order_relaxed) + h.units;
    if (Bounded && v > s.initial) v = s.initial;
    s.value.store(v);
    h = semaphore_holder{};
    journal_done();
    any = true;
  }
  return any;
}

template <bool Bounded>
bool basic_semaphore<Bounded>::take(std::int64_t deadline) {
  semaphore_state& s = *state_;
  const pid_t me = current_pid();
  bool looked = false;  // for dead holders, since the last wait
  for (;;) {
    if (!lock_state(deadline < 0 ? forever : deadline)) return false;
    if (s.value.load(std::memory_order_relaxed) == 0 && !looked) {
      reclaim();
      looked = true;
    }
    const std::uint32_t v = s.value.load(std::memory_order_relaxed);
    if (v > 0) {
      std::uint32_t slot = find(me);
      if (slot == semaphore_holders) {
        for (slot = 0; slot < s.slots_used && holders()[slot].pid != 0; ++slot) {
        }
        if (slot == semaphore_holders) {
          unlock_state();
          throw usage_error(std::string(name()) + ": more than " +
                            std::to_string(semaphore_holders) +
                            " processes hold units at once; use fewer, or a semaphore each");
        }
      }
      journal(slot);
      if (slot == s.slots_used) ++s.slots_used;
      holders()[slot].pid = me;
      ++holders()[slot].units;
      detail::reached(detail::crash_point::semaphore_changing);
      s.value.store(v - 1);
      journal_done();
      unlock_state();
      return true;
    }
    s.waiters.fetch_add(1);
    unlock_state();
    const std::int64_t left = deadline - monotonic_ns();
    if (deadline < 0 || left <= 0) {
      s.waiters.fetch_sub(1);
      return false;
    }
    // Woken by a release; a dead holder is found by looking again.
    futex_wait(&s.value, 0, left < peer_probe_ns ? left : peer_probe_ns);
    s.waiters.fetch_sub(1);
    looked = false;
  }
}

template <bool Bounded>
void basic_semaphore<Bounded>::release() {
  semaphore_state& s = *state_;
  lock_state(forever);
  const std::uint32_t v = s.value.load(std::memory_order_relaxed);
  if ((Bounded && v >= s.initial) || v >= (std::uint32_t{1} << 31)) {
    unlock_state();
    throw usage_error(std::string(name()) + "::release: released more times than acquired" +
                      (Bounded ? "; a BoundedSemaphore never passes its initial value of " +
                                     std::to_string(s.initial)
                               : std::string("; the value is at its limit, 2^31")));
  }
  const std::uint32_t slot = find(current_pid());
  journal(slot);
  if (slot < semaphore_holders && holders()[slot].units > 0 && --holders()[slot].units == 0)
    holders()[slot].pid = 0;
  s.value.store(v + 1);
  journal_done();
  unlock_state();
  if (s.waiters.load() != 0) futex_wake(&s.value, 1);
}

}  // namespace detail

/// Python's multiprocessing.Semaphore: a count of units that processes take
/// and give back; the units of a process that dies come back.
/// @code
///   procpool::Semaphore slots(2);  // at most two at once
///   procpool::Process p([&] { std::lock_guard hold(slots); /* ... */ });
///   p.start();
/// @endcode
class Semaphore : public detail::basic_semaphore<false> {
 public:
  using basic_semaphore::basic_semaphore;
};

/// Python's multiprocessing.BoundedSemaphore: a Semaphore whose release()
/// past its initial value is a usage_error (Python's ValueError).
class BoundedSemaphore : public detail::basic_semaphore<true> {
 public:
  using basic_semaphore::basic_semaphore;
};

}  // namespace procpool
