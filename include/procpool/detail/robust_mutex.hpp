// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// A process-shared robust pthread mutex, for Lock and RLock. When its holder
// dies, the kernel (the holder's robust list) hands the mutex to the next
// waiter with EOWNERDEAD; the waiter makes it consistent and is told, so a
// dead holder never leaves the lock locked for good. Boost.Interprocess's
// interprocess_mutex is not used: in Boost 1.74 it stays locked after its
// holder dies, and from 1.78 it is robust but unusable for good afterwards
// (boostorg/interprocess 187).

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <ctime>
#include <limits>
#include <string>
#include <system_error>

#include <pthread.h>
#include <sys/types.h>
#include <unistd.h>

#include "../errors.hpp"
#include "posix.hpp"

#if defined(__SANITIZE_THREAD__)
#define PROCPOOL_TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PROCPOOL_TSAN_BUILD 1
#endif
#endif
#ifndef PROCPOOL_TSAN_BUILD
#define PROCPOOL_TSAN_BUILD 0
#endif

namespace procpool::detail {

/// What lock_until got.
enum class lock_result { acquired, acquired_holder_died, timed_out };

/// Lives in shared memory (shared_block); init() once, before any fork.
struct robust_mutex {
  pthread_mutex_t m;
  std::atomic<pid_t> owner;   // the holding thread's id (unique across processes); 0: none
  std::uint32_t depth;        // the holder's acquires not released yet
  std::uint32_t holder_died;  // the holder's first acquire found the last holder dead

  /// @p recursive: RLock. @p who names the primitive in errors.
  void init(bool recursive, const char* who);
  /// Acquires, waiting until @p deadline (CLOCK_MONOTONIC ns; max: no limit,
  /// a negative one: do not wait).
  lock_result lock_until(std::int64_t deadline, const char* who);
  /// Releases. @throws usage_error when the caller does not hold it.
  void unlock(const char* who);
};

inline void robust_mutex::init(bool recursive, const char* who) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  // ERRORCHECK: acquiring a Lock twice in one thread is an error, not a hang.
  pthread_mutexattr_settype(&a, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
  const int rc = pthread_mutex_init(&m, &a);
  pthread_mutexattr_destroy(&a);
  if (rc != 0) throw std::system_error(rc, std::generic_category(), std::string(who) + ": pthread_mutex_init");
  owner.store(0, std::memory_order_relaxed);
  depth = holder_died = 0;
}

inline lock_result robust_mutex::lock_until(std::int64_t deadline, const char* who) {
  int rc;
  if (deadline == std::numeric_limits<std::int64_t>::max()) {
    rc = pthread_mutex_lock(&m);
  } else if (deadline < 0) {
    rc = pthread_mutex_trylock(&m);
    if (rc == EBUSY) return lock_result::timed_out;
  } else {
#if PROCPOOL_TSAN_BUILD
    // TSan does not intercept pthread_mutex_clocklock, and would take the
    // lock for free: polled with trylock, which it models (EOWNERDEAD too).
    while ((rc = pthread_mutex_trylock(&m)) == EBUSY) {
      if (monotonic_ns() >= deadline) return lock_result::timed_out;
      sleep_ns(100'000);
    }
#else
    const timespec ts{static_cast<time_t>(deadline / 1'000'000'000),
                      static_cast<long>(deadline % 1'000'000'000)};
    rc = pthread_mutex_clocklock(&m, CLOCK_MONOTONIC, &ts);
#endif
  }
  switch (rc) {
    case 0:
      owner.store(current_tid(), std::memory_order_relaxed);
      if (++depth == 1) holder_died = 0;
      return holder_died ? lock_result::acquired_holder_died : lock_result::acquired;
    case EOWNERDEAD:
      pthread_mutex_consistent(&m);
      owner.store(current_tid(), std::memory_order_relaxed);
      depth = 1;
      holder_died = 1;
      return lock_result::acquired_holder_died;
    case ETIMEDOUT:
      return lock_result::timed_out;
    case EDEADLK:
      throw usage_error(std::string(who) +
                        ": acquired again by the thread that holds it; a Lock is not recursive "
                        "(it would wait for itself for ever): release it first, or use RLock");
    default:
      throw std::system_error(rc, std::generic_category(), std::string(who) + ": acquire");
  }
}

inline void robust_mutex::unlock(const char* who) {
  if (owner.load(std::memory_order_relaxed) != current_tid())
    throw usage_error(std::string(who) +
                      ": released by a thread that does not hold it; only the thread that "
                      "acquired it may release it");
  if (--depth == 0) owner.store(0, std::memory_order_relaxed);
  const int rc = pthread_mutex_unlock(&m);
  if (rc != 0) throw std::system_error(rc, std::generic_category(), std::string(who) + ": release");
}

}  // namespace procpool::detail
