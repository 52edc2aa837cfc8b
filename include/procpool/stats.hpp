// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file stats.hpp
/// procpool::pool_stats, what Pool::stats() counts.

#include <cstdint>

namespace procpool {

/// A snapshot of a pool's work, for progress bars and monitoring (Pool::stats()).
/// Items are counted as they are sent towards the workers (a map's input is cut
/// into chunks as workers take them), not when a call is made. Each item
/// counts once, whatever retries or reruns after a worker's death. The counts
/// stop at terminate().
struct pool_stats {
  std::uint64_t submitted = 0;  ///< items sent towards the workers so far
  std::uint64_t queued = 0;     ///< sent, not started: submitted - running - done - failed
  std::uint64_t running = 0;    ///< items a worker runs at this instant
  std::uint64_t done = 0;       ///< finished with a value
  std::uint64_t failed = 0;     ///< finished with an error (an exception, its worker's death, ...)
  std::uint64_t workers_started = 0;   ///< worker processes forked, the first ones included
  std::uint64_t workers_replaced = 0;  ///< of those, replacements for workers that died or retired
};

}  // namespace procpool
