// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The send path: the calls waiting for workers (jobs, and chunks to run
// again), cut into chunks and queued to the workers as scheduler.hpp says,
// and queued chunks that a worker has not started moved to an idle one. It
// also keeps answered chunks' buffers for the next chunks.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "buffer.hpp"
#include "express_lane.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "scheduler.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"
#include "wire.hpp"
#include "worker_link.hpp"

namespace procpool::detail {

class dispatcher {
 public:
  /// For the workers of @p shm, with rings of @p ring_bytes; @p wake_followers
  /// is called when an express call it runs through the queues finishes.
  dispatcher(const shared_region& shm, express_lane& lane, std::size_t ring_bytes,
             std::function<void()> wake_followers)
      : shm_(&shm), lane_(&lane), cap_(ring_bytes), wake_followers_(std::move(wake_followers)) {}

  /// Queues a call behind the others (they are served in submission order).
  void add(std::shared_ptr<job> j) { jobs_.push_back(std::move(j)); }
  /// Runs express call @p t through the queues, first (its cell is requeued).
  void add_cell(const express_lane::ticket& t);
  /// Items [from, to) of @p c run again, before anything else.
  void requeue(const chunk& c, std::uint64_t from, std::uint64_t to) {
    if (from < to) requeued_.push_front(c.slice(from, to, c.attempts));
  }
  /// @p c (a blamed item, sliced off) runs again, first.
  void retry(chunk&& c) { requeued_.push_front(std::move(c)); }
  /// Keeps an answered chunk's buffer for a later chunk.
  void recycle(byte_buffer&& msg, std::size_t workers);
  /// True when nothing waits to be sent.
  bool empty() const noexcept { return jobs_.empty() && requeued_.empty(); }
  /// join(): every call hands out all of its input (imap's window is lifted).
  void lift_windows() {
    for (auto& j : jobs_) j->lift_window();
  }
  /// Every unfinished call waiting here fails with @p e; nothing waits after.
  void abort_all(const std::exception_ptr& e);
  /// Drops the chunks of @p j waiting to run again (it was cancelled; the job
  /// itself, aborted, is dropped by next_chunk). Returns the items dropped.
  std::uint64_t drop(const job& j);
  /// The cell_job running express call @p t through the queues, if it waits here.
  std::shared_ptr<job> cell_job_of(const express_lane::ticket& t) const;
  /// Calls @p fn(job) for each call waiting here (some may twice).
  template <class Fn>
  void for_each_job(Fn fn) const {
    for (const auto& j : jobs_) fn(j);
    for (const auto& c : requeued_) fn(c.owner);
  }

  /// One round over @p workers: queue each up to its depth, move unstarted
  /// work to idle workers, write what fits. True if anything was queued or moved.
  bool run(std::span<worker_link> workers);
  /// Only writes what is queued (the stop frames, for join): the pool is broken.
  void flush_all(std::span<worker_link> workers) {
    for (auto& w : workers) flush(w);
  }
  /// When a chunk too young to move may move (scheduler.hpp: pick_donor).
  std::int64_t steal_retry_at() const noexcept { return steal_retry_at_; }
  /// Items cut from calls into chunks so far, less express calls sent again
  /// through the queues (they were counted when posted); for pool_stats.
  std::uint64_t items_cut() const noexcept { return items_cut_ - cells_requeued_; }
  /// Express calls failed here (no memory to requeue them), and items of
  /// cancelled calls dropped before they ran; for pool_stats.
  std::uint64_t items_failed() const noexcept { return cells_failed_ + dropped_; }

 private:
  worker_shared* shared_of(const worker_link& w) const noexcept { return shm_->worker(w.index); }
  bool fill(worker_link& w, std::size_t workers);
  bool next_chunk(worker_link& w, chunk& c, std::size_t workers);
  bool rebalance(std::span<worker_link> workers);
  bool is_idle(const worker_link& w) const;
  worker_load load_of(const worker_link& w) const;
  bool take_back(worker_link& w);
  bool retire(worker_link& w);
  void flush(worker_link& w) {
    if (w.pid != 0 && w.out.flush()) shared_of(w)->worker_ev.notify();
  }

  const shared_region* shm_;
  express_lane* lane_;
  std::size_t cap_;
  std::function<void()> wake_followers_;
  std::deque<std::shared_ptr<job>> jobs_;
  std::deque<chunk> requeued_;           // run before the jobs' next items
  std::uint64_t items_cut_ = 0;
  std::uint64_t cells_requeued_ = 0;
  std::uint64_t cells_failed_ = 0;
  std::uint64_t dropped_ = 0;  // items of aborted calls, cut and never run
  std::vector<byte_buffer> spare_msgs_;  // answered chunks' buffers, for the next chunks
  std::uint64_t next_seq_ = 1;
  std::int64_t steal_retry_at_ = std::numeric_limits<std::int64_t>::max();
  std::vector<worker_load> loads_;  // rebalance()'s view of the workers, kept for its memory
};

// ---------------------------------------------------------------------------

inline void dispatcher::add_cell(const express_lane::ticket& t) {
  try {
    jobs_.push_front(std::make_shared<cell_job>(*lane_, t, wake_followers_));
    ++cells_requeued_;
  } catch (...) {
    lane_->fail(t, std::current_exception());
    ++cells_failed_;
    wake_followers_();
  }
}

/// Without this, each chunk of big items (a 1 MiB buffer, say) would allocate
/// its message afresh, and glibc return the freed memory to the kernel and
/// fault it back in. At most twice as many as there are workers are kept,
/// none bigger than two rings (bigger ones came from a huge item, and are
/// given back); kept until the pool is destroyed.
inline void dispatcher::recycle(byte_buffer&& msg, std::size_t workers) {
  if (msg.capacity() == 0 || msg.capacity() > 2 * cap_ || spare_msgs_.size() >= 2 * workers) return;
  spare_msgs_.push_back(std::move(msg));
}

inline void dispatcher::abort_all(const std::exception_ptr& e) {
  for (auto& j : jobs_)
    if (!j->complete()) j->abort(e);  // a finished call's results are its caller's
  for (auto& c : requeued_) c.owner->abort(e);
  jobs_.clear();
  requeued_.clear();
}

inline std::uint64_t dispatcher::drop(const job& j) {
  std::uint64_t n = 0;
  std::erase_if(requeued_, [&](const chunk& c) {
    if (c.owner.get() != &j) return false;
    n += c.count();
    return true;
  });
  dropped_ += n;
  return n;
}

inline std::shared_ptr<job> dispatcher::cell_job_of(const express_lane::ticket& t) const {
  for (const auto& j : jobs_)
    if (const auto* cj = dynamic_cast<const cell_job*>(j.get()); cj && cj->runs(t)) return j;
  for (const auto& c : requeued_)
    if (const auto* cj = dynamic_cast<const cell_job*>(c.owner.get()); cj && cj->runs(t))
      return c.owner;
  return nullptr;
}

inline bool dispatcher::run(std::span<worker_link> workers) {
  // Workers in order, each queued up to its depth: a stream of tiny tasks stays
  // with the first worker, which keeps spinning for the next one, while the
  // rest sleep (on 2 cores, spreading tiny tasks puts three spinners on two
  // CPUs). Then a worker left with nothing takes over what another has queued
  // and not started.
  bool progress = false;
  for (auto& w : workers) progress |= fill(w, workers.size());
  progress |= rebalance(workers);
  for (auto& w : workers) flush(w);
  return progress;
}

/// Cuts the next chunk for @p w: requeued items first, then the jobs in order.
inline bool dispatcher::next_chunk(worker_link& w, chunk& c, std::size_t workers) {
  const std::size_t limit = w.budget;
  // Items of a call that was cancelled or aborted meanwhile do not run.
  while (!requeued_.empty() && requeued_.front().owner->aborted) {
    chunk& r = requeued_.front();
    r.owner->outstanding -= r.count();
    dropped_ += r.count();
    requeued_.pop_front();
  }
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
    std::size_t n = 0;
    try {
      n = cut_chunk(*it, c, [&](std::uint64_t left) {
        return std::min(limit, chunk_items(j.chunksize, j.guided, left, workers,
                                           min_chunk_items(w.timing.last_chunk_ns, w.timing.last_chunk_items)));
      });
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
    items_cut_ += n;
    return true;
  }
  return false;
}

/// Queues chunks to @p w up to its depth (scheduler.hpp: queue_depth).
inline bool dispatcher::fill(worker_link& w, std::size_t workers) {
  if (w.pid == 0 || w.out.stop_queued()) return false;
  if (shared_of(w)->retiring.load(std::memory_order_acquire)) return retire(w);
  // The depth follows how long its last chunk took. A chunk or express call
  // running now counts with the time it has taken so far, once that says
  // "not quick" or the worker has a history: a chunk sent a moment ago to a
  // fresh worker says nothing yet.
  const std::int64_t now = monotonic_ns();
  std::int64_t took = w.timing.last_chunk_ns;
  const auto running_for = [&](std::int64_t ran) {
    if (took >= 0 || ran >= quick_chunk_ns) took = std::max(took, ran);
  };
  if (!w.out.empty()) running_for(now - w.out.front().sent_ns);
  // The queues do not see express calls: a long one keeps queued work off
  // this worker while another may be free.
  const std::int64_t express_since = lane_->running_since(static_cast<std::uint32_t>(w.index));
  if (express_since) running_for(now - express_since);
  const std::size_t express_busy = express_since ? 1 : 0;
  const std::size_t depth = queue_depth(took);
  // Big chunks are held back too: a new chunk is queued only while those a
  // worker has (sent, running or waiting) take under two rings' worth; more
  // would only wait in the parent's memory (encoded, and kept for a retry).
  std::size_t queued_bytes = w.out.queued_bytes();
  bool progress = false;
  while (w.out.size() + express_busy < depth && w.budget > 0 && queued_bytes < 2 * cap_) {
    chunk c;
    if (!next_chunk(w, c, workers)) {
      recycle(std::move(c.msg), workers);  // a spare it took for nothing
      break;
    }
    w.budget -= c.count();
    queued_bytes += c.msg.size();
    w.out.push(std::move(c), next_seq_++, monotonic_ns(), shared_of(w)->claims);
    progress = true;
  }
  if (w.budget == 0) w.out.queue_stop();  // max_tasks_per_child reached: retire
  return progress;
}

/// @p w takes no more tasks (worker_shared::retiring: its memory): what it
/// holds and has not started goes to the front of requeued_, in order, and it
/// is told to stop; the engine replaces it when it says bye. The chunks it
/// declined itself come back when it says it skipped them (engine: on_message).
inline bool dispatcher::retire(worker_link& w) {
  std::vector<chunk> moved;
  while (std::optional<chunk> c = w.out.take_back(shared_of(w)->claims)) moved.push_back(std::move(*c));
  for (auto it = moved.rbegin(); it != moved.rend(); ++it) requeued_.push_front(std::move(*it));
  w.budget = 0;
  w.out.queue_stop();
  return true;
}

/// True when @p w could run something now and has nothing: no chunk queued or
/// running, no express call posted or running.
inline bool dispatcher::is_idle(const worker_link& w) const {
  if (!w.connected() || w.dying || w.out.stop_queued() || w.budget == 0) return false;
  const auto index = static_cast<std::uint32_t>(w.index);
  return w.out.empty() && !lane_->running_since(index) && !lane_->has_posted(index);
}

/// What @p w has queued and not started (express calls posted to it included).
inline worker_load dispatcher::load_of(const worker_link& w) const {
  worker_load l;
  l.idle = is_idle(w);
  if (w.pid == 0 || w.corrupt || w.dying) return l;
  const worker_shared* s = shared_of(w);
  w.out.count_unstarted(s->claims, l);
  lane_->count_posted(static_cast<std::uint32_t>(w.index), l);
  return l;
}

/// Gives each idle worker a chunk (or express call) that another worker holds
/// and has not started (scheduler.hpp: pick_donor). A move that must wait sets
/// steal_retry_at_, when the driver looks again.
inline bool dispatcher::rebalance(std::span<worker_link> workers) {
  steal_retry_at_ = std::numeric_limits<std::int64_t>::max();
  if (workers.size() < 2) return false;
  bool progress = false;
  std::vector<worker_load>& loads = loads_;
  loads.clear();
  for (auto& idle : workers) {
    if (!is_idle(idle)) continue;
    if (loads.empty())
      for (const auto& w : workers) loads.push_back(load_of(w));
    const int d = pick_donor(loads, monotonic_ns(), steal_retry_at_);
    if (d < 0) break;  // nothing may move now, to any idle worker
    worker_link& donor = workers[static_cast<std::size_t>(d)];
    if (!take_back(donor)) {
      loads[static_cast<std::size_t>(d)] = load_of(donor);  // it started them meanwhile
      continue;
    }
    progress = true;
    fill(idle, workers.size());  // takes it: next_chunk serves requeued_ (and cell jobs) first
    loads[static_cast<std::size_t>(d)] = load_of(donor);
    loads[idle.index] = load_of(idle);
  }
  return progress;
}

/// Takes back the first express call or chunk that @p w holds and has not
/// started, for another worker: a cell goes through the queues (cell_job), a
/// chunk to the front of requeued_. False when there was none to take.
inline bool dispatcher::take_back(worker_link& w) {
  express_lane::ticket t;
  if (lane_->take_posted(static_cast<std::uint32_t>(w.index), t)) {
    add_cell(t);
    return true;
  }
  std::optional<chunk> moved = w.out.take_back(shared_of(w)->claims);
  if (!moved) return false;
  if (w.budget != std::numeric_limits<std::size_t>::max()) w.budget += moved->count();
  requeued_.push_front(std::move(*moved));
  return true;
}

}  // namespace procpool::detail
