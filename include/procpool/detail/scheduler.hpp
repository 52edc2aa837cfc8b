// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The pool's scheduling policy, in one place. The rule it keeps: no worker
// sits idle while another worker holds items it has not started. Three parts:
//  - chunk sizes shrink as a call's input drains (OpenMP's guided schedule),
//    so the last chunks of a call are small and end together;
//  - a worker is queued a few chunks ahead, more when its chunks are quick
//    (to hide the parent's wake-up latency), one when they are long;
//  - a queued chunk that a worker has not started can be taken back (its
//    claim word, below) and given to a worker that has nothing to do.
// The engine (engine.hpp) asks these functions and carries out the answers.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "tuning.hpp"

namespace procpool::detail {

/// How many chunks to keep queued to a worker whose last chunk took
/// @p took_ns (-1: it has run none yet, so nothing is known).
inline std::size_t queue_depth(std::int64_t took_ns) noexcept {
  if (took_ns < 0) return 2;            // unknown: one running, one ready behind it
  if (took_ns < quick_chunk_ns) return max_queue_depth;  // quick: hide the parent's latency
  if (took_ns < long_chunk_ns) return 2;
  return 1;  // long: a worker that finishes early takes the next one itself
}

/// The fewest items a guided chunk for a worker gets, whose last chunk of
/// @p items items took @p took_ns (1 when it has run none).
inline std::size_t min_chunk_items(std::int64_t took_ns, std::uint64_t items) noexcept {
  if (took_ns <= 0 || items == 0) return 1;
  const double per_item = static_cast<double>(took_ns) / static_cast<double>(items);
  const double n = static_cast<double>(min_chunk_ns) / per_item;
  return n < 1 ? 1 : n > 1e9 ? std::size_t{1'000'000'000} : static_cast<std::size_t>(n);
}

/// Items in the next chunk of a call that has @p remaining items left to hand
/// out (0: unknown), on @p workers workers, with chunks of at most @p cap and,
/// shrinking, of at least @p least. @p guided is false when the caller chose
/// the chunk size: it is kept.
inline std::size_t chunk_items(std::size_t cap, bool guided, std::uint64_t remaining,
                               std::size_t workers, std::size_t least = 1) noexcept {
  if (!guided || remaining == 0) return cap;
  const std::uint64_t per = guided_divisor * std::max<std::size_t>(workers, 1);
  const std::uint64_t g = std::max<std::uint64_t>((remaining + per - 1) / per, least);
  return static_cast<std::size_t>(std::clamp<std::uint64_t>(g, 1, cap));
}

// ---------------------------------------------------------------- claim words

/// Per worker, in shared memory: one word per queued chunk, through which the
/// worker and the parent agree, with one compare-and-swap each, on who runs a
/// chunk the parent has written into the worker's task ring. The word holds
/// the chunk's sequence number; the worker sets `started` before it runs the
/// chunk, the parent sets `revoked` to take it back. Whoever swaps first wins.
/// A chunk's word is chosen round-robin; a worker never holds more than
/// max_queue_depth chunks, so a word is reused only after its chunk is answered.
struct claim_board {
  static constexpr unsigned words = 16;
  static constexpr std::uint64_t started = std::uint64_t{1} << 63;
  static constexpr std::uint64_t revoked = std::uint64_t{1} << 62;

  std::atomic<std::uint64_t> word[words];

  /// Parent, before the chunk is written: @p seq waits in word @p i.
  void post(unsigned i, std::uint64_t seq) noexcept { word[i].store(seq, std::memory_order_release); }
  /// Worker: true if it may run chunk @p seq (false: the parent took it back).
  bool take(unsigned i, std::uint64_t seq) noexcept {
    std::uint64_t expect = seq;
    return word[i].compare_exchange_strong(expect, seq | started, std::memory_order_acq_rel);
  }
  /// Parent: true if chunk @p seq was taken back before the worker started it.
  /// A worker that retires (max_memory_per_child) declines a chunk the same way.
  bool revoke(unsigned i, std::uint64_t seq) noexcept {
    std::uint64_t expect = seq;
    return word[i].compare_exchange_strong(expect, seq | revoked, std::memory_order_acq_rel);
  }
  /// Parent: true once the worker has started chunk @p seq.
  bool is_started(unsigned i, std::uint64_t seq) const noexcept {
    return word[i].load(std::memory_order_acquire) == (seq | started);
  }
  void reset() noexcept {
    for (auto& w : word) w.store(0, std::memory_order_relaxed);
  }
};
static_assert(claim_board::words > max_queue_depth, "a claim word is reused only after its chunk");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "claim words live in shared memory");

// ---------------------------------------------------------------- stealing

/// What the stealing rule sees of one worker.
struct worker_load {
  bool idle = false;                // alive, may take work, and has nothing queued or running
  std::size_t unstarted = 0;        // queued chunks (or posted express calls) not started
  std::int64_t oldest_sent_ns = 0;  // when the oldest of those was queued

  /// Counts one more unstarted chunk or call, queued at @p sent_ns.
  void add_unstarted(std::int64_t sent_ns) noexcept {
    oldest_sent_ns = unstarted ? std::min(oldest_sent_ns, sent_ns) : sent_ns;
    ++unstarted;
  }
};

/// The worker an idle worker should take a queued chunk from, or -1: the one
/// holding the most unstarted chunks among those whose oldest has waited
/// steal_after_ns. When a chunk would move but is too young, @p retry_at is
/// lowered to when it may.
inline int pick_donor(std::span<const worker_load> workers, std::int64_t now,
                      std::int64_t& retry_at) noexcept {
  int best = -1;
  for (std::size_t i = 0; i < workers.size(); ++i) {
    const worker_load& w = workers[i];
    if (w.unstarted == 0) continue;
    if (now - w.oldest_sent_ns < steal_after_ns) {
      retry_at = std::min(retry_at, w.oldest_sent_ns + steal_after_ns);
      continue;
    }
    if (best < 0 || w.unstarted > workers[static_cast<std::size_t>(best)].unstarted)
      best = static_cast<int>(i);
  }
  return best;
}

}  // namespace procpool::detail
