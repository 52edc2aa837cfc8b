// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Barrier: Python's multiprocessing.Barrier, for processes forked after it is
// built (and their threads). Its state sits behind a robust lock, held only
// to arrive or to look, never while waiting; waiters sleep on a futex word
// with a deadline and, every peer_probe_ns, look whether a party waiting with
// them has died: then the barrier breaks for all (Python's would wait for
// ever). A party that dies before it arrives cannot be told from a late one:
// give wait() a timeout for that.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include <sys/types.h>

#include "detail/posix.hpp"
#include "detail/robust_mutex.hpp"
#include "detail/shared_block.hpp"
#include "detail/tuning.hpp"
#include "errors.hpp"

namespace procpool {
namespace detail {

struct barrier_state {
  robust_mutex m;
  std::atomic<std::uint32_t> generation;  // the futex word: changes when waiters are to look
  std::uint32_t rounds;  // times all parties arrived
  std::uint32_t parties;
  std::uint32_t count;   // arrived in this generation; their pids follow the state
  std::uint32_t broken;  // until reset()
  std::uint32_t resets;  // reset() calls: a waiter from before one is told it broke
};

}  // namespace detail

/// A meeting point for a fixed number of parties.
/// @code
///   procpool::Barrier stage(3);
///   // in each of three processes:
///   stage.wait();  // returns once all three are here
/// @endcode
class Barrier {
 public:
  /// For @p parties parties (1 to 65536). Copies are the same barrier.
  explicit Barrier(std::size_t parties);

  /// Waits until all parties are here; returns this arrival's index, 0 to
  /// parties() - 1, the last arriving getting parties() - 1.
  /// @throws broken_barrier_error when it is or becomes broken.
  std::size_t wait() { return wait_until(std::numeric_limits<std::int64_t>::max()); }
  /// As wait(), but breaks the barrier (for every party) after @p timeout.
  template <class Rep, class Period>
  std::size_t wait(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::deadline_after(timeout));
  }
  /// Breaks it: every waiter, now and later, gets broken_barrier_error.
  void abort();
  /// Makes it usable again; parties waiting now get broken_barrier_error.
  void reset();

  std::size_t parties() const noexcept { return state_->parties; }
  /// Parties waiting now.
  std::size_t n_waiting();
  bool broken();

 private:
  std::size_t wait_until(std::int64_t deadline);
  pid_t* waiters() const noexcept { return static_cast<pid_t*>(state_.extra()); }
  /// Under the lock: breaks it and wakes every waiter.
  void break_locked() noexcept;
  /// Takes the lock; a holder that died may have left the state half-changed: it breaks.
  void lock();
  void unlock() { state_->m.unlock(who); }
  [[noreturn]] static void throw_broken(const char* why) {
    throw broken_barrier_error(std::string("procpool::Barrier::wait: ") + why);
  }

  static constexpr const char* who = "procpool::Barrier";
  detail::shared_block<detail::barrier_state> state_;
};

// ---------------------------------------------------------------------------

inline Barrier::Barrier(std::size_t parties)
    : state_(who, (parties > 0 && parties <= 65536 ? parties : 1) * sizeof(pid_t)) {
  if (parties == 0 || parties > 65536)
    throw usage_error("procpool::Barrier: " + std::to_string(parties) +
                      " parties; use between 1 and 65536");
  state_->m.init(false, who);
  state_->parties = static_cast<std::uint32_t>(parties);
}

inline void Barrier::lock() {
  if (state_->m.lock_until(std::numeric_limits<std::int64_t>::max(), who) ==
      detail::lock_result::acquired_holder_died)
    break_locked();
}

inline void Barrier::break_locked() noexcept {
  state_->broken = 1;
  state_->generation.fetch_add(1);
  detail::futex_wake_all(&state_->generation);
}

inline std::size_t Barrier::wait_until(std::int64_t deadline) {
  detail::barrier_state& s = *state_;
  lock();
  if (s.broken) {
    unlock();
    throw_broken("the barrier is broken (a party died waiting, a wait timed out, or abort()); "
                 "reset() it to use it again");
  }
  const std::uint32_t index = s.count;
  if (index + 1 == s.parties) {  // the last: everyone goes
    s.count = 0;
    ++s.rounds;
    s.generation.fetch_add(1);
    unlock();
    detail::futex_wake_all(&s.generation);
    return index;
  }
  waiters()[s.count++] = detail::current_pid();
  const std::uint32_t gen = s.generation.load();
  const std::uint32_t round = s.rounds;
  const std::uint32_t resets = s.resets;
  unlock();
  for (;;) {
    const std::int64_t now = detail::monotonic_ns();
    const std::int64_t left = deadline - now;
    if (s.generation.load() == gen) {
      if (left > 0) {
        detail::futex_wait(&s.generation, gen, left < detail::peer_probe_ns ? left : detail::peer_probe_ns);
        if (s.generation.load() != gen) continue;
      }
    }
    lock();
    if (s.rounds != round && s.resets == resets) {  // released, whatever came after
      unlock();
      return index;
    }
    if (s.resets != resets) {
      unlock();
      throw_broken("reset() was called while this party waited");
    }
    if (s.broken) {
      unlock();
      throw_broken("the barrier broke while this party waited (a party died waiting, a wait "
                   "timed out, or abort())");
    }
    if (detail::monotonic_ns() >= deadline) {
      break_locked();
      unlock();
      throw_broken("timed out, which breaks the barrier for every party");
    }
    // Still waiting: does every party waiting with it live?
    for (std::uint32_t i = 0; i < s.count; ++i) {
      const pid_t p = waiters()[i];
      if (p != detail::current_pid() && detail::process_gone(p)) {
        break_locked();
        unlock();
        throw_broken(("party process " + std::to_string(p) + " died waiting at the barrier").c_str());
      }
    }
    unlock();
  }
}

inline void Barrier::abort() {
  lock();
  break_locked();
  unlock();
}

inline void Barrier::reset() {
  lock();
  ++state_->resets;
  state_->count = 0;
  state_->broken = 0;
  state_->generation.fetch_add(1);
  detail::futex_wake_all(&state_->generation);
  unlock();
}

inline std::size_t Barrier::n_waiting() {
  lock();
  const std::size_t n = state_->count;
  unlock();
  return n;
}

inline bool Barrier::broken() {
  lock();
  const bool b = state_->broken != 0;
  unlock();
  return b;
}

}  // namespace procpool
