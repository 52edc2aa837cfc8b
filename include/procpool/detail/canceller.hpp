// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Cancelling a call (async_result::cancel, Pool::shutdown(cancel_futures)),
// in the parent, under the engine's lock. The rule: what has not started is
// taken back, from the dispatcher's queues and from the workers' task queues
// (claim words revoked); a worker that started an item of the call is killed,
// and its death settled at once with nothing else it held to blame (its other
// work runs again). A call that has finished, answers in the rings included,
// is not cancelled: it keeps its outcome.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "dispatcher.hpp"
#include "express_lane.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "shared_layout.hpp"
#include "worker_link.hpp"

namespace procpool::detail {

/// Cancels calls of the engine @p Host, which provides: drain(worker_link&)
/// (reads its answers), settle_death(worker_link&) (reaps it, blocking, and
/// runs on_death), settle_if_dead(worker_link&) (the same if it has ended), fail_cell(ticket, error), count_failed(items), wake()
/// (the driver and the waiters look again) and cells_cancelled() (express
/// calls on_death failed as cancelled so far).
template <class Host>
class canceller {
 public:
  using ticket = express_lane::ticket;

  canceller(Host& host, std::vector<worker_link>& workers, shared_region& shm, dispatcher& disp,
            express_lane& lane) noexcept
      : host_(host), workers_(workers), shm_(shm), disp_(disp), lane_(lane) {}

  /// Cancels job @p j, failing it with @p why; before this returns its items
  /// not started are dropped and each worker running one is killed, reaped
  /// and replaced. False when it had finished.
  bool cancel_job(job& j, const std::exception_ptr& why);
  /// cancel_job for express call @p t, wherever it is now: in its cell, or
  /// run through the queues (requeued).
  bool cancel_express(const ticket& t, const std::exception_ptr& why);
  /// True while a worker runs an item of @p j.
  bool job_running(const job& j) const;
  /// True while a worker runs express call @p t.
  bool express_running(const ticket& t) const;
  /// True when express call @p t ended cancelled.
  bool express_cancelled(const ticket& t) const { return lane_.template failed_with<cancelled_error>(t); }
  /// Cancels, with @p why, every call waiting here or queued to a worker none
  /// of whose items has started or finished (shutdown(cancel_futures)).
  void cancel_unstarted(const std::exception_ptr& why);

 private:
  claim_board& claims_of(const worker_link& w) const noexcept { return shm_.worker(w.index)->claims; }
  /// Kills @p w, and settles its death now.
  void stop(worker_link& w);
  /// The job that runs requeued express call @p t; null when there is none.
  std::shared_ptr<job> job_of_cell(const ticket& t) const;
  std::uint32_t cell_state(const ticket& t) const noexcept {
    return lane_.cell(t).state.load(std::memory_order_acquire) & ~cell_dropped;
  }

  Host& host_;
  std::vector<worker_link>& workers_;
  shared_region& shm_;
  dispatcher& disp_;
  express_lane& lane_;
};

// ---------------------------------------------------------------------------

template <class Host>
bool canceller<Host>::cancel_job(job& j, const std::exception_ptr& why) {
  if (j.cancelled) return true;
  if (j.complete()) return false;
  for (auto& w : workers_) host_.drain(w);
  if (j.complete()) return false;
  j.cancelled = true;
  j.abort(why);
  j.outstanding -= disp_.drop(j);
  const auto of_j = [&](const chunk& k) { return k.owner.get() == &j; };
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    while (std::optional<chunk> c = w.out.take_back_if(claims_of(w), of_j, true)) {
      j.outstanding -= c->count();
      host_.count_failed(c->count());
      if (w.budget != std::numeric_limits<std::size_t>::max()) w.budget += c->count();
    }
    if (std::any_of(w.out.chunks().begin(), w.out.chunks().end(), of_j)) stop(w);
  }
  host_.wake();
  return true;
}

template <class Host>
bool canceller<Host>::cancel_express(const ticket& t, const std::exception_ptr& why) {
  if (lane_.finished(t)) return false;
  if (lane_.withdraw(t, why)) {
    host_.count_failed(1);
    host_.wake();
    return true;
  }
  const std::uint32_t st = cell_state(t);
  if (st == cell_requeued) {
    std::shared_ptr<job> j = job_of_cell(t);
    if (!j) return false;
    // Counted when posted: if none of it was cut into a chunk yet, nothing else counts its end.
    const bool uncounted = j->handed == 0;
    if (!cancel_job(*j, why)) return false;
    if (uncounted) host_.count_failed(1);
    return true;
  }
  if (st != cell_running) return false;
  worker_link& w = workers_[t.worker];
  if (w.pid == 0) {
    host_.fail_cell(t, why);
    return true;
  }
  // It may finish before the signal comes; then it is not cancelled.
  const std::uint64_t before = host_.cells_cancelled();
  w.cancelled_cells |= 1u << t.index;
  stop(w);
  host_.wake();
  return host_.cells_cancelled() != before;
}

template <class Host>
void canceller<Host>::stop(worker_link& w) {
  // One that died by itself dies as it did: what it ran is blamed as usual.
  if (host_.settle_if_dead(w)) return;
  w.cancel_kill = true;
  try {
    send_signal(w.pid, SIGKILL);
  } catch (...) {
    // Not ours to signal (EPERM): what it runs is dropped when it answers or dies.
    return;
  }
  host_.settle_death(w);
}

template <class Host>
bool canceller<Host>::job_running(const job& j) const {
  if (j.complete()) return false;
  for (const auto& w : workers_)
    if (w.pid && w.out.runs(j, claims_of(w))) return true;
  return false;
}

template <class Host>
bool canceller<Host>::express_running(const ticket& t) const {
  const std::uint32_t st = cell_state(t);
  if (st == cell_running) return true;
  if (st != cell_requeued) return false;
  for (const auto& w : workers_)
    for (const chunk& c : w.out.chunks())
      if (const auto* cj = dynamic_cast<const cell_job*>(c.owner.get()); cj && cj->runs(t))
        return w.pid && w.out.runs(*c.owner, claims_of(w));
  return false;
}

template <class Host>
std::shared_ptr<job> canceller<Host>::job_of_cell(const ticket& t) const {
  if (std::shared_ptr<job> j = disp_.cell_job_of(t)) return j;
  for (const auto& w : workers_)
    for (const chunk& c : w.out.chunks())
      if (!c.revoked)
        if (const auto* cj = dynamic_cast<const cell_job*>(c.owner.get()); cj && cj->runs(t))
          return c.owner;
  return nullptr;
}

template <class Host>
void canceller<Host>::cancel_unstarted(const std::exception_ptr& why) {
  std::vector<std::shared_ptr<job>> calls;
  const auto add = [&](const std::shared_ptr<job>& j) {
    if (j && !j->complete() && std::find(calls.begin(), calls.end(), j) == calls.end())
      calls.push_back(j);
  };
  disp_.for_each_job(add);
  for (const auto& w : workers_)
    for (const chunk& c : w.out.chunks()) add(c.owner);
  for (auto& j : calls) {
    if (j->outstanding != j->handed || job_running(*j)) continue;
    // An express call run through the queues is cancelled as one, so it is counted once.
    if (const auto* cj = dynamic_cast<const cell_job*>(j.get()))
      cancel_express(cj->ticket(), why);
    else
      cancel_job(*j, why);
  }
}

}  // namespace procpool::detail
