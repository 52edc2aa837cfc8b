// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The express lane, both sides of its protocol. An apply_async of small
// fixed-size arguments and result skips the engine (its lock, the rings, the
// driver): the caller claims a cell of a worker that is polling for work now,
// writes the call there and spins on the cell for the answer. While another
// thread streams work through the pool the engine's lock is held most of the
// time, and waiting for it would be most of a small call's round trip.
//
// A cell moves free -> claimed (caller) -> posted (caller) -> running (worker)
// -> done (worker) -> free (caller, after reading it). The parent settles the
// cells of a worker that died: the running one fails (worker_lost,
// task_timeout), posted ones go through the queues (requeued, run by a
// cell_job). A caller that drops its handle sets `cell_dropped`, and whoever
// finishes the cell frees it.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "express_cell.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "scheduler.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"

namespace procpool::detail {

class express_lane {
 public:
  /// One claimed cell: worker @p worker's cell @p index.
  struct ticket {
    std::uint32_t worker = 0, index = 0;
    bool same_cpu = false;  // its worker last polled on the caller's CPU
  };

  /// The lane over @p workers workers' cells in @p shm; off when not @p enabled
  /// (max_tasks_per_child and retries count items in the queues).
  express_lane(const shared_region& shm, std::size_t workers, bool enabled)
      : shm_(&shm), workers_(workers), enabled_(enabled), open_(enabled),
        errors_(workers * express_cells) {}

  // ------------------------------------------------ the caller's side (lock-free)

  /// Claims a free cell of a worker polling now, preferably on another CPU.
  /// False when none is or the lane is closed.
  bool claim(ticket& t) noexcept;
  express_cell& cell(const ticket& t) const noexcept {
    return shm_->worker(t.worker)->cells[t.index];
  }
  /// Hands a claimed and filled cell to its worker.
  void post(const ticket& t) noexcept;
  /// True when the cell is done (status and result there).
  bool finished(const ticket& t) const noexcept {
    return (cell(t).state.load(std::memory_order_acquire) & ~cell_dropped) == cell_done;
  }
  /// Spins for the answer while it is likely to come soon (the worker was
  /// polling); true when it came. Then the caller waits as for any job.
  bool spin(const ticket& t, std::int64_t deadline) const noexcept;
  /// The exception of a cell finished with status_exception; frees the cell.
  std::exception_ptr take_error(const ticket& t);
  /// True when the cell finished with an exception of type @p E (it stays).
  template <class E>
  bool failed_with(const ticket& t);
  /// Frees a finished cell whose result was read.
  void release(const ticket& t) noexcept { cell(t).state.store(cell_free, std::memory_order_release); }
  /// The caller's handle is gone: the call still runs; whoever finishes it frees the cell.
  void drop(const ticket& t) noexcept;

  // ------------------------------------------------ the engine's side (under its lock)

  bool enabled() const noexcept { return enabled_; }
  /// Takes no more calls. Sequentially consistent with claim(): a call either
  /// sees the lane closed, or is seen by all_settled().
  void close() noexcept { open_.store(false); }
  /// Marks the cell done for its caller (or free, when dropped).
  void finish(const ticket& t) noexcept;
  /// Finishes the cell with @p e as its error.
  void fail(const ticket& t, std::exception_ptr e) noexcept;
  /// The cell goes through the queues (its worker died before running it).
  void mark_requeued(const ticket& t) noexcept;
  /// Takes back cell @p t if it is posted and not started, and fails it with
  /// @p e; false when its worker started it (or it is not posted).
  bool withdraw(const ticket& t, std::exception_ptr e) noexcept;
  /// Takes back a cell posted to @p worker and not started; false when none is.
  bool take_posted(std::uint32_t worker, ticket& t) noexcept;
  /// True when @p worker has a cell posted and not started.
  bool has_posted(std::uint32_t worker) const noexcept;
  /// Adds @p worker's posted cells to @p load (the scheduler's view).
  void count_posted(std::uint32_t worker, worker_load& load) const noexcept;
  /// When @p worker began the call it runs now; 0 when it runs none.
  std::int64_t running_since(std::uint32_t worker) const noexcept;
  /// True when no call is in flight in any cell.
  bool all_settled() const noexcept;
  /// Calls @p fn(ticket, state) for each of @p worker's cells posted or running.
  template <class Fn>
  void for_each_in_flight(std::uint32_t worker, Fn fn) {
    for (std::uint32_t k = 0; k < express_cells; ++k) {
      const ticket t{worker, k};
      const std::uint32_t st = cell(t).state.load(std::memory_order_acquire) & ~cell_dropped;
      if (st == cell_posted || st == cell_running) fn(t, st);
    }
  }

  // ------------------------------------------------ the worker's side (in the worker)

  /// Says "polling now, on this CPU" to callers choosing a worker.
  static void mark_polling(worker_shared& me, std::int64_t now) noexcept {
    me.poll_cpu.store(current_cpu(), std::memory_order_relaxed);
    me.poll_ns.store(now, std::memory_order_relaxed);
  }
  /// Says "not polling" (busy, or going to sleep).
  static void mark_busy(worker_shared& me) noexcept { me.poll_ns.store(0, std::memory_order_relaxed); }
  /// True when a cell was posted since @p seen.
  static bool posted_since(const worker_shared& me, std::uint32_t seen) noexcept {
    return me.cells_posted.load(std::memory_order_acquire) != seen;
  }
  /// Runs every cell posted to @p me with @p fn (the pool's function); true if
  /// it ran any. @p seen: the post count it last looked at; one load when no
  /// new cell was posted.
  static bool serve(pool_shared& pool, worker_shared& me, void* fn, std::uint32_t& seen);

 private:
  std::exception_ptr& error_of(const ticket& t) noexcept {
    return errors_[t.worker * express_cells + t.index];
  }

  const shared_region* shm_;
  std::size_t workers_;
  bool enabled_;
  std::atomic<bool> open_;
  std::mutex errors_m_;                   // guards errors_; taken after the engine's lock
  std::vector<std::exception_ptr> errors_;  // per cell, for status_exception
};

/// Runs an express cell's call through the queues, when its worker died before
/// running it or the scheduler moved it to another worker.
class cell_job final : public job {
 public:
  /// @p on_finish: called after the cell is finished (wakes its waiting caller).
  cell_job(express_lane& lane, const express_lane::ticket& t, std::function<void()> on_finish)
      : lane_(lane), t_(t), on_finish_(std::move(on_finish)) {
    runner = lane.cell(t).chunk_runner;
    chunksize = 1;
  }
  std::size_t next_items(byte_buffer& out, std::vector<std::uint32_t>& offsets,
                         std::uint32_t& stride, std::size_t max, std::uint64_t& base) override {
    if (sent_ || max == 0) return 0;
    sent_ = true;
    const express_cell& c = lane_.cell(t_);
    base = 0;
    stride = 0;
    offsets.push_back(0);
    out.append(c.arg, c.arg_size);
    return 1;
  }
  bool input_done() const override { return sent_; }
  /// The express call it runs.
  const express_lane::ticket& ticket() const noexcept { return t_; }
  /// True when it runs express call @p t.
  bool runs(const express_lane::ticket& t) const noexcept {
    return t.worker == t_.worker && t.index == t_.index;
  }
  std::size_t deliver(std::uint64_t, std::uint64_t, const std::vector<item_failure>& failed,
                      reader& values) override {
    if (finished_) return 0;
    express_cell& c = lane_.cell(t_);
    if (!failed.empty()) {
      set_cell_error(c, failed.front().type, failed.front().message);
    } else if (values.remaining() > express_res_bytes) {
      fail(0, std::make_exception_ptr(
                  decode_error("procpool: a worker's answer does not match the call it was given")));
      return 1;
    } else {
      c.status = status_ok;
      c.res_size = static_cast<std::uint32_t>(values.remaining());
      values.read(c.res, values.remaining());
    }
    finished_ = true;
    lane_.finish(t_);
    on_finish_();
    return failed.empty() ? 0 : 1;
  }
  void fail(std::uint64_t, std::exception_ptr e) override {
    if (finished_) return;
    finished_ = true;
    lane_.fail(t_, std::move(e));
    on_finish_();
  }
  void abort(std::exception_ptr e) override {
    fail(0, std::move(e));
    aborted = true;
  }

 private:
  express_lane& lane_;
  express_lane::ticket t_;
  std::function<void()> on_finish_;
  bool sent_ = false, finished_ = false;
};

// ---------------------------------------------------------------------------

inline bool express_lane::claim(ticket& t) noexcept {
  if (!open_.load(std::memory_order_relaxed)) return false;
  const int me = current_cpu();
  const std::int64_t now = monotonic_ns();
  // First a worker on another CPU; else one on ours, which the caller then
  // lets run by yielding the CPU (see spin).
  for (int pass = 0; pass < 2; ++pass) {
    for (std::uint32_t i = 0; i < workers_; ++i) {
      worker_shared* s = shm_->worker(i);
      std::int64_t polled = s->poll_ns.load(std::memory_order_relaxed);
      if (polled == 0 || now - polled > (pass == 0 ? express_fresh_ns : express_fresh_here_ns) ||
          (s->poll_cpu.load(std::memory_order_relaxed) == me) != (pass == 1))
        continue;
      // One call per polling worker: the next caller finds it busy and picks
      // another worker or the queues, instead of piling up behind this call.
      if (!s->poll_ns.compare_exchange_strong(polled, 0, std::memory_order_relaxed)) continue;
      for (std::uint32_t k = 0; k < express_cells; ++k) {
        std::uint32_t st = cell_free;
        if (s->cells[k].state.compare_exchange_strong(st, cell_claimed, std::memory_order_seq_cst)) {
          // Claimed, then the lane's state read again; close() clears it
          // before join() reads the cells (all_settled): a call either sees
          // the lane closed, or is waited for.
          if (!open_.load(std::memory_order_seq_cst)) {
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
  return false;
}

inline void express_lane::post(const ticket& t) noexcept {
  cell(t).state.store(cell_posted, std::memory_order_release);
  worker_shared* s = shm_->worker(t.worker);
  s->cells_posted.fetch_add(1, std::memory_order_acq_rel);
  s->worker_ev.notify();  // in case it went to sleep since it was chosen
}

inline bool express_lane::spin(const ticket& t, std::int64_t deadline) const noexcept {
  // A worker polling on another CPU answers in well under a microsecond; past
  // express_spin_ns it lost its CPU. A worker on the caller's CPU runs only
  // when the caller yields it the CPU (it yields it back when done).
  const std::int64_t start = monotonic_ns();
  for (unsigned i = 0;; ++i) {
    if (finished(t)) return true;
    if (t.same_cpu)
      yield_cpu();
    else
      cpu_relax();
    if ((i & 63) == 63 || t.same_cpu) {
      const std::int64_t now = monotonic_ns();
      if (now - start > express_spin_ns || now >= deadline) return false;
    }
  }
}

inline std::exception_ptr express_lane::take_error(const ticket& t) {
  std::exception_ptr e;
  {
    std::lock_guard lk(errors_m_);
    e = std::exchange(error_of(t), nullptr);
  }
  release(t);
  return e;
}

template <class E>
bool express_lane::failed_with(const ticket& t) {
  if (!finished(t) || cell(t).status != status_exception) return false;
  std::exception_ptr e;
  {
    std::lock_guard lk(errors_m_);
    e = error_of(t);
  }
  try {
    if (e) std::rethrow_exception(e);
  } catch (const E&) {
    return true;
  } catch (...) {
  }
  return false;
}

inline void express_lane::drop(const ticket& t) noexcept {
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  for (;;) {
    if ((st & ~cell_dropped) == cell_done) {
      if (c.status == status_exception) {
        try {
          std::lock_guard lk(errors_m_);
          error_of(t) = nullptr;
        } catch (...) {
          // The lock failed: the exception stays until the cell is reused.
        }
      }
      release(t);
      return;
    }
    if (c.state.compare_exchange_weak(st, st | cell_dropped, std::memory_order_acq_rel)) return;
  }
}

inline void express_lane::finish(const ticket& t) noexcept {
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  while (!c.state.compare_exchange_weak(st, (st & cell_dropped) ? cell_free : cell_done,
                                        std::memory_order_acq_rel)) {
  }
  if (st & cell_dropped) {
    std::lock_guard lk(errors_m_);
    error_of(t) = nullptr;
  }
  pool_shared* p = shm_->pool();
  p->express_finished.fetch_add(1, std::memory_order_release);
  p->parent_ev.notify();
}

inline void express_lane::fail(const ticket& t, std::exception_ptr e) noexcept {
  cell(t).status = status_exception;
  {
    std::lock_guard lk(errors_m_);
    error_of(t) = std::move(e);
  }
  finish(t);
}

inline void express_lane::mark_requeued(const ticket& t) noexcept {
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  while (!c.state.compare_exchange_weak(st, cell_requeued | (st & cell_dropped),
                                        std::memory_order_acq_rel)) {
  }
}

inline bool express_lane::take_posted(std::uint32_t worker, ticket& t) noexcept {
  for (std::uint32_t k = 0; k < express_cells; ++k) {
    express_cell& c = shm_->worker(worker)->cells[k];
    std::uint32_t st = c.state.load(std::memory_order_acquire);
    while ((st & ~cell_dropped) == cell_posted) {
      if (c.state.compare_exchange_weak(st, cell_requeued | (st & cell_dropped),
                                        std::memory_order_acq_rel)) {
        t = {worker, k};
        return true;
      }
    }
  }
  return false;
}

inline bool express_lane::withdraw(const ticket& t, std::exception_ptr e) noexcept {
  express_cell& c = cell(t);
  std::uint32_t st = c.state.load(std::memory_order_acquire);
  while ((st & ~cell_dropped) == cell_posted) {
    // To claimed, which the worker does not take, then finished with the error.
    if (c.state.compare_exchange_weak(st, cell_claimed | (st & cell_dropped),
                                      std::memory_order_acq_rel)) {
      fail(t, std::move(e));
      return true;
    }
  }
  return false;
}

inline bool express_lane::has_posted(std::uint32_t worker) const noexcept {
  for (const express_cell& c : shm_->worker(worker)->cells)
    if ((c.state.load(std::memory_order_acquire) & ~cell_dropped) == cell_posted) return true;
  return false;
}

inline void express_lane::count_posted(std::uint32_t worker, worker_load& load) const noexcept {
  for (const express_cell& c : shm_->worker(worker)->cells)
    if ((c.state.load(std::memory_order_acquire) & ~cell_dropped) == cell_posted)
      load.add_unstarted(c.posted_ns.load(std::memory_order_relaxed));
}

inline std::int64_t express_lane::running_since(std::uint32_t worker) const noexcept {
  const worker_shared* s = shm_->worker(worker);
  if (!(s->running_seq.load(std::memory_order_acquire) & express_seq)) return 0;
  return std::max<std::int64_t>(s->running_since.load(std::memory_order_relaxed), 1);
}

inline bool express_lane::all_settled() const noexcept {
  // From the cells' states: a dead worker's cells are settled by the engine,
  // while a count it kept could be left wrong by its death between finishing
  // a cell and counting it.
  for (std::uint32_t i = 0; i < workers_; ++i)
    for (const express_cell& c : shm_->worker(i)->cells) {
      const std::uint32_t st = c.state.load(std::memory_order_seq_cst) & ~cell_dropped;
      if (st != cell_free && st != cell_done) return false;
    }
  return true;
}

inline bool express_lane::serve(pool_shared& pool, worker_shared& me, void* fn,
                                std::uint32_t& seen) {
  const std::uint32_t posted = me.cells_posted.load(std::memory_order_acquire);
  if (posted == seen || !fn) return false;
  seen = posted;
  bool ran = false;
  for (unsigned k = 0; k < express_cells; ++k) {
    express_cell& c = me.cells[k];
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
    // is; the start time always, for the parent's scheduler.
    me.running_since.store(monotonic_ns(), std::memory_order_relaxed);
    me.running_item.store(0, std::memory_order_release);
    me.running_seq.store(express_seq | k, std::memory_order_release);
    mark_busy(me);
    const bool caller_here = c.caller_cpu >= 0 && c.caller_cpu == current_cpu();
    reinterpret_cast<express_runner>(c.runner)(fn, c);
    const bool ok = c.status == status_ok;  // before cell_done: the caller may reuse the cell then
    mark_polling(me, monotonic_ns());  // before the caller sees the answer and calls again
    std::uint32_t running = cell_running;
    if (!c.state.compare_exchange_strong(running, cell_done, std::memory_order_acq_rel))
      c.state.store(cell_free, std::memory_order_release);  // dropped: nobody reads it
    // Only now: a death before this blames the cell, which is done (not run again).
    me.running_seq.store(0, std::memory_order_release);
    (ok ? pool.express_ok : pool.express_failed).fetch_add(1, std::memory_order_relaxed);
    pool.express_finished.fetch_add(1, std::memory_order_release);
    pool.parent_ev.notify();
    ran = true;
    if (caller_here) yield_cpu();  // it yielded the CPU to us: give it back at once
  }
  return ran;
}

}  // namespace procpool::detail
