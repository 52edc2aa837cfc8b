// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The children this process started as procpool::Process, for active_children().
//
// A started Process owns a started_child on the heap, so its address stays the
// same when the Process moves and the registry never needs to hear of moves.
// The registry links the started_child objects in a list (intrusive: linking
// never allocates, so it never fails after a fork). Two locks:
//  * the registry's mutex guards the list (links) and is held only briefly;
//  * each child's reap mutex is held by whoever calls waitpid on it, so that the
//    child is reaped once and its exit code is stored where its Process sees it.
//    active_children() only try_locks it: a child being joined is left to its joiner.
// Across fork (pthread_atfork), the registry's mutex is held, so the child sees
// a whole list; the child then closes the pidfds it inherited and empties the
// list: it has no children of its own yet.

#include <cerrno>
#include <mutex>
#include <optional>
#include <pthread.h>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "posix.hpp"

namespace procpool::detail {

/// What the registry and a started Process share about the child.
struct started_child {
  explicit started_child(std::string n) : name(std::move(n)) {}
  started_child(const started_child&) = delete;
  started_child& operator=(const started_child&) = delete;

  pid_t pid = 0;            ///< set right after fork, before the registry sees it
  const std::string name;  ///< the name it was started under (its current_process().name())
  int pidfd = -1;          ///< -1 when pidfd_open failed, or after close
  int pidfd_errno = 0;     ///< why pidfd is -1, when it failed

  std::mutex reap_mutex;
  std::optional<int> exitcode;  ///< guarded by reap_mutex; set once, by the reaper

  started_child* prev = nullptr;  ///< guarded by the registry's mutex
  started_child* next = nullptr;
  bool linked = false;

  /// With reap_mutex held: true once the child has ended and exitcode is set.
  bool reap_locked(bool block) {
    if (exitcode) return true;
    if (auto status = wait_pid(pid, block)) {
      exitcode = exitcode_from_status(*status);
      return true;
    }
    return false;
  }

  /// Closes the pidfd, if open; idempotent.
  void close_pidfd() noexcept {
    if (pidfd >= 0) close_fd(std::exchange(pidfd, -1));
  }
};

/// The started, not yet closed or destroyed, Process children of this process.
class child_registry {
 public:
  /// The one registry. Constant-initialized and trivially destructible, so a
  /// Process destroyed by exit() (a static) still finds it intact.
  static child_registry& instance() noexcept;

  /// Installs the fork handlers; call before the first fork that may copy the list.
  void prepare_for_fork() noexcept {
    static const bool installed = ::pthread_atfork(lock_for_fork, unlock_for_fork, reset_in_child) == 0;
    (void)installed;
  }

  void add(started_child* c) noexcept {
    std::lock_guard g(m_);
    c->prev = tail_;
    c->next = nullptr;
    (tail_ ? tail_->next : head_) = c;
    tail_ = c;
    c->linked = true;
  }

  void remove(started_child* c) noexcept {
    std::lock_guard g(m_);
    if (!c->linked) return;
    (c->prev ? c->prev->next : head_) = c->next;
    (c->next ? c->next->prev : tail_) = c->prev;
    c->prev = c->next = nullptr;
    c->linked = false;
  }

  /// Calls out(pid, name) for each child still running, in start order, and
  /// reaps (storing the exit code) each that has ended. A child being reaped
  /// elsewhere right now (a join in another thread) counts as running. A child
  /// waitpid says is not ours (ECHILD: reaped by someone else) is skipped, its
  /// exit code left unset for its own Process to report.
  template <class Out>
  void for_each_running(Out&& out) {
    std::lock_guard g(m_);
    for (started_child* c = head_; c; c = c->next) {
      std::unique_lock reaping(c->reap_mutex, std::try_to_lock);
      if (!reaping.owns_lock()) {
        out(c->pid, c->name);
        continue;
      }
      bool ended = false;
      try {
        ended = c->reap_locked(false);
      } catch (const std::system_error& e) {
        if (e.code().value() != ECHILD) throw;
        ended = true;
      }
      if (!ended) out(c->pid, c->name);
    }
  }

 private:
  static void lock_for_fork() noexcept { instance().m_.lock(); }
  static void unlock_for_fork() noexcept { instance().m_.unlock(); }
  static void reset_in_child() noexcept {
    child_registry& r = instance();
    for (started_child* c = r.head_; c;) {
      started_child* next = c->next;
      c->close_pidfd();
      c->pidfd_errno = ECHILD;  // the copy in the child names no child of the child
      c->prev = c->next = nullptr;
      c->linked = false;
      c = next;
    }
    r.head_ = r.tail_ = nullptr;
    r.m_.unlock();  // locked by this same thread in lock_for_fork, before the fork
  }

  std::mutex m_;
  started_child* head_ = nullptr;
  started_child* tail_ = nullptr;
};

static_assert(std::is_trivially_destructible_v<child_registry>,
              "the registry must outlive every static Process: never destroyed");

inline child_registry& child_registry::instance() noexcept {
  static constinit child_registry r;
  return r;
}

}  // namespace procpool::detail
