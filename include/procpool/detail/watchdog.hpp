// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The time limits, in the parent: an item that runs past its call's timeout
// or the pool's task_timeout, and an initializer that runs past task_timeout,
// get their worker killed. The watchdog marks what it saw running, so that
// the death (the engine's on_death) blames that item and no other.

#include <chrono>
#include <csignal>
#include <cstdint>
#include <limits>

#include "death_verdict.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "shared_layout.hpp"
#include "worker_link.hpp"

namespace procpool::detail {

/// Kills the workers that run past their limits.
class watchdog {
 public:
  /// Limits from @p task_timeout (0: none); the initializer is bounded too
  /// when @p has_initializer.
  watchdog(std::chrono::milliseconds task_timeout, bool has_initializer) noexcept
      : timeout_ns_(saturated_ns(task_timeout)), has_initializer_(has_initializer) {}

  /// The pool's task_timeout in nanoseconds; 0: none.
  std::int64_t timeout_ns() const noexcept { return timeout_ns_; }

  /// Kills @p w (state @p s) when what it runs is past its limit at @p now,
  /// noting in w.timed_out, w.timeout_blame and w.timeout_ns what it ran past.
  /// True if it killed it.
  bool check(worker_link& w, const worker_shared& s, std::int64_t now) const;

  /// How long an item of chunk @p seq, running on @p w, may run: its call's
  /// own limit, else task_timeout (0: no limit).
  std::int64_t limit_of(const worker_link& w, std::uint64_t seq) const noexcept;

 private:
  /// A limit past ~292 years means "none in practice": saturated, never wrapped.
  static std::int64_t saturated_ns(std::chrono::milliseconds ms) noexcept {
    constexpr auto ns_per_ms = std::int64_t{1'000'000};
    return ms.count() > std::numeric_limits<std::int64_t>::max() / ns_per_ms
               ? std::numeric_limits<std::int64_t>::max()
               : ms.count() * ns_per_ms;
  }

  std::int64_t timeout_ns_;
  bool has_initializer_;
};

// ---------------------------------------------------------------------------

inline bool watchdog::check(worker_link& w, const worker_shared& s, std::int64_t now) const {
  if (w.timed_out) return false;
  if (timeout_ns_ > 0 && has_initializer_ && !s.ready.load(std::memory_order_acquire) &&
      now - w.started_ns > timeout_ns_) {
    // One that hangs would hang every call.
    w.timed_out = true;
    w.timeout_blame = {};
    send_signal(w.pid, SIGKILL);
    return true;
  }
  // Read twice: only a consistent (seq, item) pair that is still running
  // past the limit is killed and blamed.
  const std::uint64_t seq = s.running_seq.load(std::memory_order_acquire);
  const std::uint64_t item = s.running_item.load(std::memory_order_acquire);
  const std::int64_t since = s.running_since.load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
  const std::int64_t limit = seq != 0 ? limit_of(w, seq) : 0;
  if (limit > 0 && now - since > limit && s.running_seq.load() == seq &&
      s.running_item.load() == item) {
    w.timed_out = true;
    w.timeout_blame = {seq, item};
    w.timeout_ns = limit;
    send_signal(w.pid, SIGKILL);
    return true;
  }
  return false;
}

inline std::int64_t watchdog::limit_of(const worker_link& w, std::uint64_t seq) const noexcept {
  if (!(seq & express_seq))
    for (const chunk& c : w.out.chunks())
      if (c.seq == seq) return c.owner && c.owner->timeout_ns > 0 ? c.owner->timeout_ns : timeout_ns_;
  return timeout_ns_;
}

}  // namespace procpool::detail
