// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// A call (map, imap, apply_async, ...) as the engine sees it, and the chunks
// of its items on their way to a worker. Typed job kinds are in jobs.hpp.

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <vector>

#include "buffer.hpp"
#include "wire.hpp"

namespace procpool::detail {

/// A map/imap/apply call as the engine sees it. Typed subclasses in jobs.hpp
/// encode inputs and decode results; all calls happen under the engine's lock.
class job {
 public:
  virtual ~job() = default;

  /// Appends up to @p max encoded items to @p out and sets @p base to the first
  /// item's index. Items of one fixed size set @p stride to it; others push each
  /// item's start (relative to @p out's size on entry) to @p offsets.
  /// Returns the number of items (0: none right now).
  virtual std::size_t next_items(byte_buffer& out, std::vector<std::uint32_t>& offsets,
                                 std::uint32_t& stride, std::size_t max,
                                 std::uint64_t& base) = 0;
  /// True when every input item has been handed out.
  virtual bool input_done() const = 0;
  /// Stores the results of items [base, base + count), failing those in @p
  /// failed; returns how many it stored as errors (pool_stats::failed).
  virtual std::size_t deliver(std::uint64_t base, std::uint64_t count,
                              const std::vector<item_failure>& failed, reader& values) = 0;
  /// Where the results of items [base, base + count), all fixed-size values
  /// taking @p bytes in all, can be copied as they are; nullptr when they
  /// cannot (then deliver() decodes them).
  virtual char* place(std::uint64_t base, std::uint64_t count, std::size_t bytes) {
    (void)base, (void)count, (void)bytes;
    return nullptr;
  }
  /// Item @p index failed with @p e.
  virtual void fail(std::uint64_t index, std::exception_ptr e) = 0;
  /// The pool can no longer run anything: every unfinished item fails with @p e.
  virtual void abort(std::exception_ptr e) = 0;
  /// Reading or encoding the input failed with @p e: no more items, and @p e
  /// is the call's error (by default the whole call fails at once).
  virtual void input_failed(std::exception_ptr e) { abort(std::move(e)); }
  /// join() was called: hand out all of the input, whether or not the results
  /// are read yet (imap's window would wait for its reader, and join for it).
  virtual void lift_window() {}

  std::uint64_t runner = 0;
  std::size_t chunksize = 1;
  std::size_t chunk_bytes = 0;  // a chunk stops growing past this many bytes (0: 1 GiB)
  std::size_t outstanding = 0;  // items handed out and not yet finished
  bool guided = false;          // chunksize is a cap: chunks shrink as the input drains
  std::int64_t timeout_ns = 0;  // how long each item may run: the call's own limit (0: the pool's)
  std::uint64_t total = 0;      // input items, when known (0: unknown)
  std::uint64_t handed = 0;     // input items handed out so far
  bool aborted = false;
  bool cancelled = false;       // async_result::cancel or shutdown(cancel_futures): aborted too
  /// Once complete(): true when the call failed (an item's error, or aborted).
  virtual bool failed() const { return aborted; }
  /// True when every item has a result or an error.
  bool complete() const { return aborted || (input_done() && outstanding == 0); }
};

/// A run of consecutive items of one job, encoded, on its way to a worker.
struct chunk {
  std::shared_ptr<job> owner;
  std::uint64_t base = 0;
  std::uint64_t seq = 0;
  std::uint64_t n = 0;
  std::int64_t sent_ns = 0;  // when it was handed to a worker
  unsigned attempts = 0;     // runs of a blamed item (pool_options::retries)
  unsigned orphaned = 0;     // deaths of its worker while no item of it ran
  unsigned claim = 0;        // its word on the worker's claim_board
  bool revoked = false;      // taken back and given to another worker: a placeholder
                             // until its worker says it skipped it (no owner, no items)
  std::uint32_t stride = 0;            // every item's size, or 0: see offsets
  byte_buffer msg;                     // a task_message
  std::vector<std::uint32_t> offsets;  // when stride == 0: item starts, n + 1 entries

  std::uint64_t count() const { return n; }
  /// Where item @p i starts, relative to the items (i == count(): their end).
  std::uint64_t offset(std::uint64_t i) const { return stride ? i * stride : offsets[i]; }
  /// Items [from, to) as a chunk of their own, with the same attempts and orphaned.
  chunk slice(std::uint64_t from, std::uint64_t to, unsigned with_attempts) const {
    chunk c;
    c.owner = owner;
    c.base = base + from;
    c.n = to - from;
    c.attempts = with_attempts;
    c.orphaned = orphaned;
    c.stride = stride;
    const std::uint64_t a = offset(from), b = offset(to);
    task_message::begin(c.msg);
    c.msg.append(task_message::items(msg) + a, static_cast<std::size_t>(b - a));
    if (!stride)
      for (std::uint64_t k = from; k <= to; ++k)
        c.offsets.push_back(static_cast<std::uint32_t>(offsets[k] - a));
    return c;
  }
};

/// Cuts the next items of @p owner's input into @p c: at most @p limit(left)
/// of them, left being the items not handed out yet (0 when unknown). Books
/// them as handed out and outstanding; returns how many, 0 when none is ready.
/// Throws what reading or encoding the input throws (the caller fails the job).
template <class Limit>
std::size_t cut_chunk(const std::shared_ptr<job>& owner, chunk& c, Limit limit) {
  job& j = *owner;
  task_message::begin(c.msg);
  c.offsets.clear();
  c.stride = 0;
  const std::uint64_t left = j.total > j.handed ? j.total - j.handed : 0;
  const std::size_t n = j.next_items(c.msg, c.offsets, c.stride, limit(left), c.base);
  if (n == 0) return 0;
  c.n = n;
  if (!c.stride) c.offsets.push_back(static_cast<std::uint32_t>(task_message::items_size(c.msg)));
  c.owner = owner;
  c.attempts = 0;
  j.outstanding += n;
  j.handed += n;
  return n;
}

}  // namespace procpool::detail
