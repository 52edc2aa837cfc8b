// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The fork server of one pool (Python's forkserver, without exec): a
// single-threaded child forked when the pool is built, which starts every
// worker of the pool, the first ones and each replacement. A worker so starts
// from the parent as it was when the pool was built: never holding a lock that
// another thread held when the worker started, nor the engine's.
//
// The server starts a worker with clone(CLONE_PARENT), so the worker is the
// pool process's own child: reaped by waitpid, and told of its parent's death,
// exactly as a forked one. A raw clone skips what glibc's fork() does in the
// child; the child here redoes what a worker needs of it, with the kernel's
// help (clone_sibling): its tid in glibc's thread block, which robust and
// error-checking mutexes store (CLONE_CHILD_SETTID at PR_GET_TID_ADDRESS's
// address), its robust-mutex list, which lets a procpool::Lock outlive its
// holder (set_robust_list with get_robust_list's head, empty since the server
// holds no lock), and procpool's cached pid. The pthread_atfork handlers ran
// once, when the server was forked; the server takes no lock of stdio, malloc
// or the loader, so none is held when it clones.
//
// Where the kernel lacks PR_GET_TID_ADDRESS (CONFIG_CHECKPOINT_RESTORE), the
// server says so and ends, and the pool forks its workers itself.
//
// The protocol, over a SOCK_SEQPACKET socket pair: the server sends one int
// when it starts (0, or the errno that stops it), read with the first request;
// then it answers each request (a worker's index and name number) with the
// new worker's pid or -errno.

#include <cerrno>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include <poll.h>
#include <sys/socket.h>

#include "posix.hpp"
#include "tuning.hpp"

namespace procpool::detail {

class fork_server {
 public:
  /// What a worker runs: its index, the number in its name, and whether its
  /// parent thread is the process's main thread. Never returns.
  using worker_body =
      std::function<void(std::uint32_t index, std::uint32_t number, bool main_thread_parent)>;

  /// @p body is what every worker runs; @p forked_by_main_thread: whether the
  /// calling thread, the parent of the server's workers, is the main thread.
  fork_server(worker_body body, bool forked_by_main_thread)
      : body_(std::move(body)), main_thread_(forked_by_main_thread) {}
  ~fork_server() { stop(); }
  fork_server(const fork_server&) = delete;
  fork_server& operator=(const fork_server&) = delete;

  /// Forks the server, without waiting for it. @throws system_error.
  void launch();
  /// Starts worker @p index through the server: its pid, a child of this
  /// process. A server that was killed is forked again first; without one (the
  /// kernel cannot, see the top of this file) it is fork_here.
  /// @throws system_error (a failed clone or fork, or a server that did not
  /// answer within fork_server_answer_ms).
  pid_t start_worker(std::uint32_t index, std::uint32_t number);
  /// Kills and reaps the server; idempotent. Its workers run on.
  void stop() noexcept;
  /// The server's pid; 0 when none runs.
  pid_t pid() const noexcept { return pid_; }

 private:
  /// Forks worker @p index from this process now, by the calling thread.
  pid_t fork_here(std::uint32_t index, std::uint32_t number) {
    const bool main_thread = ::gettid() == current_pid();
    return fork_with([&]() noexcept { body_(index, number, main_thread); });
  }
  [[noreturn]] static void serve(int fd, pid_t parent, bool main_thread, const worker_body& body);

  worker_body body_;
  bool main_thread_;
  bool supported_ = true;  // false once a server said it cannot start workers
  bool hello_pending_ = false;
  int fd_ = -1;
  pid_t pid_ = 0;
  pid_t owner_ = 0;  // the process that forked the server
};

/// A child of this process's parent, like fork() in the child (see the top
/// of this file); -1 with errno set on failure. The caller has every signal
/// blocked and, in the child, restores its mask.
inline pid_t clone_sibling(int* tid_address, void* robust_head, std::size_t robust_len) noexcept {
  const long r = ::syscall(SYS_clone, CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID |
                                          SIGCHLD,
                           nullptr, nullptr, tid_address, 0);
  if (r == 0) {
    ::syscall(SYS_set_robust_list, robust_head, robust_len);
    refresh_pid();
  }
  return static_cast<pid_t>(r);
}

inline void fork_server::launch() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == -1)
    throw_errno("socketpair (the pool's fork server)");
  const pid_t parent = current_pid();
  const bool main_thread = main_thread_;
  pid_t pid = 0;
  try {
    pid = fork_with([&]() noexcept {
      ::close(fds[0]);
      if (main_thread && !die_with_parent(parent)) child_exit(0);
      serve(fds[1], parent, main_thread, body_);
    });
  } catch (...) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw;
  }
  ::close(fds[1]);
  fd_ = fds[0];
  pid_ = pid;
  owner_ = parent;
  hello_pending_ = true;
}

inline pid_t fork_server::start_worker(std::uint32_t index, std::uint32_t number) {
  for (int attempt = 0; supported_; ++attempt) {
    if (fd_ < 0) launch();
    int err = 0;
    if (hello_pending_) {
      int hello = 0;
      if (recv_int(fd_, hello, fork_server_answer_ms) != 0) {
        err = errno;
      } else if (hello != 0) {
        stop();
        supported_ = false;
        break;
      }
      hello_pending_ = false;
    }
    if (!err) {
      const pid_t pid = sys().fork_in_server(fd_, index, number);
      if (pid != -1) return pid;
      err = errno;
    }
    // EPIPE, ECONNRESET: the server ended (killed from outside); once more
    // with a new one. Anything else is the clone's own failure.
    if ((err != EPIPE && err != ECONNRESET) || attempt == 1) {
      errno = err;
      throw_errno("fork (in the pool's fork server)");
    }
    stop();
  }
  return fork_here(index, number);
}

inline void fork_server::stop() noexcept {
  if (fd_ >= 0) close_fd(std::exchange(fd_, -1));
  const pid_t pid = std::exchange(pid_, 0);
  hello_pending_ = false;
  // A copy in another process (a worker that calls exit(), a fork holding
  // the pool) leaves the owner's server alone.
  if (pid == 0 || owner_ != current_pid()) return;
  if (::kill(pid, SIGKILL) == 0) {
    int status = 0;
    // ECHILD: another part of the program reaped it (SIGCHLD set to SIG_IGN).
    (void)retry_eintr([&] { return ::waitpid(pid, &status, 0); });
  }
}

inline void fork_server::serve(int fd, pid_t parent, bool main_thread, const worker_body& body) {
  ::signal(SIGINT, SIG_IGN);  // as its workers: the parent decides what Ctrl-C means
  int* tid_address = nullptr;
  void* robust_head = nullptr;
  std::size_t robust_len = 0;
  int hello = 0;
  errno = 0;
  if (sys().get_tid_address(&tid_address) != 0 || !tid_address ||
      ::syscall(SYS_get_robust_list, 0, &robust_head, &robust_len) != 0)
    hello = errno ? errno : EINVAL;
  (void)::send(fd, &hello, sizeof hello, MSG_NOSIGNAL);
  if (hello) child_exit(0);
  sigset_t all, old;
  ::sigfillset(&all);
  for (;;) {
    // The server ends with the pool (stop()) or its process; the parent-death
    // signal covers only a pool built by the main thread.
    if (::getppid() != parent) child_exit(0);
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(parent_poll_ns / 1'000'000)) <= 0) continue;
    fork_request rq{};
    const ssize_t n = ::recv(fd, &rq, sizeof rq, 0);
    if (n == 0) child_exit(0);  // the pool closed its end
    if (n != sizeof rq) continue;
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    const pid_t pid = clone_sibling(tid_address, robust_head, robust_len);
    const int err = errno;
    if (pid == 0) {
      ::close(fd);
      ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
      body(rq.index, rq.number, main_thread);
      child_exit(0);  // not reached: body ends the process
    }
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    const int answer = pid > 0 ? pid : -err;
    (void)::send(fd, &answer, sizeof answer, MSG_NOSIGNAL);
  }
}

}  // namespace procpool::detail
