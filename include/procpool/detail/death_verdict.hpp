// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// What becomes of the work a dead worker held: which item is blamed, and each
// chunk's fate. Plain data in, plain data out, so a test can call it without
// forking; the engine (on_death) carries out the verdict. The errors it
// builds are the only place their messages are written.

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iterator>
#include <string>
#include <sys/types.h>

#include "../errors.hpp"
#include "express_cell.hpp"
#include "posix.hpp"
#include "tuning.hpp"

namespace procpool::detail {

/// What a dead worker was running, as the parent last saw it: the chunk's
/// sequence number and the item in it (`express_seq | cell` for an express
/// call), or seq 0: between items.
struct death_blame {
  std::uint64_t seq = 0;
  std::uint64_t item = 0;

  /// A timeout blames what the check saw; any other death, what the worker last wrote.
  static constexpr death_blame of(bool timed_out, death_blame seen_by_check, death_blame last_written) {
    return timed_out ? seen_by_check : last_written;
  }
  constexpr bool ran_nothing() const noexcept { return seq == 0; }
  /// True when an express call is blamed; then cell() is its cell.
  constexpr bool on_cell() const noexcept { return (seq & express_seq) != 0; }
  constexpr std::uint32_t cell() const noexcept { return static_cast<std::uint32_t>(seq & ~express_seq); }
};

enum class chunk_fate {
  elsewhere,  // taken back before the death: its items went to another worker
  requeued,   // every item runs again
  lost,       // its workers died too often before it started: every item fails
  blamed,     // `item` fails, or runs alone again (`retry`); the others run again
};

struct chunk_verdict {
  chunk_fate fate = chunk_fate::requeued;
  std::uint64_t item = 0;  // blamed: the item within the chunk
  bool retry = false;      // blamed: it runs again (pool_options::retries)
  unsigned orphaned = 0;   // the chunk's count of deaths before it started, from now on
};

/// The fate of a chunk of @p count items with sequence number @p seq that the
/// dead worker held. @p attempts: runs of its blamed item so far; @p orphaned:
/// deaths of its workers so far while none of its items ran. Only a worker
/// that died running nothing makes its chunks orphans: chunks queued behind a
/// blamed item are bystanders.
constexpr chunk_verdict judge_chunk(const death_blame& blame, std::uint64_t seq,
                                    std::uint64_t count, bool revoked, unsigned attempts,
                                    unsigned orphaned, unsigned retries) noexcept {
  if (revoked) return {chunk_fate::elsewhere, 0, false, orphaned};
  if (!blame.ran_nothing() && blame.seq == seq && blame.item < count)
    return {chunk_fate::blamed, blame.item, attempts < retries, orphaned};
  if (blame.ran_nothing()) {
    const unsigned now = orphaned + 1;
    return {now > max_orphaned ? chunk_fate::lost : chunk_fate::requeued, 0, false, now};
  }
  return {chunk_fate::requeued, 0, false, orphaned};
}

/// "512 bytes", "3.5 MiB", "100 MiB", "2.1 GiB": @p n bytes, for a message.
inline std::string describe_bytes(std::uint64_t n) {
  static constexpr const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  unsigned u = 0;
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : v < 10 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

/// The error of item @p index (0 for an express call) that worker @p pid died
/// running (killed by the timeout check when @p timed_out). A SIGKILL that the
/// pool did not send (@p killed_by_pool: it did, for a corrupt stream) is
/// most often the OOM killer's, and the message says so; @p rss_bytes is the
/// worker's memory at its last check (0: unknown). @p limit_name names the
/// limit a timed-out item ran past.
inline std::exception_ptr blamed_error(std::uint64_t index, pid_t pid, int exitcode,
                                       bool timed_out, long long timeout_ms,
                                       bool killed_by_pool = false, std::uint64_t rss_bytes = 0,
                                       const char* limit_name = "task_timeout") {
  std::string how = timed_out ? std::string("ran past ") + limit_name + " (" +
                                    std::to_string(timeout_ms) + " ms) and was killed"
                              : describe_exitcode(exitcode);
  if (!timed_out && exitcode == -SIGKILL && !killed_by_pool)
    how += ", not by the pool (the OOM killer? see dmesg)";
  std::string what = "procpool: worker " + std::to_string(pid) + " " + how + " while running item " +
                     std::to_string(index);
  if (!timed_out && rss_bytes) what += "; its memory (RSS) was " + describe_bytes(rss_bytes) + " at its last check";
  return timed_out ? std::make_exception_ptr(task_timeout(index, pid, exitcode, what))
                   : std::make_exception_ptr(worker_lost(index, pid, exitcode, what));
}

/// What every call fails with when worker @p pid was over max_memory_per_child
/// (@p limit) before it ran anything, at @p rss bytes: a replacement would be too.
inline std::exception_ptr memory_floor_error(pid_t pid, std::uint64_t rss, std::uint64_t limit) {
  return std::make_exception_ptr(usage_error(
      "procpool::Pool: worker " + std::to_string(pid) + " started with " + describe_bytes(rss) +
      " of memory (RSS), over max_memory_per_child (" + describe_bytes(limit) +
      "), before it ran anything: a worker starts as a copy of this process (the pages it "
      "shares count in its RSS) and then runs the initializer, so every replacement would be "
      "over it too; raise max_memory_per_child (0: no limit) and create a new Pool"));
}

/// The error of item @p index of a chunk whose workers died @p orphaned times
/// before any of its items ran, the last being @p pid.
inline std::exception_ptr lost_error(std::uint64_t index, pid_t pid, int exitcode,
                                     unsigned orphaned) {
  return std::make_exception_ptr(worker_lost(
      index, pid, exitcode,
      "procpool: item " + std::to_string(index) + " was lost: " + std::to_string(orphaned) +
          " workers died before it started (the last, " + std::to_string(pid) + ", " +
          describe_exitcode(exitcode) + "); out of memory receiving it?"));
}

}  // namespace procpool::detail
