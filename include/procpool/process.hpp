// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file process.hpp
/// procpool::Process, a callable run in a forked child, and the
/// current_process() / parent_process() / cpu_count() helpers.

#include <atomic>
#include <chrono>
#include <concepts>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "detail/posix.hpp"
#include "errors.hpp"

namespace procpool {

/// What current_process() and parent_process() describe.
class process_info {
 public:
  process_info(pid_t pid, std::string name) : pid_(pid), name_(std::move(name)) {}
  /// The process id.
  pid_t pid() const noexcept { return pid_; }
  /// "MainProcess" for the program itself, "Process-N" or the name given to a
  /// Process, "ForkPoolWorker-N" in a pool's worker.
  const std::string& name() const noexcept { return name_; }

 private:
  pid_t pid_;
  std::string name_;
};

/// The process this code runs in (Python's multiprocessing.current_process()).
/// @code
/// std::printf("Process ID: %d\n", procpool::current_process().pid());
/// @endcode
process_info current_process();

/// The process that started this one, or nullopt in the main process.
std::optional<process_info> parent_process();

/// The number of CPUs online, the default number of pool workers.
std::size_t cpu_count() noexcept;

/// Ends the current procpool child with exit code @p code (Python's sys.exit(n)
/// in a child): unwinds the callable's stack, flushes stdio and _exit()s, so the
/// parent's atexit handlers never run. Outside a procpool child, calls std::exit.
[[noreturn]] void exit(int code);

namespace detail {

struct process_state {
  std::string name = "MainProcess";
  pid_t parent_pid = 0;
  std::string parent_name;
  bool in_child = false;
};

inline process_state& this_process() {
  static process_state s;
  return s;
}

/// Thrown by procpool::exit in a child; deliberately not a std::exception so
/// that `catch (const std::exception&)` in user code does not swallow it.
struct exit_request {
  int code;
};

inline std::string next_process_name(const char* prefix) {
  static std::atomic<unsigned> counter{0};
  return prefix + std::to_string(counter.fetch_add(1) + 1);
}

/// Forks a child named @p name that runs body() and ends with _exit: 0 when body
/// returns, n on procpool::exit(n), 1 after printing an escaping exception the
/// way Python prints a traceback ("Process Process-1: std::runtime_error: boom").
template <class Body>
pid_t spawn(const std::string& name, Body&& body) {
  const pid_t parent = ::getpid();
  return fork_with([&]() noexcept {
    process_state& s = this_process();
    s.parent_name = std::move(s.name);
    s.parent_pid = parent;
    s.name = name;
    s.in_child = true;
    int code = 0;
    try {
      body();
    } catch (const exit_request& e) {
      code = e.code;
    } catch (...) {
      auto [type, what] = describe_current_exception();
      std::fprintf(stderr, "Process %s: %s: %s\n", name.c_str(), type.c_str(), what.c_str());
      code = 1;
    }
    child_exit(code);
  });
}

}  // namespace detail

/// A callable and its arguments, run in a forked child process
/// (Python's multiprocessing.Process). Movable, not copyable, like std::thread.
///
/// The callable and arguments are stored by value and reach the child through
/// fork, so anything works: lambdas with captures, references via std::ref, types
/// that cannot be serialized. The child flushes stdio and ends with _exit; it never
/// returns into the caller and never runs the parent's atexit handlers.
///
/// @code
/// void print_number(int n) { std::printf("Process %d prints %d.\n", n, n); }
///
/// procpool::Process p(print_number, 3);
/// p.start();
/// p.join();
/// assert(p.exitcode() == 0);
/// @endcode
///
/// Destroying a started, unjoined Process joins it (like std::jthread); a daemon
/// Process is terminated instead (SIGTERM, then SIGKILL after one second). Either
/// way the child is reaped: no zombie is left.
template <class F, class... Args>
class Process {
  static_assert(std::is_invocable_v<F, Args...>,
                "procpool::Process: the callable cannot be called with these arguments "
                "(they are passed as rvalues, as std::thread does; use std::ref for a reference)");

 static constexpr bool nothrow_move =
      std::is_nothrow_move_constructible_v<std::tuple<F, Args...>>;

 public:
  /// Stores the callable and its arguments; nothing runs until start().
  explicit Process(F f, Args... args)
      : call_(std::in_place, std::move(f), std::move(args)...),
        name_(detail::next_process_name("Process-")) {}

  Process(Process&& other) noexcept(nothrow_move) { take(std::move(other)); }
  Process& operator=(Process&& other) noexcept(nothrow_move) {
    if (this != &other) {
      finish();
      take(std::move(other));
    }
    return *this;
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  /// Joins (or, for a daemon, terminates) a child still running; never throws.
  ~Process() { finish(); }

  /// Forks the child, which calls the callable with the arguments.
  /// @throws usage_error when already started; std::system_error when fork fails.
  void start();

  /// Waits for the child to end. @throws usage_error when not started.
  void join();

  /// Waits at most @p timeout; true when the child has ended.
  template <class Rep, class Period>
  bool join_for(std::chrono::duration<Rep, Period> timeout);

  /// Python's exitcode: empty while running or before start(); 0 when the callable
  /// returned, n on exit(n) or procpool::exit(n), -N when killed by signal N,
  /// 1 when the callable threw.
  std::optional<int> exitcode() const;

  /// The child's pid, 0 before start().
  pid_t pid() const noexcept { return pid_; }

  /// True from start() until the child ends.
  bool is_alive() const { return pid_ != 0 && !exitcode(); }

  /// Sends SIGTERM (no effect once the child has ended).
  void terminate() { signal(SIGTERM); }

  /// Sends SIGKILL (no effect once the child has ended).
  void kill() { signal(SIGKILL); }

  /// "Process-N" unless set; the child sees it as current_process().name().
  const std::string& name() const noexcept { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  /// A daemon Process is terminated, not joined, by the destructor. Set before start().
  bool daemon() const noexcept { return daemon_; }
  void set_daemon(bool daemon) { daemon_ = daemon; }

 private:
  void take(Process&& o) noexcept(nothrow_move);
  void signal(int sig);
  void finish() noexcept;
  bool reap(bool block) const;

  // optional, so that a moved-to Process can hold closures, which cannot be assigned.
  std::optional<std::tuple<F, Args...>> call_;
  std::string name_;
  bool daemon_ = false;
  pid_t pid_ = 0;
  mutable std::optional<int> exitcode_;
};

// ---------------------------------------------------------------------------

inline process_info current_process() { return {::getpid(), detail::this_process().name}; }

inline std::optional<process_info> parent_process() {
  const auto& s = detail::this_process();
  if (!s.in_child) return std::nullopt;
  return process_info{s.parent_pid, s.parent_name};
}

inline std::size_t cpu_count() noexcept { return detail::cpu_count(); }

[[noreturn]] inline void exit(int code) {
  if (detail::this_process().in_child) throw detail::exit_request{code};
  std::exit(code);
}

template <class F, class... Args>
void Process<F, Args...>::start() {
  if (pid_ != 0) throw usage_error("procpool::Process::start: " + name_ + " was already started; a Process starts once");
  if (!call_) throw usage_error("procpool::Process::start: this Process was moved from");
  // The child runs the callable once, so it may have the stored values (as std::thread).
  pid_ = detail::spawn(name_, [this] {
    std::apply([](F& f, Args&... a) { std::invoke(std::move(f), std::move(a)...); }, *call_);
  });
}

template <class F, class... Args>
bool Process<F, Args...>::reap(bool block) const {
  if (exitcode_) return true;
  if (auto status = detail::wait_pid(pid_, block)) {
    exitcode_ = detail::exitcode_from_status(*status);
    return true;
  }
  return false;
}

template <class F, class... Args>
void Process<F, Args...>::join() {
  if (pid_ == 0) throw usage_error("procpool::Process::join: " + name_ + " was never started; call start() first");
  reap(true);
}

template <class F, class... Args>
template <class Rep, class Period>
bool Process<F, Args...>::join_for(std::chrono::duration<Rep, Period> timeout) {
  if (pid_ == 0) throw usage_error("procpool::Process::join_for: " + name_ + " was never started; call start() first");
  const std::int64_t deadline = detail::deadline_after(timeout);
  std::int64_t pause = 50'000;  // poll, backing off from 50 us to 5 ms
  while (!reap(false)) {
    const std::int64_t left = deadline - detail::monotonic_ns();
    if (left <= 0) return false;
    detail::sleep_ns(std::min(pause, left));
    pause = std::min<std::int64_t>(pause * 2, 5'000'000);
  }
  return true;
}

template <class F, class... Args>
std::optional<int> Process<F, Args...>::exitcode() const {
  if (pid_ != 0) reap(false);
  return exitcode_;
}

template <class F, class... Args>
void Process<F, Args...>::signal(int sig) {
  if (pid_ != 0 && !reap(false)) detail::send_signal(pid_, sig);
}

template <class F, class... Args>
void Process<F, Args...>::take(Process&& o) noexcept(nothrow_move) {
  call_.reset();
  if (o.call_) call_.emplace(std::move(*o.call_));
  o.call_.reset();
  name_ = std::move(o.name_);
  daemon_ = o.daemon_;
  pid_ = std::exchange(o.pid_, 0);
  exitcode_ = std::exchange(o.exitcode_, std::nullopt);
}

template <class F, class... Args>
void Process<F, Args...>::finish() noexcept {
  if (pid_ == 0) return;
  try {
    if (daemon_ && !reap(false)) {
      detail::send_signal(pid_, SIGTERM);
      if (!join_for(std::chrono::seconds(1))) detail::send_signal(pid_, SIGKILL);
    }
    reap(true);
  } catch (...) {
    // waitpid can only fail here if someone else reaped the child: nothing left to clean.
  }
  pid_ = 0;
}

}  // namespace procpool
