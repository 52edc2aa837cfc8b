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
#include <string>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../options.hpp"
#include "../process.hpp"
#include "buffer.hpp"
#include "death_verdict.hpp"
#include "driver.hpp"
#include "express_lane.hpp"
#include "job.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "scheduler.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"
#include "wire.hpp"
#include "worker_loop.hpp"

namespace procpool::detail {

/// The engine of one Pool.
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
  /// Bytes of each queue.
  std::size_t queue_capacity() const noexcept { return cap_; }

  // The express lane (express_lane.hpp), for async_result.
  using express_ticket = express_lane::ticket;
  /// Claims a cell of a worker polling now; false when none is, or the lane
  /// is closed or off for this pool (then submit() says why, if anything is wrong).
  bool express_claim(express_ticket& t) noexcept {
    return lane_.enabled() && owned_here() && lane_.claim(t);
  }
  express_cell& cell(const express_ticket& t) const noexcept { return lane_.cell(t); }
  void express_post(const express_ticket& t) noexcept { lane_.post(t); }
  /// Waits until the cell is finished (status and result there) or @p deadline.
  bool express_wait(const express_ticket& t, std::int64_t deadline);
  /// The exception of a cell finished with status_exception; then frees the cell.
  std::exception_ptr take_cell_error(const express_ticket& t) {
    check_owner();
    return lane_.take_error(t);
  }
  /// Frees a finished cell whose result was read.
  void express_release(const express_ticket& t) noexcept { lane_.release(t); }
  /// The caller's handle is gone: the call still runs, and whoever finishes it frees the cell.
  void express_drop(const express_ticket& t) noexcept {
    if (owned_here()) lane_.drop(t);  // elsewhere the cell is the builder's
  }

 private:
  enum class phase { running, closed, joined, terminated };

  /// The parent's record of one worker.
  struct worker {
    std::size_t index = 0;  // its place in workers_ and in the shared region
    pid_t pid = 0;          // 0: none (dead, not replaced)
    // Sending: the chunks it holds, in order, and how far they are written.
    byte_ring tasks;            // we produce
    std::deque<chunk> inflight;  // sent or to be sent, not yet answered
    std::size_t sent = 0;        // inflight[0, sent) fully written
    std::size_t send_off = 0;    // bytes of inflight[sent] written
    std::size_t budget = 0;      // items it may still be given (max_tasks_per_child)
    unsigned next_claim = 0;     // claim word for its next chunk
    bool stop_queued = false;    // it is to exit once its chunks are sent
    bool stop_sent = false;
    // Receiving: the message being read.
    byte_ring results;  // we consume
    bool have_header = false;
    frame_header hdr{};
    byte_buffer body;
    std::size_t got = 0;
    // How long its chunks take, for the scheduler.
    std::int64_t last_result_ns = 0;
    std::int64_t last_chunk_ns = -1;     // how long its last chunk took; -1: none yet
    std::uint64_t last_chunk_items = 0;  // and how many items it had
    // Its end.
    bool timed_out = false;     // killed by the timeout check, which saw:
    death_blame timeout_blame;  // what it was running then
    bool corrupt = false;       // sent bytes we cannot parse; killed, awaiting reaping
    bool dying = false;         // reaped; on_death is reading what it left
  };

  /// What a driver waiting for an event looks at, copied under the lock: once
  /// it lets the lock go another caller may take over driving, and the worker
  /// records are then that caller's. Lives in run_until's frame (a
  /// thread_local would be gone when a static's destructor waits on a pool);
  /// the first few workers' rings need no allocation.
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

  /// The number of workers @p opts asks for; @throws usage_error for options
  /// out of range (before anything is mapped or forked).
  static std::size_t checked_workers(const pool_options& opts);
  worker_shared* shared_of(const worker& w) const noexcept { return shm_.worker(w.index); }

  void spawn_worker(worker& w);
  void throw_if_unusable() const;
  // Driving: one round, and the wait between rounds.
  bool pump();
  void fill_watch(watch_set& ws);
  bool wait_for_event(std::int64_t deadline, const watch_set& ws);
  bool has_event(const watch_set& ws, bool& poked);
  // Receiving.
  bool drain(worker& w);
  void on_message(worker& w, const char* body, std::size_t size);
  chunk take_answered(worker& w);
  bool place_wrapped(worker& w, const byte_ring::pieces& sp);
  // Sending, as scheduler.hpp says.
  bool dispatch();
  bool fill(worker& w);
  bool next_chunk(worker& w, chunk& c);
  bool rebalance();
  bool is_idle(const worker& w) const;
  worker_load load_of(const worker& w) const;
  bool take_back(worker& w);
  void flush(worker& w);
  void requeue(const chunk& c, std::uint64_t from, std::uint64_t to);
  void recycle(byte_buffer&& msg);
  // Deaths and the end.
  bool check_workers();  // true if it killed or reaped a worker
  void on_death(worker& w, int exitcode);
  void break_pool(std::exception_ptr e);
  void abort_all(const std::exception_ptr& e);
  bool all_done() const;
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
  phase phase_ = phase::running;
  std::exception_ptr broken_;  // set when the pool can run nothing more

  std::mutex m_;
  driver drv_;
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
  return n;
}

inline engine::engine(const pool_options& opts, void* fn)
    : opts_(opts),
      fn_(fn),
      cap_(shared_region::ring_size_for(opts.queue_bytes)),
      parent_pid_(current_pid()),
      shm_(checked_workers(opts), cap_),
      lane_(shm_, checked_workers(opts), opts.max_tasks_per_child == 0 && opts.retries == 0),
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
  s->poll_ns = 0;  // the express lane waits for the new worker to poll
  // A worker killed asleep left its waiter count. Reset with a store, not by
  // constructing the event again: a caller posting an express call may
  // notify it right now, without the lock.
  s->worker_ev.waiters.store(0, std::memory_order_relaxed);
  s->claims.reset();
  w.tasks = byte_ring(&s->tasks, shm_.task_data(w.index), cap_);
  w.results = byte_ring(&s->results, shm_.result_data(w.index), cap_);
  w.tasks.start_small();
  w.results.start_small();
  w.inflight.clear();
  w.sent = w.send_off = 0;
  w.budget = opts_.max_tasks_per_child ? opts_.max_tasks_per_child
                                       : std::numeric_limits<std::size_t>::max();
  w.next_claim = 0;
  w.stop_queued = w.stop_sent = w.have_header = false;
  w.got = 0;
  w.last_result_ns = 0;
  w.last_chunk_ns = -1;
  w.last_chunk_items = 0;
  w.timed_out = w.corrupt = w.dying = false;
  const pid_t parent = parent_pid_;
  const bool timed = opts_.task_timeout.count() > 0;
  pool_shared* ps = shm_.pool();
  char* td = shm_.task_data(w.index);
  char* rd = shm_.result_data(w.index);
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
  if (phase_ != phase::running)
    throw usage_error(phase_ == phase::terminated
                          ? "procpool::Pool: the pool was terminated; create a new Pool"
                          : "procpool::Pool: the pool was closed; no new work can be submitted");
}

inline void engine::submit(const std::shared_ptr<job>& j) {
  check_owner();  // before the lock: a forked copy of it may be held for ever
  std::unique_lock lk(m_);
  throw_if_unusable();
  jobs_.push_back(j);
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
  watch_set ws;  // what the driver watches while waiting; filled before each wait
  return drv_.run(
      lk,
      [&] {
        // Before done(): an express cell finishing after this wakes the wait.
        ws.express_finished = shm_.pool()->express_finished.load(std::memory_order_acquire);
        return done();
      },
      deadline, [this] { return pump(); },
      [&](std::uint64_t gen) {
        fill_watch(ws);
        ws.gen = gen;
      },
      [&](std::int64_t until) { return wait_for_event(until, ws); });
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
  try {
    jobs_.push_front(std::make_shared<cell_job>(lane_, t, [this] { drv_.notify_followers(); }));
  } catch (...) {
    fail_cell(t, std::current_exception());
  }
}

// ---------------------------------------------------------------- driving

/// One round: read every result that arrived, hand out work, look for dead or
/// overdue workers. Non-blocking. Returns true if anything moved.
inline bool engine::pump() {
  if (phase_ == phase::terminated || phase_ == phase::joined) return false;
  bool progress = false;
  for (auto& w : workers_) progress |= drain(w);
  progress |= dispatch();
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
  if (drv_.replaced(ws.gen)) return true;
  // A submit() or terminate() wants the driver (a load first: this runs in the spin loop).
  if (drv_.take_poke()) return poked = true;
  // An express cell finished: its caller may wait on this driver's rounds.
  if (shm_.pool()->express_finished.load(std::memory_order_relaxed) != ws.express_finished) return true;
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
  event& ev = shm_.pool()->parent_ev;
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
          shared_of(w)->worker_ev.notify();
          throw;
        }
        done = true;
      } else {
        done = place_wrapped(w, sp);  // else: copied out below, as any other message
      }
      if (done) {
        w.have_header = false;
        w.results.consume(size);
        shared_of(w)->worker_ev.notify();  // space freed
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
    shared_of(w)->worker_ev.notify();  // space freed
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
    task_message::begin(c.msg);
    c.offsets.clear();
    c.stride = 0;
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
    if (!c.stride) c.offsets.push_back(static_cast<std::uint32_t>(task_message::items_size(c.msg)));
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
  const std::int64_t express_since = lane_.running_since(static_cast<std::uint32_t>(w.index));
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
    c.claim = w.next_claim++ % claim_board::words;
    c.revoked = false;
    shared_of(w)->claims.post(c.claim, c.seq);
    task_message::seal(c.msg, {c.owner->runner, c.seq, c.count(), c.claim});
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
  const auto index = static_cast<std::uint32_t>(w.index);
  return w.inflight.empty() && !lane_.running_since(index) && !lane_.has_posted(index);
}

/// What @p w has queued and not started (express calls posted to it included).
inline worker_load engine::load_of(const worker& w) const {
  worker_load l;
  l.idle = is_idle(w);
  if (w.pid == 0 || w.corrupt || w.dying) return l;
  const worker_shared* s = shared_of(w);
  for (const chunk& c : w.inflight)
    if (!c.revoked && !s->claims.is_started(c.claim, c.seq)) l.add_unstarted(c.sent_ns);
  lane_.count_posted(static_cast<std::uint32_t>(w.index), l);
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
    loads[idle.index] = load_of(idle);
  }
  return progress;
}

/// Takes back the first express call or chunk that @p w holds and has not
/// started, for another worker: a cell goes through the queues (cell_job), a
/// chunk to the front of requeued_. False when there was none to take.
inline bool engine::take_back(worker& w) {
  express_ticket t;
  if (lane_.take_posted(static_cast<std::uint32_t>(w.index), t)) {
    try {
      jobs_.push_front(std::make_shared<cell_job>(lane_, t, [this] { drv_.notify_followers(); }));
    } catch (...) {
      fail_cell(t, std::current_exception());
    }
    return true;
  }
  worker_shared* s = shared_of(w);
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
  if (wrote) shared_of(w)->worker_ev.notify();
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
    if (limit > 0 && !w.timed_out) {
      const worker_shared* s = shared_of(w);
      // Read twice: only a consistent (seq, item) pair that is still running
      // past the limit is killed and blamed.
      const std::uint64_t seq = s->running_seq.load(std::memory_order_acquire);
      const std::uint64_t item = s->running_item.load(std::memory_order_acquire);
      const std::int64_t since = s->running_since.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq != 0 && now - since > limit && s->running_seq.load() == seq &&
          s->running_item.load() == item) {
        w.timed_out = true;
        w.timeout_blame = {seq, item};
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

/// Worker @p w has ended. Reads what it finished, settles what it held as
/// death_verdict.hpp says, and starts a replacement.
inline void engine::on_death(worker& w, int exitcode) {
  const pid_t pid = w.pid;
  w.dying = true;
  drain(w);  // complete messages it wrote before dying still count
  w.pid = 0;
  worker_shared* s = shared_of(w);
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
  const death_blame blame = death_blame::of(
      w.timed_out, w.timeout_blame, {s->running_seq.load(), s->running_item.load()});
  const auto blamed = [&](std::uint64_t index) {
    return blamed_error(index, pid, exitcode, w.timed_out,
                        static_cast<long long>(opts_.task_timeout.count()));
  };
  // Its express calls: the running one fails when it is blamed, the rest run again.
  lane_.for_each_in_flight(static_cast<std::uint32_t>(w.index),
                           [&](const express_ticket& t, std::uint32_t st) {
                             if (st == cell_running && blame.on_cell() && blame.cell() == t.index)
                               fail_cell(t, blamed(0));
                             else
                               requeue_cell(t);
                           });
  // Its chunks, requeued in order at the front, so that imap's order suffers least.
  std::deque<chunk> mine = std::move(w.inflight);
  w.inflight.clear();
  for (auto it = mine.rbegin(); it != mine.rend(); ++it) {
    chunk& c = *it;
    const chunk_verdict v =
        judge_chunk(blame, c.seq, c.count(), c.revoked, c.attempts, c.orphaned, opts_.retries);
    c.orphaned = v.orphaned;
    switch (v.fate) {
      case chunk_fate::elsewhere:
        break;
      case chunk_fate::requeued:
        requeue(c, 0, c.count());
        break;
      case chunk_fate::lost:
        for (std::uint64_t i = 0; i < c.count(); ++i)
          c.owner->fail(c.base + i, lost_error(c.base + i, pid, exitcode, c.orphaned));
        c.owner->outstanding -= c.count();
        break;
      case chunk_fate::blamed:
        requeue(c, v.item + 1, c.count());
        if (v.retry) {
          requeued_.push_front(c.slice(v.item, v.item + 1, c.attempts + 1));
        } else {
          c.owner->fail(c.base + v.item, blamed(c.base + v.item));
          --c.owner->outstanding;
        }
        requeue(c, 0, v.item);
        break;
    }
  }
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
  for (auto& j : jobs_)
    if (!j->complete()) j->abort(e);
  for (auto& w : workers_)
    for (auto& c : w.inflight)
      if (c.owner) c.owner->abort(e);
  for (auto& c : requeued_) c.owner->abort(e);
  jobs_.clear();
  requeued_.clear();
}

inline void engine::break_pool(std::exception_ptr e) {
  broken_ = e;
  lane_.close();
  abort_all(e);
}

inline bool engine::all_done() const {
  if (!jobs_.empty() || !requeued_.empty() || !lane_.all_settled()) return false;
  for (const auto& w : workers_)
    if (!w.inflight.empty()) return false;
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
  phase_ = phase::joined;
}

inline void engine::terminate() noexcept {
  if (!owned_here()) return;  // a copy in another process: the workers are not its own
  std::unique_lock lk(m_);
  lane_.close();
  drv_.stop(lk);  // wakes a driver asleep in wait_for_event, and waits for its round
  if (phase_ == phase::terminated || phase_ == phase::joined) return;
  phase_ = phase::terminated;
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
  const auto e = std::make_exception_ptr(
      pool_terminated("procpool::Pool: the pool was terminated before this item finished"));
  abort_all(e);
  for (auto& w : workers_) w.inflight.clear();
  // Cells still waiting for their (now dead) workers; a cell posted after
  // this is failed by its caller's wait (express_settled).
  for (auto& w : workers_)
    lane_.for_each_in_flight(static_cast<std::uint32_t>(w.index),
                             [&](const express_ticket& t, std::uint32_t) { fail_cell(t, e); });
  drv_.notify_followers();
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
