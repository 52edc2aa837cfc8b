// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The receive path, in the parent: reads the frames a worker writes into its
// result ring and settles each answer into the job of the chunk it answers.
// A stream that does not parse kills the worker (the engine's on_death then
// requeues what it held); frames that are not answers go to the engine.

#include <algorithm>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <vector>

#include "buffer.hpp"
#include "dispatcher.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "shared_layout.hpp"
#include "wire.hpp"
#include "worker_link.hpp"

namespace procpool::detail {

/// Reads the workers' answers and settles them into their jobs.
class answer_reader {
 public:
  /// For the workers in @p shm, whose rings are @p cap bytes; spent chunk
  /// buffers go back to @p disp.
  answer_reader(shared_region& shm, dispatcher& disp, std::size_t cap, std::size_t workers) noexcept
      : shm_(shm), disp_(disp), cap_(cap), workers_(workers) {}

  /// Reads every complete frame @p w has written. Answers (results, skipped)
  /// are settled here; any other frame goes to @p other(w, kind, body, size).
  /// Stops early once @p w is no longer connected. True if anything moved.
  template <class Other>
  bool drain(worker_link& w, Other&& other);

  /// Items answered as done, and as failed (their errors, or their values
  /// that could not be decoded).
  std::uint64_t done() const noexcept { return done_; }
  std::uint64_t failed() const noexcept { return failed_; }

 private:
  template <class Other>
  void on_frame(worker_link& w, const char* body, std::size_t size, Other& other);
  void on_results(worker_link& w, const char* body, std::size_t size);
  void on_skipped(worker_link& w, const char* body, std::size_t size);
  bool place_wrapped(worker_link& w, const byte_ring::pieces& sp);
  chunk take_answered(worker_link& w);
  /// The stream of @p w is corrupt: it is killed, and nothing more of it is read.
  static void corrupt(worker_link& w) {
    send_signal(w.pid, SIGKILL);
    w.corrupt = true;
  }
  void space_freed(const worker_link& w) { shm_.worker(w.index)->worker_ev.notify(); }

  shared_region& shm_;
  dispatcher& disp_;
  std::size_t cap_;
  std::size_t workers_;
  std::uint64_t done_ = 0, failed_ = 0;
};

// ---------------------------------------------------------------------------

template <class Other>
bool answer_reader::drain(worker_link& w, Other&& other) {
  if (!w.connected()) return false;
  frame_reader& in = w.in;
  bool progress = false;
  for (;;) {
    if (!in.have_header) {
      if (in.ring.readable() < sizeof(frame_header)) break;
      in.ring.read_some(reinterpret_cast<char*>(&in.hdr), sizeof in.hdr);
      in.have_header = true;
      in.got = 0;
      if (in.hdr.magic != frame_magic || in.hdr.size > (std::uint64_t{1} << 44)) {
        corrupt(w);
        return progress;
      }
      in.body.clear();
      progress = true;
    }
    const std::size_t size = static_cast<std::size_t>(in.hdr.size);
    if (in.got == 0 && in.hdr.kind == static_cast<std::uint32_t>(frame_kind::results) &&
        size >= sizeof(result_header) && in.ring.readable() >= size) {
      // The whole answer is in the ring: read it where it lies instead of
      // copying it out first (for map over small items, half the parent's copying).
      const auto sp = in.ring.spans(size);
      bool done = false;
      if (sp.nb == 0) {
        // As on the copying path: the message is gone from the ring whatever
        // on_frame throws, so it is never read twice.
        in.have_header = false;
        try {
          on_frame(w, sp.a, size, other);
        } catch (...) {
          in.ring.consume(size);
          space_freed(w);
          throw;
        }
        done = true;
      } else {
        done = place_wrapped(w, sp);  // else: copied out below, as any other message
      }
      if (done) {
        in.have_header = false;
        in.ring.consume(size);
        space_freed(w);
        progress = true;
        if (!w.connected()) break;  // killed: nothing more of it is trusted
        continue;
      }
    }
    if (in.got < size) {
      // Grow with what has arrived, not to the claimed size at once: a corrupted
      // header must not make the parent allocate terabytes.
      const std::size_t avail = std::min(size - in.got, in.ring.readable());
      if (avail == 0) break;
      in.body.resize(in.got + avail);
      in.got += in.ring.read_some(in.body.data() + in.got, avail);
      progress = true;
    }
    space_freed(w);
    if (in.got < size) break;
    in.have_header = false;
    on_frame(w, in.body.data(), in.body.size(), other);
    // A huge answer's buffer is given back: what the pool keeps between calls
    // stays bounded (as for the chunks' buffers, dispatcher::recycle).
    in.body.clear();
    in.body.shrink_if_above(2 * cap_);
    if (!w.connected()) break;
  }
  return progress;
}

template <class Other>
void answer_reader::on_frame(worker_link& w, const char* body, std::size_t size, Other& other) {
  const auto kind = static_cast<frame_kind>(w.in.hdr.kind);
  switch (kind) {
    case frame_kind::results:
      on_results(w, body, size);
      break;
    case frame_kind::skipped:
      on_skipped(w, body, size);
      break;
    case frame_kind::init_failed:
    case frame_kind::bye:
      other(w, kind, body, size);
      break;
    default:
      corrupt(w);
  }
}

inline void answer_reader::on_results(worker_link& w, const char* body, std::size_t size) {
  if (!w.out.answer_due()) {
    corrupt(w);  // an answer to nothing
    return;
  }
  // Off the in-flight list first: whatever deliver() throws, the worker's
  // next answer must match its next chunk.
  chunk c = take_answered(w);
  std::vector<item_failure> failed;
  std::optional<reader> values;
  std::size_t failures = c.count();  // unless delivered
  try {
    values.emplace(parse_results(body, size, c.seq, c.count(), failed));
  } catch (const decode_error&) {
    const auto e = std::current_exception();
    try {
      for (std::uint64_t i = 0; i < c.count(); ++i) c.owner->fail(c.base + i, e);
    } catch (...) {
      c.owner->abort(std::current_exception());
    }
  } catch (...) {
    // bad_alloc reading the error records: the chunk is off the in-flight
    // list, so its job fails whole rather than wait for it for ever.
    c.owner->abort(std::current_exception());
  }
  if (values) {
    try {
      failures = c.owner->deliver(c.base, c.count(), failed, *values);  // and decode errors
    } catch (...) {
      c.owner->abort(std::current_exception());  // e.g. bad_alloc storing the values
    }
  }
  c.owner->outstanding -= c.count();
  failed_ += failures;
  done_ += c.count() - failures;
  disp_.recycle(std::move(c.msg), workers_);
}

/// The answer to a chunk taken back (task_queue::take_back): its placeholder
/// goes. Or to a chunk the worker declined (it retires: max_memory_per_child):
/// it runs elsewhere.
inline void answer_reader::on_skipped(worker_link& w, const char* body, std::size_t size) {
  std::uint64_t seq = 0;
  if (size == sizeof seq) std::memcpy(&seq, body, sizeof seq);
  const bool declined = w.out.answer_due() && !w.out.front().revoked &&
                        shm_.worker(w.index)->retiring.load(std::memory_order_acquire);
  if (!w.out.answer_due() || w.out.front().seq != seq || !(w.out.front().revoked || declined)) {
    corrupt(w);  // not what was taken back
    return;
  }
  chunk c = w.out.pop_answered();
  if (declined) disp_.requeue(c, 0, c.count());
}

/// Takes the chunk an answer is for off @p w's in-flight list, and notes how
/// long it took.
inline chunk answer_reader::take_answered(worker_link& w) {
  chunk c = w.out.pop_answered();
  w.timing.answered(c.sent_ns, c.count(), monotonic_ns());
  return c;
}

/// A results message of fixed-size values and no errors that wraps around the
/// end of the ring: its two pieces are copied straight into the job's results.
/// False when the message is anything else (then it is copied out and parsed).
inline bool answer_reader::place_wrapped(worker_link& w, const byte_ring::pieces& sp) {
  if (!w.out.answer_due()) return false;
  result_header rh;
  sp.copy(0, &rh, sizeof rh);
  const chunk& front = w.out.front();
  const std::size_t size = sp.na + sp.nb;
  if (rh.seq != front.seq || rh.count != front.count() || rh.errors != 0 || rh.errors_at != size)
    return false;
  char* dst = nullptr;
  try {
    dst = front.owner->place(front.base, front.count(), size - sizeof rh);
  } catch (...) {
    return false;  // the copying path meets the same error and reports it
  }
  if (!dst) return false;
  chunk c = take_answered(w);
  sp.copy(sizeof rh, dst, size - sizeof rh);
  c.owner->outstanding -= c.count();
  done_ += c.count();
  disp_.recycle(std::move(c.msg), workers_);
  return true;
}

}  // namespace procpool::detail
