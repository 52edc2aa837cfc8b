// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The instants where a process's death is hardest on what it shares with
// others (between two stores that belong together), named, so that a test can
// end a process at exactly that instant and check what the others see
// (tests/test_crash_points.cpp). The second seam for tests, beside
// posix.hpp's system calls: a run-time hook, so every translation unit sees
// the same inline functions; unset, a point costs one load and a branch.

#include <atomic>

namespace procpool::detail {

enum class crash_point {
  /// Queue: a message's last chunk is published, not yet counted in written.
  queue_published,
  /// Queue: a message's last chunk is counted in taken, not yet consumed.
  queue_counted,
  /// Semaphore: a change is journaled and half made (the holder's books, not the count).
  semaphore_changing,
};

/// Called at every crash point while set; a test's hook ends its process at
/// the point it waits for (and returns at the others).
inline constinit std::atomic<void (*)(crash_point)> crash_hook{nullptr};

inline void reached(crash_point p) noexcept {
  if (auto* h = crash_hook.load(std::memory_order_relaxed)) [[unlikely]]
    h(p);
}

}  // namespace procpool::detail
