// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Every system call procpool makes lives here: wrapped once, retried on EINTR,
// failures thrown as std::system_error carrying errno. Linux only (futex, prctl).
//
// The seam for tests (fmt's FMT_SYSTEM, at run time): fork, waitpid, kill,
// pidfd_open, the fork server's fork and the prctl it needs, the calls whose
// failure the library must handle, go through sys(), a table
// of function pointers that points at the real calls. A test points
// syscall_hooks at a table of its own to make one fail (tests/test_syscalls.cpp).
// A run-time switch, not a macro: every translation unit sees the same inline
// functions (no ODR break), and a call costs one load and one indirect call.
// Futexes and clocks stay out: they are hot, and the library ignores their errors.

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <exception>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <typeinfo>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace procpool::detail {

/// The system calls a test may replace. Each keeps the contract of the real
/// call: -1 with errno set on failure.
struct syscall_table {
  pid_t (*fork)();
  pid_t (*waitpid)(pid_t pid, int* status, int options);
  int (*kill)(pid_t pid, int sig);
  int (*pidfd_open)(pid_t pid, unsigned flags);
  /// A pool's fork server (fork_server.hpp) starts worker @p index, named
  /// with @p number: the worker's pid.
  pid_t (*fork_in_server)(int server_fd, std::uint32_t index, std::uint32_t number);
  /// prctl(PR_GET_TID_ADDRESS), in the fork server: 0, or -1 with errno set.
  int (*get_tid_address)(int** address);
};

/// pidfd_open(2) through syscall(): Linux 5.3, in every C library's headers or not.
inline int raw_pidfd_open(pid_t pid, unsigned flags) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, flags));
#else
  (void)pid;
  (void)flags;
  errno = ENOSYS;
  return -1;
#endif
}

/// How long the parent waits for a pool's fork server to answer: a fork
/// copies the page tables of the parent as it was when the pool was built.
inline constexpr int fork_server_answer_ms = 30'000;

/// One request to a pool's fork server, and its answer: a pid or -errno.
struct fork_request {
  std::uint32_t index, number;
};

/// Receives one int from @p fd within @p timeout_ms: 0, or -1 with errno set
/// (ETIMEDOUT; EPIPE when the peer has closed).
inline int recv_int(int fd, int& value, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int ready;
  do {
    ready = ::poll(&p, 1, timeout_ms);
  } while (ready == -1 && errno == EINTR);
  if (ready == 0) errno = ETIMEDOUT;
  if (ready <= 0) return -1;
  ssize_t n;
  do {
    n = ::recv(fd, &value, sizeof value, 0);
  } while (n == -1 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof value)) return 0;
  if (n >= 0) errno = EPIPE;
  return -1;
}

/// The fork server's side of a request (SOCK_SEQPACKET: one message each way).
inline pid_t request_fork(int server_fd, std::uint32_t index, std::uint32_t number) {
  const fork_request rq{index, number};
  ssize_t n;
  do {
    n = ::send(server_fd, &rq, sizeof rq, MSG_NOSIGNAL);
  } while (n == -1 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof rq)) return -1;
  int answer = 0;
  if (recv_int(server_fd, answer, fork_server_answer_ms) != 0) return -1;
  if (answer > 0) return answer;
  errno = -answer;
  return -1;
}

inline int raw_get_tid_address(int** address) { return ::prctl(PR_GET_TID_ADDRESS, address); }

/// The real calls; a test copies this table and replaces the call it fails.
inline constexpr syscall_table real_syscalls{&::fork,          &::waitpid,   &::kill,
                                             &raw_pidfd_open, &request_fork, &raw_get_tid_address};

/// The table in use. A table installed here must outlive its installation;
/// fork's hook runs with every signal blocked and stdout/stderr locked.
inline constinit std::atomic<const syscall_table*> syscall_hooks{&real_syscalls};

inline const syscall_table& sys() noexcept {
  return *syscall_hooks.load(std::memory_order_acquire);
}

[[noreturn]] inline void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

/// Calls fn() until it does not fail with EINTR.
template <class Fn>
auto retry_eintr(Fn fn) {
  decltype(fn()) r;
  do {
    r = fn();
  } while (r == -1 && errno == EINTR);
  return r;
}

inline std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

/// The CPU the calling thread runs on (a hint: it may move at once); -1 if unknown.
inline int current_cpu() noexcept { return ::sched_getcpu(); }

/// Gives the CPU to another runnable thread, if any.
inline void yield_cpu() noexcept { ::sched_yield(); }

/// monotonic_ns() + @p d, saturated: a huge or infinite timeout means "never".
template <class Rep, class Period>
std::int64_t deadline_after(std::chrono::duration<Rep, Period> d) noexcept {
  constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
  const double ns = std::chrono::duration<double, std::nano>(d).count();
  const std::int64_t now = monotonic_ns();
  if (!(ns < static_cast<double>(never - now))) return never;  // also catches NaN
  return ns <= 0 ? now : now + static_cast<std::int64_t>(ns);
}

inline void sleep_ns(std::int64_t ns) noexcept {
  timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  while (::nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

/// Flushes C stdio and the standard iostreams, so that nothing buffered is
/// printed twice after fork, or lost at _exit.
inline void flush_stdio() noexcept {
  try {
    std::cout.flush();
    std::cerr.flush();
    std::clog.flush();
  } catch (...) {
  }
  std::fflush(nullptr);
}

/// Ends a forked child: flushes stdio, then _exit, so the parent's atexit
/// handlers and static destructors never run in the child.
[[noreturn]] inline void child_exit(int code) noexcept {
  flush_stdio();
  ::_exit(code);
}

/// Demangled name of a type_info ("std::runtime_error").
inline std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(mangled);
}

/// The type and message of the exception being handled; call inside a catch block.
inline std::pair<std::string, std::string> describe_current_exception() {
  const std::type_info* t = abi::__cxa_current_exception_type();
  std::string type = t ? demangle(t->name()) : std::string("unknown exception");
  std::string what;
  try {
    throw;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  return {std::move(type), std::move(what)};
}

/// "SIGSEGV" for 11; "signal 64" when the C library has no abbreviation.
inline std::string signal_name(int sig) {
  if (const char* abbrev = ::sigabbrev_np(sig)) return std::string("SIG") + abbrev;
  return "signal " + std::to_string(sig);
}

/// Python's exitcode for a waitpid status: n for exit(n), -N for signal N.
inline int exitcode_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 1;
}

/// The exit code of a child that another part of the program reaped first
/// (SIGCHLD set to SIG_IGN, or a waitpid(-1) loop): how it ended is unknown.
inline constexpr int reaped_elsewhere = std::numeric_limits<int>::min();

/// "exited with code 3" / "was killed by SIGSEGV".
inline std::string describe_exitcode(int exitcode) {
  if (exitcode == reaped_elsewhere)
    return "ended, and was reaped by another part of this program (SIGCHLD set to SIG_IGN, or "
           "a waitpid(-1) loop), so how is unknown; leave procpool's children to procpool";
  if (exitcode < 0) return "was killed by " + signal_name(-exitcode);
  return "exited with code " + std::to_string(exitcode);
}

/// waitpid(pid) retried on EINTR. With WNOHANG returns nullopt while the child runs.
inline std::optional<int> wait_pid(pid_t pid, bool block) {
  int status = 0;
  pid_t r = retry_eintr([&] { return sys().waitpid(pid, &status, block ? 0 : WNOHANG); });
  if (r == -1) throw_errno("waitpid");
  if (r == 0) return std::nullopt;
  return status;
}

/// kill(pid, sig); a process that is already gone is not an error.
inline void send_signal(pid_t pid, int sig) {
  if (sys().kill(pid, sig) == -1 && errno != ESRCH) throw_errno("kill");
}

/// pidfd_open(pid) retried on EINTR: an fd that polls readable (POLLIN) once the
/// process has ended, and names that process only, even after its pid is reused.
/// Close-on-exec, as every pidfd is. ENOSYS before Linux 5.3.
inline int open_pidfd(pid_t pid) {
  const int fd = retry_eintr([&] { return sys().pidfd_open(pid, 0); });
  if (fd == -1) throw_errno("pidfd_open");
  return fd;
}

inline std::atomic<pid_t>& cached_pid() noexcept {
  static std::atomic<pid_t> pid{0};
  return pid;
}
inline void refresh_pid() noexcept { cached_pid().store(::getpid(), std::memory_order_relaxed); }
/// This process's pid without a system call (glibc no longer caches getpid()):
/// kept by a pthread_atfork child handler, registered on the first call, so it
/// is right in any child forked after that, by procpool or not.
inline pid_t current_pid() noexcept {
  static const bool registered = [] {
    refresh_pid();
    return ::pthread_atfork(nullptr, nullptr, refresh_pid) == 0;
  }();
  return registered ? cached_pid().load(std::memory_order_relaxed) : ::getpid();
}

/// The calling thread's id (unique across processes) without a system call
/// after the first: cached per thread, and looked up again in a fork, whose
/// pid differs from the one cached with it.
inline pid_t current_tid() noexcept {
  thread_local pid_t pid = 0, tid = 0;
  const pid_t now = current_pid();
  if (pid != now) {
    tid = ::gettid();
    pid = now;
  }
  return tid;
}

/// True when process @p pid has ended: reaped (no such process), or a zombie
/// not yet reaped (its /proc state is Z or X). Not for pid 0 or this process.
inline bool process_gone(pid_t pid) noexcept {
  if (::kill(pid, 0) == -1 && errno == ESRCH) return true;
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) return errno == ENOENT;
  char buf[512];
  ssize_t n;
  do n = ::read(fd, buf, sizeof buf - 1);
  while (n == -1 && errno == EINTR);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  // "pid (comm) S ...": the state follows the last ')' (comm may hold any byte).
  const char* close_paren = std::strrchr(buf, ')');
  return close_paren && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

/// The number of CPUs online (Python's os.cpu_count()).
inline std::size_t cpu_count() noexcept {
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<std::size_t>(n) : 1;
}

/// Opens /proc/self/statm for resident_bytes(); -1 (errno set) if /proc is not
/// there. /proc/self is resolved at the open: a forked child opens its own.
inline int open_self_statm() noexcept {
  return retry_eintr([] { return ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC); });
}

/// close(fd) for fd >= 0, never retried: Linux frees the fd even when close fails with EINTR.
inline void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

/// The current resident set size, in bytes, of the process whose statm
/// @p fd is (open_self_statm()): one pread and a parse; 0 if it cannot be read.
inline std::uint64_t resident_bytes(int fd) noexcept {
  static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  char buf[128];
  const ssize_t n = retry_eintr([&] { return ::pread(fd, buf, sizeof buf, 0); });
  if (n <= 0) return 0;
  // "size resident shared text lib data dt", in pages.
  const char* const end = buf + n;
  const char* p = static_cast<const char*>(std::memchr(buf, ' ', static_cast<std::size_t>(n)));
  std::uint64_t pages = 0;
  if (!p || std::from_chars(p + 1, end, pages).ec != std::errc()) return 0;
  return pages * page;
}

/// This process's resident set size now (opens, reads, closes); 0 if unknown.
inline std::uint64_t self_resident_bytes() noexcept {
  const int fd = open_self_statm();
  if (fd < 0) return 0;
  const std::uint64_t r = resident_bytes(fd);
  close_fd(fd);
  return r;
}

/// Asks the kernel to SIGKILL this process when the thread that forked it ends,
/// then closes the race where that happened before the prctl: returns false if
/// the parent is already gone.
inline bool die_with_parent(pid_t expected_parent) noexcept {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  return ::getppid() == expected_parent;
}

// futex on a 32-bit word in MAP_SHARED memory: works across processes
// (no FUTEX_PRIVATE_FLAG).
inline void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                       std::int64_t timeout_ns) noexcept {
  timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000),
              static_cast<long>(timeout_ns % 1'000'000'000)};
  // EINTR, EAGAIN (value changed) and ETIMEDOUT all mean "look again".
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr,
            0);
}

inline void futex_wake_all(std::atomic<std::uint32_t>* word) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr,
            nullptr, 0);
}

/// Wakes at most @p n waiters on @p word.
inline void futex_wake(std::atomic<std::uint32_t>* word, int n) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, n, nullptr, nullptr, 0);
}

/// Forks with every signal blocked and stdout/stderr locked, so the child starts
/// with no signal handler half-run and no stdio lock held by a thread that does
/// not exist in it. Stdio is flushed under those locks, so nothing buffered is
/// printed twice.
/// In the child, runs child_body() (which must not return) after restoring the mask.
template <class ChildBody>
pid_t fork_with(ChildBody&& child_body) {
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  ::flockfile(stdout);
  ::flockfile(stderr);
  // Flush while holding the locks: another thread cannot refill the buffers
  // between the flush and the fork (the child would print that text again).
  flush_stdio();
  pid_t pid = sys().fork();
  int saved = errno;
  ::funlockfile(stderr);
  ::funlockfile(stdout);
  if (pid == 0) {
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    child_body();
    child_exit(0);  // not reached: child_body ends the process
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid == -1) {
    errno = saved;
    throw_errno("fork");
  }
  return pid;
}

}  // namespace procpool::detail
