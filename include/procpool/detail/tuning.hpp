// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Every tuning constant of the pool, each with the reason for its value.
// Sizes of the shared-memory layout (express cells) are in express_cell.hpp;
// these are the numbers one might change to trade latency against CPU.

#include <cstddef>
#include <cstdint>

namespace procpool::detail {

// ---------------------------------------------------------------- scheduling (scheduler.hpp)

/// Chunks queued to one worker at the most (sent, running or waiting): enough
/// to hide the parent's wake-up latency behind quick chunks.
inline constexpr std::size_t max_queue_depth = 8;
/// A queued chunk may move to an idle worker once it has waited this long: a
/// worker streaming tiny chunks starts each within microseconds, and moving
/// those would only wake a second worker to spin on a CPU the others need.
inline constexpr std::int64_t steal_after_ns = 200'000;
/// A chunk that took less than this is quick: several are queued ahead.
inline constexpr std::int64_t quick_chunk_ns = 500'000;
/// A chunk that took longer than this is long: one at a time, so a worker that
/// finishes early takes the next one itself.
inline constexpr std::int64_t long_chunk_ns = 5'000'000;
/// A guided chunk is at most 1/(guided_divisor * workers) of what is left.
inline constexpr std::size_t guided_divisor = 2;
/// ... and not smaller than what runs this long, judged from the worker's last
/// chunk: a tail of quick items ends together anyway, and cutting it finer
/// only adds messages.
inline constexpr std::int64_t min_chunk_ns = 200'000;
/// Default chunk caps (Python's len / (4 * processes) below them): map's keeps
/// one chunk's results vector slice bounded, imap's keeps its window small.
inline constexpr std::size_t map_chunk_cap = std::size_t{1} << 20;
inline constexpr std::size_t imap_chunk_cap = 256;
/// Fixed-size items: a chunk holds at most 1/this of a queue, so chunks
/// pipeline and stay in cache.
inline constexpr std::size_t queue_fraction_per_chunk = 32;
/// imap keeps at most this many chunks per worker in flight or unread (and at
/// least imap_min_window items).
inline constexpr std::size_t imap_chunks_per_worker = 4;
inline constexpr std::size_t imap_min_window = 64;

// ---------------------------------------------------------------- waiting

/// A worker, or a driver whose answers are flowing, spins this long for the
/// next message before it sleeps on a futex: a futex wake costs more.
inline constexpr std::int64_t spin_ns = 50'000;
/// A Queue's put or get spins this long for room or a chunk before it sleeps
/// on a futex: a stream of small items between two busy processes then costs
/// no system call per item (a futex wake costs many items' worth of time).
inline constexpr std::int64_t queue_spin_ns = 20'000;
/// put_nowait waits this long for the producers' lock, which another producer
/// holds while it writes an item and a consumer for an instant while it looks
/// whether producers live: "no room now" must not mean "someone held the lock".
inline constexpr std::int64_t queue_nowait_lock_ns = 10'000'000;
/// How often a Queue reader waiting mid-item looks whether its producer
/// lives, and a Pipe end whether its peer's process does: a look is a lock
/// try, or system calls.
inline constexpr std::int64_t peer_probe_ns = 10'000'000;
/// How many bytes of an item a Queue encodes and decodes on the stack.
inline constexpr std::size_t queue_stack_bytes = 256;
/// A sleeping worker wakes this often to see whether its parent is gone (the
/// parent-death signal covers most cases; this covers the rest).
inline constexpr std::int64_t parent_poll_ns = 100'000'000;
/// The driver looks for dead and overdue workers at most this often: each look
/// is a waitpid per worker.
inline constexpr std::int64_t liveness_check_ns = 5'000'000;
/// A caller waiting for another thread to drive re-checks this often, in case
/// a notification was missed.
inline constexpr std::int64_t follower_wait_ns = 10'000'000;

// ---------------------------------------------------------------- the express lane (express_lane.hpp)

/// "Polling now": a worker that polled this recently on another CPU takes a call.
inline constexpr std::int64_t express_fresh_ns = 5'000;
/// ... or this recently on the caller's CPU: the caller, waking, took the CPU
/// from it a moment ago, and yields it back.
inline constexpr std::int64_t express_fresh_here_ns = 100'000;
/// A caller spins this long for an express answer before it waits as for any
/// job (which also watches for the worker's death).
inline constexpr std::int64_t express_spin_ns = 20'000;

// ---------------------------------------------------------------- deaths (death_verdict.hpp)

/// A chunk whose workers died this many times before any item of it ran is
/// lost (out of memory receiving it, say), rather than forking forever.
inline constexpr unsigned max_orphaned = 3;
/// Deaths in a row before the initializer returned that make the pool
/// unusable: one may be a kill from outside (the OOM killer); an initializer
/// that crashes each time keeps forking.
inline constexpr unsigned max_deaths_before_ready = 3;

// ---------------------------------------------------------------- memory

/// A ring starts this small (when its capacity is larger) and grows to its
/// capacity for the first message that needs more: a stream of small messages
/// then touches a quarter of a default ring's pages, each a page fault in each
/// process on first use.
inline constexpr std::size_t initial_ring_bytes = std::size_t{256} << 10;
/// Buffers this big and more are mapped with transparent huge pages requested.
inline constexpr std::size_t huge_buffer_bytes = std::size_t{4} << 20;
/// A worker gives back a buffer past this size after the message that grew it.
inline constexpr std::size_t worker_buffer_keep_bytes = std::size_t{64} << 20;
/// With max_memory_per_child, a worker reads its RSS after a chunk when this
/// long has passed since it last did: after every chunk of long items, and at
/// most once a millisecond (one pread of ~2 us) for a stream of quick ones.
/// Memory grows only as fast as pages are touched, so the check misses little.
inline constexpr std::int64_t memory_check_ns = 1'000'000;
/// Without a limit it still reads it this often, for the message of a worker
/// killed from outside (the OOM killer): ~0.002% of its time.
inline constexpr std::int64_t memory_sample_ns = 100'000'000;

}  // namespace procpool::detail
