// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The worker process: its loop (worker_main), its end of the two rings
// (worker_channel), its watch over its own memory (memory_watch), and what a
// typed runner sees of the chunk it runs (task_context). Runs only in forked
// children.

#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <thread>

#include "../errors.hpp"
#include "../process.hpp"
#include "buffer.hpp"
#include "express_lane.hpp"
#include "posix.hpp"
#include "ring.hpp"
#include "shared_layout.hpp"
#include "tuning.hpp"
#include "wire.hpp"

namespace procpool::detail {

/// What a typed runner sees of the chunk it runs (in the worker).
struct task_context {
  reader items;
  std::uint64_t seq;
  std::uint64_t count;
  byte_buffer& values;
  byte_buffer& errors;
  std::uint64_t error_count = 0;
  worker_shared* shared;
  bool timed;

  // The start time is stored before the item (release), and the timeout check
  // loads the item (acquire) before the time: it never pairs an item with the
  // start of the one before, which would blame an item that has just begun.
  void begin_item(std::uint64_t i) noexcept {
    if (timed) shared->running_since.store(monotonic_ns(), std::memory_order_relaxed);
    shared->running_item.store(i, std::memory_order_release);
    shared->running_seq.store(seq, std::memory_order_release);
  }
  void end_item() noexcept { shared->running_seq.store(0, std::memory_order_release); }
  /// For a tight loop over quick items: the chunk is marked running once, and
  /// each item then costs one store (two when timed). A death between two
  /// items blames the one before (its result was not sent either).
  void begin_items() noexcept { begin_item(0); }
  void next_item(std::uint64_t i) noexcept {
    if (timed) shared->running_since.store(monotonic_ns(), std::memory_order_relaxed);
    shared->running_item.store(i, std::memory_order_release);
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
  worker_channel(pool_shared* pool, worker_shared* shared, char* task_data, char* result_data,
                 std::size_t cap, pid_t parent)
      : pool_(pool),
        shared_(shared),
        tasks_(&shared->tasks, task_data, cap),
        results_(&shared->results, result_data, cap),
        parent_(parent) {}

  worker_shared* shared() noexcept { return shared_; }

  /// From now on, the express cells are served (with @p fn, the pool's function).
  void enable_express(void* fn) noexcept { fn_ = fn; }
  /// Says "polling now, on this CPU" to callers choosing a worker for a cell.
  void mark_polling(std::int64_t now) noexcept { express_lane::mark_polling(*shared_, now); }
  /// Says "busy: not polling".
  void mark_busy() noexcept { express_lane::mark_busy(*shared_); }
  /// Runs every posted express cell; true if it ran any. One load when none is.
  bool serve_cells() { return express_lane::serve(*pool_, *shared_, fn_, cells_seen_); }

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
  /// Says "I take no more tasks" (@p why) to the parent, which stops this worker
  /// and replaces it (or, for over_at_start, says why it cannot).
  void ask_to_retire(memory_state why) noexcept {
    shared_->retiring.store(static_cast<std::uint32_t>(why), std::memory_order_release);
    pool_->parent_ev.notify();
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
    mark_busy();  // asleep: not for the express lane
    for (;;) {
      const std::uint32_t seen = shared_->worker_ev.prepare();
      if (ready()) {
        shared_->worker_ev.retire();
        return;
      }
      if (serve && express_lane::posted_since(*shared_, cells_seen_)) {
        shared_->worker_ev.retire();
        serve_cells();
        mark_busy();  // back to sleep
        continue;
      }
      shared_->worker_ev.wait(seen, parent_poll_ns);
      shared_->worker_ev.retire();
      if (::getppid() != parent_) child_exit(0);
    }
  }

  pool_shared* pool_;
  worker_shared* shared_;
  byte_ring tasks_;
  byte_ring results_;
  pid_t parent_;
  std::size_t last_message_ = 0;  // bytes of the last message sent
  void* fn_ = nullptr;  // set once the worker is ready for express cells
  std::uint32_t cells_seen_ = 0;  // cells_posted when the cells were last looked at
};

/// A worker's watch over its own memory: its current resident set size, read
/// from /proc/self/statm with one pread on a file opened once, in the worker
/// (/proc/self is resolved at the open). Not getrusage's ru_maxrss: that is the
/// peak, which never comes down, so a worker that freed its memory would still
/// look big. Each reading is published in worker_shared, for the message of a
/// worker killed from outside. Reads at most every memory_check_ns with a
/// limit, memory_sample_ns without.
class memory_watch {
 public:
  memory_watch(worker_shared* shared, std::uint64_t limit) noexcept
      : shared_(shared),
        limit_(limit),
        every_(limit ? memory_check_ns : memory_sample_ns),
        fd_(open_self_statm()) {}
  memory_watch(const memory_watch&) = delete;
  memory_watch& operator=(const memory_watch&) = delete;
  ~memory_watch() { close_fd(fd_); }

  /// True when a reading is due at @p now: the one comparison a chunk pays.
  bool due(std::int64_t now) const noexcept { return now >= next_; }
  /// Reads and publishes the RSS; true when it is over the limit. Without
  /// /proc there is nothing to read (the parent refused a limit then).
  bool over(std::int64_t now) noexcept {
    next_ = now + every_;
    if (fd_ < 0) return false;
    const std::uint64_t rss = resident_bytes(fd_);
    shared_->rss_bytes.store(rss, std::memory_order_relaxed);
    return limit_ && rss > limit_;
  }

 private:
  worker_shared* shared_;
  std::uint64_t limit_;  // bytes; 0: none
  std::int64_t every_;
  int fd_;
  std::int64_t next_ = 0;
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
    while (::getppid() == parent) sleep_ns(parent_poll_ns);
    ::_exit(0);
  }).detach();
}

/// The loop a pool worker runs until told to stop. Never returns.
/// @p memory_limit: pool_options::max_memory_per_child.
[[noreturn]] inline void worker_main(worker_channel& ch, void* fn,
                                     const std::function<void()>& initializer,
                                     bool timed, pid_t parent, bool forked_by_main_thread,
                                     std::uint64_t memory_limit) {
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
  // Over the limit before running anything (a big parent, a big initializer):
  // retiring cannot help, and the parent says so instead of forking again.
  memory_watch memory(ch.shared(), memory_limit);
  bool retiring = memory.over(monotonic_ns());
  if (retiring) ch.ask_to_retire(memory_state::over_at_start);
  bool ran_any = false;  // a chunk: only then may a worker retire over the limit
  ch.shared()->ready.store(1, std::memory_order_release);
  ch.enable_express(fn);
  for (;;) {
    ch.serve_cells();
    const std::int64_t now = monotonic_ns();
    // Between chunks, with the last one's results sent: over the limit, the
    // worker takes no more tasks (it declines those queued, below) and the
    // parent stops and replaces it, as at max_tasks_per_child.
    if (memory.due(now) && memory.over(now) && ran_any && !retiring) {
      retiring = true;
      ch.ask_to_retire(memory_state::over_limit);
    }
    ch.mark_polling(now);
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
    claim_board& claims = ch.shared()->claims;
    const auto claim = static_cast<unsigned>(th.claim % claim_board::words);
    if (retiring || !claims.take(claim, th.seq)) {
      // The parent gave this task to another worker, or this worker declines
      // it (retiring: it revokes the claim as the parent would, and the parent
      // sends the task elsewhere): say it was passed over.
      if (retiring) claims.revoke(claim, th.seq);
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
    char* const answer_at = ch.result_space(room);
    const bool in_ring = room >= 4096;
    byte_buffer& vals = in_ring ? direct : values;
    if (in_ring) direct.borrow(answer_at + sizeof(frame_header), room - sizeof(frame_header));
    vals.clear();
    errors.clear();
    vals.grow(sizeof(result_header));
    ch.mark_busy();
    task_context ctx{r, th.seq, th.count, vals, errors, 0, ch.shared(),
                     timed || (th.flags & task_timed) != 0};
    reinterpret_cast<runner_fn>(th.runner)(fn, ctx);
    ran_any = true;
    if (in_place) ch.release(size);
    const result_header rh{th.seq, th.count, ctx.error_count, vals.size()};
    std::memcpy(vals.data(), &rh, sizeof rh);
    vals.append(errors.data(), errors.size());
    if (vals.borrowed()) {
      const frame_header fh{frame_magic, static_cast<std::uint32_t>(frame_kind::results), vals.size()};
      std::memcpy(answer_at, &fh, sizeof fh);
      ch.commit_results(sizeof fh + vals.size());
    } else {
      ch.send_frame(frame_kind::results, vals);
    }
    // A huge message's buffers are kept while huge messages keep coming, and
    // given back after the first smaller one: never for the life of the worker.
    // A buffer this task did not use (the copy of a task read in place, the
    // answer buffer of the other kind) is emptied first, so that what an
    // earlier message left in it is given back too.
    if (in_place) in.clear();
    (in_ring ? values : direct).clear();
    for (byte_buffer* b : {&in, &values, &direct, &errors}) b->shrink_if_above(worker_buffer_keep_bytes);
  }
}

}  // namespace procpool::detail
