// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The checks of pool_options a Pool makes before it maps or forks anything:
// each option out of range is a usage_error that says what to use instead.

#include <cstddef>
#include <cstdint>
#include <string>

#include "../errors.hpp"
#include "../options.hpp"
#include "death_verdict.hpp"
#include "posix.hpp"

namespace procpool::detail {

/// The number of workers @p opts asks for. @throws usage_error for options
/// out of range.
inline std::size_t checked_workers(const pool_options& opts) {
  const std::size_t n = opts.processes ? opts.processes : cpu_count();
  if (n > 4096)
    throw usage_error("procpool::Pool: " + std::to_string(n) +
                      " processes asked for; use between 1 and 4096 (0 means cpu_count())");
  if (opts.queue_bytes > (std::size_t{1} << 30))
    throw usage_error("procpool::Pool: queue_bytes above 1 GiB; messages of any size stream "
                      "through smaller queues");
  if (opts.task_timeout.count() < 0)
    throw usage_error("procpool::Pool: task_timeout is negative (" +
                      std::to_string(opts.task_timeout.count()) +
                      " ms); use a positive limit, or 0 for none");
  if (opts.max_memory_per_child) {
    // A worker starts with about this process's RSS: under a limit not above
    // it, every worker would be over from the start.
    const std::uint64_t rss = self_resident_bytes();
    if (rss == 0)
      throw usage_error("procpool::Pool: max_memory_per_child needs /proc/self/statm, which "
                        "cannot be read here (is /proc mounted?); use 0 for no limit");
    if (opts.max_memory_per_child <= rss)
      throw usage_error("procpool::Pool: max_memory_per_child (" +
                        describe_bytes(opts.max_memory_per_child) +
                        ") is not above this process's memory (RSS " + describe_bytes(rss) +
                        "), which each worker starts with (the pages a fork shares count in its "
                        "RSS); raise it, or use 0 for no limit");
  }
  return n;
}

}  // namespace procpool::detail
