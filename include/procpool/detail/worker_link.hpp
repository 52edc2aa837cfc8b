// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The parent's end of one worker: its process, the chunks it holds in answer
// order and how far they are written into its task ring (task_queue), the
// message being read from its result ring (frame_reader), and how long its
// chunks take (chunk_timing, for the scheduler).

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <sys/types.h>

#include "buffer.hpp"
#include "death_verdict.hpp"
#include "job.hpp"
#include "ring.hpp"
#include "scheduler.hpp"
#include "shared_layout.hpp"
#include "wire.hpp"

namespace procpool::detail {

/// The chunks a worker holds, in the order it answers them: written into its
/// task ring, or waiting to be. A chunk taken back after it was written stays
/// as a placeholder (revoked) until the worker says it skipped it.
class task_queue {
 public:
  /// Empties the queue for a new worker on @p ring.
  void reset(byte_ring ring) {
    ring_ = ring;
    ring_.start_small();
    chunks_.clear();
    sent_ = send_off_ = 0;
    next_claim_ = 0;
    stop_queued_ = stop_sent_ = false;
  }

  bool empty() const noexcept { return chunks_.empty(); }
  std::size_t size() const noexcept { return chunks_.size(); }
  const std::deque<chunk>& chunks() const noexcept { return chunks_; }
  std::deque<chunk>& chunks() noexcept { return chunks_; }
  const byte_ring& ring() const noexcept { return ring_; }
  /// True when some chunk waits for room in the ring.
  bool blocked() const noexcept { return sent_ < chunks_.size(); }
  /// True when an answer is due: some chunk is fully written.
  bool answer_due() const noexcept { return sent_ > 0; }
  /// The chunk the worker answers next (answer_due()).
  const chunk& front() const { return chunks_.front(); }
  /// Bytes of all the chunks it holds.
  std::size_t queued_bytes() const noexcept {
    std::size_t n = 0;
    for (const chunk& c : chunks_) n += c.msg.size();
    return n;
  }

  /// Appends @p c, numbered @p seq, and posts its claim word on @p claims.
  void push(chunk&& c, std::uint64_t seq, std::int64_t now, claim_board& claims) {
    c.seq = seq;
    c.sent_ns = now;
    c.claim = next_claim_++ % claim_board::words;
    c.revoked = false;
    claims.post(c.claim, c.seq);
    task_message::seal(c.msg, {c.owner->runner, c.seq, c.count(), c.claim,
                               c.owner->timeout_ns > 0 ? task_timed : 0});
    chunks_.push_back(std::move(c));
  }
  /// Takes the answered front chunk off the queue.
  chunk pop_answered() {
    chunk c = std::move(chunks_.front());
    chunks_.pop_front();
    --sent_;
    return c;
  }
  /// Takes the first chunk not started by the worker: one not yet written,
  /// or one written whose claim word the parent revoked on @p claims (a
  /// placeholder stays). Nothing when every chunk has started.
  std::optional<chunk> take_back(claim_board& claims) {
    return take_back_if(claims, [](const chunk&) { return true; });
  }
  /// Like take_back, the first such chunk for which @p pred(chunk) is true.
  /// With @p partly_written, also one the ring holds the first bytes of: it
  /// still goes out whole (its placeholder keeps the message, and the worker
  /// skips it), so what is returned has no message: for dropping, not sending.
  template <class Pred>
  std::optional<chunk> take_back_if(claim_board& claims, Pred pred, bool partly_written = false);
  /// True when a chunk of @p j is here and its worker has started it.
  bool runs(const job& j, const claim_board& claims) const noexcept {
    for (const chunk& c : chunks_)
      if (c.owner.get() == &j && claims.is_started(c.claim, c.seq)) return true;
    return false;
  }
  /// Adds the chunks the worker has not started to @p load.
  void count_unstarted(const claim_board& claims, worker_load& load) const noexcept {
    for (const chunk& c : chunks_)
      if (!c.revoked && !claims.is_started(c.claim, c.seq)) load.add_unstarted(c.sent_ns);
  }

  /// The worker is to exit once its chunks are written (join, max_tasks_per_child).
  void queue_stop() noexcept { stop_queued_ = true; }
  bool stop_queued() const noexcept { return stop_queued_; }
  /// Writes what fits into the ring: chunks in order, then the stop frame.
  /// True if it wrote anything (the worker is to be woken).
  bool flush();

 private:
  byte_ring ring_;              // we produce
  std::deque<chunk> chunks_;
  std::size_t sent_ = 0;        // chunks_[0, sent_) fully written
  std::size_t send_off_ = 0;    // bytes of chunks_[sent_] written
  unsigned next_claim_ = 0;     // claim word for the next chunk
  bool stop_queued_ = false;
  bool stop_sent_ = false;
};

/// The message being read from a worker's result ring.
struct frame_reader {
  byte_ring ring;  // we consume
  bool have_header = false;
  frame_header hdr{};
  byte_buffer body;
  std::size_t got = 0;  // bytes of body read so far

  void reset(byte_ring r) {
    ring = r;
    ring.start_small();
    have_header = false;
    got = 0;
  }
};

/// How long a worker's chunks take: what the scheduler sizes its queue and
/// its chunks by.
struct chunk_timing {
  std::int64_t last_result_ns = 0;
  std::int64_t last_chunk_ns = -1;     // how long its last chunk took; -1: none yet
  std::uint64_t last_chunk_items = 0;  // and how many items it had

  /// A chunk of @p items items sent at @p sent_ns was answered at @p now: it
  /// ran from when it was sent or the one before it was answered.
  void answered(std::int64_t sent_ns, std::uint64_t items, std::int64_t now) noexcept {
    last_chunk_ns = now - std::max(sent_ns, last_result_ns);
    last_chunk_items = items;
    last_result_ns = now;
  }
};

/// The parent's record of one worker.
struct worker_link {
  std::size_t index = 0;  // its place in the pool and in the shared region
  pid_t pid = 0;          // 0: none (dead, not replaced)
  task_queue out;
  frame_reader in;
  chunk_timing timing;
  std::int64_t started_ns = 0;  // when it was forked (the initializer's timeout)
  std::size_t budget = 0;     // items it may still be given (max_tasks_per_child)
  bool timed_out = false;     // killed by the timeout check, which saw:
  death_blame timeout_blame;  // what it was running then
  std::int64_t timeout_ns = 0;  // and the limit it ran past
  bool corrupt = false;       // sent bytes we cannot parse; killed, awaiting reaping
  bool dying = false;         // reaped; on_death is reading what it left
  bool cancel_kill = false;   // killed to stop a cancelled call: nothing else it held is to blame
  std::uint32_t cancelled_cells = 0;  // bit k: its express cell k was cancelled running

  /// Starts the record of a new worker on rings @p tasks and @p results.
  void reset(byte_ring tasks, byte_ring results, std::size_t max_tasks) {
    out.reset(tasks);
    in.reset(results);
    timing = chunk_timing();
    budget = max_tasks ? max_tasks : std::numeric_limits<std::size_t>::max();
    timed_out = corrupt = dying = cancel_kill = false;
    cancelled_cells = 0;
  }
  /// True while its rings are read and written: alive, and its stream parses.
  bool connected() const noexcept { return pid != 0 && !corrupt; }
};

// ---------------------------------------------------------------------------

template <class Pred>
std::optional<chunk> task_queue::take_back_if(claim_board& claims, Pred pred, bool partly_written) {
  for (std::size_t i = 0; i < chunks_.size(); ++i) {
    chunk& c = chunks_[i];
    if (c.revoked || !pred(static_cast<const chunk&>(c))) continue;
    const bool unwritten = i > sent_ || (i == sent_ && send_off_ == 0);
    const bool partial = i == sent_ && !unwritten;
    if (partial && !partly_written) continue;  // it goes out whole, and runs here
    if (!unwritten && !claims.revoke(c.claim, c.seq)) continue;  // started
    chunk moved = std::move(c);
    if (unwritten) {
      chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      // The worker will read it and say it skipped it; until then its place
      // in the answer order is held (and a partly written one's message).
      c = chunk();
      c.seq = moved.seq;
      c.claim = moved.claim;
      c.sent_ns = moved.sent_ns;
      c.revoked = true;
      if (partial) c.msg = std::move(moved.msg);
    }
    return moved;
  }
  return std::nullopt;
}

inline bool task_queue::flush() {
  bool wrote = false;
  while (sent_ < chunks_.size()) {
    const byte_buffer& m = chunks_[sent_].msg;
    if (send_off_ == 0) ring_.grow_for(m.size());
    const std::size_t n = ring_.write_some(m.data() + send_off_, m.size() - send_off_);
    wrote |= n > 0;
    send_off_ += n;
    if (send_off_ < m.size()) break;
    ++sent_;
    send_off_ = 0;
  }
  if (stop_queued_ && !stop_sent_ && sent_ == chunks_.size() &&
      ring_.writable() >= sizeof(frame_header)) {
    const frame_header h{frame_magic, static_cast<std::uint32_t>(frame_kind::stop), 0};
    ring_.write_some(reinterpret_cast<const char*>(&h), sizeof h);
    stop_sent_ = wrote = true;
  }
  return wrote;
}

}  // namespace procpool::detail
