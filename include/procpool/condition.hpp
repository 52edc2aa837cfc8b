// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Condition: Python's multiprocessing.Condition, over a Lock or an RLock
// (its own RLock by default), for the processes forked after it is built.
// A waiter notes a sequence word, releases the lock, and sleeps on that word
// with a futex; notify() changes the word and wakes. There is no
// pthread_cond: a waiter or a notifier killed at any instant wedges no one,
// and a holder killed with the lock held hands it on (holder_died()).
// Wake-ups may be spurious, as Python allows: wait for a predicate.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "detail/posix.hpp"
#include "detail/shared_block.hpp"
#include "errors.hpp"
#include "lock.hpp"

namespace procpool {

/// Waits for a change that another process makes under the same lock.
/// @code
///   procpool::Condition cond;
///   procpool::Value<int> items(0);
///   procpool::Process consumer([&] {
///     std::unique_lock hold(cond);
///     cond.wait_for([&] { return items.get() > 0; });
///   });
///   consumer.start();
///   { std::lock_guard hold(cond); items.set(1); cond.notify(); }
/// @endcode
template <class L = RLock>
class Condition {
 public:
  /// Over a new lock of its own. Copies are the same condition.
  Condition() : state_(who, 0) {}
  /// Over @p lock (a copy of it: the same lock).
  explicit Condition(L lock) : lock_(std::move(lock)), state_(who, 0) {}

  /// Acquires the lock, as L::acquire does.
  bool acquire(bool block = true) { return lock_.acquire(block); }
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return lock_.acquire(timeout);
  }
  void release() { lock_.release(); }
  // Lockable, for std::lock_guard and std::unique_lock.
  void lock() { lock_.lock(); }
  bool try_lock() { return lock_.try_lock(); }
  void unlock() { lock_.unlock(); }
  /// The lock; its holder_died() says whether a holder died with it held.
  L& get_lock() noexcept { return lock_; }

  /// Releases the lock (every level of an RLock), waits for a notify, and
  /// acquires it again. @throws usage_error when the caller does not hold it.
  void wait() { static_cast<void>(wait_until(forever)); }
  /// As wait(), at most @p timeout; false when it ran out.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::deadline_after(timeout));
  }
  /// Waits until @p pred() (checked under the lock) is true.
  template <class Pred>
  void wait_for(Pred pred) {
    while (!pred()) wait();
  }
  /// As wait_for(pred), at most @p timeout; returns pred()'s last value.
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) {
    const std::int64_t deadline = detail::deadline_after(timeout);
    bool ok;
    while (!(ok = pred()) && wait_until(deadline)) {
    }
    return ok || pred();
  }
  /// Wakes at least one waiter, if any, up to @p n. @throws usage_error when
  /// the caller does not hold the lock (Python's RuntimeError).
  void notify(std::size_t n = 1) { wake(n > static_cast<std::size_t>(max_wake) ? max_wake : static_cast<int>(n)); }
  /// Wakes every waiter. @throws usage_error when the caller does not hold the lock.
  void notify_all() { wake(max_wake); }

 private:
  static constexpr const char* who = "procpool::Condition";
  static constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();
  static constexpr int max_wake = std::numeric_limits<int>::max();

  struct state {
    std::atomic<std::uint32_t> seq;      // the futex word: changes on every notify
    std::atomic<std::uint32_t> waiters;  // a waiter killed asleep leaves it high: a wake more
  };

  void wake(int n) {
    if (lock_.held_by_me() == 0)
      throw usage_error(std::string(who) + "::notify: the caller does not hold the lock; "
                        "acquire it, change the state, then notify");
    state_->seq.fetch_add(1);
    if (state_->waiters.load() != 0) detail::futex_wake(&state_->seq, n);
  }
  bool wait_until(std::int64_t deadline);

  L lock_;
  detail::shared_block<state> state_;
};

// ---------------------------------------------------------------------------

template <class L>
bool Condition<L>::wait_until(std::int64_t deadline) {
  const std::uint32_t depth = lock_.held_by_me();
  if (depth == 0)
    throw usage_error(std::string(who) + "::wait: the caller does not hold the lock; "
                      "acquire it first (std::unique_lock hold(cond))");
  state& s = *state_;
  // Noted under the lock: a notify after the release changes it, and the
  // futex wait below then returns at once.
  const std::uint32_t seen = s.seq.load();
  s.waiters.fetch_add(1);
  for (std::uint32_t i = 0; i < depth; ++i) lock_.release();
  bool notified = false;
  for (;;) {
    if (s.seq.load() != seen) {
      notified = true;
      break;
    }
    const std::int64_t left = deadline - detail::monotonic_ns();
    if (left <= 0) break;
    detail::futex_wait(&s.seq, seen, left);
  }
  s.waiters.fetch_sub(1);
  for (std::uint32_t i = 0; i < depth; ++i) lock_.acquire();
  return notified;
}

}  // namespace procpool
