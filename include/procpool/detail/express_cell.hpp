// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The express lane's cells: per worker, in shared memory, each holding one
// apply_async call of small fixed-size arguments and result, with the state
// machine caller and worker move it through (express_lane.hpp).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "posix.hpp"

namespace procpool::detail {

inline constexpr unsigned express_cells = 8;          // per worker
inline constexpr std::size_t express_arg_bytes = 256;  // encoded arguments, at most
inline constexpr std::size_t express_res_bytes = 1024;  // result; or a task error's text
inline constexpr std::uint64_t express_seq = std::uint64_t{1} << 63;  // running_seq: bit | cell

enum cell_state : std::uint32_t {
  cell_free = 0,
  cell_claimed = 1,   // a caller is writing the call
  cell_posted = 2,    // waiting for the worker
  cell_running = 3,   // the worker runs it
  cell_done = 4,      // status and result are there
  cell_requeued = 5,  // its worker died before it ran: it goes through the queues
};
inline constexpr std::uint32_t cell_dropped = 0x100;  // the caller's handle is gone:
                                                     // whoever finishes the cell frees it
enum cell_status : std::uint32_t {
  status_ok = 0,
  status_task_error = 1,  // res: type '\0' message
  status_exception = 2,   // the parent holds the exception (express_lane)
};

struct alignas(64) express_cell {
  std::atomic<std::uint32_t> state{cell_free};
  std::uint32_t status = status_ok;
  std::uint64_t runner = 0;        // express runner, valid in the forked worker
  std::uint64_t chunk_runner = 0;  // the chunk runner, for a run through the queues
  std::uint32_t arg_size = 0;
  std::uint32_t res_size = 0;
  std::int32_t caller_cpu = -1;  // the worker yields to a caller waiting on its CPU
  // When it was claimed, for the scheduler's stealing; the parent may read it
  // while a new caller claims the cell.
  std::atomic<std::int64_t> posted_ns{0};
  char arg[express_arg_bytes];
  char res[express_res_bytes];
};

using express_runner = void (*)(void* fn, express_cell& c);

/// Stores a task error in @p c: its type, a '\0', and as much of its message
/// as fits (a cut message ends in "...").
inline void set_cell_error(express_cell& c, const std::string& type, const std::string& what) {
  c.status = status_task_error;
  c.res_size = 0;
  std::string text = type + '\0' + what;
  if (text.size() > express_res_bytes) {
    text.resize(express_res_bytes - 3);
    text += "...";
  }
  std::memcpy(c.res, text.data(), text.size());
  c.res_size = static_cast<std::uint32_t>(text.size());
}

/// Records the exception being handled as @p c's task error (in the worker).
inline void put_cell_error(express_cell& c) noexcept {
  try {
    auto [type, what] = describe_current_exception();
    set_cell_error(c, type, what);
  } catch (...) {
    c.status = status_task_error;  // out of memory describing it: an empty type and message
    c.res_size = 0;
  }
}

}  // namespace procpool::detail
