// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The thread that runs done callbacks (async_result::add_done_callback).
// The pool has no thread of its own: results arrive only while some thread
// drives the engine. A callback must run even when nobody waits, so the first
// callback starts this thread, which drives the engine until a watched result
// settles, then runs its callbacks without the engine's lock. It ends when the
// pool is terminated or destroyed; what is still watched then is fired by the
// terminating thread, so that no error callback is skipped.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "posix.hpp"

namespace procpool::detail {

/// A result with callbacks, as the runner sees it.
class completion {
 public:
  virtual ~completion() = default;
  /// Under the engine's lock: true when the result (or its error) is there.
  virtual bool settled() = 0;
  /// Without the engine's lock: takes the outcome and runs the callbacks, once.
  virtual void fire() noexcept = 0;
};

class callback_runner {
 public:
  callback_runner() = default;
  callback_runner(const callback_runner&) = delete;
  callback_runner& operator=(const callback_runner&) = delete;
  /// Joins the thread; leaves it be when called on it, or in a forked copy.
  ~callback_runner();

  /// Under the engine's lock: watches @p c, and starts the thread (holding
  /// @p self, the engine) if it is not running. False after request_stop():
  /// then nothing drives the result any more, and the caller fires it.
  template <class Engine>
  bool watch(std::shared_ptr<Engine> self, std::shared_ptr<completion> c);
  /// Under the engine's lock: true when a watched result has settled, or stop().
  bool has_work() {
    return stop_ || std::any_of(watched_.begin(), watched_.end(),
                                [](const auto& c) { return c->settled(); });
  }
  /// Under the engine's lock @p lk: waits until every watched result has
  /// settled and its callbacks ran (join()). Returns at once on the runner's thread.
  void wait_idle(std::unique_lock<std::mutex>& lk) {
    if (on_runner_thread()) return;
    idle_.wait(lk, [this] { return (watched_.empty() && !firing_) || stop_; });
  }
  /// Under the engine's lock: the thread is to end after its current round.
  void request_stop() noexcept {
    stop_ = true;
    work_.notify_all();
  }
  /// Without the engine's lock (terminate, after request_stop): joins the
  /// thread, then fires what is still watched, here. @p lock locks the engine.
  template <class Lock>
  void finish(Lock lock) noexcept;
  /// True on this runner's thread. Kept by a thread-local, not a thread id:
  /// a thread started after the runner was joined can get the runner's id.
  bool on_runner_thread() const noexcept { return current_ == this; }

 private:
  template <class Engine>
  void loop(Engine& e);

  std::vector<std::shared_ptr<completion>> watched_;  // under the engine's lock
  bool firing_ = false;                               // the thread runs callbacks now
  bool stop_ = false;
  bool finishing_ = false;  // a terminate() is finishing the runner
  bool finished_ = false;   // and has: what was watched has fired
  std::condition_variable idle_;  // with the engine's lock: watched_ emptied, or finished_
  std::condition_variable work_;  // with the engine's lock: something to watch, or stop_
  std::unique_ptr<std::thread> thread_;  // until finish() joins it
  static inline thread_local const callback_runner* current_ = nullptr;  // set by the runner thread
  pid_t owner_ = 0;  // the process that started the thread
};

// ---------------------------------------------------------------------------

inline callback_runner::~callback_runner() {
  if (!thread_) return;  // never started, or joined by finish()
  if (current_pid() != owner_) {
    // A forked copy: the thread is not in this process. Leak its handle
    // (joining or detaching a thread this process does not have is undefined).
    (void)thread_.release();
  } else if (on_runner_thread()) {
    thread_->detach();  // the engine's last reference was dropped by a callback
  } else if (thread_->joinable()) {
    thread_->join();
  }
}

template <class Engine>
bool callback_runner::watch(std::shared_ptr<Engine> self, std::shared_ptr<completion> c) {
  if (stop_) return false;
  watched_.push_back(std::move(c));
  work_.notify_one();
  if (thread_) return true;
  owner_ = current_pid();
  // The thread holds the engine until it ends: the engine (and this runner)
  // can only be destroyed on it after its last use of either.
  thread_ = std::make_unique<std::thread>([e = std::move(self)]() mutable {
    current_ = &e->callbacks();
    e->callbacks().loop(*e);
    e.reset();
  });
  return true;
}

template <class Engine>
void callback_runner::loop(Engine& e) {
  for (;;) {
    {
      // Nothing watched: sleep here, not in the engine's rounds (an idle or
      // joined pool would wake it every few hundred microseconds).
      auto lk = e.hold();
      work_.wait(lk, [this] { return stop_ || !watched_.empty(); });
      if (stop_) return;
    }
    try {
      e.run_until([this] { return has_work(); });
    } catch (...) {
      // Driving failed (the pool broke): its results settle with the error;
      // a short pause keeps a lasting failure from spinning.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::vector<std::shared_ptr<completion>> ready;
    bool stop = false;
    e.locked([&] {
      stop = stop_;
      if (stop) return;
      auto settled = std::stable_partition(watched_.begin(), watched_.end(),
                                           [](const auto& c) { return !c->settled(); });
      ready.assign(std::make_move_iterator(settled), std::make_move_iterator(watched_.end()));
      watched_.erase(settled, watched_.end());
      firing_ = !ready.empty();
    });
    if (stop) return;
    for (auto& c : ready) c->fire();
    ready.clear();
    e.locked([&] {
      firing_ = false;
      idle_.notify_all();
    });
  }
}

template <class Lock>
void callback_runner::finish(Lock lock) noexcept {
  std::unique_ptr<std::thread> t;
  {
    auto lk = lock();
    if (finishing_) {
      // Another terminate() finishes: return when it has (not on the runner:
      // a callback that terminates must not wait for itself).
      if (!on_runner_thread()) idle_.wait(lk, [this] { return finished_; });
      return;
    }
    finishing_ = true;
    if (!on_runner_thread()) t = std::move(thread_);  // joined here, once
  }
  if (t && t->joinable()) t->join();
  std::vector<std::shared_ptr<completion>> rest;
  {
    auto lk = lock();
    rest.swap(watched_);
  }
  for (auto& c : rest) c->fire();
  auto lk = lock();
  finished_ = true;
  idle_.notify_all();
}

}  // namespace procpool::detail
