// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The untyped core of Pool, in the parent: the engine owns the shared memory,
// the workers and the jobs. Each round it reads the answers (answer_reader.hpp),
// sends chunks (dispatcher.hpp, as scheduler.hpp says), kills overdue workers
// (watchdog.hpp) and settles the deaths of workers (death_verdict.hpp,
// salvage.hpp); it also cancels calls. It has no thread of its own: the
// callers waiting on it drive it (driver.hpp).
// Pool<F> in pool.hpp adds the types through jobs (jobs.hpp) and runner
// function pointers (runners.hpp); a runner's address is the same in the
// workers (worker_loop.hpp), which are forks.

#include <algorithm>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../options.hpp"
#include "../process.hpp"
#include "../stats.hpp"
#include "answer_reader.hpp"
#include "buffer.hpp"
#include "callback_runner.hpp"
#include "canceller.hpp"
#include "death_verdict.hpp"
#include "dispatcher.hpp"
#include "driver.hpp"
#include "event_watch.hpp"
#include "express_lane.hpp"
#include "fork_server.hpp"
#include "job.hpp"
#include "option_checks.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "salvage.hpp"
#include "scheduler.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"
#include "watchdog.hpp"
#include "wire.hpp"
#include "worker_link.hpp"
#include "worker_loop.hpp"

namespace procpool::detail {

/// The error of a call that async_result::cancel() stopped.
inline std::exception_ptr cancelled_call() {
  return std::make_exception_ptr(cancelled_error(
      "procpool: the call was cancelled (async_result::cancel) before it finished; it has no "
      "result"));
}

/// The error of a call that shutdown(cancel_futures) cancelled before it started.
inline std::exception_ptr shutdown_cancelled() {
  return std::make_exception_ptr(cancelled_error(
      "procpool::Pool::shutdown: the call was cancelled (cancel_futures) before any of it "
      "started; it has no result"));
}

/// The engine of one Pool. Built by make_shared: the callback thread holds it.
class engine : public std::enable_shared_from_this<engine> {
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
  /// close(), after cancelling every call none of whose items went out yet
  /// when @p cancel_pending (Python's shutdown(cancel_futures=True)).
  void shutdown(bool cancel_pending);

  // Cancelling (async_result::cancel); each under the lock (locked()).
  /// Cancels job @p j (canceller.hpp). False when it had finished (then it
  /// keeps its outcome).
  bool cancel_job(job& j) { return canceller_.cancel_job(j, cancelled_call()); }
  /// True while a worker runs an item of @p j.
  bool job_running(const job& j) const { return canceller_.job_running(j); }
  std::vector<pid_t> pids();
  pool_stats stats();
  std::size_t size() const noexcept { return workers_.size(); }
  /// Bytes of each queue.
  std::size_t queue_capacity() const noexcept { return cap_; }

  /// Has the callback thread fire @p c when it settles; false when the pool
  /// is terminated (then the caller fires it: it has settled or will at once).
  bool watch_callbacks(std::shared_ptr<completion> c) {
    check_owner();
    std::lock_guard lk(m_);
    return runner_.watch(shared_from_this(), std::move(c));
  }
  /// The callback thread's state (callback_runner.hpp).
  callback_runner& callbacks() noexcept { return runner_; }
  /// The engine's lock, for the callback thread's own waits.
  std::unique_lock<std::mutex> hold() {
    check_owner();
    return std::unique_lock(m_);
  }

  // The express lane (express_lane.hpp), for async_result.
  using express_ticket = express_lane::ticket;
  /// Claims a cell of a worker polling now; false when none is, or the lane
  /// is closed or off for this pool (then submit() says why, if anything is wrong).
  bool express_claim(express_ticket& t) noexcept {
    return lane_.enabled() && owned_here() && lane_.claim(t);
  }
  express_cell& cell(const express_ticket& t) const noexcept { return lane_.cell(t); }
  void express_post(const express_ticket& t) noexcept {
    express_posted_.fetch_add(1, std::memory_order_relaxed);
    lane_.post(t);
  }
  /// Waits until the cell is finished (status and result there) or @p deadline.
  bool express_wait(const express_ticket& t, std::int64_t deadline);
  /// The exception of a cell finished with status_exception; then frees the cell.
  std::exception_ptr take_cell_error(const express_ticket& t) {
    check_owner();
    return lane_.take_error(t);
  }
  /// Under the lock: true when the cell is finished.
  bool express_finished(const express_ticket& t) { return express_settled(t); }
  /// Frees a finished cell whose result was read.
  void express_release(const express_ticket& t) noexcept { lane_.release(t); }
  /// Under the lock: cancel_job for express call @p t.
  bool cancel_express(const express_ticket& t) {
    return canceller_.cancel_express(t, cancelled_call());
  }
  /// Under the lock: true when express call @p t ended cancelled.
  bool express_cancelled(const express_ticket& t) const { return canceller_.express_cancelled(t); }
  /// Under the lock: true while a worker runs express call @p t.
  bool express_running(const express_ticket& t) const { return canceller_.express_running(t); }
  /// The caller's handle is gone: the call still runs, and whoever finishes it frees the cell.
  void express_drop(const express_ticket& t) noexcept {
    if (owned_here()) lane_.drop(t);  // elsewhere the cell is the builder's
  }

 private:
  enum class phase { running, closed, joined, terminated };

  using worker = worker_link;

  worker_shared* shared_of(const worker& w) const noexcept { return shm_.worker(w.index); }

  void spawn_worker(worker& w);
  /// What worker @p index runs, in the worker; @p main_thread_parent: forked
  /// by the main thread, or by the fork server that thread forked. Never returns.
  [[noreturn]] void run_worker(std::size_t index, bool main_thread_parent);
  std::optional<int> reap(const worker& w, bool block);
  void throw_if_unusable() const;
  // Driving: one round (the wait between rounds is event_watch).
  bool pump();
  // Receiving: the answers are settled by the reader, the rest here.
  bool drain(worker& w);
  void on_other_frame(worker& w, frame_kind kind, const char* body, std::size_t size);
  // Deaths and the end.
  bool check_workers();  // true if it killed or reaped a worker
  void on_death(worker& w, int exitcode);
  void break_pool(std::exception_ptr e);
  /// Under @p lk: kills and reaps the workers; every unfinished result fails.
  void kill_all(std::unique_lock<std::mutex>& lk) noexcept;
  void abort_all(const std::exception_ptr& e);
  bool all_done() const;
  // What the canceller asks of the engine (canceller.hpp).
  friend class canceller<engine>;
  void settle_death(worker& w) { on_death(w, *reap(w, true)); }
  /// Settles @p w's death if it has ended by itself; false while it runs.
  bool settle_if_dead(worker& w) {
    const auto exitcode = reap(w, false);
    if (exitcode) on_death(w, *exitcode);
    return exitcode.has_value();
  }
  void count_failed(std::uint64_t items) noexcept { failed_ += items; }
  void wake() {
    drv_.notify_followers();
    drv_.poke();  // the driver looks again: workers were replaced, work requeued
  }
  std::uint64_t cells_cancelled() const noexcept { return cells_cancelled_; }
  // The express lane's calls, when the engine finishes them.
  bool express_settled(const express_ticket& t);
  void fail_cell(const express_ticket& t, std::exception_ptr e) noexcept;
  void requeue_cell(const express_ticket& t);

  pool_options opts_;
  void* fn_;
  std::size_t cap_;
  pid_t parent_pid_;
  shared_region shm_;
  express_lane lane_;
  dispatcher disp_;  // the send path: jobs and chunks waiting for workers
  answer_reader reader_;  // the receive path
  watchdog watchdog_;
  std::vector<worker> workers_;
  fork_server server_;  // starts the workers
  unsigned deaths_before_ready_ = 0;  // in a row (see max_deaths_before_ready)
  std::int64_t next_check_ = 0;
  std::int64_t last_progress_ns_ = 0;  // when a pump round last moved anything
  phase phase_ = phase::running;
  std::exception_ptr broken_;  // set when the pool can run nothing more

  // For stats(); the rest is counted by the dispatcher and the workers.
  std::atomic<std::uint64_t> express_posted_{0};
  std::uint64_t failed_ = 0, started_ = 0;  // items failed other than by their answers
  std::uint64_t cells_cancelled_ = 0;  // express calls failed as cancelled by on_death

  std::mutex m_;
  driver drv_;
  callback_runner runner_;  // the done callbacks' thread, once one is added
  canceller<engine> canceller_{*this, workers_, shm_, disp_, lane_};
};

inline engine::engine(const pool_options& opts, void* fn)
    : opts_(opts),
      fn_(fn),
      cap_(shared_region::ring_size_for(opts.queue_bytes)),
      parent_pid_(current_pid()),
      shm_(checked_workers(opts), cap_),
      // The lane is off when a worker must count its tasks, look at its memory
      // between them, or have its items rerun: express calls bypass the loop that does.
      lane_(shm_, checked_workers(opts),
            opts.max_tasks_per_child == 0 && opts.max_memory_per_child == 0 && opts.retries == 0),
      disp_(shm_, lane_, cap_, [this] { drv_.notify_followers(); }),
      reader_(shm_, disp_, cap_, checked_workers(opts)),
      watchdog_(opts.task_timeout, static_cast<bool>(opts.initializer)),
      server_(
          [this](std::uint32_t index, std::uint32_t number, bool main_thread_parent) {
            const std::string name = "ForkPoolWorker-" + std::to_string(number);
            auto body = [this, index, main_thread_parent] { run_worker(index, main_thread_parent); };
            run_child(name, parent_pid_, body);
          },
          ::gettid() == parent_pid_),
      drv_(shm_.pool()->parent_ev) {
  workers_.resize(checked_workers(opts));
  for (std::size_t i = 0; i < workers_.size(); ++i) workers_[i].index = i;
  try {
    // Every worker, first or replacement, starts from this instant's state.
    server_.launch();
    for (auto& w : workers_) spawn_worker(w);
  } catch (...) {
    terminate();
    throw;
  }
}

inline void engine::spawn_worker(worker& w) {
  worker_shared* s = shared_of(w);
  s->tasks.head = s->tasks.tail = 0;
  s->results.head = s->results.tail = 0;
  s->running_seq = 0;
  s->ready = 0;
  s->rss_bytes = 0;
  s->retiring = 0;
  s->poll_ns = 0;  // the express lane waits for the new worker to poll
  // A worker killed asleep left its waiter count. Reset with a store, not by
  // constructing the event again: a caller posting an express call may
  // notify it right now, without the lock.
  s->worker_ev.waiters.store(0, std::memory_order_relaxed);
  s->claims.reset();
  w.reset(byte_ring(&s->tasks, shm_.task_data(w.index), cap_),
          byte_ring(&s->results, shm_.result_data(w.index), cap_), opts_.max_tasks_per_child);
  w.started_ns = monotonic_ns();
  ++started_;
  const auto index = static_cast<std::uint32_t>(w.index);
  const unsigned number = next_process_number();
  w.pid = server_.start_worker(index, number);
}

inline void engine::run_worker(std::size_t index, bool main_thread_parent) {
  worker_channel ch(shm_.pool(), shm_.worker(index), shm_.task_data(index), shm_.result_data(index),
                    cap_, parent_pid_);
  worker_main(ch, fn_, opts_.initializer, opts_.task_timeout.count() > 0, parent_pid_,
              main_thread_parent, opts_.max_memory_per_child);
}

static_assert(reaped_elsewhere == exitcode_unknown, "one value for \"reaped elsewhere\"");

/// waitpid for @p w: its exit code once it has ended, nullopt while it runs
/// (when not @p block). A worker another part of the program reaped first
/// ended somehow: reaped_elsewhere, and the pool goes on without it.
inline std::optional<int> engine::reap(const worker& w, bool block) {
  try {
    const auto status = wait_pid(w.pid, block);
    if (!status) return std::nullopt;
    return exitcode_from_status(*status);
  } catch (const std::system_error& e) {
    if (e.code().value() != ECHILD) throw;
    return reaped_elsewhere;
  }
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
  if (phase_ != phase::running)
    throw usage_error(phase_ == phase::terminated
                          ? "procpool::Pool: the pool was terminated; create a new Pool"
                          : "procpool::Pool: the pool was closed; no new work can be submitted");
}

inline void engine::submit(const std::shared_ptr<job>& j) {
  check_owner();  // before the lock: a forked copy of it may be held for ever
  std::unique_lock lk(m_);
  throw_if_unusable();
  disp_.add(j);
  drv_.round_or_poke([this] { pump(); });
}

template <class Done>
void engine::run_until(Done done) {
  run_until(done, std::numeric_limits<std::int64_t>::max());
}

template <class Done>
bool engine::run_until(Done done, std::int64_t deadline) {
  check_owner();
  std::unique_lock lk(m_);
  event_watch watch;  // what the driver waits for between rounds
  return drv_.run(
      lk,
      [&] {
        watch.note_express(*shm_.pool());
        return done();
      },
      deadline, [this] { return pump(); },
      [&](std::uint64_t gen) {
        watch.arm(gen, last_progress_ns_, std::min(next_check_, disp_.steal_retry_at()), workers_);
      },
      [&](std::int64_t until) { return watch.wait(until, drv_, *shm_.pool()); });
}

// ---------------------------------------------------------------- the express lane, engine side

inline bool engine::express_wait(const express_ticket& t, std::int64_t deadline) {
  check_owner();
  if (lane_.spin(t, deadline)) return true;
  return run_until([&] { return express_settled(t); }, deadline);
}

/// Under the lock: true when the cell is finished. A cell posted to a worker
/// that is gone for good (it raced with its death, or the pool is over) is
/// finished here.
inline bool engine::express_settled(const express_ticket& t) {
  if (lane_.finished(t)) return true;
  const std::uint32_t st = lane_.cell(t).state.load(std::memory_order_acquire) & ~cell_dropped;
  if (st != cell_posted && st != cell_running) return false;  // requeued: a job runs it
  if (phase_ == phase::terminated || phase_ == phase::joined) {
    fail_cell(t, std::make_exception_ptr(pool_terminated(
                     "procpool::Pool: the pool was terminated before this item finished")));
  } else if (workers_[t.worker].pid == 0) {
    if (broken_)
      fail_cell(t, broken_);
    else
      requeue_cell(t);
  }
  return lane_.finished(t);
}

inline void engine::fail_cell(const express_ticket& t, std::exception_ptr e) noexcept {
  ++failed_;
  lane_.fail(t, std::move(e));
  drv_.notify_followers();
}

/// The cell's call goes through the queues, run by a cell_job.
inline void engine::requeue_cell(const express_ticket& t) {
  if (broken_) {
    fail_cell(t, broken_);
    return;
  }
  lane_.mark_requeued(t);
  disp_.add_cell(t);
}

// ---------------------------------------------------------------- driving

/// One round: read every result that arrived, hand out work, look for dead or
/// overdue workers. Non-blocking. Returns true if anything moved.
inline bool engine::pump() {
  if (phase_ == phase::terminated || phase_ == phase::joined) return false;
  bool progress = false;
  for (auto& w : workers_) progress |= drain(w);
  if (broken_)
    disp_.flush_all(workers_);  // stop frames still go out (join)
  else
    progress |= disp_.run(workers_);
  const std::int64_t now = monotonic_ns();
  if (progress) last_progress_ns_ = now;
  if (now >= next_check_) {
    next_check_ = now + liveness_check_ns;
    // Counted as progress: a reaped worker's items may have failed, and a
    // caller replaced as driver waits for the end of a round to look again.
    if (check_workers()) {
      progress = true;
      last_progress_ns_ = now;
    }
  }
  return progress;
}

inline bool engine::drain(worker& w) {
  return reader_.drain(w, [this](worker& v, frame_kind kind, const char* body, std::size_t size) {
    on_other_frame(v, kind, body, size);
  });
}

inline void engine::on_other_frame(worker& w, frame_kind kind, const char* body,
                                   std::size_t size) {
  if (kind == frame_kind::init_failed) {
    reader r(body, size);
    std::string type = get_string(r), what = get_string(r);
    break_pool(std::make_exception_ptr(initializer_error(
        "procpool::Pool: the initializer threw " + type + ": " + what + " in worker " +
        std::to_string(w.pid) + "; fix it and create a new Pool")));
  } else if (kind == frame_kind::bye && !w.dying) {
    // The worker exits right after saying so: reap it now (when dying, it
    // was: on_death is draining what it left).
    settle_death(w);
  }
}

inline bool engine::check_workers() {
  bool changed = false;
  const std::int64_t now = monotonic_ns();
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    // A worker got through the initializer: earlier deaths were not in a row.
    if (deaths_before_ready_ && shared_of(w)->ready.load(std::memory_order_acquire))
      deaths_before_ready_ = 0;
    changed |= watchdog_.check(w, *shared_of(w), now);
    if (auto exitcode = reap(w, w.timed_out)) {
      on_death(w, *exitcode);
      changed = true;
    }
  }
  return changed;
}

/// Worker @p w has ended. Reads what it finished, settles what it held as
/// death_verdict.hpp says, and starts a replacement.
inline void engine::on_death(worker& w, int exitcode) {
  const pid_t pid = w.pid;
  w.dying = true;
  drain(w);  // complete messages it wrote before dying still count
  w.pid = 0;
  worker_shared* s = shared_of(w);
  if (w.cancel_kill) {
    // Killed by the pool to stop a call: says nothing of the initializer.
  } else if (opts_.initializer && !s->ready.load()) {
    if (w.timed_out && !broken_)
      break_pool(std::make_exception_ptr(initializer_error(
          "procpool::Pool: the initializer ran past task_timeout (" +
          std::to_string(opts_.task_timeout.count()) + " ms) in worker " + std::to_string(pid) +
          ", which was killed; make it return sooner (or raise task_timeout) and create a new "
          "Pool")));
    else if (++deaths_before_ready_ >= max_deaths_before_ready && !broken_)
      break_pool(std::make_exception_ptr(initializer_error(
          "procpool::Pool: " + std::to_string(deaths_before_ready_) +
          " workers in a row died before they were ready, the last, " + std::to_string(pid) +
          ", " + describe_exitcode(exitcode) +
          " before it was ready (in the initializer?); fix it and create a new Pool")));
  } else {
    deaths_before_ready_ = 0;
  }
  const death_blame blame = death_blame::of(
      w.timed_out, w.timeout_blame, {s->running_seq.load(), s->running_item.load()});
  const auto blamed = [&](std::uint64_t index) {
    return blamed_error(index, pid, exitcode, w.timed_out,
                        static_cast<long long>(w.timeout_ns / 1'000'000), w.corrupt,
                        s->rss_bytes.load(std::memory_order_relaxed),
                        w.timeout_ns == watchdog_.timeout_ns() ? "task_timeout" : "its call's timeout");
  };
  // Killed to stop a cancelled call (canceller.hpp): nothing else it held
  // is to blame, whatever it ran by the time the signal came.
  const bool cancel_kill = w.cancel_kill;
  // Its express calls: the running one fails when it is blamed, the rest run again.
  lane_.for_each_in_flight(static_cast<std::uint32_t>(w.index),
                           [&](const express_ticket& t, std::uint32_t st) {
                             if (w.cancelled_cells & (1u << t.index)) {
                               ++cells_cancelled_;
                               fail_cell(t, cancelled_call());
                             } else if (!cancel_kill && st == cell_running && blame.on_cell() &&
                                        blame.cell() == t.index) {
                               fail_cell(t, blamed(0));
                             } else {
                               requeue_cell(t);
                             }
                           });
  // Its chunks.
  std::deque<chunk> held = std::move(w.out.chunks());
  w.out.chunks().clear();
  failed_ += salvage_chunks(held, {blame, cancel_kill, opts_.retries}, disp_, blamed,
                            [&](std::uint64_t index, unsigned orphaned) {
                              return lost_error(index, pid, exitcode, orphaned);
                            });
  // A worker over max_memory_per_child before it ran anything: so would be
  // its replacement, forked from this process with the same initializer.
  if (s->retiring.load() == static_cast<std::uint32_t>(memory_state::over_at_start) && !broken_)
    break_pool(memory_floor_error(pid, s->rss_bytes.load(), opts_.max_memory_per_child));
  // Replace it while there is work to do or the pool takes new work.
  if (!broken_ && (phase_ == phase::running || (phase_ == phase::closed && !all_done()))) {
    try {
      spawn_worker(w);
    } catch (const std::exception& e) {
      // Cannot fork (EAGAIN, ENOMEM): say so to every caller instead of
      // leaving a worker missing that pending work may wait on forever.
      w.pid = 0;
      break_pool(std::make_exception_ptr(
          error(std::string("procpool::Pool: could not start a replacement worker: ") +
                e.what() + "; create a new Pool when the system has room")));
    }
  }
}

/// Every unfinished call fails with @p e; the queues are emptied. A call that
/// had finished keeps its results: they are its caller's.
inline void engine::abort_all(const std::exception_ptr& e) {
  disp_.abort_all(e);
  for (auto& w : workers_)
    for (auto& c : w.out.chunks())
      if (c.owner) c.owner->abort(e);
}

inline void engine::break_pool(std::exception_ptr e) {
  broken_ = e;
  lane_.close();
  abort_all(e);
}

inline bool engine::all_done() const {
  if (!disp_.empty() || !lane_.all_settled()) return false;
  for (const auto& w : workers_)
    if (!w.out.empty()) return false;
  return true;
}

inline void engine::close() {
  check_owner();
  std::lock_guard lk(m_);
  lane_.close();  // before join() reads the cells (see express_lane::claim)
  if (phase_ == phase::running) phase_ = phase::closed;
}

inline void engine::join() {
  check_owner();
  {
    std::lock_guard lk(m_);
    if (phase_ == phase::running)
      throw usage_error("procpool::Pool::join: call close() or terminate() first");
    if (phase_ != phase::closed) return;
    disp_.lift_windows();
  }
  // Finish everything submitted, then stop the workers and reap them.
  run_until([this] {
    if (!broken_ && !all_done()) return false;
    bool alive = false;
    for (auto& w : workers_) {
      if (w.pid == 0) continue;
      alive = true;
      w.out.queue_stop();  // the driving thread's next dispatch() sends it
    }
    return !alive;
  });
  std::unique_lock lk(m_);
  phase_ = phase::joined;
  server_.stop();
  runner_.wait_idle(lk);  // as Python's join: the callbacks of finished work have run
}

inline void engine::terminate() noexcept {
  if (!owned_here()) return;  // a copy in another process: the workers are not its own
  {
    std::unique_lock lk(m_);
    runner_.request_stop();  // before the driver is stopped: the runner then ends its wait
    kill_all(lk);
    drv_.notify_followers();
  }
  // Every result has settled now: the callbacks still due run before terminate returns.
  runner_.finish([this] { return std::unique_lock(m_); });
}

inline void engine::kill_all(std::unique_lock<std::mutex>& lk) noexcept {
  lane_.close();
  drv_.stop(lk);  // wakes a driver asleep in wait_for_event, and waits for its round
  if (phase_ == phase::terminated || phase_ == phase::joined) return;
  phase_ = phase::terminated;
  for (auto& w : workers_) {
    try {
      if (w.pid) send_signal(w.pid, SIGKILL);
    } catch (...) {
      // Not ours to signal any more (EPERM): it is reaped below, or was already.
    }
  }
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    try {
      wait_pid(w.pid, true);
    } catch (...) {
      // Reaped elsewhere (ECHILD): nothing left to wait for.
    }
    w.pid = 0;
  }
  server_.stop();
  const auto e = std::make_exception_ptr(
      pool_terminated("procpool::Pool: the pool was terminated before this item finished"));
  abort_all(e);
  for (auto& w : workers_) w.out.chunks().clear();
  // Cells still waiting for their (now dead) workers; a cell posted after
  // this is failed by its caller's wait (express_settled).
  for (auto& w : workers_)
    lane_.for_each_in_flight(static_cast<std::uint32_t>(w.index),
                             [&](const express_ticket& t, std::uint32_t) { fail_cell(t, e); });
  drv_.notify_followers();
}

inline void engine::shutdown(bool cancel_pending) {
  check_owner();
  std::lock_guard lk(m_);
  if (cancel_pending && phase_ == phase::running) canceller_.cancel_unstarted(shutdown_cancelled());
  lane_.close();
  if (phase_ == phase::running) phase_ = phase::closed;
}

inline pool_stats engine::stats() {
  check_owner();
  std::lock_guard lk(m_);
  const pool_shared& ps = *shm_.pool();
  pool_stats s;
  s.workers_started = started_;
  s.workers_replaced = started_ > workers_.size() ? started_ - workers_.size() : 0;
  for (auto& w : workers_)
    if (w.pid && shared_of(w)->running_seq.load(std::memory_order_acquire) != 0) ++s.running;
  s.done = reader_.done() + ps.express_ok.load(std::memory_order_relaxed);
  s.failed = failed_ + reader_.failed() + disp_.items_failed() + ps.express_failed.load(std::memory_order_relaxed);
  s.submitted = disp_.items_cut() + express_posted_.load(std::memory_order_relaxed);
  // Read at slightly different instants: never below zero.
  const std::uint64_t ended = s.done + s.failed + s.running;
  s.submitted = std::max(s.submitted, ended);
  s.queued = s.submitted - ended;
  return s;
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
