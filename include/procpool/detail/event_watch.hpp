// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// What the driver waits for between rounds, without the engine's lock: an
// answer in a result ring, room in a task ring it has bytes for, a poke
// (submit, terminate), an express call finished, another caller taking over,
// or the next liveness check. Armed under the lock with copies of what it
// watches: once the lock is let go another caller may take over, and the
// worker records are then that caller's.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "driver.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"
#include "worker_link.hpp"

namespace procpool::detail {

/// Lives in the waiting caller's frame (a thread_local would be gone when a
/// static's destructor waits on a pool); the first few workers' rings need
/// no allocation.
class event_watch {
 public:
  /// Before the caller's done() check: an express call finishing after this
  /// ends the wait.
  void note_express(const pool_shared& pool) noexcept {
    express_finished_ = pool.express_finished.load(std::memory_order_acquire);
  }
  /// Under the lock: watch @p workers for the driver of generation @p gen,
  /// whose last round that moved anything was at @p last_progress_ns, until
  /// @p next_check at the latest.
  void arm(std::uint64_t gen, std::int64_t last_progress_ns, std::int64_t next_check,
           std::span<const worker_link> workers);
  /// Without the lock: spins briefly while answers are flowing, then sleeps on
  /// @p pool's parent event until an event or @p deadline. True if it took
  /// @p drv's poke.
  bool wait(std::int64_t deadline, driver& drv, pool_shared& pool) const;

 private:
  struct ring_pair {
    byte_ring results, tasks;
    bool blocked = false;  // has bytes to send when the task ring has room
  };
  static constexpr std::size_t inline_rings = 8;

  bool has_event(driver& drv, const pool_shared& pool, bool& poked) const;
  void add(const ring_pair& r) {
    if (n_ < inline_rings) few_[n_] = r;
    else more_.push_back(r);
    ++n_;
  }

  std::uint64_t gen_ = 0;
  std::uint32_t express_finished_ = 0;
  std::int64_t last_progress_ns_ = 0, next_check_ = 0;
  std::size_t n_ = 0;
  ring_pair few_[inline_rings];
  std::vector<ring_pair> more_;
};

inline void event_watch::arm(std::uint64_t gen, std::int64_t last_progress_ns,
                             std::int64_t next_check, std::span<const worker_link> workers) {
  gen_ = gen;
  last_progress_ns_ = last_progress_ns;
  next_check_ = next_check;
  n_ = 0;
  more_.clear();
  for (const auto& w : workers)
    if (w.connected()) add({w.in.ring, w.out.ring(), w.out.blocked()});
}

inline bool event_watch::has_event(driver& drv, const pool_shared& pool, bool& poked) const {
  if (drv.replaced(gen_)) return true;
  // A submit() or terminate() wants the driver (a load first: this runs in the spin loop).
  if (drv.take_poke()) return poked = true;
  // An express cell finished: its caller may wait on this driver's rounds.
  if (pool.express_finished.load(std::memory_order_relaxed) != express_finished_) return true;
  const auto ready = [](const ring_pair& r) {
    return r.results.readable() > 0 || (r.blocked && r.tasks.writable() > 0);
  };
  for (std::size_t i = 0; i < n_ && i < inline_rings; ++i)
    if (ready(few_[i])) return true;
  for (const auto& r : more_)
    if (ready(r)) return true;
  return false;
}

inline bool event_watch::wait(std::int64_t deadline, driver& drv, pool_shared& pool) const {
  bool poked = false;
  const std::int64_t start = monotonic_ns();
  // Spin only while answers are flowing; a pool whose tasks run long sleeps at
  // once, leaving the CPUs to the workers.
  if (start - last_progress_ns_ < 2 * spin_ns) {
    for (unsigned i = 0;; ++i) {
      if (has_event(drv, pool, poked)) return poked;
      cpu_relax();
      if ((i & 63) == 63 && monotonic_ns() - start > spin_ns) break;
    }
  }
  event& ev = pool.parent_ev;
  const std::uint32_t seen = ev.prepare();
  if (!has_event(drv, pool, poked)) {
    const std::int64_t now = monotonic_ns();
    // At least a short sleep: the check is what a sleep missed nothing for.
    const std::int64_t until = std::min(deadline, std::max(next_check_, now + 100'000));
    ev.wait(seen, std::max<std::int64_t>(until - now, 1000));
  }
  ev.retire();
  return poked;
}

}  // namespace procpool::detail
