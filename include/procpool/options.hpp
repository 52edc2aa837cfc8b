// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file options.hpp
/// Options of Pool and of its map-like calls.

#include <chrono>
#include <cstddef>
#include <functional>

namespace procpool {

/// How a Pool is built. Designated initializers read best:
/// @code
/// procpool::Pool pool(f, procpool::pool_options{.processes = 4, .max_tasks_per_child = 1000});
/// @endcode
struct pool_options {
  /// Worker processes; 0 means cpu_count().
  std::size_t processes = 0;
  /// Called once in each worker before its first task (and in each replacement).
  /// If it throws, or runs past task_timeout (when set), the pool cannot run
  /// tasks: every call fails with initializer_error.
  std::function<void()> initializer = {};
  /// A worker that has run this many items exits and is replaced; 0 means never.
  std::size_t max_tasks_per_child = 0;
  /// A worker whose memory (resident set size, as top shows it) passes this many
  /// bytes after a chunk sends that chunk's results and is replaced; what it had
  /// queued runs on other workers. 0 means no limit. Read at most once a
  /// millisecond, between chunks: a chunk's items all run in one worker
  /// (chunksize = 1 makes it "after an item"). A worker starts with this
  /// process's RSS (the pages a fork shares count in its RSS): a limit not above
  /// it throws usage_error here, and a worker over it before its first task (the
  /// initializer's memory counts) makes the pool unusable (usage_error).
  std::size_t max_memory_per_child = 0;
  /// An item running longer than this has its worker killed and replaced, and
  /// fails with task_timeout; 0 means no limit. It bounds the initializer too.
  std::chrono::milliseconds task_timeout{0};
  /// How many times an item whose worker died is run again on another worker
  /// before it fails with worker_lost.
  unsigned retries = 0;
  /// Bytes of shared memory per worker and direction (rounded up to a power of
  /// two, at least 4 KiB). Messages of any size stream through it in pieces; the
  /// pool maps 2 * processes * queue_bytes in all.
  std::size_t queue_bytes = std::size_t{1} << 20;
};

/// Options of map, imap, imap_unordered, starmap and their _async forms.
struct map_options {
  /// Items sent to a worker at a time. 0 picks one: Python's rule
  /// (len / (4 * processes), rounded up), capped at 1/32 of a queue for
  /// fixed-size items so that chunks pipeline, and for imap at 256 items so
  /// that results flow and memory in flight stays bounded. Whatever the count,
  /// a chunk stops growing at half a queue in bytes.
  std::size_t chunksize = 0;
  /// imap and imap_unordered only: at most this many items are in flight or
  /// waiting to be read (Python's buffersize); 0 picks a window of a few chunks
  /// per worker. Chosen chunks then hold at most buffersize / processes items.
  std::size_t buffersize = 0;
  /// How long each item of this call may run (pebble's schedule(timeout=)):
  /// past it, the item fails with task_timeout and its worker is replaced.
  /// 0: the pool's task_timeout. Overrides it, longer or shorter.
  std::chrono::milliseconds timeout{0};
};

/// Options of one apply_async call: pool.apply_async(procpool::call_options{.timeout = 500ms}, x).
struct call_options {
  /// How long the call may run; as map_options::timeout.
  std::chrono::milliseconds timeout{0};
};

}  // namespace procpool
