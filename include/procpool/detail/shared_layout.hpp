// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The shared memory of a pool: one anonymous mapping, made before the
// workers fork and so inherited by each of them, never named in /dev/shm.
// It holds a pool_shared, a worker_shared per worker, then each worker's two
// rings' data.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#include <boost/interprocess/anonymous_shared_memory.hpp>

#include "express_cell.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "scheduler.hpp"

namespace procpool::detail {

struct alignas(64) pool_shared {
  event parent_ev;  // the parent sleeps here: results arrived, or task space freed
  // Bumped as each express cell finishes: wakes a driver its caller waits on.
  alignas(64) std::atomic<std::uint32_t> express_finished{0};
  // Express calls the workers finished with a value, and with an error (pool_stats).
  std::atomic<std::uint64_t> express_ok{0};
  std::atomic<std::uint64_t> express_failed{0};
};

/// Why a worker takes no more tasks (worker_shared::retiring).
enum class memory_state : std::uint32_t {
  ok = 0,
  over_limit = 1,     // its RSS passed max_memory_per_child after it ran a chunk: it is replaced
  over_at_start = 2,  // it was over the limit before it ran anything: a replacement would be too
};

struct alignas(64) worker_shared {
  ring_control tasks;    // parent -> worker
  ring_control results;  // worker -> parent
  event worker_ev;       // the worker sleeps here: tasks arrived, or result space freed
  // What the worker is running, for blame on death and for timeouts.
  alignas(64) std::atomic<std::uint64_t> running_seq{0};  // 0: between items
  std::atomic<std::uint64_t> running_item{0};
  std::atomic<std::int64_t> running_since{0};
  std::atomic<std::uint32_t> ready{0};  // set after the initializer returned
  // The worker's memory (worker_loop.hpp: memory_watch), on a line of its own:
  // the parent reads `retiring` every round, and the line above is written per item.
  alignas(64) std::atomic<std::uint64_t> rss_bytes{0};  // resident bytes at its last check; 0: none yet
  std::atomic<std::uint32_t> retiring{0};  // a memory_state: 0, or why it takes no more tasks
  // Who runs each queued task: the worker, or the parent took it back.
  alignas(64) claim_board claims;
  // The express lane: when the worker last looked for work (0: it sleeps), on which CPU.
  alignas(64) std::atomic<std::int64_t> poll_ns{0};
  std::atomic<std::int32_t> poll_cpu{-1};
  std::atomic<std::uint32_t> cells_posted{0};  // bumped after a cell is posted
  express_cell cells[express_cells];
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "worker_shared's atomics live in shared memory: lock-free, or they are per process");

/// The mapping, and where each part of it lies.
class shared_region {
 public:
  /// Maps room for @p workers workers with rings of @p ring_bytes each
  /// (a power of two, at least 4096), and constructs the shared parts.
  shared_region(std::size_t workers, std::size_t ring_bytes)
      : ring_bytes_(ring_bytes) {
    const std::size_t header = sizeof(pool_shared) + workers * sizeof(worker_shared);
    const std::size_t data_at = (header + 4095) / 4096 * 4096;
    region_ = boost::interprocess::anonymous_shared_memory(data_at + 2 * workers * ring_bytes);
    base_ = static_cast<char*>(region_.get_address());
    data_ = base_ + data_at;
    new (pool()) pool_shared();
    for (std::size_t i = 0; i < workers; ++i) new (worker(i)) worker_shared();
  }

  pool_shared* pool() const noexcept { return reinterpret_cast<pool_shared*>(base_); }
  worker_shared* worker(std::size_t i) const noexcept {
    return reinterpret_cast<worker_shared*>(base_ + sizeof(pool_shared)) + i;
  }
  char* task_data(std::size_t i) const noexcept { return data_ + 2 * i * ring_bytes_; }
  char* result_data(std::size_t i) const noexcept { return data_ + (2 * i + 1) * ring_bytes_; }
  std::size_t ring_bytes() const noexcept { return ring_bytes_; }

  /// @p n rounded up to a power of two, from 4096 to 2 GiB.
  static std::size_t ring_size_for(std::size_t n) noexcept {
    std::size_t p = 4096;
    while (p < n && p < (std::size_t{1} << 31)) p *= 2;
    return p;
  }

 private:
  std::size_t ring_bytes_;
  boost::interprocess::mapped_region region_;
  char* base_ = nullptr;
  char* data_ = nullptr;
};

}  // namespace procpool::detail
