// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The untyped core of Queue: messages of any size between any number of
// producer and consumer processes, through one byte ring in shared memory.
//
// The rules it keeps, so that a process dying at any instant stops no other:
// - A message goes out as chunks of at most a quarter of the ring, each
//   published with one store (byte_ring::write_whole): a reader sees whole
//   chunks only. One producer writes at a time (put_lock), one consumer reads
//   at a time (get_lock), so between them the ring is single-producer
//   single-consumer, as the pool's rings are; both locks are robust.
// - A producer that dies mid-message leaves whole chunks of it. The next
//   producer (its put_lock says the holder died) writes an abort chunk for
//   it, and consumers drop what they had of it. A consumer waiting for the
//   rest of a message looks whether its producer still lives (a try of
//   put_lock) and, when it died, drops the message itself.
// - The ring always keeps room for an abort chunk, so a producer can always
//   abort (its put timed out), whatever the consumers do.
// - A consumer that dies mid-message loses that message (it took part of
//   it); the next consumer drops the rest of it, as any chunk of an item
//   whose first chunk it did not read.
// - qsize is written - taken, each counted by its side after publishing and
//   before consuming a last chunk, so a death in between leaves it low by one
//   (never high) until the next holder of that side's lock, or qsize(),
//   repairs the count from the ring's position (message_count).
// - A wait for a message to begin honours the caller's deadline; a message
//   that has begun is read to its end or to its producer's death.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "../errors.hpp"
#include "buffer.hpp"
#include "crash_point.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "robust_mutex.hpp"
#include "shared_block.hpp"
#include "tuning.hpp"

namespace procpool::detail {

/// The header of one chunk in a queue's ring.
struct queue_chunk {
  static constexpr std::uint32_t magic_value = 0x51434b31;  // "QCK1"
  static constexpr std::uint32_t first = 1, last = 2, abort = 4;
  std::uint32_t magic;
  std::uint32_t flags;
  std::uint64_t id;   // the message's number, from 1
  std::uint64_t len;  // payload bytes after the header
};
static_assert(sizeof(queue_chunk) == 24 && std::is_trivially_copyable_v<queue_chunk>);

/// One side's count of whole messages (written, or taken), kept exact across
/// the death of the process counting: it notes first where in the ring the
/// message ends and what the count becomes, and the next holder of the side's
/// lock, finding that process dead, settles the count from the ring's
/// position (repair).
struct message_count {
  std::atomic<std::uint64_t> n;    // whole messages counted
  std::atomic<std::uint64_t> end;  // the ring position the message being counted ends at; 0: none
  std::atomic<std::uint64_t> to;   // n once it is counted

  std::uint64_t value() const noexcept { return n.load(std::memory_order_acquire); }
  /// Notes the count to make, of a message ending at position @p at.
  void begin(std::uint64_t at) noexcept {
    to.store(n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    end.store(at, std::memory_order_release);
  }
  void count() noexcept { n.store(to.load(std::memory_order_relaxed), std::memory_order_release); }
  void done() noexcept { end.store(0, std::memory_order_release); }
  /// Under the side's lock, its last holder dead, the side at position @p pos:
  /// a message the ring went past is counted, one it did not is not (the
  /// producer had not published it, or the next consumer reads it again).
  void repair(std::uint64_t pos) noexcept {
    const std::uint64_t e = end.load(std::memory_order_relaxed);
    if (e == 0) return;
    const std::uint64_t t = to.load(std::memory_order_relaxed);
    const std::uint64_t v = n.load(std::memory_order_relaxed);
    if (pos >= e && v + 1 == t) n.store(t, std::memory_order_release);
    if (pos < e && v == t) n.store(t - 1, std::memory_order_release);
    done();
  }
};
static_assert(sizeof(message_count) == 24);

/// The shared part of a queue, followed by its ring's bytes. What producers
/// write and what consumers write lie on cache lines of their own.
struct queue_shared {
  // Producers' side.
  alignas(64) robust_mutex put_lock;
  std::atomic<std::uint64_t> next_id;  // under put_lock
  std::atomic<std::uint64_t> put_id;   // the message of several chunks being written; 0: none
  message_count written;               // whole messages written (their last chunk)
  // Consumers' side.
  alignas(64) robust_mutex get_lock;
  message_count taken;  // whole messages read, or skipped (their last chunk)
  // Both.
  alignas(64) std::atomic<std::uint32_t> closed;
  ring_control ring;
  event data;   // a chunk was published, or the queue closed
  event space;  // a chunk was consumed
};
static_assert(alignof(queue_shared) == 64 && sizeof(queue_shared) % 64 == 0,
              "the ring's bytes follow, aligned");

/// For put(): there is always someone who may read.
inline constexpr auto always = [] { return true; };

/// Some bytes of an item to send.
struct queue_piece {
  const char* p = nullptr;
  std::size_t n = 0;
};

/// Where get() puts an item's bytes: appended to a byte_buffer.
struct buffer_sink {
  byte_buffer& out;
  void clear() noexcept { out.clear(); }
  /// Bytes [off, off + n) of @p sp are the item's next bytes.
  void take(const byte_ring::pieces& sp, std::size_t off, std::size_t n) {
    const std::size_t at = out.size();
    out.resize(at + n);
    sp.copy(off, out.data() + at, n);
  }
};

/// What get() tells whoever counts the messages it hands out (JoinableQueue),
/// each under get_lock: a consumer that dies between two of them leaves its
/// successor (the next to hold get_lock) to call reader_died().
struct no_get_hooks {
  /// The first chunk of message @p id is read here (not consumed yet).
  void begin(std::uint64_t) noexcept {}
  /// That message can never end (its producer died): nothing was taken.
  void cancel() noexcept {}
  /// Its last chunk is consumed: the caller has it.
  void taken() noexcept {}
  /// It was consumed but could not be taken (the sink threw): dropped.
  void dropped() noexcept {}
  /// get_lock's last holder died holding it, perhaps mid-message; the next
  /// chunk is the unread first chunk of message @p unread (0: it is not).
  void reader_died(std::uint64_t) noexcept {}
};

/// One queue: copies share it, forks inherit it.
class queue_channel {
 public:
  /// A queue whose ring holds @p ring_bytes (rounded up to a power of two,
  /// at least 4 KiB); at most @p maxsize whole messages (0: no limit).
  /// @p who names the primitive in errors.
  queue_channel(std::size_t ring_bytes, std::size_t maxsize, const char* who);

  /// Sends the bytes of @p a then @p b as one message. False when @p
  /// deadline (monotonic ns) came first: then no consumer gets any of it.
  /// @throws usage_error after close().
  /// While it waits for room, it asks @p alive() every 10 ms whether anyone
  /// may still read (a Pipe's peer): when not, it withdraws and returns false.
  template <class Alive = decltype(always)>
  bool put(queue_piece a, queue_piece b, std::int64_t deadline, Alive alive = always);
  /// Waits until some of a message is there to read, the queue is closed, or
  /// @p deadline; true in the first two cases.
  bool wait_readable(std::int64_t deadline) {
    return wait_on(state_->data, deadline,
                   [&] { return ring().readable() >= sizeof(queue_chunk) || closed(); });
  }
  /// Receives one message into @p sink (buffer_sink's members), straight
  /// from the ring. False when @p deadline came before a message began.
  /// @throws closed_error when closed and empty.
  template <class Sink, class Hooks = no_get_hooks>
  bool get(Sink& sink, std::int64_t deadline, Hooks hooks = {});
  /// Takes get_lock if no one holds it, so that a consumer that died holding
  /// it is seen (@p hooks.reader_died()) though no other consumer comes. True
  /// when it had the lock: then whatever a dead consumer left is settled.
  template <class Hooks>
  bool settle_dead_reader(Hooks hooks);

  /// Takes put_lock if no one holds it, so that a producer that died
  /// holding it is seen though no other producer comes (its count repaired,
  /// its unfinished message ended). True when it had the lock.
  bool settle_dead_writer();

  /// Whole messages in the queue; low by one while a death on either side is
  /// not settled yet (settle_dead_writer, settle_dead_reader).
  std::size_t qsize() const noexcept {
    // Taken may pass written for a moment (a consumer counts before the
    // producer does): clamped at 0.
    const std::uint64_t t = state_->taken.value();
    const auto n = static_cast<std::int64_t>(state_->written.value() - t);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }
  std::size_t maxsize() const noexcept { return maxsize_; }
  /// Whole messages put so far (a producer that died just after publishing
  /// its last one may have left it uncounted).
  std::uint64_t written() const noexcept { return state_->written.value(); }
  /// No more puts, anywhere; gets drain what is there, then throw closed_error.
  void close() noexcept {
    state_->closed.store(1, std::memory_order_release);
    state_->data.notify();
    state_->space.notify();
  }
  bool closed() const noexcept { return state_->closed.load(std::memory_order_acquire) != 0; }

 private:
  static constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();
  static constexpr std::int64_t probe_ns = peer_probe_ns;

  byte_ring ring() const noexcept {
    return byte_ring(&state_->ring, static_cast<char*>(state_.extra()), ring_bytes_, true);
  }
  /// Waits on @p e until @p ready() or @p until; true when ready.
  template <class Ready>
  static bool wait_on(event& e, std::int64_t until, Ready ready);
  void write_chunk(std::uint32_t flags, std::uint64_t id, queue_piece x = {}, queue_piece y = {});
  /// Under put_lock, after its holder died: settles its count and ends the
  /// message it was writing.
  void abort_dead_put();
  /// Under get_lock, after its holder died: settles its count.
  void repair_dead_get() noexcept { state_->taken.repair(ring().read_position()); }
  /// Under get_lock, mid-message @p id with no chunk to read: true when the
  /// message can never end (its producer died), and then it was dropped.
  bool producer_gone(std::uint64_t id);
  /// Under get_lock: the id of the message whose first chunk is next to read, or 0.
  std::uint64_t unread_first() const noexcept {
    queue_chunk h{};
    const byte_ring r = ring();
    if (r.readable() < sizeof h) return 0;
    r.spans(sizeof h).copy(0, &h, sizeof h);
    return (h.flags & queue_chunk::first) && !(h.flags & queue_chunk::abort) ? h.id : 0;
  }

  std::size_t ring_bytes_;
  std::size_t maxsize_;
  const char* who_;
  shared_block<queue_shared> state_;
  // Positions of the other side this process saw last (byte_ring::writable_for,
  // readable_for), each used under its side's lock.
  std::uint64_t seen_tail_ = 0;  // the producers' view
  std::uint64_t seen_head_ = 0;  // the consumers' view
};

// ---------------------------------------------------------------------------

inline std::size_t queue_ring_size(std::size_t n) {
  std::size_t p = 4096;
  while (p < n && p < (std::size_t{1} << 40)) p *= 2;
  return p;
}

inline queue_channel::queue_channel(std::size_t ring_bytes, std::size_t maxsize, const char* who)
    : ring_bytes_(queue_ring_size(ring_bytes)),
      maxsize_(maxsize),
      who_(who),
      state_(who, queue_ring_size(ring_bytes)) {
  state_->put_lock.init(false, who);
  state_->get_lock.init(false, who);
}

template <class Ready>
bool queue_channel::wait_on(event& e, std::int64_t until, Ready ready) {
  constexpr std::int64_t slice = 100'000'000;
  if (ready()) return true;
  const std::int64_t spin_end = monotonic_ns() + queue_spin_ns;
  for (unsigned i = 1;; ++i) {
    cpu_relax();
    if (ready()) return true;
    if ((i & 31) == 0) {
      const std::int64_t now = monotonic_ns();
      if (now >= spin_end || now >= until) break;
    }
  }
  for (;;) {
    if (ready()) return true;
    const std::uint32_t seen = e.prepare();
    if (ready()) {
      e.retire();
      return true;
    }
    const std::int64_t left = until - monotonic_ns();
    if (left <= 0) {
      e.retire();
      return false;
    }
    e.wait(seen, left < slice ? left : slice);
    e.retire();
  }
}

inline void queue_channel::write_chunk(std::uint32_t flags, std::uint64_t id, queue_piece x,
                                       queue_piece y) {
  const queue_chunk h{queue_chunk::magic_value, flags, id, x.n + y.n};
  ring().write_whole(reinterpret_cast<const char*>(&h), sizeof h, x.p, x.n, y.p, y.n);
  state_->data.notify();
}

inline void queue_channel::abort_dead_put() {
  state_->written.repair(ring().written_position());  // before an abort chunk moves it
  const std::uint64_t id = state_->put_id.load(std::memory_order_relaxed);
  if (id == 0) return;
  state_->put_id.store(0, std::memory_order_relaxed);
  // Room for it is kept (put), unless the dead producer was writing its own
  // abort. Without one, a reader drops the message all the same: at the next
  // message's first chunk, or when it finds no producer (producer_gone).
  if (ring().writable() >= sizeof(queue_chunk)) write_chunk(queue_chunk::abort, id);
}

template <class Alive>
bool queue_channel::put(queue_piece a, queue_piece b, std::int64_t deadline, Alive alive) {
  const std::size_t n = a.n + b.n;
  queue_shared& s = *state_;
  if (closed()) throw usage_error(std::string(who_) + "::put: the queue was closed (close()); no more items can be put");
  const lock_result got =
      s.put_lock.lock_until(deadline < 0 ? monotonic_ns() + queue_nowait_lock_ns : deadline, who_);
  if (got == lock_result::timed_out) return false;
  if (got == lock_result::acquired_holder_died) abort_dead_put();
  struct release {
    robust_mutex& m;
    const char* who;
    ~release() { m.unlock(who); }
  } unlock_at_end{s.put_lock, who_};
  if (maxsize_ && !wait_on(s.space, deadline, [&] {
        return closed() || qsize() < maxsize_;
      }))
    return false;
  if (closed()) throw usage_error(std::string(who_) + "::put: the queue was closed (close()); no more items can be put");
  const std::size_t reserve = sizeof(queue_chunk);  // an abort chunk always fits
  const std::size_t most = ring_bytes_ / 4 - sizeof(queue_chunk);
  const std::uint64_t id = s.next_id.load(std::memory_order_relaxed) + 1;  // under put_lock
  s.next_id.store(id, std::memory_order_relaxed);
  // One chunk is published with one store: only a message of several needs
  // its id noted, for whoever finds its producer dead.
  if (n > most) s.put_id.store(id, std::memory_order_relaxed);
  std::size_t done = 0;
  do {
    const std::size_t k = n - done < most ? n - done : most;
    const std::size_t need = sizeof(queue_chunk) + k + reserve;
    const auto room = [&] { return ring().writable_for(need, seen_tail_); };
    // Room now is the common case: no clock read for it.
    bool ready = room();
    while (!ready) {
      const std::int64_t now = monotonic_ns();
      const std::int64_t until = deadline - now > probe_ns ? now + probe_ns : deadline;
      if ((ready = wait_on(s.space, until, room)) || until == deadline || !alive()) break;
    }
    if (!ready) {
      s.put_id.store(0, std::memory_order_relaxed);
      if (done > 0) write_chunk(queue_chunk::abort, id);  // the kept room
      return false;
    }
    std::uint32_t flags = 0;
    if (done == 0) flags |= queue_chunk::first;
    if (done + k == n) flags |= queue_chunk::last;
    // Bytes [done, done + k) of a then b.
    queue_piece x, y;
    if (done < a.n) {
      x = {a.p + done, k < a.n - done ? k : a.n - done};
      y = {b.p, k - x.n};
    } else {
      x = {b.p + (done - a.n), k};
    }
    // Counted after it is published: a producer dying between the two leaves
    // qsize low, never high (so a put below maxsize never waits for nothing).
    const bool last = flags & queue_chunk::last;
    if (last) s.written.begin(ring().written_position() + sizeof(queue_chunk) + k);
    write_chunk(flags, id, x, y);
    if (last) {
      reached(crash_point::queue_published);
      s.written.count();
      s.written.done();
    }
    done += k;
  } while (done < n);
  if (n > most) s.put_id.store(0, std::memory_order_relaxed);
  return true;
}

inline bool queue_channel::producer_gone(std::uint64_t id) {
  queue_shared& s = *state_;
  const lock_result got = s.put_lock.lock_until(-1, who_);
  if (got == lock_result::timed_out) return false;  // a producer holds it: it lives
  if (got == lock_result::acquired_holder_died) {
    s.written.repair(ring().written_position());
    if (s.put_id.load() == id) s.put_id.store(0);
  }
  // Held, nothing can be published: a chunk there now came before the lock
  // was free (a producer that finished), and is read first.
  const bool more = ring().readable() > 0;
  s.put_lock.unlock(who_);
  return !more;
}

template <class Hooks>
bool queue_channel::settle_dead_reader(Hooks hooks) {
  const lock_result got = state_->get_lock.lock_until(-1, who_);
  if (got == lock_result::timed_out) return false;
  if (got == lock_result::acquired_holder_died) {
    repair_dead_get();
    hooks.reader_died(unread_first());
  }
  state_->get_lock.unlock(who_);
  return true;
}

inline bool queue_channel::settle_dead_writer() {
  const lock_result got = state_->put_lock.lock_until(-1, who_);
  if (got == lock_result::timed_out) return false;
  if (got == lock_result::acquired_holder_died) abort_dead_put();
  state_->put_lock.unlock(who_);
  return true;
}

template <class Sink, class Hooks>
bool queue_channel::get(Sink& out, std::int64_t deadline, Hooks hooks) {
  queue_shared& s = *state_;
  const lock_result got = s.get_lock.lock_until(deadline, who_);
  if (got == lock_result::timed_out) return false;
  struct release {
    robust_mutex& m;
    const char* who;
    ~release() { m.unlock(who); }
  } unlock_at_end{s.get_lock, who_};
  if (got == lock_result::acquired_holder_died) {
    repair_dead_get();
    hooks.reader_died(unread_first());
  }
  // The rest of an item a dead consumer was reading, like any chunk of an
  // item whose first chunk is not read here, is consumed and dropped.
  std::uint64_t cur = 0;  // the message being read here; 0: none begun
  out.clear();
  byte_ring r = ring();
  for (;;) {
    queue_chunk h{};
    const auto whole_chunk = [&] {
      if (!r.readable_for(sizeof h, seen_head_)) return false;
      r.spans(sizeof h).copy(0, &h, sizeof h);
      return r.readable_for(sizeof h + h.len, seen_head_);
    };
    if (!whole_chunk()) {
      if (cur == 0) {
        if (!wait_on(s.data, deadline, [&] { return whole_chunk() || closed(); })) return false;
        if (!whole_chunk()) {  // closed, and empty
          throw closed_error(std::string(who_) +
                             "::get: the queue was closed (close()) and is empty; nothing more "
                             "will come");
        }
      } else {
        // Mid-message: wait for its producer, as long as it lives.
        while (!wait_on(s.data, monotonic_ns() + probe_ns, whole_chunk)) {
          if (producer_gone(cur)) {
            cur = 0;
            out.clear();
            hooks.cancel();
            break;
          }
        }
        continue;
      }
    }
    if (h.magic != queue_chunk::magic_value)
      throw error(std::string(who_) + ": the queue's shared memory is corrupted (a process "
                  "wrote into it out of bounds?); create a new one");
    const auto spans = r.spans(sizeof h + h.len);
    if (h.flags & queue_chunk::abort) {
      if (h.id == cur) {
        cur = 0;
        out.clear();
        hooks.cancel();
      }
    } else if (h.flags & queue_chunk::first) {
      // A new message: one begun before it (cur) can never end, its producer is gone.
      cur = h.id;
      out.clear();
      hooks.begin(cur);
    }
    const bool mine = cur != 0 && h.id == cur && !(h.flags & queue_chunk::abort);
    if (mine) {
      try {
        out.take(spans, sizeof h, h.len);
      } catch (...) {
        // This consumer cannot take the item (no memory for it, or its bytes
        // do not decode): it is dropped, so that it stops nobody else.
        if (h.flags & queue_chunk::last) {
          s.taken.begin(r.read_position() + sizeof h + h.len);
          s.taken.count();
        }
        r.consume(sizeof h + h.len);
        s.taken.done();
        hooks.dropped();
        s.space.notify();
        throw;
      }
    }
    // Every last chunk consumed is counted, read or dropped, as written counted
    // it; before the consume, so that a consumer dying between the two leaves
    // qsize low (the next one reads the chunk again), never high.
    const bool last = h.flags & queue_chunk::last;
    if (last) {
      s.taken.begin(r.read_position() + sizeof h + h.len);
      s.taken.count();
      reached(crash_point::queue_counted);
    }
    r.consume(sizeof h + h.len);
    if (last) s.taken.done();
    const bool whole = mine && (h.flags & queue_chunk::last);
    if (whole) hooks.taken();
    s.space.notify();  // after the count: a put waiting below maxsize sees it
    if (whole) return true;
  }
}

}  // namespace procpool::detail
