// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The books of a JoinableQueue: for each process that takes items, how many
// it took (got), marked done (done) and could not decode (dropped). join()
// adds them up and compares with the items written; it needs no counter that
// a dying process could leave wrong:
// - Each word has one writer: got, under the queue's get_lock, by the process
//   reading; done and dropped by the process itself. A dead process's books no
//   longer change, and its taken-but-not-done items (got - done) are lost.
// - A consumer that dies holding get_lock may have consumed an item without
//   counting it. Before it reads, it notes its slot and its got in one word
//   (reading), and the message's id (reading_id). Whoever next holds get_lock
//   (reader_died) sets that got one higher if it is still the noted value and
//   the message's first chunk is gone from the ring (a reader killed before
//   it consumed that chunk leaves the item whole to the next): the item goes
//   on the dead process's books. The step is idempotent.
// - Slots are claimed in order and never freed (a dead process's books are
//   still needed), so a queue serves at most ledger_slots consumer processes.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include <sys/types.h>

#include "../errors.hpp"
#include "posix.hpp"
#include "ring.hpp"

namespace procpool::detail {

inline constexpr std::uint32_t ledger_slots = 4096;

/// One consumer process's books.
struct ledger_slot {
  std::atomic<pid_t> pid;
  std::atomic<std::uint64_t> got;      // items get() handed it (or it died reading)
  std::atomic<std::uint64_t> done;     // its task_done() calls
  std::atomic<std::uint64_t> dropped;  // items it got but could not decode
};

/// What join() finds.
struct ledger_tally {
  std::uint64_t finished = 0;  // done, dropped, or held by a dead process
  std::uint64_t lost = 0;      // dropped, or held by a dead process
  pid_t dead = 0;              // one dead process that held items, if any
};

/// The books, in shared memory (shared_block), then ledger_slots slots.
struct task_ledger {
  static constexpr int got_bits = 50;

  event progress;                     // a task_done or a drop
  std::atomic<std::uint32_t> used;    // slots claimed: a prefix of the table
  std::atomic<std::uint64_t> reading;  // (slot + 1) << got_bits | its got, or 0
  std::atomic<std::uint64_t> reading_id;  // the message read, while reading is set
  std::atomic<std::uint64_t> reported;  // lost items join() has reported

  ledger_slot* slots() noexcept { return reinterpret_cast<ledger_slot*>(this + 1); }
  static constexpr std::size_t extra_bytes() noexcept { return ledger_slots * sizeof(ledger_slot); }

  /// This process's slot, claimed when it has none. Callers serialize the
  /// calls of one process. @throws usage_error when every slot is taken.
  std::uint32_t slot_of(pid_t me, const char* who);
  /// One task_done() by the process of @p slot. @throws usage_error when it
  /// has marked every item it took done already.
  void task_done(std::uint32_t slot, const char* who);
  /// The process of @p slot got an item it could not decode.
  void drop(std::uint32_t slot) noexcept;
  /// Adds up the books.
  ledger_tally tally() noexcept;

  /// get()'s hooks (queue_channel's no_get_hooks) for the process of @p slot;
  /// @p handed is set once an item is on its books.
  struct hooks {
    task_ledger* l;
    std::uint32_t slot;
    bool* handed;
    void begin(std::uint64_t id) noexcept {
      const std::uint64_t g = l->slots()[slot].got.load(std::memory_order_relaxed);
      l->reading_id.store(id, std::memory_order_relaxed);
      l->reading.store((std::uint64_t{slot} + 1) << got_bits | g, std::memory_order_release);
    }
    void cancel() noexcept { l->reading.store(0, std::memory_order_release); }
    void taken() noexcept {
      std::atomic<std::uint64_t>& got = l->slots()[slot].got;
      got.store(got.load(std::memory_order_relaxed) + 1, std::memory_order_release);
      l->reading.store(0, std::memory_order_release);
      *handed = true;
    }
    // The caller sees the sink's exception and drops the item (drop()).
    void dropped() noexcept { taken(); }
    void reader_died(std::uint64_t unread) noexcept { l->settle_reader(unread); }
  };

  /// Under get_lock, its last holder dead: puts the item it may have been
  /// reading on its books, unless that item's first chunk, @p unread, is
  /// still in the ring.
  void settle_reader(std::uint64_t unread) noexcept {
    const std::uint64_t r = reading.load(std::memory_order_acquire);
    if (r == 0) return;
    if (unread != 0 && unread == reading_id.load(std::memory_order_relaxed)) {
      reading.store(0, std::memory_order_release);
      return;
    }
    const std::uint64_t s = (r >> got_bits) - 1;
    const std::uint64_t g = r & ((std::uint64_t{1} << got_bits) - 1);
    if (s < used.load(std::memory_order_acquire)) {
      std::atomic<std::uint64_t>& got = slots()[s].got;
      if (got.load(std::memory_order_acquire) == g) got.store(g + 1, std::memory_order_release);
    }
    reading.store(0, std::memory_order_release);
    progress.notify();
  }
};

static_assert(sizeof(task_ledger) % alignof(ledger_slot) == 0, "the slots follow, aligned");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<pid_t>::is_always_lock_free,
              "the books are shared between processes");

// ---------------------------------------------------------------------------

inline std::uint32_t task_ledger::slot_of(pid_t me, const char* who) {
  const std::uint32_t n = used.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n && i < ledger_slots; ++i)
    if (slots()[i].pid.load(std::memory_order_acquire) == me) return i;
  const std::uint32_t i = used.fetch_add(1, std::memory_order_acq_rel);
  if (i >= ledger_slots) {
    used.store(ledger_slots, std::memory_order_release);
    throw usage_error(std::string(who) + ": more than " + std::to_string(ledger_slots) +
                      " processes took items from this queue; each keeps a slot of its books "
                      "for join(): use a new queue, or fewer consumer processes");
  }
  slots()[i].pid.store(me, std::memory_order_release);
  return i;
}

inline void task_ledger::task_done(std::uint32_t slot, const char* who) {
  ledger_slot& s = slots()[slot];
  const std::uint64_t d = s.done.fetch_add(1, std::memory_order_acq_rel);
  if (d + s.dropped.load(std::memory_order_acquire) >= s.got.load(std::memory_order_acquire)) {
    s.done.fetch_sub(1, std::memory_order_acq_rel);
    throw usage_error(std::string(who) +
                      "::task_done: called more times than this process got items; call it once "
                      "for each item get() returned, in the process that got it");
  }
  progress.notify();
}

inline void task_ledger::drop(std::uint32_t slot) noexcept {
  slots()[slot].dropped.fetch_add(1, std::memory_order_acq_rel);
  progress.notify();
}

inline ledger_tally task_ledger::tally() noexcept {
  ledger_tally t;
  const std::uint32_t n = used.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n && i < ledger_slots; ++i) {
    ledger_slot& s = slots()[i];
    const pid_t pid = s.pid.load(std::memory_order_acquire);
    const std::uint64_t got = s.got.load(std::memory_order_acquire);
    const std::uint64_t done = s.done.load(std::memory_order_acquire);
    const std::uint64_t dropped = s.dropped.load(std::memory_order_acquire);
    if (pid != 0 && got > done + dropped && process_gone(pid)) {
      t.finished += got;
      t.lost += got - done;
      t.dead = pid;
    } else {
      t.finished += done + dropped;
      t.lost += dropped;
    }
  }
  return t;
}

}  // namespace procpool::detail
