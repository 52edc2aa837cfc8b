// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The untyped core of Pool, in the parent: the engine owns the shared memory,
// the workers and the jobs, sends chunks as scheduler.hpp says, reads the
// answers, and settles the deaths of workers (death_verdict.hpp). It has no
// thread of its own: the callers waiting on it drive it (driver.hpp).
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
#include "buffer.hpp"
#include "callback_runner.hpp"
#include "death_verdict.hpp"
#include "dispatcher.hpp"
#include "driver.hpp"
#include "event_watch.hpp"
#include "express_lane.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "scheduler.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"
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
  /// Cancels job @p j: its items not started are dropped, and each worker
  /// running one is killed, reaped and replaced, before this returns. False
  /// when it had finished (then it keeps its outcome).
  bool cancel_job(job& j, const std::exception_ptr& why = cancelled_call());
  /// True while a worker runs an item of @p j.
  bool job_running(const job& j) const;
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
  bool cancel_express(const express_ticket& t);
  /// Under the lock: true while a worker runs express call @p t.
  bool express_running(const express_ticket& t) const;
  /// The caller's handle is gone: the call still runs, and whoever finishes it frees the cell.
  void express_drop(const express_ticket& t) noexcept {
    if (owned_here()) lane_.drop(t);  // elsewhere the cell is the builder's
  }

 private:
  enum class phase { running, closed, joined, terminated };

  using worker = worker_link;

  /// The number of workers @p opts asks for; @throws usage_error for options
  /// out of range (before anything is mapped or forked).
  static std::size_t checked_workers(const pool_options& opts);
  worker_shared* shared_of(const worker& w) const noexcept { return shm_.worker(w.index); }

  void spawn_worker(worker& w);
  std::optional<int> reap(const worker& w, bool block);
  void throw_if_unusable() const;
  // Driving: one round (the wait between rounds is event_watch).
  bool pump();
  // Receiving.
  bool drain(worker& w);
  void on_message(worker& w, const char* body, std::size_t size);
  chunk take_answered(worker& w);
  bool place_wrapped(worker& w, const byte_ring::pieces& sp);
  // Deaths and the end.
  bool check_workers();  // true if it killed or reaped a worker
  std::int64_t limit_of(const worker& w, std::uint64_t seq) const;
  void on_death(worker& w, int exitcode);
  void break_pool(std::exception_ptr e);
  /// Under @p lk: kills and reaps the workers; every unfinished result fails.
  void kill_all(std::unique_lock<std::mutex>& lk) noexcept;
  void abort_all(const std::exception_ptr& e);
  bool all_done() const;
  /// Kills @p w to stop a cancelled call, and settles its death now.
  void stop_for_cancel(worker& w);
  // The express lane's calls, when the engine finishes them.
  bool express_settled(const express_ticket& t);
  void fail_cell(const express_ticket& t, std::exception_ptr e) noexcept;
  void requeue_cell(const express_ticket& t);

  pool_options opts_;
  std::int64_t timeout_ns_ = 0;  // opts_.task_timeout, saturated; 0: none
  void* fn_;
  std::size_t cap_;
  pid_t parent_pid_;
  shared_region shm_;
  express_lane lane_;
  dispatcher disp_;  // the send path: jobs and chunks waiting for workers
  std::vector<worker> workers_;
  unsigned deaths_before_ready_ = 0;  // in a row (see max_deaths_before_ready)
  std::int64_t next_check_ = 0;
  std::int64_t last_progress_ns_ = 0;  // when a pump round last moved anything
  phase phase_ = phase::running;
  std::exception_ptr broken_;  // set when the pool can run nothing more

  // For stats(); the rest is counted by the dispatcher and the workers.
  std::atomic<std::uint64_t> express_posted_{0};
  std::uint64_t done_ = 0, failed_ = 0, started_ = 0;
  std::uint64_t cells_cancelled_ = 0;  // express calls failed as cancelled by on_death

  std::mutex m_;
  driver drv_;
  callback_runner runner_;  // the done callbacks' thread, once one is added
};

inline std::size_t engine::checked_workers(const pool_options& opts) {
  const std::size_t n = opts.processes ? opts.processes : cpu_count();
  if (n > 4096)
    throw usage_error("procpool::Pool: " + std::to_string(n) +
                      " processes asked for; use between 1 and 4096 (0 means cpu_count())");
  if (opts.queue_bytes > (std::size_t{1} << 30))
    throw usage_error("procpool::Pool: queue_bytes above 1 GiB; messages of any size stream "
                      "through smaller queues");
  if (opts.task_timeout.count() < 0)
    throw usage_error("procpool::Pool: task_timeout is negative (" +
                      std::to_string(opts.task_timeout.count()) +
                      " ms); use a positive limit, or 0 for none");
  if (opts.max_memory_per_child) {
    // A worker starts with about this process's RSS: under a limit not above
    // it, every worker would be over from the start.
    const std::uint64_t rss = self_resident_bytes();
    if (rss == 0)
      throw usage_error("procpool::Pool: max_memory_per_child needs /proc/self/statm, which "
                        "cannot be read here (is /proc mounted?); use 0 for no limit");
    if (opts.max_memory_per_child <= rss)
      throw usage_error("procpool::Pool: max_memory_per_child (" +
                        describe_bytes(opts.max_memory_per_child) +
                        ") is not above this process's memory (RSS " + describe_bytes(rss) +
                        "), which each worker starts with (the pages a fork shares count in its "
                        "RSS); raise it, or use 0 for no limit");
  }
  return n;
}

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
      drv_(shm_.pool()->parent_ev) {
  // In nanoseconds, saturated: a limit past ~292 years means "none in practice".
  constexpr auto ns_per_ms = std::int64_t{1'000'000};
  timeout_ns_ = opts_.task_timeout.count() > std::numeric_limits<std::int64_t>::max() / ns_per_ms
                    ? std::numeric_limits<std::int64_t>::max()
                    : opts_.task_timeout.count() * ns_per_ms;
  workers_.resize(checked_workers(opts));
  for (std::size_t i = 0; i < workers_.size(); ++i) workers_[i].index = i;
  try {
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
  const pid_t parent = parent_pid_;
  const bool timed = opts_.task_timeout.count() > 0;
  pool_shared* ps = shm_.pool();
  char* td = shm_.task_data(w.index);
  char* rd = shm_.result_data(w.index);
  const std::size_t cap = cap_;
  void* fn = fn_;
  const std::function<void()>& init = opts_.initializer;
  const bool main_thread = ::gettid() == parent;
  const std::uint64_t memory_limit = opts_.max_memory_per_child;
  w.pid = spawn(next_process_name("ForkPoolWorker-"), [=, &init] {
    worker_channel ch(ps, s, td, rd, cap, parent);
    worker_main(ch, fn, init, timed, parent, main_thread, memory_limit);
  });
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
  if (!w.connected()) return false;
  bool progress = false;
  for (;;) {
    if (!w.in.have_header) {
      if (w.in.ring.readable() < sizeof(frame_header)) break;
      w.in.ring.read_some(reinterpret_cast<char*>(&w.in.hdr), sizeof w.in.hdr);
      w.in.have_header = true;
      w.in.got = 0;
      if (w.in.hdr.magic != frame_magic || w.in.hdr.size > (std::uint64_t{1} << 44)) {
        // Corrupted stream: the worker is unusable. Kill it; on_death requeues.
        send_signal(w.pid, SIGKILL);
        w.corrupt = true;
        return progress;
      }
      w.in.body.clear();
      progress = true;
    }
    const std::size_t size = static_cast<std::size_t>(w.in.hdr.size);
    if (w.in.got == 0 && w.in.hdr.kind == static_cast<std::uint32_t>(frame_kind::results) &&
        size >= sizeof(result_header) && w.in.ring.readable() >= size) {
      // The whole answer is in the ring: read it where it lies instead of
      // copying it out first (for map over small items, half the parent's copying).
      const auto sp = w.in.ring.spans(size);
      bool done = false;
      if (sp.nb == 0) {
        // As on the copying path: the message is gone from the ring whatever
        // on_message throws, so it is never read twice.
        w.in.have_header = false;
        try {
          on_message(w, sp.a, size);
        } catch (...) {
          w.in.ring.consume(size);
          shared_of(w)->worker_ev.notify();
          throw;
        }
        done = true;
      } else {
        done = place_wrapped(w, sp);  // else: copied out below, as any other message
      }
      if (done) {
        w.in.have_header = false;
        w.in.ring.consume(size);
        shared_of(w)->worker_ev.notify();  // space freed
        progress = true;
        if (!w.connected()) break;  // killed: nothing more of it is trusted
        continue;
      }
    }
    if (w.in.got < size) {
      // Grow with what has arrived, not to the claimed size at once: a corrupted
      // header must not make the parent allocate terabytes.
      const std::size_t avail = std::min(size - w.in.got, w.in.ring.readable());
      if (avail == 0) break;
      w.in.body.resize(w.in.got + avail);
      const std::size_t n = w.in.ring.read_some(w.in.body.data() + w.in.got, avail);
      w.in.got += n;
      progress = true;
    }
    shared_of(w)->worker_ev.notify();  // space freed
    if (w.in.got < size) break;
    w.in.have_header = false;
    on_message(w, w.in.body.data(), w.in.body.size());
    // A huge answer's buffer is given back: what the pool keeps between calls
    // stays bounded (as for the chunks' buffers, dispatcher::recycle).
    w.in.body.clear();
    w.in.body.shrink_if_above(2 * cap_);
    if (!w.connected()) break;
  }
  return progress;
}

/// Takes the chunk a results message answers off @p w's in-flight list, and
/// notes how long it took.
inline chunk engine::take_answered(worker& w) {
  chunk c = w.out.pop_answered();
  w.timing.answered(c.sent_ns, c.count(), monotonic_ns());
  return c;
}

/// A results message of fixed-size values and no errors that wraps around the
/// end of the ring: its two pieces are copied straight into the job's results.
/// False when the message is anything else (then it is copied out and parsed).
inline bool engine::place_wrapped(worker& w, const byte_ring::pieces& sp) {
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
  disp_.recycle(std::move(c.msg), workers_.size());
  return true;
}

inline void engine::on_message(worker& w, const char* body, std::size_t size) {
  switch (static_cast<frame_kind>(w.in.hdr.kind)) {
    case frame_kind::results: {
      if (!w.out.answer_due()) {
        send_signal(w.pid, SIGKILL);  // an answer to nothing: the stream is corrupt
        w.corrupt = true;
        break;
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
      disp_.recycle(std::move(c.msg), workers_.size());
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
      // Or a chunk the worker declined (it retires: max_memory_per_child): it
      // runs elsewhere.
      std::uint64_t seq = 0;
      if (size == sizeof seq) std::memcpy(&seq, body, sizeof seq);
      const bool declined = w.out.answer_due() && !w.out.front().revoked &&
                            shared_of(w)->retiring.load(std::memory_order_acquire);
      if (!w.out.answer_due() || w.out.front().seq != seq || !(w.out.front().revoked || declined)) {
        send_signal(w.pid, SIGKILL);  // not what we took back: the stream is corrupt
        w.corrupt = true;
        break;
      }
      chunk c = w.out.pop_answered();
      if (declined) disp_.requeue(c, 0, c.count());
      break;
    }
    case frame_kind::bye: {
      if (w.dying) break;  // already reaped: on_death is draining what it left
      // The worker exits right after saying so: reap it now.
      on_death(w, *reap(w, true));
      break;
    }
    default:
      send_signal(w.pid, SIGKILL);
      w.corrupt = true;
  }
}

/// How long an item of chunk @p seq, running on @p w, may run: its call's own
/// limit, else the pool's task_timeout (0: no limit).
inline std::int64_t engine::limit_of(const worker& w, std::uint64_t seq) const {
  if (!(seq & express_seq))
    for (const chunk& c : w.out.chunks())
      if (c.seq == seq) return c.owner && c.owner->timeout_ns > 0 ? c.owner->timeout_ns : timeout_ns_;
  return timeout_ns_;
}

inline bool engine::check_workers() {
  bool changed = false;
  const std::int64_t now = monotonic_ns();
  const std::int64_t limit = timeout_ns_;
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    // A worker got through the initializer: earlier deaths were not in a row.
    if (deaths_before_ready_ && shared_of(w)->ready.load(std::memory_order_acquire))
      deaths_before_ready_ = 0;
    if (limit > 0 && !w.timed_out && opts_.initializer &&
        !shared_of(w)->ready.load(std::memory_order_acquire) && now - w.started_ns > limit) {
      // The initializer is bounded by task_timeout too: one that hangs would
      // hang every call.
      w.timed_out = true;
      w.timeout_blame = {};
      send_signal(w.pid, SIGKILL);
      changed = true;
    }
    if (!w.timed_out) {
      const worker_shared* s = shared_of(w);
      // Read twice: only a consistent (seq, item) pair that is still running
      // past the limit is killed and blamed.
      const std::uint64_t seq = s->running_seq.load(std::memory_order_acquire);
      const std::uint64_t item = s->running_item.load(std::memory_order_acquire);
      const std::int64_t since = s->running_since.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      const std::int64_t item_limit = seq != 0 ? limit_of(w, seq) : 0;
      if (item_limit > 0 && now - since > item_limit && s->running_seq.load() == seq &&
          s->running_item.load() == item) {
        w.timed_out = true;
        w.timeout_blame = {seq, item};
        w.timeout_ns = item_limit;
        send_signal(w.pid, SIGKILL);
        changed = true;
      }
    }
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
  if (opts_.initializer && !s->ready.load()) {
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
                        w.timeout_ns == timeout_ns_ ? "task_timeout" : "its call's timeout");
  };
  // Killed to stop a cancelled call (stop_for_cancel): nothing else it held
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
  // Its chunks, requeued in order at the front, so that imap's order suffers least.
  std::deque<chunk> mine = std::move(w.out.chunks());
  w.out.chunks().clear();
  for (auto it = mine.rbegin(); it != mine.rend(); ++it) {
    chunk& c = *it;
    if (!c.revoked && c.owner->aborted) {
      // Its call was cancelled (or its imap range dropped): nothing of it runs again.
      c.owner->outstanding -= c.count();
      failed_ += c.count();
      continue;
    }
    if (cancel_kill) {
      if (!c.revoked) disp_.requeue(c, 0, c.count());
      continue;
    }
    const chunk_verdict v =
        judge_chunk(blame, c.seq, c.count(), c.revoked, c.attempts, c.orphaned, opts_.retries);
    c.orphaned = v.orphaned;
    switch (v.fate) {
      case chunk_fate::elsewhere:
        break;
      case chunk_fate::requeued:
        disp_.requeue(c, 0, c.count());
        break;
      case chunk_fate::lost:
        for (std::uint64_t i = 0; i < c.count(); ++i)
          c.owner->fail(c.base + i, lost_error(c.base + i, pid, exitcode, c.orphaned));
        c.owner->outstanding -= c.count();
        failed_ += c.count();
        break;
      case chunk_fate::blamed:
        disp_.requeue(c, v.item + 1, c.count());
        if (v.retry) {
          disp_.retry(c.slice(v.item, v.item + 1, c.attempts + 1));
        } else {
          c.owner->fail(c.base + v.item, blamed(c.base + v.item));
          --c.owner->outstanding;
          ++failed_;
        }
        disp_.requeue(c, 0, v.item);
        break;
    }
  }
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

// ---------------------------------------------------------------- cancelling

inline bool engine::cancel_job(job& j, const std::exception_ptr& why) {
  if (j.cancelled) return true;
  if (j.complete()) return false;
  // Answers already in the rings count: a call that has finished is not cancelled.
  for (auto& w : workers_) drain(w);
  if (j.complete()) return false;
  j.cancelled = true;
  j.abort(why);
  j.outstanding -= disp_.drop(j);
  for (auto& w : workers_) {
    if (w.pid == 0) continue;
    // What a worker holds and has not started is taken back; a worker that
    // started an item of it is stopped.
    while (std::optional<chunk> c = w.out.take_back_if(
               shared_of(w)->claims, [&](const chunk& k) { return k.owner.get() == &j; })) {
      j.outstanding -= c->count();
      failed_ += c->count();
      if (w.budget != std::numeric_limits<std::size_t>::max()) w.budget += c->count();
    }
    const bool holds = std::any_of(w.out.chunks().begin(), w.out.chunks().end(),
                                   [&](const chunk& k) { return k.owner.get() == &j; });
    if (holds) stop_for_cancel(w);
  }
  drv_.notify_followers();
  drv_.poke();  // the driver looks again: workers were replaced, work requeued
  return true;
}

inline bool engine::cancel_express(const express_ticket& t) {
  if (lane_.finished(t)) return false;
  if (lane_.withdraw(t, cancelled_call())) {
    ++failed_;
    drv_.notify_followers();
    return true;
  }
  const std::uint32_t st = lane_.cell(t).state.load(std::memory_order_acquire) & ~cell_dropped;
  if (st == cell_requeued) {
    // It runs through the queues: cancelled as the job it is now.
    std::shared_ptr<job> j = disp_.cell_job_of(t);
    for (auto& w : workers_)
      for (const chunk& c : w.out.chunks())
        if (!j && !c.revoked)
          if (const auto* cj = dynamic_cast<const cell_job*>(c.owner.get()); cj && cj->runs(t))
            j = c.owner;
    if (!j) return false;
    // Counted when posted: if none of it was cut into a chunk yet, nothing else counts its end.
    const bool uncounted = j->handed == 0;
    if (!cancel_job(*j)) return false;
    if (uncounted) ++failed_;
    return true;
  }
  if (st != cell_running) return false;
  worker& w = workers_[t.worker];
  if (w.pid == 0) {
    fail_cell(t, cancelled_call());
    return true;
  }
  // Running: its worker is stopped. It may finish first; then it is not cancelled.
  const std::uint64_t before = cells_cancelled_;
  w.cancelled_cells |= 1u << t.index;
  stop_for_cancel(w);
  drv_.poke();
  return cells_cancelled_ != before;
}

inline void engine::stop_for_cancel(worker& w) {
  w.cancel_kill = true;
  try {
    send_signal(w.pid, SIGKILL);
  } catch (...) {
    // Not ours to signal (EPERM): what it runs is dropped when it answers or dies.
    return;
  }
  on_death(w, *reap(w, true));
}

inline bool engine::job_running(const job& j) const {
  if (j.complete()) return false;
  for (const auto& w : workers_)
    if (w.pid && w.out.runs(j, shared_of(w)->claims)) return true;
  return false;
}

inline bool engine::express_running(const express_ticket& t) const {
  const std::uint32_t st = lane_.cell(t).state.load(std::memory_order_acquire) & ~cell_dropped;
  if (st == cell_running) return true;
  if (st != cell_requeued) return false;
  for (const auto& w : workers_)
    for (const chunk& c : w.out.chunks())
      if (const auto* cj = dynamic_cast<const cell_job*>(c.owner.get()); cj && cj->runs(t))
        return w.pid && w.out.runs(*c.owner, shared_of(w)->claims);
  return false;
}

inline void engine::shutdown(bool cancel_pending) {
  check_owner();
  std::lock_guard lk(m_);
  if (cancel_pending && phase_ == phase::running) {
    // Every call waiting, here or queued to a worker, none of whose items has
    // started or finished.
    std::vector<std::shared_ptr<job>> calls;
    const auto add = [&](const std::shared_ptr<job>& j) {
      if (j && !j->complete() && std::find(calls.begin(), calls.end(), j) == calls.end())
        calls.push_back(j);
    };
    disp_.for_each_job(add);
    for (auto& w : workers_)
      for (const chunk& c : w.out.chunks()) add(c.owner);
    for (auto& j : calls)
      if (j->outstanding == j->handed && !job_running(*j)) cancel_job(*j, shutdown_cancelled());
  }
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
  s.done = done_ + ps.express_ok.load(std::memory_order_relaxed);
  s.failed = failed_ + disp_.items_failed() + ps.express_failed.load(std::memory_order_relaxed);
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
