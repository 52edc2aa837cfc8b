// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Rank 0's side of one pool: the same jobs as procpool::Pool's (jobs.hpp: they
// encode the inputs and keep the results), cut into chunks and sent to the
// serving ranks as rank_scheduler.hpp decides. A progress thread makes every
// MPI call (or a caller waiting for an answer, while one may be a moment
// away); callers wait on a condition variable for their jobs. This file
// holds the progress loop, the messages both ways, and the ranks' liveness:
// a rank silent past its limit is lost.

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../../detail/job.hpp"
#include "../../detail/posix.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../session.hpp"
#include "code_address.hpp"
#include "handshake.hpp"
#include "rank_scheduler.hpp"
#include "remote_error.hpp"
#include "transport.hpp"

namespace procpool::mpi::detail {

class master {
 public:
  /// Opens pool @p serial of F @p fn_name on every serving rank (handshake.hpp),
  /// then starts the progress thread. @throws usage_error when a rank refuses
  /// or does not answer within @p open_timeout.
  master(session& s, std::uint64_t serial, const std::string& fn_name, const pool_options& o,
         std::chrono::milliseconds open_timeout = std::chrono::seconds(60));
  ~master() {
    terminate();
    // In a fork of rank 0 the thread does not exist: its handle is leaked, never joined.
    if (thread_.joinable()) new std::thread(std::move(thread_));
  }
  master(const master&) = delete;
  master& operator=(const master&) = delete;

  /// Queues a job. @throws usage_error after close() or terminate().
  void submit(const std::shared_ptr<job>& j);
  /// Waits until done() (called under the lock) is true.
  template <class Done>
  void run_until(Done done) {
    run_until(done, std::numeric_limits<std::int64_t>::max());
  }
  /// Like run_until, but gives up at @p deadline (monotonic ns); true if done.
  template <class Done>
  bool run_until(Done done, std::int64_t deadline);
  /// Runs @p fn under the lock (for reading job state), then lets the
  /// progress thread look again (a reader may have made room in a window).
  template <class Fn>
  decltype(auto) locked(Fn fn) {
    struct poke_after {
      master& m;
      ~poke_after() { m.poke(); }
    } after{*this};
    std::lock_guard lk(m_);
    return fn();
  }
  /// True in the process that built the pool.
  bool owned_here() const noexcept { return ::getpid() == pid_; }
  /// Calls @p fire without the lock once @p j is complete: on the progress
  /// thread, or here at once when it is complete already, or in close()/
  /// terminate() for what is left when the progress thread has stopped.
  void when_done(const std::shared_ptr<job>& j, std::function<void()> fire);
  /// Wakes the callers waiting in run_until (a callback has run).
  void notify_callers() {
    std::lock_guard lk(m_);
    done_.notify_all();
  }

  void close();
  void join();
  void terminate() noexcept;

  /// Workers on the serving ranks that can take work.
  std::size_t size() const {
    std::lock_guard lk(m_);
    return sched_.workers();
  }
  /// The local pools' queue size: chunk sizes follow it as on one machine.
  std::size_t queue_capacity() const noexcept { return queue_bytes_; }
  /// The serving ranks.
  std::vector<rank_info> ranks() const;

 private:
  enum class phase { running, closed, joined, terminated };

  void loop() noexcept;
  bool turn() noexcept;
  void fire_ready(std::unique_lock<std::mutex>& lk, bool all);
  bool wait_stopped(std::unique_lock<std::mutex>& lk, std::int64_t deadline);
  bool on_progress_thread() const noexcept { return std::this_thread::get_id() == thread_.get_id(); }
  bool pump();
  void handle(int src, byte_buffer& msg);
  bool dispatch();
  void send_task(serving_rank& r, chunk&& c);
  void rebalance();
  void check_silence();
  void lose(serving_rank& r);
  void break_rank(serving_rank& r, const std::exception_ptr& e);
  void give_up_on_silent();
  void send_all(kind k);
  void abort_all(const std::exception_ptr& e);
  void poke() {
    {
      std::lock_guard lk(m_);
      poked_ = true;
    }
    wake_.notify_one();
  }
  void check_owner() const {
    if (!owned_here())
      throw usage_error("procpool::mpi::Pool: used in a process that did not build it (a fork "
                        "of rank 0); only the building process may call or close the pool");
  }

  session& s_;
  const std::uint64_t serial_;
  const pid_t pid_;
  transport t_;
  rank_scheduler sched_;  // under m_
  std::size_t queue_bytes_;

  mutable std::mutex m_;
  std::condition_variable done_;  // a job moved on: callers look
  std::condition_variable wake_;  // work was submitted or read: the progress thread looks
  bool poked_ = false;
  int spinning_callers_ = 0;  // callers driving in run_until: the progress thread stands by
  bool stop_ = false;
  phase phase_ = phase::running;
  bool close_sent_ = false;
  bool terminate_sent_ = false;
  std::exception_ptr broken_;
  struct watched {
    std::shared_ptr<job> j;
    std::function<void()> fire;
  };
  std::vector<watched> watched_;  // done callbacks waiting for their jobs
  std::thread thread_;
};

// ---------------------------------------------------------------------------

inline master::master(session& s, std::uint64_t serial, const std::string& fn_name,
                      const pool_options& o, std::chrono::milliseconds open_timeout)
    : s_(s),
      serial_(serial),
      pid_(::getpid()),
      t_(s.comm()),
      sched_(o.retries),
      queue_bytes_(o.queue_bytes) {
  if (s.size() < 2)
    throw usage_error("procpool::mpi::Pool: one rank only; rank 0 hands out the work and the "
                      "other ranks run it: start two or more (mpirun -np 3 ./program)");
  const std::int64_t now = procpool::detail::monotonic_ns();
  for (rank_info& r : open_pool(t_, s, serial, fn_name, open_timeout)) sched_.add_rank(std::move(r), now);
  thread_ = std::thread([this] { loop(); });
  ++s_.open_pools();
}

inline void master::submit(const std::shared_ptr<job>& j) {
  check_owner();
  {
    std::lock_guard lk(m_);
    if (broken_) std::rethrow_exception(broken_);
    if (phase_ != phase::running)
      throw usage_error("procpool::mpi::Pool: the pool is closed or terminated; submit before "
                        "close(), or build a new pool");
    sched_.submit(j);
    poked_ = true;
  }
  wake_.notify_one();
}

template <class Done>
bool master::run_until(Done done, std::int64_t deadline) {
  check_owner();
  std::unique_lock lk(m_);
  // While answers may be a moment away (backoff::spin_ns after the last
  // traffic), the waiting caller makes the MPI calls itself, sparing a round
  // trip two thread wake-ups; the progress thread stands by meanwhile. Then
  // the caller sleeps until the progress thread sees something move.
  std::int64_t since = procpool::detail::monotonic_ns();
  bool spinning = false;
  const auto stop_spinning = [&] {
    if (!spinning) return;
    spinning = false;
    --spinning_callers_;
    wake_.notify_one();
  };
  for (;;) {
    if (done()) {
      stop_spinning();
      return true;
    }
    const std::int64_t now = procpool::detail::monotonic_ns();
    if (now >= deadline) {
      stop_spinning();
      return false;
    }
    // A callback waiting on the progress thread drives all along: nobody else will.
    if (!stop_ && (now - since < backoff::spin_ns || on_progress_thread())) {
      if (!spinning) spinning = true, ++spinning_callers_;
      if (turn()) {
        done_.notify_all();
        since = procpool::detail::monotonic_ns();
        continue;
      }
      lk.unlock();
      std::this_thread::yield();
      lk.lock();
      continue;
    }
    stop_spinning();
    const std::int64_t until_ns = std::min(deadline, now + std::int64_t{1'000'000'000});
    done_.wait_until(lk, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(until_ns)));
    since = procpool::detail::monotonic_ns();  // something moved, or a second went by: look again
  }
}

inline std::vector<rank_info> master::ranks() const {
  std::vector<rank_info> v;
  for (const auto& r : sched_.ranks()) v.push_back(r.info);
  return v;
}

inline void master::close() {
  check_owner();
  std::lock_guard lk(m_);
  if (phase_ == phase::running) phase_ = phase::closed;
}

inline void master::join() {
  check_owner();
  std::unique_lock lk(m_);
  if (phase_ == phase::running)
    throw usage_error("procpool::mpi::Pool::join: call close() first (or terminate())");
  if (phase_ == phase::closed) {
    // Everything submitted runs, read or not (Python's join returns with an imap unread).
    for (auto& j : sched_.live()) j->lift_window();
    poked_ = true;
    wake_.notify_one();
    // The progress thread sends close once every job is complete, and stops
    // when every rank has said bye.
    wait_stopped(lk, std::numeric_limits<std::int64_t>::max());
    phase_ = phase::joined;
    --s_.open_pools();
  }
  lk.unlock();
  if (thread_.joinable() && !on_progress_thread()) thread_.join();
  lk.lock();
  fire_ready(lk, true);
}

inline void master::terminate() noexcept {
  if (!owned_here()) return;
  {
    std::unique_lock lk(m_);
    if (phase_ != phase::joined && phase_ != phase::terminated) {
      phase_ = phase::terminated;
      --s_.open_pools();
      abort_all(std::make_exception_ptr(pool_terminated(
          "procpool::mpi::Pool: terminated (terminate() or the destructor) before this item "
          "finished")));
      poked_ = true;
      wake_.notify_one();
      // Until every rank said bye, or 10 s: a rank that is gone cannot answer.
      if (!wait_stopped(lk, procpool::detail::deadline_after(std::chrono::seconds(10))))
        give_up_on_silent();
      stop_ = true;
      wake_.notify_one();
    }
  }
  // A callback that terminates its pool runs on the progress thread: it ends
  // when the callback returns.
  if (thread_.joinable() && !on_progress_thread()) thread_.join();
  // What the terminate failed: its callbacks run here, before this returns.
  std::unique_lock lk(m_);
  fire_ready(lk, true);
}

/// Waits until the progress thread has stopped (every rank said bye), or
/// @p deadline; on the progress thread itself (a callback closing its pool),
/// drives instead. True when stopped.
inline bool master::wait_stopped(std::unique_lock<std::mutex>& lk, std::int64_t deadline) {
  while (!stop_) {
    const std::int64_t now = procpool::detail::monotonic_ns();
    if (now >= deadline) return false;
    if (on_progress_thread()) {
      if (!turn()) {
        lk.unlock();
        std::this_thread::yield();
        lk.lock();
      }
      continue;
    }
    const std::int64_t until = std::min(deadline, now + std::int64_t{1'000'000'000});
    done_.wait_until(lk, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(until)));
  }
  return true;
}

inline void master::when_done(const std::shared_ptr<job>& j, std::function<void()> fire) {
  {
    std::lock_guard lk(m_);
    if (!j->complete()) {
      watched_.push_back(watched{j, std::move(fire)});
      return;
    }
  }
  fire();
}

/// Runs the callbacks of the watched jobs that are complete (@p all: every
/// watched one, the pool being over), without the lock.
inline void master::fire_ready(std::unique_lock<std::mutex>& lk, bool all) {
  std::vector<watched> ready;
  for (auto it = watched_.begin(); it != watched_.end();) {
    if (all || it->j->complete()) {
      ready.push_back(std::move(*it));
      it = watched_.erase(it);
    } else {
      ++it;
    }
  }
  if (ready.empty()) return;
  lk.unlock();
  for (auto& w : ready) w.fire();  // fire() catches what the callbacks throw
  lk.lock();
  done_.notify_all();
}

/// terminate() waited in vain: the ranks that said nothing are lost, so that
/// the session ends the job rather than wait in MPI_Finalize.
inline void master::give_up_on_silent() {
  for (auto& r : sched_.ranks())
    if (!r.bye && !r.lost) {
      r.lost = true;
      s_.note_lost(r.info.rank, r.info.host, r.info.pid);
    }
}

// ---------------------------------------------------------------- the progress thread

/// One round (pump) under the lock; if it fails, the pool is broken for good.
/// True when anything moved.
inline bool master::turn() noexcept {
  try {
    return pump();
  } catch (...) {
    // MPI failed, or a message did not parse: nothing more can be trusted.
    broken_ = std::current_exception();
    abort_all(broken_);
    try {
      send_all(kind::terminate);  // the serving ranks stop serving this pool
    } catch (...) {
    }
    give_up_on_silent();  // their byes will not be read
    stop_ = true;
    return true;
  }
}

inline void master::loop() noexcept {
  backoff idle;
  std::unique_lock lk(m_);
  while (!stop_) {
    if (spinning_callers_ > 0) {
      // A caller drives; look again when it stops (it wakes this thread) or in 1 ms.
      wake_.wait_for(lk, std::chrono::milliseconds(1));
      idle.reset();
      continue;
    }
    const bool moved = turn();
    if (moved) {
      done_.notify_all();
      if (!watched_.empty()) fire_ready(lk, false);
      idle.reset();
      continue;
    }
    const auto wait = idle.next();
    if (wait.count() == 0) {
      // Spinning: let callers take the lock between looks.
      lk.unlock();
      std::this_thread::yield();
      lk.lock();
      continue;
    }
    poked_ = false;
    wake_.wait_for(lk, wait, [&] { return poked_ || stop_; });
    if (poked_) idle.reset();
  }
  done_.notify_all();
  lk.unlock();
  try {
    t_.flush(procpool::detail::deadline_after(std::chrono::seconds(1)));
  } catch (...) {
  }
}

/// One look: what arrived, what to send. True when anything moved.
inline bool master::pump() {
  bool moved = false;
  t_.progress();
  byte_buffer msg;
  int src = 0;
  while (t_.poll(src, msg)) {
    handle(src, msg);
    moved = true;
  }
  if (phase_ == phase::terminated) {
    if (!terminate_sent_) {
      send_all(kind::terminate);
      terminate_sent_ = true;
      moved = true;
    }
  } else {
    check_silence();
    moved |= dispatch();
    rebalance();
    if (phase_ == phase::closed && !close_sent_ && sched_.all_done()) {
      send_all(kind::close);
      close_sent_ = true;
      moved = true;
    }
  }
  if ((close_sent_ || terminate_sent_) && !stop_) {
    bool all_bye = true;
    for (const auto& r : sched_.ranks()) all_bye &= r.bye || r.lost;
    if (all_bye) {
      stop_ = true;
      moved = true;
    }
  }
  t_.progress();
  if (poked_) {
    poked_ = false;
    moved = true;
  }
  return moved;
}

inline void master::handle(int src, byte_buffer& msg) {
  reader body(nullptr, 0);
  const message_header h = open_message(msg, body);
  auto& ranks = sched_.ranks();
  if (h.pool != serial_ || src < 1 || src > static_cast<int>(ranks.size())) return;
  serving_rank& r = ranks[static_cast<std::size_t>(src - 1)];
  if (r.lost) return;  // given up on: its items ran elsewhere or failed
  r.last_heard_ns = procpool::detail::monotonic_ns();
  const auto k = static_cast<kind>(h.kind);
  if (k == kind::bye) {
    r.bye = true;
    return;
  }
  if (k == kind::alive) return;
  const auto id = body.read_value<std::uint64_t>();
  sent_chunk* s = sched_.find(r, id);
  if (!s) return;  // a terminated pool's late answers
  const std::shared_ptr<job> keep = s->c.owner;  // the chunk may be its last owner
  job& j = *keep;
  switch (k) {
    case kind::results: {
      const auto base = body.read_value<std::uint64_t>();
      const auto count = body.read_value<std::uint64_t>();
      const auto errors = body.read_value<std::uint64_t>();
      std::vector<procpool::detail::item_failure> failed;
      for (std::uint64_t e = 0; e < errors; ++e) {
        procpool::detail::item_failure f;
        f.local = body.read_value<std::uint64_t>();
        f.type = get_text(body);
        f.message = get_text(body);
        failed.push_back(std::move(f));
      }
      if (count > s->left || base < s->c.base || base - s->c.base + count > s->c.n)
        throw decode_error("procpool::mpi: rank " + std::to_string(r.info.rank) +
                           " answered items it was not given (a corrupted message)");
      j.deliver(base, count, failed, body);
      sched_.answered(r, id, base, count);
      return;
    }
    case kind::failure: {
      const auto index = body.read_value<std::uint64_t>();
      if (s->left == 0 || index < s->c.base || index - s->c.base >= s->c.n)
        throw decode_error("procpool::mpi: rank " + std::to_string(r.info.rank) +
                           " answered an item it was not given (a corrupted message)");
      std::exception_ptr e = get_error(body, index, r.info.rank, r.info.host);
      const bool breaks = !r.broken && error_is<initializer_error>(e);
      j.fail(index, e);
      sched_.answered(r, id, index, 1);
      if (breaks) break_rank(r, e);
      return;
    }
    case kind::revoked:
      sched_.given_back(r, id);
      return;
    case kind::kept:
      sched_.kept(r, id);
      return;
    default:
      return;
  }
}

/// Sends chunks to the ranks with room, the one with the most room first.
inline bool master::dispatch() {
  bool moved = false;
  for (;;) {
    serving_rank* best = sched_.rank_with_room();
    if (!best) return moved;
    chunk c;
    if (!sched_.next_chunk(c)) return moved;
    send_task(*best, std::move(c));
    moved = true;
  }
}

inline void master::send_task(serving_rank& r, chunk&& c) {
  sched_.send(r, std::move(c), [&](const chunk& c) {
    byte_buffer m;
    begin_message(m, kind::task, serial_);
    m.append_value(c.seq);
    m.append_value(runner_offset(c.owner->runner));
    m.append_value(c.owner->timeout_ns);
    m.append_value(c.base);
    m.append_value(c.n);
    m.append_value(c.stride);
    m.append_value(std::uint32_t{0});
    if (!c.stride) m.append(c.offsets.data(), static_cast<std::size_t>(c.n) * sizeof(std::uint32_t));
    m.append(task_message::items(c.msg), task_message::items_size(c.msg));
    seal(m);
    t_.send(r.info.rank, std::move(m));
  });
}

/// Asks back the chunks the scheduler picks for idle workers (rank_scheduler::next_revoke).
inline void master::rebalance() {
  while (const auto pick = sched_.next_revoke()) {
    byte_buffer m;
    begin_message(m, kind::revoke, serial_);
    m.append_value(pick->second);
    seal(m);
    t_.send(pick->first->info.rank, std::move(m));
  }
}

// ---------------------------------------------------------------- liveness

/// A rank silent past its limit is lost (lose()).
inline void master::check_silence() {
  const std::int64_t now = procpool::detail::monotonic_ns();
  for (auto& r : sched_.ranks()) {
    if (r.lost || r.bye) continue;
    // 10 MB/s is 100 ns a byte.
    const std::int64_t limit = silence_limit_ns + static_cast<std::int64_t>(t_.pending_to(r.info.rank)) * 100;
    if (now - r.last_heard_ns > limit) lose(r);
  }
}

/// @p r's local pool cannot run anything (its initializer failed): no more
/// chunks go there; when no rank is left, every call fails with @p e.
inline void master::break_rank(serving_rank& r, const std::exception_ptr& e) {
  if (sched_.break_rank(r)) return;
  broken_ = e;
  abort_all(e);
}

/// Gives up on @p r (rank_scheduler::lose: its items run elsewhere or fail).
/// The session then ends the job, since MPI_Finalize would wait for that rank.
inline void master::lose(serving_rank& r) {
  s_.note_lost(r.info.rank, r.info.host, r.info.pid);
  t_.abandon(r.info.rank);
  if (sched_.lose(r)) return;
  broken_ = std::make_exception_ptr(
      error("procpool::mpi::Pool: every serving rank stopped answering or cannot run tasks; "
            "nothing can run: build a new pool, or check the ranks"));
  abort_all(broken_);
}

inline void master::send_all(kind k) {
  for (auto& r : sched_.ranks()) {
    if (r.lost) continue;
    byte_buffer m;
    begin_message(m, k, serial_);
    seal(m);
    t_.send(r.info.rank, std::move(m));
  }
}

inline void master::abort_all(const std::exception_ptr& e) {
  sched_.abort_all(e);
  done_.notify_all();
}

}  // namespace procpool::mpi::detail
