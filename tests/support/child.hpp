// procpool tests: forking children, waiting for them, and making sure they end.
// A child forked here never returns into Catch2: it ends with _exit.
#pragma once

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <map>
#include <optional>
#include <system_error>
#include <vector>

#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.hpp"
#include "proc.hpp"

namespace procpool_test {

/// True when this process has no child, running or zombie.
inline bool no_children() {
  errno = 0;
  return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

/// Waits up to 10 s for child @p pid to be dead and reapable; does not reap it.
/// (Not /proc's 'Z': a thread group leader shows it while its other threads,
/// a sanitizer's say, still exit, and waitpid does not report it yet.)
inline bool wait_zombie(pid_t pid) {
  const auto t0 = Clock::now();
  for (;;) {
    siginfo_t si{};
    if (::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        si.si_pid == pid)
      return true;
    if (Clock::now() - t0 > std::chrono::seconds(10)) return false;
    sleep_ms(1);
  }
}

/// In a child: a real program's signal dispositions, not Catch2's handlers
/// for fatal signals, so that such a signal kills the child.
inline void default_signals() noexcept {
  for (int sig : {SIGINT, SIGTERM, SIGSEGV, SIGABRT, SIGILL, SIGFPE, SIGBUS}) std::signal(sig, SIG_DFL);
}

/// In a child: close its copy of the write end, then block until the parent
/// closes its own (end of file on r).
inline void wait_for_gate(int r, int w) noexcept {
  ::close(w);
  char c = 0;
  while (::read(r, &c, 1) == -1 && errno == EINTR) {
  }
}

/// Forks a child that runs @p body (returning its exit code) and always ends
/// with _exit: 98 if body threw. It dies with the test process, and after
/// 60 s at most.
template <class Body>
pid_t fork_child(Body body) {
  const pid_t test = ::getpid();
  const pid_t pid = ::fork();
  if (pid == -1) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    default_signals();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != test) ::_exit(99);
    ::alarm(60);
    int code = 0;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

/// waitpid with a deadline: the status, or nullopt if the child did not end in time.
inline std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds limit) {
  const auto t0 = Clock::now();
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r == -1 && errno != EINTR) return std::nullopt;
    if (Clock::now() - t0 > limit) return std::nullopt;
    sleep_ms(1);
  }
}

inline void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

/// How child @p pid ended, waited for at most 30 s: its exit code, or 128 + the
/// signal that killed it; -1 when it did not end in time (then it is killed).
inline int exit_status(pid_t pid) {
  const auto st = wait_child(pid, std::chrono::milliseconds(30000));
  if (!st) {
    kill_and_reap(pid);
    return -1;
  }
  return WIFEXITED(*st) ? WEXITSTATUS(*st) : 128 + WTERMSIG(*st);
}

/// Makes this process the reaper of orphaned descendants for the scope: the
/// workers of a child that dies are reparented here, where the test can
/// waitpid() them and so prove they are gone, not zombies. (PID 1 in a
/// container may never reap.)
class subreaper_scope {
 public:
  subreaper_scope() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }
  ~subreaper_scope() {
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    // Reaps whatever orphan is left (nothing else of the test's runs then).
    int st;
    while (::waitpid(-1, &st, WNOHANG) > 0) {
    }
  }
  subreaper_scope(const subreaper_scope&) = delete;
  subreaper_scope& operator=(const subreaper_scope&) = delete;
};

/// How a process waited for by wait_gone ended.
struct end_seen {
  bool gone = false;
  bool by_us = false;  // reaped here (so its status is known)
  int status = 0;
  double ms = 0;  // when it was seen gone, from the start of the wait
};

/// Waits up to @p limit for each pid to end: reaps those reparented to this
/// process (see subreaper_scope), accepts those that ended otherwise.
inline std::map<pid_t, end_seen> wait_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds limit) {
  std::map<pid_t, end_seen> r;
  for (pid_t p : pids) r[p];
  const auto t0 = Clock::now();
  for (;;) {
    bool all = true;
    for (auto& [pid, st] : r) {
      if (st.gone) continue;
      int status = 0;
      const pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w == pid) {
        st = {true, true, status, ms_since(t0)};
      } else if (w == -1 && errno == ECHILD && ended(pid)) {
        st = {true, false, 0, ms_since(t0)};
      } else {
        all = false;
      }
    }
    if (all || Clock::now() - t0 > limit) break;
    sleep_ms(1);
  }
  return r;
}

/// Kills and reaps what wait_gone left alive, if it is still this process's child.
inline void cleanup_survivors(const std::map<pid_t, end_seen>& r) {
  for (auto& [pid, st] : r) {
    if (st.gone) continue;
    if (proc_ppid(pid) == ::getpid()) kill_and_reap(pid);
  }
}

}  // namespace procpool_test
