// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// JoinableQueue<T>: Python's multiprocessing.JoinableQueue, a Queue whose
// consumers call task_done() for each item they got, and whose join() waits
// until every item put is done. Unlike Python's, join() does not wait for ever
// for items a consumer took and then died with (SIGKILL, a crash): it finds
// them on the dead process's books (detail/task_ledger.hpp) and reports them
// lost with items_lost_error.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <sys/types.h>

#include "detail/posix.hpp"
#include "detail/shared_block.hpp"
#include "detail/task_ledger.hpp"
#include "detail/tuning.hpp"
#include "errors.hpp"
#include "queue.hpp"

namespace procpool {

/// A Queue<T> with task_done() and join().
/// @code
///   procpool::JoinableQueue<int> q;
///   procpool::Process consumer([&] {
///     for (;;) { int job = q.get(); /* ... */ q.task_done(); }
///   });
///   consumer.start();
///   for (int i = 0; i < 100; ++i) q.put(i);
///   q.join();  // all 100 done (or items_lost_error, had the consumer died)
/// @endcode
template <class T>
class JoinableQueue : private Queue<T> {
  using base = Queue<T>;

 public:
  /// A new, empty queue in shared memory. Copies are the same queue.
  explicit JoinableQueue(queue_options o = {})
      : base(o, who), books_(who, detail::task_ledger::extra_bytes()), me_(std::make_shared<local>()) {}

  using base::close;
  using base::put;
  using base::put_nowait;

  /// Whole items in the queue (approximate while others put and get). A
  /// process that died putting or getting is settled first.
  std::size_t qsize() const noexcept {
    bool unused = false;
    return this->settled_qsize(detail::task_ledger::hooks{books_.get(), 0, &unused});
  }
  bool empty() const noexcept { return qsize() == 0; }
  bool full() const noexcept { return this->ch_.maxsize() && qsize() >= this->ch_.maxsize(); }

  /// Takes the oldest item, waiting for one; the caller owes task_done() for
  /// it. @throws closed_error when closed and empty; decode_error when its
  /// bytes do not decode (then it is owed nothing, and join() reports it lost).
  T get() { return *get_until(base::forever); }
  /// As get(), waiting at most @p timeout for an item to begin; nullopt when none came.
  template <class Rep, class Period>
  std::optional<T> get(std::chrono::duration<Rep, Period> timeout) {
    return get_until(detail::deadline_after(timeout));
  }
  /// An item if one is there now.
  std::optional<T> get_nowait() { return get_until(-1); }

  /// Marks one item this process got as done. @throws usage_error when this
  /// process has marked every item it got done already (Python's ValueError).
  void task_done() { books_->task_done(my_slot(), who); }

  /// Waits until every item put is done. @throws items_lost_error when some
  /// never will be, once for those items: a consumer process died holding
  /// them, or could not decode them.
  void join() { static_cast<void>(join_until(base::forever)); }
  /// As join(), waiting at most @p timeout; false when items are still owed then.
  template <class Rep, class Period>
  [[nodiscard]] bool join(std::chrono::duration<Rep, Period> timeout) {
    return join_until(detail::deadline_after(timeout));
  }

 private:
  static constexpr const char* who = "procpool::JoinableQueue";
  /// This process's slot in the books, looked up once per process.
  struct local {
    std::mutex m;                 // serializes the lookup
    std::atomic<pid_t> pid{0};    // whose slot it is; set after slot
    std::uint32_t slot = 0;
  };

  std::uint32_t my_slot();
  std::optional<T> get_until(std::int64_t deadline);
  bool join_until(std::int64_t deadline);
  [[noreturn]] static void throw_lost(std::uint64_t n, pid_t dead) {
    throw items_lost_error(std::string(who) + "::join: " + std::to_string(n) +
                           " item(s) will never be done: " +
                           (dead ? "consumer process " + std::to_string(dead) +
                                       " died before task_done() for them (or some did not decode)"
                                 : std::string("their bytes did not decode")) +
                           "; every other item is done");
  }

  detail::shared_block<detail::task_ledger> books_;
  std::shared_ptr<local> me_;
};

// ---------------------------------------------------------------------------

template <class T>
std::uint32_t JoinableQueue<T>::my_slot() {
  const pid_t pid = detail::current_pid();
  if (me_->pid.load(std::memory_order_acquire) == pid) return me_->slot;
  std::lock_guard g(me_->m);
  if (me_->pid.load(std::memory_order_relaxed) != pid) {
    me_->slot = books_->slot_of(pid, who);
    me_->pid.store(pid, std::memory_order_release);
  }
  return me_->slot;
}

template <class T>
std::optional<T> JoinableQueue<T>::get_until(std::int64_t deadline) {
  const std::uint32_t slot = my_slot();
  bool handed = false;
  try {
    return detail::get_item<T>(this->ch_, deadline, detail::task_ledger::hooks{books_.get(), slot, &handed});
  } catch (...) {
    // Taken from the queue, it could not be read or decoded: no task_done() is owed.
    if (handed) books_->drop(slot);
    throw;
  }
}

template <class T>
bool JoinableQueue<T>::join_until(std::int64_t deadline) {
  detail::task_ledger& l = *books_;
  for (;;) {
    const std::uint32_t seen = l.progress.prepare();
    // A consumer that died holding the read lock, with no one reading since.
    bool unused = false;
    this->ch_.settle_dead_reader(detail::task_ledger::hooks{books_.get(), 0, &unused});
    const detail::ledger_tally t = l.tally();
    if (t.finished >= this->ch_.written()) {
      l.progress.retire();
      std::uint64_t r = l.reported.load(std::memory_order_acquire);
      while (t.lost > r && !l.reported.compare_exchange_weak(r, t.lost, std::memory_order_acq_rel)) {
      }
      if (t.lost > r) throw_lost(t.lost - r, t.dead);
      return true;
    }
    const std::int64_t left = deadline - detail::monotonic_ns();
    if (left <= 0) {
      l.progress.retire();
      return false;
    }
    // Woken by task_done(); a dead consumer is found by looking again.
    l.progress.wait(seen, left < detail::peer_probe_ns ? left : detail::peer_probe_ns);
    l.progress.retire();
  }
}

}  // namespace procpool
