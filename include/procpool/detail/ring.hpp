// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The pool's queues: single-producer/single-consumer byte rings in anonymous
// shared memory, and a lock-free event to sleep on.
//
// Why not boost::interprocess::message_queue: it guards its queue with an
// interprocess mutex, and a worker killed while holding it leaves the parent
// blocked forever (boostorg/interprocess issues 163 and 226). Here nothing is
// ever locked: each ring has one writer and one reader that only publish
// monotonic positions with atomic stores, so a process can die at any instant
// without leaving the other side stuck, and the parent knows from the ring
// which messages a dead worker had not answered. Boost.Interprocess still maps
// the memory (anonymous_shared_memory, in pool.hpp).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "posix.hpp"
#include "tuning.hpp"

namespace procpool::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// An event count: a waiter sleeps until notified, with no lock, so a process
/// that dies mid-call leaves nothing held. notify() costs a fence and a load
/// unless someone sleeps, so producers can call it on every publish.
///
/// Waiter:   auto e = ev.prepare(); if (!ready()) ev.wait(e, timeout); ev.retire();
/// Notifier: publish(); ev.notify();
struct alignas(64) event {
  std::atomic<std::uint32_t> epoch{0};
  std::atomic<std::uint32_t> waiters{0};

  std::uint32_t prepare() noexcept {
    waiters.fetch_add(1, std::memory_order_seq_cst);
    // Pairs with notify()'s fence: the waiter's next look at the ring is not
    // ordered before its registration.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return epoch.load(std::memory_order_seq_cst);
  }
  void wait(std::uint32_t seen, std::int64_t timeout_ns) noexcept {
    futex_wait(&epoch, seen, timeout_ns);
  }
  void retire() noexcept { waiters.fetch_sub(1, std::memory_order_relaxed); }
  void notify() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (waiters.load(std::memory_order_relaxed) != 0) {
      epoch.fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&epoch);
    }
  }
};


/// The shared half of a ring: positions count bytes ever written and read.
struct ring_control {
  alignas(64) std::atomic<std::uint64_t> head{0};  // written by the producer
  // Bytes in use, a power of two up to the capacity (0: all of it). Changed
  // by the producer only while the ring is empty; the consumer reads it after
  // it sees head move, so both map positions to offsets alike.
  std::atomic<std::uint64_t> size{0};
  alignas(64) std::atomic<std::uint64_t> tail{0};  // written by the consumer
};

/// One process's view of a ring (capacity a power of two). writable() and
/// readable() read the other side's position afresh; writable_for() and
/// readable_for() only when the position the caller saw last (a bound the
/// other side has passed, as positions only grow) leaves too few bytes, so a
/// side that is behind takes many messages per look at the other's cache
/// line. A cache refreshed only when it says "empty" (or "full") would not
/// do: a side waiting for a few more bytes than it holds (a 16-byte header of
/// which 14 arrived) would wait for ever.
class byte_ring {
 public:
  byte_ring() = default;
  /// A view of ring @p c with @p capacity bytes at @p data; @p fixed: it never
  /// starts small (ring_control::size is not read).
  byte_ring(ring_control* c, char* data, std::size_t capacity, bool fixed = false) noexcept
      : c_(c), data_(data), max_(capacity), fixed_(fixed) {}

  /// Bytes in use now (see ring_control::size).
  std::size_t capacity() const noexcept {
    if (fixed_) return max_;
    const std::uint64_t n = c_->size.load(std::memory_order_relaxed);
    return n ? static_cast<std::size_t>(n) : max_;
  }
  /// Bytes it can grow to.
  std::size_t max_capacity() const noexcept { return max_; }
  /// Starts small again (see initial_ring_bytes). Only when it is empty and
  /// the other side is dead or not yet started.
  void start_small() noexcept {
    c_->size.store(max_ > initial_ring_bytes ? initial_ring_bytes : 0, std::memory_order_relaxed);
  }

  // ---- producer side
  /// Grows to the full capacity before a message of @p bytes that would take
  /// more than half of the ring in use (it could not be written while the
  /// one before is read), if the ring is empty now; else a later call does.
  void grow_for(std::size_t bytes) noexcept {
    if (bytes <= capacity() / 2 || capacity() == max_) return;
    if (c_->tail.load(std::memory_order_acquire) == c_->head.load(std::memory_order_relaxed))
      c_->size.store(0, std::memory_order_relaxed);  // published with the next head
  }

  /// Bytes that can be written now.
  std::size_t writable() const noexcept {
    const std::uint64_t head = c_->head.load(std::memory_order_relaxed);
    return capacity() - static_cast<std::size_t>(head - c_->tail.load(std::memory_order_acquire));
  }
  /// At least @p need bytes can be written now, judged first from @p seen_tail
  /// (a read position the consumer had reached), then, if that leaves too
  /// few, from its position now (stored in @p seen_tail).
  bool writable_for(std::size_t need, std::uint64_t& seen_tail) const noexcept {
    const std::uint64_t head = c_->head.load(std::memory_order_relaxed);
    const std::size_t cap = capacity();
    if (head - seen_tail <= cap && cap - (head - seen_tail) >= need) return true;
    seen_tail = c_->tail.load(std::memory_order_acquire);
    return cap - static_cast<std::size_t>(head - seen_tail) >= need;
  }
  /// Writes up to @p n bytes; returns how many.
  std::size_t write_some(const char* p, std::size_t n) noexcept {
    const std::size_t free = writable();
    n = n < free ? n : free;
    // Published a quarter ring at a time, so the reader copies out one piece
    // while the next is copied in.
    const std::size_t cap = capacity();
    const std::size_t piece = cap / 4;
    std::uint64_t head = c_->head.load(std::memory_order_relaxed);
    for (std::size_t done = 0; done < n;) {
      const std::size_t k = n - done < piece ? n - done : piece;
      copy_in(cap, static_cast<std::size_t>(head) & (cap - 1), p + done, k);
      head += k;
      done += k;
      c_->head.store(head, std::memory_order_release);
    }
    return n;
  }

  /// Where the next bytes go, and in @p n how many fit there in one piece;
  /// they count once published with commit().
  char* write_space(std::size_t& n) const noexcept {
    const std::size_t cap = capacity();
    const std::size_t at = static_cast<std::size_t>(c_->head.load(std::memory_order_relaxed)) & (cap - 1);
    const std::size_t free = writable();
    n = free < cap - at ? free : cap - at;
    return data_ + at;
  }
  /// Writes @p na bytes at @p a, @p nb at @p b, @p nc at @p c (in all at most writable())
  /// and publishes them with one store: a reader sees all of them or none,
  /// even if this process dies in the middle.
  void write_whole(const char* a, std::size_t na, const char* b, std::size_t nb,
                   const char* c = nullptr, std::size_t nc = 0) noexcept {
    const std::size_t cap = capacity();
    const std::uint64_t head = c_->head.load(std::memory_order_relaxed);
    copy_in(cap, static_cast<std::size_t>(head) & (cap - 1), a, na);
    if (nb) copy_in(cap, static_cast<std::size_t>(head + na) & (cap - 1), b, nb);
    if (nc) copy_in(cap, static_cast<std::size_t>(head + na + nb) & (cap - 1), c, nc);
    c_->head.store(head + na + nb + nc, std::memory_order_release);
  }
  /// Bytes ever written: where the next write begins.
  std::uint64_t written_position() const noexcept { return c_->head.load(std::memory_order_relaxed); }
  /// Publishes @p n bytes written at write_space() (n <= what it said).
  void commit(std::size_t n) noexcept {
    c_->head.store(c_->head.load(std::memory_order_relaxed) + n, std::memory_order_release);
  }

  // ---- consumer side
  /// Bytes that can be read now.
  std::size_t readable() const noexcept {
    const std::uint64_t tail = c_->tail.load(std::memory_order_relaxed);
    return static_cast<std::size_t>(c_->head.load(std::memory_order_acquire) - tail);
  }
  /// At least @p need bytes can be read now, judged first from @p seen_head (a
  /// write position the producer had reached), then, if that leaves too few,
  /// from its position now (stored in @p seen_head).
  bool readable_for(std::size_t need, std::uint64_t& seen_head) const noexcept {
    const std::uint64_t tail = c_->tail.load(std::memory_order_relaxed);
    if (seen_head >= tail && seen_head - tail >= need) return true;
    seen_head = c_->head.load(std::memory_order_acquire);
    return seen_head - tail >= need;
  }
  /// Bytes ever read: where the next read begins.
  std::uint64_t read_position() const noexcept { return c_->tail.load(std::memory_order_relaxed); }
  /// Readable bytes where they lie: [a, a + na), then [b, b + nb) when they
  /// wrap around the end.
  struct pieces {
    const char* a;
    std::size_t na;
    const char* b;
    std::size_t nb;
    /// Copies @p n bytes starting @p off bytes in.
    void copy(std::size_t off, void* dst, std::size_t n) const noexcept {
      char* d = static_cast<char*>(dst);
      if (off < na) {
        const std::size_t k = n < na - off ? n : na - off;
        std::memcpy(d, a + off, k);
        d += k;
        n -= k;
        off = na;
      }
      if (n) std::memcpy(d, b + (off - na), n);
    }
  };
  /// The next @p n readable bytes (n <= readable()), not consumed.
  pieces spans(std::size_t n) const noexcept {
    const std::size_t cap = capacity();
    const std::size_t at = static_cast<std::size_t>(c_->tail.load(std::memory_order_relaxed)) & (cap - 1);
    const std::size_t first = n < cap - at ? n : cap - at;
    return {data_ + at, first, data_, n - first};
  }
  /// Consumes @p n readable bytes (n <= readable()) left where they were.
  void consume(std::size_t n) noexcept {
    c_->tail.store(c_->tail.load(std::memory_order_relaxed) + n, std::memory_order_release);
  }
  /// Reads up to @p n bytes; returns how many.
  std::size_t read_some(char* p, std::size_t n) noexcept {
    const std::size_t avail = readable();
    n = n < avail ? n : avail;
    // Freed a quarter ring at a time, so the writer refills behind us.
    const std::size_t cap = capacity();  // after readable(): see ring_control::size
    const std::size_t piece = cap / 4;
    std::uint64_t tail = c_->tail.load(std::memory_order_relaxed);
    for (std::size_t done = 0; done < n;) {
      const std::size_t k = n - done < piece ? n - done : piece;
      copy_out(cap, static_cast<std::size_t>(tail) & (cap - 1), p + done, k);
      tail += k;
      done += k;
      c_->tail.store(tail, std::memory_order_release);
    }
    return n;
  }

  /// Empties the ring. Only when the other side is dead or not yet started.
  void reset() noexcept {
    c_->head.store(0, std::memory_order_relaxed);
    c_->tail.store(0, std::memory_order_relaxed);
  }

 private:
  void copy_in(std::size_t cap, std::size_t at, const char* p, std::size_t n) noexcept {
    const std::size_t first = n < cap - at ? n : cap - at;
    std::memcpy(data_ + at, p, first);
    if (n > first) std::memcpy(data_, p + first, n - first);
  }
  void copy_out(std::size_t cap, std::size_t at, char* p, std::size_t n) const noexcept {
    const std::size_t first = n < cap - at ? n : cap - at;
    std::memcpy(p, data_ + at, first);
    if (n > first) std::memcpy(p + first, data_, n - first);
  }

  ring_control* c_ = nullptr;
  char* data_ = nullptr;
  std::size_t max_ = 0;
  bool fixed_ = false;
};

}  // namespace procpool::detail
