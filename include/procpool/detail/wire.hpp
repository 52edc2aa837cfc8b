// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The wire format of the rings: every message is a frame_header and a body.
// A task body is a task_header and the encoded items; a results body is a
// result_header, the encoded values, then the error records.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "buffer.hpp"

namespace procpool::detail {

inline constexpr std::uint32_t frame_magic = 0x50504c31;  // "PPL1"

enum class frame_kind : std::uint32_t {
  task = 1,         // parent -> worker: task_header, then the encoded arguments
  stop = 2,         // parent -> worker: finish and exit
  results = 3,      // worker -> parent: result_header, values, errors
  init_failed = 4,  // worker -> parent: the initializer threw (two strings)
  bye = 5,          // worker -> parent: exiting after stop
  skipped = 6,      // worker -> parent: a task the parent took back (its seq), not run
};

struct frame_header {
  std::uint32_t magic;
  std::uint32_t kind;
  std::uint64_t size;  // bytes of body after this header
};

struct task_header {
  std::uint64_t runner;  // address of the typed runner, valid in the forked worker
  std::uint64_t seq;     // chunk sequence number, echoed in the results
  std::uint64_t count;   // items in the chunk
  std::uint64_t claim;   // its word on the worker's claim_board (scheduler.hpp)
  std::uint64_t flags;   // task_timed
};

/// task_header::flags: the worker stamps each item's start (running_since), for
/// a call with a timeout of its own in a pool without task_timeout.
inline constexpr std::uint64_t task_timed = 1;

struct result_header {
  std::uint64_t seq;
  std::uint64_t count;
  std::uint64_t errors;     // number of error records
  std::uint64_t errors_at;  // offset of the error records in the body
};

// Error records: u64 local index, then the type and message as encoded strings.

inline void put_string(byte_buffer& b, const std::string& s) {
  b.append_value(std::uint64_t{s.size()});
  b.append(s.data(), s.size());
}

inline std::string get_string(reader& r) {
  const auto n = r.read_value<std::uint64_t>();
  const char* p = r.take(static_cast<std::size_t>(std::min<std::uint64_t>(n, r.remaining() + 1)));
  return std::string(p, static_cast<std::size_t>(n));
}

/// An item's exception as the worker reported it.
struct item_failure {
  std::uint64_t local;
  std::string type;
  std::string message;
};

/// The values of a results body that answers chunk @p seq of @p count items;
/// its error records go to @p failed, in item order.
/// @throws decode_error when the body answers another chunk or is corrupted.
inline reader parse_results(const char* body, std::size_t size, std::uint64_t seq,
                            std::uint64_t count, std::vector<item_failure>& failed) {
  reader r(body, size);
  const auto rh = r.read_value<result_header>();
  if (rh.seq != seq || rh.count != count || rh.errors_at < sizeof rh || rh.errors_at > size)
    throw decode_error("procpool: a worker's answer does not match the chunk it was given");
  reader er(body + rh.errors_at, size - rh.errors_at);
  for (std::uint64_t k = 0; k < rh.errors; ++k) {
    item_failure f;
    f.local = er.read_value<std::uint64_t>();
    f.type = get_string(er);
    f.message = get_string(er);
    if (f.local >= count || (!failed.empty() && f.local <= failed.back().local))
      throw decode_error("procpool: a worker's error records are corrupted");
    failed.push_back(std::move(f));
  }
  return reader(r.position(), static_cast<std::size_t>(rh.errors_at - sizeof rh));
}

/// Builds task messages in one buffer: room for the two headers, then the
/// items (encoded by the caller), then the headers, filled in when the task is
/// sent (seal). Nothing outside this struct knows the header offsets.
struct task_message {
  /// Where the items start.
  static constexpr std::size_t items_at = sizeof(frame_header) + sizeof(task_header);

  /// Makes @p msg an empty task: room for the headers, no items.
  static void begin(byte_buffer& msg) {
    msg.clear();
    msg.grow(items_at);
  }
  /// True when @p msg was begun and holds no items yet.
  static bool empty(const byte_buffer& msg) noexcept { return msg.size() == items_at; }
  /// The encoded items of a begun message.
  static const char* items(const byte_buffer& msg) noexcept { return msg.data() + items_at; }
  static std::size_t items_size(const byte_buffer& msg) noexcept { return msg.size() - items_at; }
  /// Fills in the headers of @p msg (begun, items appended).
  static void seal(byte_buffer& msg, const task_header& th) noexcept {
    const frame_header fh{frame_magic, static_cast<std::uint32_t>(frame_kind::task),
                          msg.size() - sizeof(frame_header)};
    std::memcpy(msg.data(), &fh, sizeof fh);
    std::memcpy(msg.data() + sizeof fh, &th, sizeof th);
  }
};

}  // namespace procpool::detail
