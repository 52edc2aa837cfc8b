// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The untyped core of Pool: shared memory layout, wire format, the worker loop
// (run in the children) and the engine (run in the parent by whichever thread
// waits on the pool), which carries out the scheduling policy of scheduler.hpp.
// Pool<F> in pool.hpp adds the types through jobs and runner function pointers;
// a runner's address is the same in the workers, which are forks.

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/interprocess/anonymous_shared_memory.hpp>

#include "../errors.hpp"
#include "../options.hpp"
#include "../process.hpp"
#include "buffer.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "scheduler.hpp"

namespace procpool::detail {

// ---------------------------------------------------------------- wire format

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
};

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

// ---------------------------------------------------------------- shared memory

struct alignas(64) pool_shared {
  event parent_ev;  // the parent sleeps here: results arrived, or task space freed
  // Bumped as each express cell finishes: wakes a driver its caller waits on.
  alignas(64) std::atomic<std::uint32_t> express_finished{0};
};

// ---------------------------------------------------------------- the express lane
//
// apply_async of small fixed-size arguments and result skips the engine (its
// lock, the rings, the driver): the caller writes the call into a cell of a
// worker that polled for work within the last few microseconds on another CPU,
// and spins on the cell for the answer. While another thread streams work
// through the pool, that lock is held most of the time, and waiting for it
// cost the caller 5-6 us of a 6-9 us round trip here. A cell whose worker dies
// is finished by the parent: blamed (worker_lost, task_timeout), or run again
// through the queues when it had not started.

inline constexpr unsigned express_cells = 8;          // per worker
inline constexpr std::size_t express_arg_bytes = 256;  // encoded arguments, at most
inline constexpr std::size_t express_res_bytes = 1024;  // result; or a task error's text
inline constexpr std::uint64_t express_seq = std::uint64_t{1} << 63;  // running_seq: bit | cell
inline constexpr std::int64_t express_fresh_ns = 5'000;  // "polling now": polled this recently
// ... on the caller's CPU: the caller, waking, took the CPU from it a moment ago
inline constexpr std::int64_t express_fresh_here_ns = 100'000;

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
  status_exception = 2,   // the parent holds the exception (engine::cell_errors_)
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

struct alignas(64) slot_shared {
  ring_control tasks;    // parent -> worker
  ring_control results;  // worker -> parent
  event worker_ev;       // the worker sleeps here: tasks arrived, or result space freed
  // What the worker is running, for blame on death and for timeouts.
  alignas(64) std::atomic<std::uint64_t> running_seq{0};  // 0: between items
  std::atomic<std::uint64_t> running_item{0};
  std::atomic<std::int64_t> running_since{0};
  std::atomic<std::uint32_t> ready{0};  // set after the initializer returned
  // Who runs each queued task: the worker, or the parent took it back.
  alignas(64) claim_board claims;
  // The express lane: when the worker last looked for work (0: it sleeps), on which CPU.
  alignas(64) std::atomic<std::int64_t> poll_ns{0};
  std::atomic<std::int32_t> poll_cpu{-1};
  std::atomic<std::uint32_t> cells_posted{0};  // bumped after a cell is posted
  express_cell cells[express_cells];
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

// ---------------------------------------------------------------- the worker side

inline constexpr std::int64_t spin_ns = 50'000;  // spin this long before sleeping
inline constexpr unsigned max_orphaned = 3;      // deaths before a chunk's first item ran
// Deaths in a row before the initializer returned that make the pool unusable:
// one may be a kill from outside (the OOM killer); an initializer that crashes
// each time keeps forking.
inline constexpr unsigned max_deaths_before_ready = 3;

/// What a typed runner sees of the chunk it runs (in the worker).
struct task_context {
  reader items;
  std::uint64_t seq;
  std::uint64_t count;
  byte_buffer& values;
  byte_buffer& errors;
  std::uint64_t error_count = 0;
  slot_shared* slot;
  bool timed;

  // The start time is stored before the item (release), and the timeout check
  // loads the item (acquire) before the time: it never pairs an item with the
  // start of the one before, which would blame an item that has just begun.
  void begin_item(std::uint64_t i) noexcept {
    if (timed) slot->running_since.store(monotonic_ns(), std::memory_order_relaxed);
    slot->running_item.store(i, std::memory_order_release);
    slot->running_seq.store(seq, std::memory_order_release);
  }
  void end_item() noexcept { slot->running_seq.store(0, std::memory_order_release); }
  /// For a tight loop over quick items: the chunk is marked running once, and
  /// each item then costs one store (two when timed). A death between two
  /// items blames the one before (its result was not sent either).
  void begin_items() noexcept { begin_item(0); }
  void next_item(std::uint64_t i) noexcept {
    if (timed) slot->running_since.store(monotonic_ns(), std::memory_order_relaxed);
    slot->running_item.store(i, std::memory_order_release);
  }
  /// Records the exception being handled as item @p i's error.
  void fail_current(std::uint64_t i) {
    auto [type, what] = describe_current_exception();
    errors.append_value(i);
    put_string(errors, type);
    put_string(errors, what);
    ++error_count;
  }
};

using runner_fn = void (*)(void* fn, task_context& ctx);

/// One worker's end of its two rings, with blocking reads and writes.
class worker_channel {
 public:
  worker_channel(pool_shared* pool, slot_shared* slot, char* task_data, char* result_data,
                 std::size_t cap, pid_t parent)
      : pool_(pool),
        slot_(slot),
        tasks_(&slot->tasks, task_data, cap),
        results_(&slot->results, result_data, cap),
        parent_(parent) {}

  slot_shared* slot() noexcept { return slot_; }

  /// From now on, the express cells are served (with @p fn, the pool's function).
  void enable_express(void* fn) noexcept { fn_ = fn; }
  /// Says "polling now, on this CPU" to callers choosing a worker for a cell.
  void mark_polling(std::int64_t now) noexcept {
    slot_->poll_cpu.store(current_cpu(), std::memory_order_relaxed);
    slot_->poll_ns.store(now, std::memory_order_relaxed);
  }
  /// Runs every posted express cell; true if it ran any. One load when none is.
  bool serve_cells() {
    const std::uint32_t posted = slot_->cells_posted.load(std::memory_order_acquire);
    if (posted == cells_seen_ || !fn_) return false;
    cells_seen_ = posted;
    bool ran = false;
    for (unsigned k = 0; k < express_cells; ++k) {
      express_cell& c = slot_->cells[k];
      std::uint32_t st = c.state.load(std::memory_order_acquire);
      // Run even when the caller dropped its handle: as with Python's
      // apply_async, the call happens whether or not anyone reads its result.
      // (The caller may set "dropped" meanwhile: try again, or the cell would
      // wait for the next post.)
      bool took = false;
      while ((st & ~cell_dropped) == cell_posted &&
             !(took = c.state.compare_exchange_weak(st, cell_running | (st & cell_dropped),
                                                    std::memory_order_acq_rel))) {
      }
      if (!took) continue;
      // Marked as running for blame on death and for task_timeout, as an item
      // is; the start time always, for the parent's dispatch.
      slot_->running_since.store(monotonic_ns(), std::memory_order_relaxed);
      slot_->running_item.store(0, std::memory_order_release);
      slot_->running_seq.store(express_seq | k, std::memory_order_release);
      slot_->poll_ns.store(0, std::memory_order_relaxed);  // busy: not polling
      const bool caller_here = c.caller_cpu >= 0 && c.caller_cpu == current_cpu();
      reinterpret_cast<express_runner>(c.runner)(fn_, c);
      mark_polling(monotonic_ns());  // before the caller sees the answer and calls again
      std::uint32_t running = cell_running;
      if (!c.state.compare_exchange_strong(running, cell_done, std::memory_order_acq_rel))
        c.state.store(cell_free, std::memory_order_release);  // dropped: nobody reads it
      // Only now: a death before this blames the cell, which is done (not run again).
      slot_->running_seq.store(0, std::memory_order_release);
      pool_->express_finished.fetch_add(1, std::memory_order_release);
      pool_->parent_ev.notify();
      ran = true;
      if (caller_here) yield_cpu();  // it yielded the CPU to us: give it back at once
    }
    return ran;
  }

  void read_exact(char* p, std::size_t n) {
    while (n) {
      const std::size_t got = tasks_.read_some(p, n);
      if (got) {
        p += got;
        n -= got;
        pool_->parent_ev.notify();  // space freed
      } else {
        wait([this] { return tasks_.readable() > 0; }, true);
      }
    }
  }
  /// The next @p n bytes of the task ring where they lie, when all of them
  /// have arrived in one piece (free them with release(n)); nullptr otherwise.
  /// Not for more than half the ring: the space stays taken while the task
  /// runs, and the parent should have room to send the next one meanwhile.
  const char* peek(std::size_t n) const noexcept {
    if (n > tasks_.capacity() / 2 || tasks_.readable() < n) return nullptr;
    const auto sp = tasks_.spans(n);
    return sp.nb == 0 ? sp.a : nullptr;
  }
  void release(std::size_t n) noexcept {
    tasks_.consume(n);
    pool_->parent_ev.notify();  // space freed
  }
  /// Where the next message of the result ring goes, and in @p n how many
  /// bytes fit there in one piece; commit_results(n) publishes what was put there.
  /// The ring grows first if the last message would not fit it twice.
  char* result_space(std::size_t& n) noexcept {
    results_.grow_for(last_message_);
    return results_.write_space(n);
  }
  void commit_results(std::size_t n) noexcept {
    results_.commit(n);
    last_message_ = n;
    pool_->parent_ev.notify();  // data arrived
  }
  void write_all(const char* p, std::size_t n) {
    while (n) {
      const std::size_t put = results_.write_some(p, n);
      if (put) {
        p += put;
        n -= put;
        pool_->parent_ev.notify();  // data arrived
      } else {
        wait([this] { return results_.writable() > 0; }, false);
      }
    }
  }
  void send_frame(frame_kind kind, const byte_buffer& body) {
    const frame_header h{frame_magic, static_cast<std::uint32_t>(kind), body.size()};
    last_message_ = sizeof h + body.size();
    results_.grow_for(last_message_);
    write_all(reinterpret_cast<const char*>(&h), sizeof h);
    write_all(body.data(), body.size());
  }

 private:
  /// Spins briefly, then sleeps; wakes every 100 ms to see whether the parent
  /// is gone (the death signal covers most cases; this covers the rest).
  /// With @p serve, express cells posted meanwhile are run (waiting for a
  /// task, not while sending a task's results: a crash in a cell then would
  /// make the parent run that task again).
  template <class Ready>
  void wait(Ready ready, bool serve) {
    std::int64_t now = monotonic_ns();
    std::int64_t until = now + spin_ns;
    if (serve) mark_polling(now);
    for (unsigned i = 0;; ++i) {
      if (ready()) return;
      if (serve && serve_cells()) until = monotonic_ns() + spin_ns;
      cpu_relax();
      if ((i & 63) == 63) {
        now = monotonic_ns();
        if (serve) mark_polling(now);
        if (now > until) break;
      }
    }
    slot_->poll_ns.store(0, std::memory_order_relaxed);  // asleep: not for the express lane
    for (;;) {
      const std::uint32_t seen = slot_->worker_ev.prepare();
      if (ready()) {
        slot_->worker_ev.retire();
        return;
      }
      if (serve && slot_->cells_posted.load(std::memory_order_acquire) != cells_seen_) {
        slot_->worker_ev.retire();
        serve_cells();
        slot_->poll_ns.store(0, std::memory_order_relaxed);  // back to sleep
        continue;
      }
      slot_->worker_ev.wait(seen, 100'000'000);
      slot_->worker_ev.retire();
      if (::getppid() != parent_) child_exit(0);
    }
  }

  pool_shared* pool_;
  slot_shared* slot_;
  byte_ring tasks_;
  byte_ring results_;
  pid_t parent_;
  std::size_t last_message_ = 0;  // bytes of the last message sent
  void* fn_ = nullptr;  // set once the worker is ready for express cells
  std::uint32_t cells_seen_ = 0;  // slot_->cells_posted when the cells were last looked at
};

/// Makes this worker end within ~100 ms of its parent, even mid-task.
/// The kernel's parent-death signal fires when the forking *thread* ends, so it
/// is used only when the main thread forked (whose end is, in practice, the
/// process's end: unless main calls pthread_exit);
/// a worker forked by another thread, which may end first, polls instead.
inline void follow_parent(pid_t parent, bool forked_by_main_thread) {
  if (forked_by_main_thread) {
    if (!die_with_parent(parent)) child_exit(0);
    return;
  }
  if (::getppid() != parent) child_exit(0);
  std::thread([parent] {
    while (::getppid() == parent) sleep_ns(100'000'000);
    ::_exit(0);
  }).detach();
}

/// The loop a pool worker runs until told to stop. Never returns.
[[noreturn]] inline void worker_main(worker_channel& ch, void* fn,
                                     const std::function<void()>& initializer,
                                     bool timed, pid_t parent, bool forked_by_main_thread) {
  // The parent decides what Ctrl-C means; workers end with it.
  ::signal(SIGINT, SIG_IGN);
  follow_parent(parent, forked_by_main_thread);
  byte_buffer in, values, errors, out, direct;
  if (initializer) {
    try {
      initializer();
    } catch (const exit_request&) {
      throw;  // procpool::exit(n): the worker ends (the pool reports it)
    } catch (...) {
      auto [type, what] = describe_current_exception();
      put_string(out, type);
      put_string(out, what);
      ch.send_frame(frame_kind::init_failed, out);
      child_exit(1);
    }
  }
  ch.slot()->ready.store(1, std::memory_order_release);
  ch.enable_express(fn);
  for (;;) {
    ch.serve_cells();
    ch.mark_polling(monotonic_ns());
    frame_header h;
    ch.read_exact(reinterpret_cast<char*>(&h), sizeof h);
    if (h.magic != frame_magic) child_exit(70);  // the parent sees a lost worker
    if (h.kind == static_cast<std::uint32_t>(frame_kind::stop)) {
      in.clear();
      ch.send_frame(frame_kind::bye, in);
      child_exit(0);
    }
    if (h.kind != static_cast<std::uint32_t>(frame_kind::task)) child_exit(70);
    // A task that has fully arrived in one piece is read where it lies in the
    // ring, and freed once it has run; otherwise it is copied out first.
    const auto size = static_cast<std::size_t>(h.size);
    const char* body = ch.peek(size);
    const bool in_place = body != nullptr;
    if (!in_place) {
      in.resize(size);
      ch.read_exact(in.data(), size);
      body = in.data();
    }
    reader r(body, size);
    const auto th = r.read_value<task_header>();
    if (!ch.slot()->claims.take(static_cast<unsigned>(th.claim % claim_board::slots), th.seq)) {
      // The parent gave this task to another worker: say it was passed over.
      if (in_place) ch.release(size);
      out.clear();
      out.append_value(th.seq);
      ch.send_frame(frame_kind::skipped, out);
      continue;
    }
    // The answer is encoded straight into the result ring when the ring has
    // room for a fair part of it in one piece (then it is published at once,
    // with no copy); past that room it moves to memory of its own and is
    // copied in, as when there was no room.
    std::size_t room = 0;
    char* const slot_at = ch.result_space(room);
    const bool in_ring = room >= 4096;
    byte_buffer& vals = in_ring ? direct : values;
    if (in_ring) direct.borrow(slot_at + sizeof(frame_header), room - sizeof(frame_header));
    vals.clear();
    errors.clear();
    vals.grow(sizeof(result_header));
    ch.slot()->poll_ns.store(0, std::memory_order_relaxed);  // busy: not polling
    task_context ctx{r, th.seq, th.count, vals, errors, 0, ch.slot(), timed};
    reinterpret_cast<runner_fn>(th.runner)(fn, ctx);
    if (in_place) ch.release(size);
    const result_header rh{th.seq, th.count, ctx.error_count, vals.size()};
    std::memcpy(vals.data(), &rh, sizeof rh);
    vals.append(errors.data(), errors.size());
    if (vals.borrowed()) {
      const frame_header fh{frame_magic, static_cast<std::uint32_t>(frame_kind::results), vals.size()};
      std::memcpy(slot_at, &fh, sizeof fh);
      ch.commit_results(sizeof fh + vals.size());
    } else {
      ch.send_frame(frame_kind::results, vals);
    }
    constexpr std::size_t keep = std::size_t{64} << 20;
    in.shrink_if_above(keep);
    values.shrink_if_above(keep);
    direct.shrink_if_above(keep);
  }
}

// ---------------------------------------------------------------- the parent side

/// A map/imap/apply call as the engine sees it. Typed subclasses in pool.hpp
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
  /// Stores the results of items [base, base + count), failing those in @p failed.
  virtual void deliver(std::uint64_t base, std::uint64_t count,
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
  std::uint64_t total = 0;      // input items, when known (0: unknown)
  std::uint64_t handed = 0;     // input items handed out so far
  bool aborted = false;
  /// True when every item has a result or an error.
  bool complete() const { return aborted || (input_done() && outstanding == 0); }
};

/// A run of consecutive items of one job, encoded, on its way to a worker.
struct chunk {
  static constexpr std::size_t items_at = sizeof(frame_header) + sizeof(task_header);

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
  byte_buffer msg;                     // frame_header, task_header, items
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
    c.msg.grow(items_at);
    c.msg.append(msg.data() + items_at + a, static_cast<std::size_t>(b - a));
    if (!stride)
      for (std::uint64_t k = from; k <= to; ++k)
        c.offsets.push_back(static_cast<std::uint32_t>(offsets[k] - a));
    return c;
  }
};

inline std::size_t round_up_pow2(std::size_t n) {
  std::size_t p = 4096;
  while (p < n && p < (std::size_t{1} << 31)) p *= 2;  // the constructor rejects more
  return p;
}

/// The engine. Owns the shared memory, the workers and the queue of jobs, and
/// hands work out as scheduler.hpp says.
/// No thread of its own: whichever caller waits on a result drives it (one at
/// a time, the others wait on a condition variable). A caller that arrives
/// while the driver waits for an event takes over from it, and the driver
/// becomes one of those waiting: on a busy machine the driver may not even be
/// running, and waking it and then the caller costs two context switches.
class engine {
 public:
  engine(const pool_options& opts, void* fn);
  ~engine() { terminate(); }
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  /// Queues a job and starts it if a worker is free. @throws usage_error after
  /// close()/terminate(), initializer_error when the initializer failed.
  void submit(const std::shared_ptr<job>& j);
  /// Drives the pool until done() (called under the lock) is true.
  template <class Done>
  void run_until(Done done);
  /// Like run_until, but gives up at @p deadline (monotonic ns); true if done.
  template <class Done>
  bool run_until(Done done, std::int64_t deadline);
  /// Runs @p fn under the engine's lock (for reading job state).
  template <class Fn>
  decltype(auto) locked(Fn fn) {
    check_owner();
    std::lock_guard lk(m_);
    return fn();
  }
  /// True in the process that built the pool. Everywhere else (a Process child
  /// or a fork holding a copy) the pool's workers, queues and lock are the
  /// builder's: calls throw usage_error (check_owner), and the destructor
  /// leaves everything alone.
  bool owned_here() const noexcept { return current_pid() == parent_pid_; }
  /// @throws usage_error when not owned_here().
  void check_owner() const;

  void close();
  void join();
  void terminate() noexcept;
  std::vector<pid_t> pids();
  std::size_t size() const noexcept { return workers_.size(); }

  // The express lane (see express_cell); lock-free but for the waits.
  struct express_ticket {
    std::uint32_t slot = 0, index = 0;
    bool same_cpu = false;  // its worker last polled on the caller's CPU
  };
  /// Claims a free cell of a worker polling now on another CPU. False when
  /// none is, when the pool is closed, or when the lane is off for this pool
  /// (max_tasks_per_child and retries count items in the queues).
  bool express_claim(express_ticket& t) noexcept;
  express_cell& cell(const express_ticket& t) const noexcept {
    return slot(t.slot)->cells[t.index];
  }
  /// Hands a claimed and filled cell to its worker.
  void express_post(const express_ticket& t) noexcept;
  /// Waits until the cell is finished (status and result there) or @p deadline.
  bool express_wait(const express_ticket& t, std::int64_t deadline);
  /// The exception of a cell finished with status_exception; then frees the cell.
  std::exception_ptr take_cell_error(const express_ticket& t);
  /// Frees a finished cell whose result was read.
  void express_release(const express_ticket& t) noexcept {
    cell(t).state.store(cell_free, std::memory_order_release);
  }
  /// The caller's handle is gone: the call still runs, and whoever finishes it frees the cell.
  void express_drop(const express_ticket& t) noexcept;
  /// Bytes of each queue.
  std::size_t queue_capacity() const noexcept { return cap_; }

 private:
  enum class state { running, closed, joined, terminated };

  struct worker {
    std::size_t slot = 0;
    pid_t pid = 0;
    byte_ring tasks;    // we produce
    byte_ring results;  // we consume
    std::deque<chunk> inflight;
    std::size_t sent = 0;      // inflight[0, sent) fully written
    std::size_t send_off = 0;  // bytes of inflight[sent] written
    std::size_t budget = 0;    // items it may still be given
    std::int64_t last_result_ns = 0;
    std::int64_t last_chunk_ns = -1;  // how long its last chunk took; -1: none yet
    std::uint64_t last_chunk_items = 0;  // and how many items it had
    unsigned next_claim = 0;          // claim word for its next chunk
    bool stop_queued = false;
    bool stop_sent = false;
    bool timed_out = false;
    std::uint64_t timeout_seq = 0, timeout_item = 0;  // what timed out
    bool corrupt = false;  // sent bytes we cannot parse; killed, awaiting reaping
    bool dying = false;    // reaped; on_death is reading what it left
    // the message being read
    bool have_header = false;
    frame_header hdr{};
    byte_buffer body;
    std::size_t got = 0;
  };

  slot_shared* slot(std::size_t i) const {
    return reinterpret_cast<slot_shared*>(base_ + sizeof(pool_shared)) + i;
  }
  char* task_data(std::size_t i) const { return data_ + 2 * i * cap_; }
  char* result_data(std::size_t i) const { return data_ + (2 * i + 1) * cap_; }
  pool_shared* shared() const { return reinterpret_cast<pool_shared*>(base_); }

  void spawn_worker(worker& w);
  bool pump();
  bool drain(worker& w);
  void on_message(worker& w, const char* body, std::size_t size);
  chunk take_answered(worker& w);
  bool place_wrapped(worker& w, const byte_ring::pieces& sp);
  bool dispatch();
  bool fill(worker& w);
  bool rebalance();
  bool is_idle(const worker& w) const;
  worker_load load_of(const worker& w) const;
  bool take_back(worker& w);
  bool next_chunk(worker& w, chunk& c);
  void flush(worker& w);
  bool check_workers();  // true if it killed or reaped a worker
  void on_death(worker& w, int exitcode);
  void requeue(const chunk& c, std::uint64_t from, std::uint64_t to);
  void recycle(byte_buffer&& msg);
  /// What a driver waiting for an event looks at, copied under the lock: once
  /// it lets the lock go another caller may take over driving (see run_until),
  /// and the worker records are then that caller's.
  /// Lives in run_until's frame (a thread_local would be gone when a static's
  /// destructor waits on a pool); the first few workers' rings need no allocation.
  struct watch_set {
    struct ring_pair {
      byte_ring results, tasks;
      bool blocked = false;  // has bytes to send when the task ring has room
    };
    static constexpr std::size_t inline_rings = 8;
    std::uint64_t gen = 0;
    std::uint32_t express_finished = 0;
    std::int64_t last_progress_ns = 0, next_check = 0;
    std::size_t n = 0;
    ring_pair few[inline_rings];
    std::vector<ring_pair> more;

    void add(const ring_pair& r) {
      if (n < inline_rings) few[n] = r;
      else more.push_back(r);
      ++n;
    }
    template <class Fn>
    bool any(Fn fn) const {
      for (std::size_t i = 0; i < n && i < inline_rings; ++i)
        if (fn(few[i])) return true;
      for (const auto& r : more)
        if (fn(r)) return true;
      return false;
    }
  };
  void fill_watch(watch_set& ws);
  bool wait_for_event(std::int64_t deadline, const watch_set& ws);
  bool has_event(const watch_set& ws, bool& poked);
  void break_pool(std::exception_ptr e);
  bool all_done() const;
  class cell_job;
  bool express_settled(const express_ticket& t);
  /// When worker @p w began the express call it runs; 0 when it runs none.
  std::int64_t express_started(const worker& w) const noexcept {
    const slot_shared* s = slot(w.slot);
    if (!(s->running_seq.load(std::memory_order_acquire) & express_seq)) return 0;
    return std::max<std::int64_t>(s->running_since.load(std::memory_order_relaxed), 1);
  }
  void finish_cell(const express_ticket& t) noexcept;
  void fail_cell(const express_ticket& t, std::exception_ptr e) noexcept;
  void requeue_cell(const express_ticket& t);
  void settle_cells(const worker& w, std::uint64_t blamed_seq, std::exception_ptr blamed_error);
  void throw_if_unusable() const;

  pool_options opts_;
  std::int64_t timeout_ns_ = 0;  // opts_.task_timeout, saturated; 0: none
  void* fn_;
  std::size_t cap_;
  boost::interprocess::mapped_region region_;
  char* base_ = nullptr;
  char* data_ = nullptr;
  pid_t parent_pid_;
  std::vector<worker> workers_;
  std::deque<std::shared_ptr<job>> jobs_;
  std::deque<chunk> requeued_;
  std::vector<byte_buffer> spare_msgs_;  // answered chunks' buffers, for the next chunks
  std::uint64_t next_seq_ = 1;
  unsigned deaths_before_ready_ = 0;  // in a row (see max_deaths_before_ready)
  std::int64_t next_check_ = 0;
  std::int64_t steal_retry_at_ = std::numeric_limits<std::int64_t>::max();  // see rebalance()
  std::vector<worker_load> loads_;  // rebalance()'s view of the workers, kept for its memory
  std::int64_t last_progress_ns_ = 0;  // when a pump round last moved anything
  state state_ = state::running;
  std::exception_ptr broken_;  // set when the initializer failed

  std::mutex m_;
  std::condition_variable cv_;
  bool pumping_ = false;              // a thread is driving; only it touches the rings
  bool driver_waiting_ = false;       // the driver waits for an event, without the lock:
                                      // another caller may take over (run_until)
  std::atomic<std::uint64_t> driver_gen_{0};  // bumped when a waiting driver is replaced
  std::atomic<bool> poke_{false};     // another thread needs the driver to look again
  bool terminate_requested_ = false;  // terminate() waits for the driver: do not start another
  bool express_enabled_ = false;      // the lane is used by this pool at all
  std::atomic<bool> express_open_{false};  // and still takes calls (not closed, broken, ...)
  std::vector<std::exception_ptr> cell_errors_;  // per cell, for status_exception
};

inline engine::engine(const pool_options& opts, void* fn)
    : opts_(opts), fn_(fn), cap_(round_up_pow2(opts.queue_bytes)), parent_pid_(current_pid()) {
  std::size_t n = opts_.processes ? opts_.processes : cpu_count();
  if (n > 4096)
    throw usage_error("procpool::Pool: " + std::to_string(n) +
                      " processes asked for; use between 1 and 4096 (0 means cpu_count())");
  if (opts_.queue_bytes > (std::size_t{1} << 30))
    throw usage_error("procpool::Pool: queue_bytes above 1 GiB; messages of any size stream "
                      "through smaller queues");
  if (opts_.task_timeout.count() < 0)
    throw usage_error("procpool::Pool: task_timeout is negative (" +
                      std::to_string(opts_.task_timeout.count()) +
                      " ms); use a positive limit, or 0 for none");
  // In nanoseconds, saturated: a limit past ~292 years means "none in practice".
  constexpr auto ns_per_ms = std::int64_t{1'000'000};
  timeout_ns_ = opts_.task_timeout.count() > std::numeric_limits<std::int64_t>::max() / ns_per_ms
                    ? std::numeric_limits<std::int64_t>::max()
                    : opts_.task_timeout.count() * ns_per_ms;
  const std::size_t header = sizeof(pool_shared) + n * sizeof(slot_shared);
  const std::size_t data_at = (header + 4095) / 4096 * 4096;
  // Anonymous and mapped before fork: inherited by every worker, never named in /dev/shm.
  region_ = boost::interprocess::anonymous_shared_memory(data_at + 2 * n * cap_);
  base_ = static_cast<char*>(region_.get_address());
  data_ = base_ + data_at;
  new (shared()) pool_shared();
  workers_.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    new (slot(i)) slot_shared();
    workers_[i].slot = i;
  }
  cell_errors_.resize(n * express_cells);
  try {
    for (auto& w : workers_) spawn_worker(w);
  } catch (...) {
    terminate();
    throw;
  }
  express_enabled_ = opts_.max_tasks_per_child == 0 && opts_.retries == 0;
  express_open_.store(express_enabled_);
}

inline void engine::spawn_worker(worker& w) {
  slot_shared* s = slot(w.slot);
  s->tasks.head = s->tasks.tail = 0;
  s->results.head = s->results.tail = 0;
  s->running_seq = 0;
  s->ready = 0;
  s->poll_ns = 0;  // the express lane waits for the new worker to poll
  // A worker killed asleep left its waiter count. Reset with a store, not by
  // constructing the event again: a caller posting an express call may
  // notify it right now, without the lock.
  s->worker_ev.waiters.store(0, std::memory_order_relaxed);
  w.tasks = byte_ring(&s->tasks, task_data(w.slot), cap_);
  w.results = byte_ring(&s->results, result_data(w.slot), cap_);
  w.tasks.start_small();
  w.results.start_small();
  w.inflight.clear();
  w.sent = w.send_off = 0;
  w.budget = opts_.max_tasks_per_child ? opts_.max_tasks_per_child
                                       : std::numeric_limits<std::size_t>::max();
  w.stop_queued = w.stop_sent = w.timed_out = w.corrupt = w.have_header = false;
  w.last_chunk_ns = -1;
  w.last_chunk_items = 0;
  w.next_claim = 0;
  s->claims.reset();
  w.dying = false;
  w.last_result_ns = 0;
  w.got = 0;
  const pid_t parent = parent_pid_;
  const bool timed = opts_.task_timeout.count() > 0;
  pool_shared* ps = shared();
  char* td = task_data(w.slot);
  char* rd = result_data(w.slot);
  const std::size_t cap = cap_;
  void* fn = fn_;
  const std::function<void()>& init = opts_.initializer;
  const bool main_thread = ::gettid() == parent;
  w.pid = spawn(next_process_name("ForkPoolWorker-"), [=, &init] {
    worker_channel ch(ps, s, td, rd, cap, parent);
    worker_main(ch, fn, init, timed, parent, main_thread);
  });
}

inline void engine::check_owner() const {
  if (owned_here()) return;
  throw usage_error("procpool::Pool: used in process " + std::to_string(current_pid()) +
                    ", but it belongs to process " + std::to_string(parent_pid_) +
                    ", whose children its workers are; a pool works only in the process "
                    "that built it: build one in this process");
}

inline void engine::throw_if_unusable() const {
  if (broken_) std::rethrow_exception(broken_);
  if (state_ != state::running)
    throw usage_error(state_ == state::terminated
                          ? "procpool::Pool: the pool was terminated; create a new Pool"
                          : "procpool::Pool: the pool was closed; no new work can be submitted");
}

inline void engine::submit(const std::shared_ptr<job>& j) {
  check_owner();  // before the lock: a forked copy of it may be held for ever
  std::unique_lock lk(m_);
  throw_if_unusable();
  jobs_.push_back(j);
  if (!pumping_) {
    pumping_ = true;
    try {
      pump();
    } catch (...) {
      pumping_ = false;
      cv_.notify_all();
      throw;
    }
    pumping_ = false;
    cv_.notify_all();
  } else {
    poke_.store(true);  // seen by the driver even if it is not asleep yet
    shared()->parent_ev.notify();
  }
}

// ---------------------------------------------------------------- the express lane, parent side

/// Runs an express cell's call through the queues: its worker died before running it.
class engine::cell_job final : public job {
 public:
  cell_job(engine& e, const express_ticket& t) : e_(e), t_(t) {
    runner = e.cell(t).chunk_runner;
    chunksize = 1;
  }
  std::size_t next_items(byte_buffer& out, std::vector<std::uint32_t>& offsets,
                         std::uint32_t& stride, std::size_t max, std::uint64_t& base) override {
    if (sent_ || max == 0) return 0;
    sent_ = true;
    const express_cell& c = e_.cell(t_);
    base = 0;
    stride = 0;
    offsets.push_back(0);
    out.append(c.arg, c.arg_size);
    return 1;
  }
  bool input_done() const override { return sent_; }
  void deliver(std::uint64_t, std::uint64_t, const std::vector<item_failure>& failed,
               reader& values) override {
    if (finished_) return;
    express_cell& c = e_.cell(t_);
    if (!failed.empty()) {
      set_cell_error(c, failed.front().type, failed.front().message);
    } else if (values.remaining() > express_res_bytes) {
      fail(0, std::make_exception_ptr(
                  decode_error("procpool: a worker's answer does not match the call it was given")));
      return;
    } else {
      c.status = status_ok;
      c.res_size = static_cast<std::uint32_t>(values.remaining());
      values.read(c.res, values.remaining());
    }
    finished_ = true;
    e_.finish_cell(t_);
  }
  void fail(std::uint64_t, std::exception_ptr e) override {
    if (finished_) return;
    finished_ = true;
    e_.fail_cell(t_, std::move(e));
  }
  void abort(std::exception_ptr e) override {
    fail(0, std::move(e));
    aborted = true;
  }

 private:
  engine& e_;
  express_ticket t_;
  bool sent_ = false, finished_ = false;
};

inline bool engine::express_claim(express_ticket& t) noexcept {
  if (!express_enabled_ || !owned_here()) return false;  // submit() then says why
  if (express_open_.load(std::memory_order_relaxed)) {
    const int me = current_cpu();
    const std::int64_t now = monotonic_ns();
    // First a worker on another CPU; else one on ours, which the caller then
    // lets run by yielding the CPU (see express_wait).
    for (int pass = 0; pass < 2; ++pass) {
      for (std::uint32_t i = 0; i < workers_.size(); ++i) {
        slot_shared* s = slot(i);
        std::int64_t polled = s->poll_ns.load(std::memory_order_relaxed);
        if (polled == 0 || now - polled > (pass == 0 ? express_fresh_ns : express_fresh_here_ns) ||
            (s->poll_cpu.load(std::memory_order_relaxed) == me) != (pass == 1))
          continue;
        // One call per polling worker: the next caller finds it busy and picks
        // another worker or the queues, instead of piling up behind this call.
        if (!s->poll_ns.compare_exchange_strong(polled, 0, std::memory_order_relaxed)) continue;
        for (std::uint32_t k = 0; k < express_cells; ++k) {
          std::uint32_t st = cell_free;
          if (s->cells[k].state.compare_exchange_strong(st, cell_claimed,
                                                        std::memory_order_seq_cst)) {
            // Claimed, then the pool's state read again; close() clears it
            // before join() reads the cells (all_done): a call either sees
            // the pool closed, or is waited for.
            if (!express_open_.load(std::memory_order_seq_cst)) {
              s->cells[k].state.store(cell_free, std::memory_order_release);
              return false;
            }
            t = {i, k, pass == 1};
            s->cells[k].caller_cpu = pass == 1 ? me : -1;
            s->cells[k].posted_ns.store(now, std::memory_order_relaxed);
            return true;
          }
        }
      }
    }
  }
  return false;
}

inline void engine::express_post(const express_ticket& t) noexcept {
  cell(t).state.store(cell_posted, std::memory_order_release);
  slot_shared* s = slot(t.slot);
  s->cells_posted.fetch_add(1, std::memory_order_acq_rel);
  s->worker_ev.notify();  // in case it went to sleep since it was chosen
}

inline bool engine::express_wait(const express_ticket& t, std::int64_t deadline) {
  check_owner();
  express_cell& c = cell(t);
  const auto finished = [&c] {
    return (c.state.load(std::memory_order_acquire) & ~cell_dropped) == cell_done;
  };
  // The worker was polling on another CPU: the answer is usually there in
  // well under a microsecond. Past this, it lost its CPU: wait as for any job,
  // which also watches for its death.
  // A worker on our CPU can only run if we yield it the CPU (it yields it
  // back when done).
  constexpr std::int64_t express_spin_ns = 20'000;
  const std::int64_t start = monotonic_ns();
  for (unsigned i = 0;; ++i) {
    if (finished()) return true;
    if (t.same_cpu)
      yield_cpu();
    else
      cpu_relax();
    if ((i & 63) == 63 || t.same_cpu) {
      const std::int64_t now = monotonic_ns();
      if (now - start > express_spin_ns || now >= deadline) break;
    }
  }
  return run_until([&] { return express_settled(t); }, deadline);
}

/// Under the lock: true when the cell is finished. A cell posted to a worker
/// that is gone for good (it raced with its death, or the pool is over) is
/// finished here.
inline bool engine::express_settled(const express_ticket& t) {
  express_cell& c = cell(t);
  const std::uint32_t st = c.state.load(std::memory_order_acquire) & ~cell_dropped;
  if (st == cell_done) return true;
  if (st != cell_posted && st != cell_running) return false;  // requeued: a job runs it
  if (state_ == state::terminated || state_ == state::joined) {
    fail_cell(t, std::make_exception_ptr(pool_terminated(
                     "procpool::Pool: the pool was terminated before this item finished")));
  } else if (workers_[t.slot].pid == 0) {
    if (broken_)
      fail_cell(t, broken_);
    else
      requeue_cell(t);
  }
  return (c.state.load(std::memory_order_acquire) & ~cell_dropped) == cell_done;
}

/// Under the lock (or in the worker's place, once it is dead): marks the cell
/// done for its caller, or free when the caller dropped its handle.
inline void engine::finish_cell(const express_ticket& t) noexcept {
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  while (!c.state.compare_exchange_weak(st, (st & cell_dropped) ? cell_free : cell_done,
                                        std::memory_order_acq_rel)) {
  }
  if (st & cell_dropped) cell_errors_[t.slot * express_cells + t.index] = nullptr;
  shared()->express_finished.fetch_add(1, std::memory_order_release);
  shared()->parent_ev.notify();
  cv_.notify_all();
}

inline void engine::fail_cell(const express_ticket& t, std::exception_ptr e) noexcept {
  cell(t).status = status_exception;
  cell_errors_[t.slot * express_cells + t.index] = std::move(e);
  finish_cell(t);
}

inline void engine::requeue_cell(const express_ticket& t) {
  if (broken_) {
    fail_cell(t, broken_);
    return;
  }
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  while (!c.state.compare_exchange_weak(st, cell_requeued | (st & cell_dropped),
                                        std::memory_order_acq_rel)) {
  }
  try {
    jobs_.push_front(std::make_shared<cell_job>(*this, t));
  } catch (...) {
    fail_cell(t, std::current_exception());
  }
}

/// Worker @p w died: its running cell fails (when the death is blamed on it),
/// the cells it had not started run again through the queues.
inline void engine::settle_cells(const worker& w, std::uint64_t blamed_seq,
                                 std::exception_ptr blamed_error) {
  for (std::uint32_t k = 0; k < express_cells; ++k) {
    const express_ticket t{static_cast<std::uint32_t>(w.slot), k};
    const std::uint32_t st = cell(t).state.load(std::memory_order_acquire) & ~cell_dropped;
    if (st != cell_posted && st != cell_running) continue;
    if (st == cell_running && blamed_seq == (express_seq | k)) {
      fail_cell(t, blamed_error);
    } else {
      requeue_cell(t);
    }
  }
}

inline std::exception_ptr engine::take_cell_error(const express_ticket& t) {
  check_owner();
  std::lock_guard lk(m_);
  auto e = std::move(cell_errors_[t.slot * express_cells + t.index]);
  cell_errors_[t.slot * express_cells + t.index] = nullptr;
  express_release(t);
  return e;
}

inline void engine::express_drop(const express_ticket& t) noexcept {
  if (!owned_here()) return;  // the cell is the builder's
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  for (;;) {
    if ((st & ~cell_dropped) == cell_done) {
      if (c.status == status_exception) {
        try {
          std::lock_guard lk(m_);
          cell_errors_[t.slot * express_cells + t.index] = nullptr;
        } catch (...) {
          // The lock failed: the exception stays until the cell is reused.
        }
      }
      express_release(t);
      return;
    }
    if (c.state.compare_exchange_weak(st, st | cell_dropped, std::memory_order_acq_rel)) return;
  }
}

template <class Done>
void engine::run_until(Done done) {
  run_until(done, std::numeric_limits<std::int64_t>::max());
}

template <class Done>
bool engine::run_until(Done done, std::int64_t deadline) {
  check_owner();
  std::unique_lock lk(m_);
  bool replaced = false;  // another caller took over driving from us: wait for it to finish
  watch_set ws;  // what we watch while waiting; filled before each wait
  for (;;) {
    // Before done(): an express cell finishing after this wakes the wait below.
    ws.express_finished = shared()->express_finished.load(std::memory_order_acquire);
    if (done()) return true;
    // A poll (deadline already past) never takes over: the driver will see to it.
    const bool can_take_over =
        pumping_ && driver_waiting_ && !replaced && monotonic_ns() < deadline;
    if ((pumping_ && !can_take_over) || terminate_requested_) {
      // Another thread drives (or terminate() waits for it); it notifies each round.
      if (monotonic_ns() >= deadline) return false;
      cv_.wait_for(lk, std::chrono::milliseconds(10));
      continue;
    }
    if (can_take_over) {
      // The driver is between rounds, waiting for an event with the lock let go.
      // Drive in its place rather than sleep until it notices our work: on a
      // busy machine it may not even be running.
      driver_waiting_ = false;
      driver_gen_.fetch_add(1, std::memory_order_relaxed);
      shared()->parent_ev.notify();  // wake it if asleep: it then waits for us
    }
    pumping_ = true;
    const std::uint64_t gen = driver_gen_.load(std::memory_order_relaxed);
    bool progress = false;
    bool expired = false;
    try {
      progress = pump();  // at least one round, even with a past deadline: ready() relies on it
      if (!done()) {
        expired = !progress && monotonic_ns() >= deadline;
        if (!expired) {
          // Let the lock go between rounds: submit() and readers never wait for us.
          bool poked = false;
          if (!progress) fill_watch(ws);
          ws.gen = gen;
          driver_waiting_ = true;
          lk.unlock();
          if (!progress) poked = wait_for_event(deadline, ws);
          lk.lock();
          if (driver_gen_.load(std::memory_order_relaxed) != gen) {
            replaced = true;
            if (poked) {  // the poke was for the new driver
              poke_.store(true);
              shared()->parent_ev.notify();
            }
            continue;
          }
          driver_waiting_ = false;
        }
      }
    } catch (...) {
      if (!lk.owns_lock()) lk.lock();
      if (driver_gen_.load(std::memory_order_relaxed) == gen) {
        driver_waiting_ = false;
        pumping_ = false;
        cv_.notify_all();
      }
      throw;
    }
    pumping_ = false;
    cv_.notify_all();
    if (expired) return done();
  }
}

/// One round: read every result that arrived, hand out work, look for dead or
/// overdue workers. Non-blocking. Returns true if anything moved.
inline bool engine::pump() {
  if (state_ == state::terminated || state_ == state::joined) return false;
  bool progress = false;
  for (auto& w : workers_) progress |= drain(w);
  progress |= dispatch();
  const std::int64_t now = monotonic_ns();
  if (progress) last_progress_ns_ = now;
  if (now >= next_check_) {
    next_check_ = now + 5'000'000;
    // Counted as progress: a reaped worker's items may have failed, and a
    // caller replaced as driver waits for the end of a round to look again.
    if (check_workers()) {
      progress = true;
      last_progress_ns_ = now;
    }
  }
  return progress;
}

inline void engine::fill_watch(watch_set& ws) {
  ws.last_progress_ns = last_progress_ns_;
  ws.next_check = std::min(next_check_, steal_retry_at_);
  ws.n = 0;
  ws.more.clear();
  for (auto& w : workers_) {
    if (w.pid == 0 || w.corrupt) continue;
    ws.add({w.results, w.tasks, w.sent < w.inflight.size()});
  }
}

inline bool engine::has_event(const watch_set& ws, bool& poked) {
  if (driver_gen_.load(std::memory_order_relaxed) != ws.gen) return true;  // replaced
  // A submit() or terminate() wants the driver (a load first: this runs in the spin loop).
  if (poke_.load(std::memory_order_relaxed) && poke_.exchange(false)) return poked = true;
  // An express cell finished: its caller may wait on this driver's rounds.
  if (shared()->express_finished.load(std::memory_order_relaxed) != ws.express_finished) return true;
  return ws.any([](const watch_set::ring_pair& r) {
    return r.results.readable() > 0 || (r.blocked && r.tasks.writable() > 0);
  });
}

/// Spins briefly, then sleeps until a worker publishes, a submit() wakes us,
/// the next liveness check is due, or another caller takes over. Called
/// without the lock; sees only @p ws and atomics. True if it took a poke.
inline bool engine::wait_for_event(std::int64_t deadline, const watch_set& ws) {
  bool poked = false;
  const std::int64_t start = monotonic_ns();
  // Spin only while answers are flowing; a pool whose tasks run long sleeps at
  // once, leaving the CPUs to the workers.
  if (start - ws.last_progress_ns < 2 * spin_ns) {
    for (unsigned i = 0;; ++i) {
      if (has_event(ws, poked)) return poked;
      cpu_relax();
      if ((i & 63) == 63 && monotonic_ns() - start > spin_ns) break;
    }
  }
  event& ev = shared()->parent_ev;
  const std::uint32_t seen = ev.prepare();
  if (!has_event(ws, poked)) {
    const std::int64_t now = monotonic_ns();
    std::int64_t until = std::min(deadline, std::max(ws.next_check, now + 100'000));
    ev.wait(seen, std::max<std::int64_t>(until - now, 1000));
  }
  ev.retire();
  return poked;
}

inline bool engine::drain(worker& w) {
  if (w.pid == 0 || w.corrupt) return false;
  bool progress = false;
  for (;;) {
    if (!w.have_header) {
      if (w.results.readable() < sizeof(frame_header)) break;
      w.results.read_some(reinterpret_cast<char*>(&w.hdr), sizeof w.hdr);
      w.have_header = true;
      w.got = 0;
      if (w.hdr.magic != frame_magic || w.hdr.size > (std::uint64_t{1} << 44)) {
        // Corrupted stream: the worker is unusable. Kill it; on_death requeues.
        send_signal(w.pid, SIGKILL);
        w.corrupt = true;
        return progress;
      }
      w.body.clear();
      progress = true;
    }
    const std::size_t size = static_cast<std::size_t>(w.hdr.size);
    if (w.got == 0 && w.hdr.kind == static_cast<std::uint32_t>(frame_kind::results) &&
        size >= sizeof(result_header) && w.results.readable() >= size) {
      // The whole answer is in the ring: read it where it lies instead of
      // copying it out first (for map over small items, half the parent's copying).
      const auto sp = w.results.spans(size);
      bool done = false;
      if (sp.nb == 0) {
        // As on the copying path: the message is gone from the ring whatever
        // on_message throws, so it is never read twice.
        w.have_header = false;
        try {
          on_message(w, sp.a, size);
        } catch (...) {
          w.results.consume(size);
          slot(w.slot)->worker_ev.notify();
          throw;
        }
        done = true;
      } else {
        done = place_wrapped(w, sp);  // else: copied out below, as any other message
      }
      if (done) {
        w.have_header = false;
        w.results.consume(size);
        slot(w.slot)->worker_ev.notify();  // space freed
        progress = true;
        if (w.pid == 0 || w.corrupt) break;  // killed: nothing more of it is trusted
        continue;
      }
    }
    if (w.got < size) {
      // Grow with what has arrived, not to the claimed size at once: a corrupted
      // header must not make the parent allocate terabytes.
      const std::size_t avail = std::min(size - w.got, w.results.readable());
      if (avail == 0) break;
      w.body.resize(w.got + avail);
      const std::size_t n = w.results.read_some(w.body.data() + w.got, avail);
      w.got += n;
      progress = true;
    }
    slot(w.slot)->worker_ev.notify();  // space freed
    if (w.got < size) break;
    w.have_header = false;
    on_message(w, w.body.data(), w.body.size());
    if (w.pid == 0 || w.corrupt) break;
  }
  return progress;
}

/// Takes the chunk a results message answers off @p w's in-flight list, and
/// notes how long it took.
inline chunk engine::take_answered(worker& w) {
  chunk c = std::move(w.inflight.front());
  w.inflight.pop_front();
  --w.sent;
  const std::int64_t now = monotonic_ns();
  w.last_chunk_ns = now - std::max(c.sent_ns, w.last_result_ns);
  w.last_chunk_items = c.count();
  w.last_result_ns = now;
  return c;
}

/// A results message of fixed-size values and no errors that wraps around the
/// end of the ring: its two pieces are copied straight into the job's results.
/// False when the message is anything else (then it is copied out and parsed).
inline bool engine::place_wrapped(worker& w, const byte_ring::pieces& sp) {
  if (w.inflight.empty() || w.sent == 0) return false;
  result_header rh;
  sp.copy(0, &rh, sizeof rh);
  const chunk& front = w.inflight.front();
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
  recycle(std::move(c.msg));
  return true;
}

inline void engine::on_message(worker& w, const char* body, std::size_t size) {
  switch (static_cast<frame_kind>(w.hdr.kind)) {
    case frame_kind::results: {
      if (w.inflight.empty() || w.sent == 0) {
        send_signal(w.pid, SIGKILL);  // an answer to nothing: the stream is corrupt
        w.corrupt = true;
        break;
      }
      // Off the in-flight list first: whatever deliver() throws, the worker's
      // next answer must match its next chunk.
      chunk c = take_answered(w);
      std::vector<item_failure> failed;
      const char* values_at = nullptr;
      std::size_t values_size = 0;
      try {
        reader r(body, size);
        const auto rh = r.read_value<result_header>();
        if (rh.seq != c.seq || rh.count != c.count() || rh.errors_at < sizeof rh ||
            rh.errors_at > size)
          throw decode_error("procpool: a worker's answer does not match the chunk it was given");
        reader er(body + rh.errors_at, size - rh.errors_at);
        for (std::uint64_t k = 0; k < rh.errors; ++k) {
          item_failure f;
          f.local = er.read_value<std::uint64_t>();
          f.type = get_string(er);
          f.message = get_string(er);
          if (f.local >= c.count() || (!failed.empty() && f.local <= failed.back().local))
            throw decode_error("procpool: a worker's error records are corrupted");
          failed.push_back(std::move(f));
        }
        values_at = r.position();
        values_size = static_cast<std::size_t>(rh.errors_at - sizeof rh);
      } catch (const decode_error&) {
        values_at = nullptr;
        const auto e = std::current_exception();
        try {
          for (std::uint64_t i = 0; i < c.count(); ++i) c.owner->fail(c.base + i, e);
        } catch (...) {
          c.owner->abort(std::current_exception());
        }
      } catch (...) {
        // bad_alloc reading the error records: the chunk is off the in-flight
        // list, so its job fails whole rather than wait for it for ever.
        values_at = nullptr;
        c.owner->abort(std::current_exception());
      }
      if (values_at) {
        reader values(values_at, values_size);
        try {
          c.owner->deliver(c.base, c.count(), failed, values);  // handles its own decode errors
        } catch (...) {
          c.owner->abort(std::current_exception());  // e.g. bad_alloc storing the values
        }
      }
      c.owner->outstanding -= c.count();
      recycle(std::move(c.msg));
      break;
    }
    case frame_kind::init_failed: {
      reader r(body, size);
      std::string type = get_string(r), what = get_string(r);
      break_pool(std::make_exception_ptr(initializer_error(
          "procpool::Pool: the initializer threw " + type + ": " + what +
          " in worker " + std::to_string(w.pid) + "; fix it and create a new Pool")));
      break;
    }
    case frame_kind::skipped: {
      // The answer to a chunk taken back (take_back): its placeholder goes.
      std::uint64_t seq = 0;
      if (size == sizeof seq) std::memcpy(&seq, body, sizeof seq);
      if (w.sent == 0 || !w.inflight.front().revoked || w.inflight.front().seq != seq) {
        send_signal(w.pid, SIGKILL);  // not what we took back: the stream is corrupt
        w.corrupt = true;
        break;
      }
      w.inflight.pop_front();
      --w.sent;
      break;
    }
    case frame_kind::bye: {
      if (w.dying) break;  // already reaped: on_death is draining what it left
      // The worker exits right after saying so: reap it now.
      const auto status = wait_pid(w.pid, true);
      on_death(w, exitcode_from_status(*status));
      break;
    }
    default:
      send_signal(w.pid, SIGKILL);
      w.corrupt = true;
  }
}

inline bool engine::next_chunk(worker& w, chunk& c) {
  const std::size_t limit = w.budget;
  if (!requeued_.empty()) {
    chunk& r = requeued_.front();
    if (r.count() <= limit) {
      c = std::move(r);
      requeued_.pop_front();
    } else {
      // Split to fit the worker's remaining budget.
      c = r.slice(0, limit, r.attempts);
      r = r.slice(limit, r.count(), r.attempts);
    }
    return true;
  }
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    job& j = **it;
    if (j.aborted || j.input_done()) {
      it = jobs_.erase(it);
      continue;
    }
    if (c.msg.capacity() == 0 && !spare_msgs_.empty()) {
      c.msg = std::move(spare_msgs_.back());
      spare_msgs_.pop_back();
    }
    c.msg.clear();
    c.offsets.clear();
    c.stride = 0;
    c.msg.grow(chunk::items_at);
    std::size_t n = 0;
    try {
      const std::uint64_t left = j.total > j.handed ? j.total - j.handed : 0;
      const std::size_t max = chunk_items(j.chunksize, j.guided, left, workers_.size(),
                                          min_chunk_items(w.last_chunk_ns, w.last_chunk_items));
      n = j.next_items(c.msg, c.offsets, c.stride, std::min(limit, max), c.base);
    } catch (...) {
      // Reading or encoding this job's input failed (its iterator or a
      // serialize() threw): that job fails, not whichever caller is driving.
      j.input_failed(std::current_exception());
      it = jobs_.erase(it);
      continue;
    }
    if (n == 0) {
      ++it;
      continue;
    }
    c.n = n;
    if (!c.stride) c.offsets.push_back(static_cast<std::uint32_t>(c.msg.size() - chunk::items_at));
    c.owner = *it;
    c.attempts = 0;
    j.outstanding += n;
    j.handed += n;
    return true;
  }
  return false;
}

inline bool engine::dispatch() {
  if (broken_) {
    for (auto& w : workers_) flush(w);  // stop frames still go out (join)
    return false;
  }
  // Workers in order, each queued up to its depth: a stream of tiny tasks stays
  // with the first worker, which keeps spinning for the next one, while the
  // rest sleep (on 2 cores, spreading tiny tasks puts three spinners on two
  // CPUs). Then a worker left with nothing takes over what another has queued
  // and not started (see scheduler.hpp).
  bool progress = false;
  for (auto& w : workers_) progress |= fill(w);
  progress |= rebalance();
  for (auto& w : workers_) flush(w);
  return progress;
}

/// Queues chunks to @p w up to its depth (scheduler.hpp: queue_depth).
inline bool engine::fill(worker& w) {
  if (w.pid == 0 || w.stop_queued) return false;
  // The depth follows how long its last chunk took. A chunk or express call
  // running now counts with the time it has taken so far, once that says
  // "not quick" or the worker has a history: a chunk sent a moment ago to a
  // fresh worker says nothing yet.
  const std::int64_t now = monotonic_ns();
  std::int64_t took = w.last_chunk_ns;
  const auto running_for = [&](std::int64_t ran) {
    if (took >= 0 || ran >= quick_chunk_ns) took = std::max(took, ran);
  };
  if (!w.inflight.empty()) running_for(now - w.inflight.front().sent_ns);
  // The queues do not see express calls: a long one keeps queued work off
  // this worker while another may be free.
  const std::int64_t express_since = express_started(w);
  if (express_since) running_for(now - express_since);
  const std::size_t express_busy = express_since ? 1 : 0;
  const std::size_t depth = queue_depth(took);
  // Big chunks are held back too: a new chunk is queued only while those a
  // worker has (sent, running or waiting) take under two rings' worth; more
  // would only wait in the parent's memory (encoded, and kept for a retry).
  std::size_t queued_bytes = 0;
  for (const chunk& q : w.inflight) queued_bytes += q.msg.size();
  bool progress = false;
  while (w.inflight.size() + express_busy < depth && w.budget > 0 && queued_bytes < 2 * cap_) {
    chunk c;
    if (!next_chunk(w, c)) {
      recycle(std::move(c.msg));  // a spare it took for nothing
      break;
    }
    c.seq = next_seq_++;
    c.sent_ns = monotonic_ns();
    c.claim = w.next_claim++ % claim_board::slots;
    c.revoked = false;
    slot(w.slot)->claims.post(c.claim, c.seq);
    const frame_header fh{frame_magic, static_cast<std::uint32_t>(frame_kind::task),
                          c.msg.size() - sizeof(frame_header)};
    const task_header th{c.owner->runner, c.seq, c.count(), c.claim};
    std::memcpy(c.msg.data(), &fh, sizeof fh);
    std::memcpy(c.msg.data() + sizeof fh, &th, sizeof th);
    w.budget -= c.count();
    queued_bytes += c.msg.size();
    w.inflight.push_back(std::move(c));
    progress = true;
  }
  if (w.budget == 0) w.stop_queued = true;  // max_tasks_per_child reached: retire
  return progress;
}

/// True when @p w could run something now and has nothing: no chunk queued or
/// running, no express call posted or running.
inline bool engine::is_idle(const worker& w) const {
  if (w.pid == 0 || w.corrupt || w.dying || w.stop_queued || w.budget == 0) return false;
  if (!w.inflight.empty() || express_started(w)) return false;
  const slot_shared* s = slot(w.slot);
  for (const express_cell& c : s->cells)
    if ((c.state.load(std::memory_order_acquire) & ~cell_dropped) == cell_posted) return false;
  return true;
}

/// What @p w has queued and not started (express calls posted to it included).
inline worker_load engine::load_of(const worker& w) const {
  worker_load l;
  l.idle = is_idle(w);
  if (w.pid == 0 || w.corrupt || w.dying) return l;
  const slot_shared* s = slot(w.slot);
  const auto add = [&l](std::int64_t sent) {
    l.oldest_sent_ns = l.unstarted ? std::min(l.oldest_sent_ns, sent) : sent;
    ++l.unstarted;
  };
  for (const chunk& c : w.inflight)
    if (!c.revoked && !s->claims.is_started(c.claim, c.seq)) add(c.sent_ns);
  for (const express_cell& c : s->cells)
    if ((c.state.load(std::memory_order_acquire) & ~cell_dropped) == cell_posted)
      add(c.posted_ns.load(std::memory_order_relaxed));
  return l;
}

/// Gives each idle worker a chunk (or express call) that another worker holds
/// and has not started (scheduler.hpp: pick_donor). A move that must wait sets
/// steal_retry_at_, when the driver looks again.
inline bool engine::rebalance() {
  steal_retry_at_ = std::numeric_limits<std::int64_t>::max();
  if (workers_.size() < 2) return false;
  bool progress = false;
  std::vector<worker_load>& loads = loads_;
  loads.clear();
  for (auto& idle : workers_) {
    if (!is_idle(idle)) continue;
    if (loads.empty())
      for (const auto& w : workers_) loads.push_back(load_of(w));
    const int d = pick_donor(loads, monotonic_ns(), steal_retry_at_);
    if (d < 0) break;  // nothing may move now, to any idle worker
    worker& donor = workers_[static_cast<std::size_t>(d)];
    if (!take_back(donor)) {
      loads[static_cast<std::size_t>(d)] = load_of(donor);  // it started them meanwhile
      continue;
    }
    progress = true;
    fill(idle);  // takes it: next_chunk serves requeued_ (and cell jobs) first
    loads[static_cast<std::size_t>(d)] = load_of(donor);
    loads[idle.slot] = load_of(idle);
  }
  return progress;
}

/// Takes back the first express call or chunk that @p w holds and has not
/// started, for another worker: a cell goes through the queues (cell_job), a
/// chunk to the front of requeued_. False when there was none to take.
inline bool engine::take_back(worker& w) {
  slot_shared* s = slot(w.slot);
  for (std::uint32_t k = 0; k < express_cells; ++k) {
    express_cell& c = s->cells[k];
    std::uint32_t st = c.state.load(std::memory_order_acquire);
    while ((st & ~cell_dropped) == cell_posted) {
      if (c.state.compare_exchange_weak(st, cell_requeued | (st & cell_dropped),
                                        std::memory_order_acq_rel)) {
        jobs_.push_front(std::make_shared<cell_job>(*this, express_ticket{
                                                              static_cast<std::uint32_t>(w.slot), k}));
        return true;
      }
    }
  }
  for (std::size_t i = 0; i < w.inflight.size(); ++i) {
    chunk& c = w.inflight[i];
    if (c.revoked) continue;
    const bool unwritten = i > w.sent || (i == w.sent && w.send_off == 0);
    if (i == w.sent && !unwritten) continue;  // partly written: it goes out whole
    if (!unwritten && !s->claims.revoke(c.claim, c.seq)) continue;  // started
    chunk moved = std::move(c);
    if (w.budget != std::numeric_limits<std::size_t>::max()) w.budget += moved.count();
    if (unwritten) {
      w.inflight.erase(w.inflight.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      // The worker will read it and say it skipped it; until then its place
      // in the answer order is held.
      c = chunk();
      c.seq = moved.seq;
      c.claim = moved.claim;
      c.sent_ns = moved.sent_ns;
      c.revoked = true;
    }
    requeued_.push_front(std::move(moved));
    return true;
  }
  return false;
}

inline void engine::flush(worker& w) {
  if (w.pid == 0) return;
  bool wrote = false;
  while (w.sent < w.inflight.size()) {
    const byte_buffer& m = w.inflight[w.sent].msg;
    if (w.send_off == 0) w.tasks.grow_for(m.size());
    const std::size_t n = w.tasks.write_some(m.data() + w.send_off, m.size() - w.send_off);
    wrote |= n > 0;
    w.send_off += n;
    if (w.send_off < m.size()) break;
    ++w.sent;
    w.send_off = 0;
  }
  if (w.stop_queued && !w.stop_sent && w.sent == w.inflight.size() &&
      w.tasks.writable() >= sizeof(frame_header)) {
    const frame_header h{frame_magic, static_cast<std::uint32_t>(frame_kind::stop), 0};
    w.tasks.write_some(reinterpret_cast<const char*>(&h), sizeof h);
    w.stop_sent = wrote = true;
  }
  if (wrote) slot(w.slot)->worker_ev.notify();
}

inline bool engine::check_workers() {
  bool changed = false;
  const std::int64_t now = monotonic_ns();
  const std::int64_t limit = timeout_ns_;
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    // A worker got through the initializer: earlier deaths were not in a row.
    if (deaths_before_ready_ && slot(w.slot)->ready.load(std::memory_order_acquire))
      deaths_before_ready_ = 0;
    if (limit > 0 && !w.timed_out) {
      slot_shared* s = slot(w.slot);
      // Read twice: only a consistent (seq, item) pair that is still running
      // past the limit is killed and blamed.
      const std::uint64_t seq = s->running_seq.load(std::memory_order_acquire);
      const std::uint64_t item = s->running_item.load(std::memory_order_acquire);
      const std::int64_t since = s->running_since.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq != 0 && now - since > limit && s->running_seq.load() == seq &&
          s->running_item.load() == item) {
        w.timed_out = true;
        w.timeout_seq = seq;
        w.timeout_item = item;
        send_signal(w.pid, SIGKILL);
        changed = true;
      }
    }
    if (auto status = wait_pid(w.pid, w.timed_out)) {
      on_death(w, exitcode_from_status(*status));
      changed = true;
    }
  }
  return changed;
}

/// Worker @p w has ended. Read what it finished, fail the item it was running
/// (or retry it), requeue the rest, and start a replacement.
inline void engine::on_death(worker& w, int exitcode) {
  const pid_t pid = w.pid;
  w.dying = true;
  drain(w);  // complete messages it wrote before dying still count
  w.pid = 0;
  slot_shared* s = slot(w.slot);
  if (opts_.initializer && !s->ready.load()) {
    if (++deaths_before_ready_ >= max_deaths_before_ready && !broken_)
      break_pool(std::make_exception_ptr(initializer_error(
          "procpool::Pool: " + std::to_string(deaths_before_ready_) +
          " workers in a row died before they were ready, the last, " + std::to_string(pid) +
          ", " + describe_exitcode(exitcode) +
          " before it was ready (in the initializer?); fix it and create a new Pool")));
  } else {
    deaths_before_ready_ = 0;
  }
  // A timeout blames what the check saw; a death, what the worker last wrote.
  const std::uint64_t blamed_seq = w.timed_out ? w.timeout_seq : s->running_seq.load();
  const std::uint64_t blamed_item = w.timed_out ? w.timeout_item : s->running_item.load();
  // The error of the item (or express call: index 0) the death is blamed on.
  const auto blamed_error = [&](std::uint64_t index) {
    const std::string what = "procpool: worker " + std::to_string(pid) + " " +
                             (w.timed_out ? "ran past task_timeout (" +
                                                std::to_string(opts_.task_timeout.count()) +
                                                " ms) and was killed"
                                          : describe_exitcode(exitcode)) +
                             " while running item " + std::to_string(index);
    return w.timed_out ? std::make_exception_ptr(task_timeout(index, pid, exitcode, what))
                       : std::make_exception_ptr(worker_lost(index, pid, exitcode, what));
  };
  settle_cells(w, blamed_seq, (blamed_seq & express_seq) ? blamed_error(0) : nullptr);
  // Requeue in order at the front, so that imap's order suffers least.
  std::deque<chunk> mine = std::move(w.inflight);
  w.inflight.clear();
  for (auto it = mine.rbegin(); it != mine.rend(); ++it) {
    chunk& c = *it;
    if (c.revoked) continue;  // its items went to another worker
    const bool blamed = c.seq == blamed_seq && blamed_seq != 0 && blamed_item < c.count();
    // Counted only when the worker died running nothing: chunks queued behind
    // a blamed item are bystanders.
    if (!blamed && blamed_seq == 0 && ++c.orphaned > max_orphaned) {
      // Its workers keep dying before any item of it runs (out of memory while
      // receiving it, say): fail it rather than fork forever.
      for (std::uint64_t i = 0; i < c.count(); ++i) {
        const std::uint64_t index = c.base + i;
        c.owner->fail(index, std::make_exception_ptr(worker_lost(
                                 index, pid, exitcode,
                                 "procpool: item " + std::to_string(index) + " was lost: " +
                                     std::to_string(c.orphaned) +
                                     " workers died before it started (the last, " +
                                     std::to_string(pid) + ", " + describe_exitcode(exitcode) +
                                     "); out of memory receiving it?")));
      }
      c.owner->outstanding -= c.count();
      continue;
    }
    if (blamed) {
      const std::uint64_t index = c.base + blamed_item;
      requeue(c, blamed_item + 1, c.count());
      if (c.attempts < opts_.retries) {
        requeued_.push_front(c.slice(blamed_item, blamed_item + 1, c.attempts + 1));
      } else {
        c.owner->fail(index, blamed_error(index));
        --c.owner->outstanding;
      }
      requeue(c, 0, blamed_item);
    } else {
      requeue(c, 0, c.count());
    }
  }
  // Replace it while there is work to do or the pool takes new work.
  if (!broken_ && (state_ == state::running || (state_ == state::closed && !all_done()))) {
    try {
      spawn_worker(w);
    } catch (const std::exception& e) {
      // Cannot fork (EAGAIN, ENOMEM): say so to every caller instead of
      // leaving a slot empty that pending work may wait on forever.
      w.pid = 0;
      break_pool(std::make_exception_ptr(
          error(std::string("procpool::Pool: could not start a replacement worker: ") +
                e.what() + "; create a new Pool when the system has room")));
    }
  }
}

/// Keeps an answered chunk's message buffer for a later chunk. Without this,
/// each chunk of big items (a 1 MiB buffer, say) allocated its message afresh,
/// and glibc returned the freed memory to the kernel and faulted it back in:
/// up to 8,000 page faults per 256 MiB map, and half the bandwidth, depending
/// on the order of frees. The pool keeps at most twice as many as it has
/// workers, none bigger than two rings (bigger ones came from a huge item,
/// and are given back). Kept until the pool is destroyed.
inline void engine::recycle(byte_buffer&& msg) {
  const std::size_t keep = 2 * workers_.size();
  if (msg.capacity() == 0 || msg.capacity() > 2 * cap_ || spare_msgs_.size() >= keep) return;
  spare_msgs_.push_back(std::move(msg));
}

/// Puts items [from, to) of @p c at the front of the requeue list.
inline void engine::requeue(const chunk& c, std::uint64_t from, std::uint64_t to) {
  if (from < to) requeued_.push_front(c.slice(from, to, c.attempts));
}

inline void engine::break_pool(std::exception_ptr e) {
  broken_ = e;
  express_open_.store(false);
  for (auto& j : jobs_)
    if (!j->complete()) j->abort(e);  // a finished call's results are its caller's
  for (auto& w : workers_)
    for (auto& c : w.inflight)
      if (c.owner) c.owner->abort(e);
  for (auto& c : requeued_) c.owner->abort(e);
  jobs_.clear();
  requeued_.clear();
}

inline bool engine::all_done() const {
  if (!jobs_.empty() || !requeued_.empty()) return false;
  // Express calls not finished, from the cells' states: a dead worker's cells
  // are settled by on_death, while a count it kept could be left wrong by its
  // death between finishing a cell and counting it.
  for (std::uint32_t i = 0; i < workers_.size(); ++i)
    for (const express_cell& c : slot(i)->cells) {
      const std::uint32_t st = c.state.load(std::memory_order_seq_cst) & ~cell_dropped;
      if (st != cell_free && st != cell_done) return false;
    }
  for (const auto& w : workers_)
    if (!w.inflight.empty()) return false;
  return true;
}

inline void engine::close() {
  check_owner();
  std::lock_guard lk(m_);
  express_open_.store(false);  // before join() reads the cells (see express_claim)
  if (state_ == state::running) state_ = state::closed;
}

inline void engine::join() {
  check_owner();
  {
    std::lock_guard lk(m_);
    if (state_ == state::running)
      throw usage_error("procpool::Pool::join: call close() or terminate() first");
    if (state_ != state::closed) return;
    for (auto& j : jobs_) j->lift_window();
  }
  // Finish everything submitted, then stop the workers and reap them.
  run_until([this] {
    if (!broken_ && !all_done()) return false;
    bool alive = false;
    for (auto& w : workers_) {
      if (w.pid == 0) continue;
      alive = true;
      w.stop_queued = true;  // the driving thread's next dispatch() sends it
    }
    return !alive;
  });
  std::lock_guard lk(m_);
  state_ = state::joined;
}

inline void engine::terminate() noexcept {
  if (!owned_here()) return;  // a copy in another process: the workers are not its own
  std::unique_lock lk(m_);
  express_open_.store(false);
  terminate_requested_ = true;
  poke_.store(true);
  shared()->parent_ev.notify();  // wake a driver asleep in wait_for_event
  cv_.wait(lk, [this] { return !pumping_; });
  terminate_requested_ = false;
  if (state_ == state::terminated || state_ == state::joined) return;
  state_ = state::terminated;
  for (auto& w : workers_)
    if (w.pid) send_signal(w.pid, SIGKILL);
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    try {
      wait_pid(w.pid, true);
    } catch (...) {
    }
    w.pid = 0;
  }
  auto e = std::make_exception_ptr(
      pool_terminated("procpool::Pool: the pool was terminated before this item finished"));
  for (auto& j : jobs_)
    if (!j->complete()) j->abort(e);  // a finished call's results are its caller's
  for (auto& w : workers_)
    for (auto& c : w.inflight)
      if (c.owner) c.owner->abort(e);
  for (auto& c : requeued_) c.owner->abort(e);
  jobs_.clear();
  requeued_.clear();
  for (auto& w : workers_) w.inflight.clear();
  // Cells still waiting for their (now dead) workers; a cell posted after
  // this is failed by its caller's wait (express_settled).
  for (std::uint32_t i = 0; i < workers_.size(); ++i)
    for (std::uint32_t k = 0; k < express_cells; ++k) {
      const std::uint32_t st = slot(i)->cells[k].state.load() & ~cell_dropped;
      if (st == cell_posted || st == cell_running) fail_cell({i, k}, e);
    }
  cv_.notify_all();
}

inline std::vector<pid_t> engine::pids() {
  check_owner();
  std::lock_guard lk(m_);
  std::vector<pid_t> r;
  for (auto& w : workers_)
    if (w.pid) r.push_back(w.pid);
  return r;
}

}  // namespace procpool::detail
