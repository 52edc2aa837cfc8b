// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Which thread drives the engine. The pool has no thread of its own: whichever
// caller waits on a result runs the engine's rounds, one at a time; the others
// wait on a condition variable. A caller that arrives while the driver sleeps
// waiting for an event takes over from it, and the driver becomes one of those
// waiting: on a busy machine the driver may not even be running, and waking
// it and then the caller would cost two context switches.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "posix.hpp"
#include "ring.hpp"
#include "tuning.hpp"

namespace procpool::detail {

class driver {
 public:
  /// @p wake: the event a driver waiting for work sleeps on.
  explicit driver(event& wake) : wake_(wake) {}

  /// Under the lock: runs @p round() now if no thread drives (submit), else
  /// asks the driver to look again.
  template <class Round>
  void round_or_poke(Round round);
  /// Under the lock @p lk: drives until @p done() or @p deadline (monotonic
  /// ns); true when done. Each turn runs @p round() (true: something moved);
  /// when nothing moved, @p arm(gen) (under the lock) and then @p sleep(deadline)
  /// (without it; true if it consumed a poke) wait for the next event.
  template <class Done, class Round, class Arm, class Sleep>
  bool run(std::unique_lock<std::mutex>& lk, Done done, std::int64_t deadline, Round round,
           Arm arm, Sleep sleep);
  /// Under the lock @p lk: waits for the driver to finish its round, and lets
  /// no other thread start one meanwhile (terminate).
  void stop(std::unique_lock<std::mutex>& lk) {
    stopping_ = true;
    poke();
    cv_.wait(lk, [this] { return !driving_; });
    stopping_ = false;
  }

  /// Asks the driver to look again; seen even if it is not asleep yet.
  void poke() noexcept {
    poke_.store(true);
    wake_.notify();
  }
  /// For the sleeping driver (no lock): true when its poke is there, consumed.
  bool take_poke() noexcept {
    return poke_.load(std::memory_order_relaxed) && poke_.exchange(false);
  }
  /// For the sleeping driver of generation @p gen (no lock): another caller took over.
  bool replaced(std::uint64_t gen) const noexcept {
    return gen_.load(std::memory_order_relaxed) != gen;
  }
  /// Wakes the callers waiting for the driver, to look at their results again.
  void notify_followers() noexcept { cv_.notify_all(); }

 private:
  event& wake_;
  std::condition_variable cv_;
  bool driving_ = false;   // a thread drives; only it touches the rings
  bool waiting_ = false;   // the driver waits for an event, without the lock
  bool stopping_ = false;  // stop() waits for the driver: start no other
  std::atomic<std::uint64_t> gen_{0};  // bumped when a waiting driver is replaced
  std::atomic<bool> poke_{false};      // another thread needs the driver to look again
};

template <class Round>
void driver::round_or_poke(Round round) {
  if (driving_) {
    poke();
    return;
  }
  driving_ = true;
  try {
    round();
  } catch (...) {
    driving_ = false;
    cv_.notify_all();
    throw;
  }
  driving_ = false;
  cv_.notify_all();
}

template <class Done, class Round, class Arm, class Sleep>
bool driver::run(std::unique_lock<std::mutex>& lk, Done done, std::int64_t deadline, Round round,
                 Arm arm, Sleep sleep) {
  bool replaced = false;  // another caller took over from us: wait for it to finish
  for (;;) {
    if (done()) return true;
    // A poll (deadline already past) never takes over: the driver will see to it.
    const bool can_take_over = driving_ && waiting_ && !replaced && monotonic_ns() < deadline;
    if ((driving_ && !can_take_over) || stopping_) {
      // Another thread drives (or stop() waits for it); it notifies each round.
      if (monotonic_ns() >= deadline) return false;
      cv_.wait_for(lk, std::chrono::nanoseconds(follower_wait_ns));
      continue;
    }
    if (can_take_over) {
      // The driver is between rounds, waiting for an event with the lock let
      // go: drive in its place rather than sleep until it notices our work.
      waiting_ = false;
      gen_.fetch_add(1, std::memory_order_relaxed);
      wake_.notify();  // wake it if asleep: it then waits for us
    }
    driving_ = true;
    const std::uint64_t gen = gen_.load(std::memory_order_relaxed);
    bool progress = false;
    bool expired = false;
    try {
      progress = round();  // at least one round, even with a past deadline: ready() relies on it
      if (!done()) {
        expired = !progress && monotonic_ns() >= deadline;
        if (!expired) {
          // Let the lock go between rounds: submit() and readers never wait for us.
          bool poked = false;
          if (!progress) arm(gen);
          waiting_ = true;
          lk.unlock();
          if (!progress) poked = sleep(deadline);
          lk.lock();
          if (gen_.load(std::memory_order_relaxed) != gen) {
            replaced = true;
            if (poked) poke();  // the poke was for the new driver
            continue;
          }
          waiting_ = false;
        }
      }
    } catch (...) {
      if (!lk.owns_lock()) lk.lock();
      if (gen_.load(std::memory_order_relaxed) == gen) {
        waiting_ = false;
        driving_ = false;
        cv_.notify_all();
      }
      throw;
    }
    driving_ = false;
    cv_.notify_all();
    if (expired) return done();
  }
}

}  // namespace procpool::detail
