// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file process.hpp
/// procpool::Process, a callable run in a forked child, and the
/// current_process() / parent_process() / active_children() / cpu_count() helpers.

#include <atomic>
#include <chrono>
#include <concepts>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/child_registry.hpp"
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

/// The procpool::Process children this process started that are still running,
/// in start order, each as its pid and the name it was started under
/// (Python's multiprocessing.active_children()). Like Python, reaps the ended
/// ones on the way: their Process keeps the exit code. Pool workers are not
/// Process objects and are not listed (Pool::pids() lists them); a closed or
/// destroyed Process is not listed. Empty in a procpool child, which starts
/// with no children. A child being joined by another thread right now is listed.
std::vector<process_info> active_children();

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

/// The number in the next child's name, counted across all kinds (as Python does).
inline unsigned next_process_number() {
  static std::atomic<unsigned> counter{0};
  return counter.fetch_add(1) + 1;
}

inline std::string next_process_name(const char* prefix) {
  return prefix + std::to_string(next_process_number());
}

/// The life of a child named @p name whose parent is @p parent: runs body() and
/// ends with _exit: 0 when body returns, n on procpool::exit(n), 1 after
/// printing an escaping exception the way Python prints a traceback
/// ("Process Process-1: std::runtime_error: boom").
template <class Body>
[[noreturn]] void run_child(const std::string& name, pid_t parent, Body& body) noexcept {
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
}

/// Forks a child named @p name that runs body() (run_child).
template <class Body>
pid_t spawn(const std::string& name, Body&& body) {
  const pid_t parent = ::getpid();
  return fork_with([&]() noexcept { run_child(name, parent, body); });
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
///
/// sentinel() is a pidfd (Linux 5.3) that polls readable once the child has
/// ended, to wait on many children, pipes or sockets at once with poll/epoll.
/// close() releases it early; most members then throw usage_error.
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

  /// Waits for the child to end. @throws usage_error when not started or closed.
  void join();

  /// Waits at most @p timeout; true when the child has ended. Throws as join().
  template <class Rep, class Period>
  bool join_for(std::chrono::duration<Rep, Period> timeout);

  /// Python's exitcode: empty while running or before start(); 0 when the callable
  /// returned, n on exit(n) or procpool::exit(n), -N when killed by signal N,
  /// 1 when the callable threw. Still answers after close().
  std::optional<int> exitcode() const;

  /// The child's pid, 0 before start(); kept after close().
  pid_t pid() const noexcept { return child_ ? child_->pid : 0; }

  /// True from start() until the child ends.
  bool is_alive() const { return child_ && !exitcode(); }

  /// Sends SIGTERM (no effect once the child has ended). @throws usage_error after close().
  void terminate() { signal(SIGTERM); }

  /// Sends SIGKILL (no effect once the child has ended). @throws usage_error after close().
  void kill() { signal(SIGKILL); }

  /// A pidfd that polls readable (POLLIN) once the child has ended (Python's
  /// sentinel). The Process owns it: do not close it, and do not reap through it
  /// (waitid(P_PIDFD)): join() or exitcode() reap. Close-on-exec.
  /// @throws usage_error before start() or after close(); std::system_error with
  /// pidfd_open's errno when start() could not open one (ENOSYS before Linux 5.3).
  int sentinel() const;

  /// Releases the pidfd and leaves active_children(); idempotent. Afterwards
  /// start(), join(), join_for(), sentinel(), terminate() and kill() throw
  /// usage_error; pid(), exitcode(), is_alive(), name() and daemon() still answer.
  /// @throws usage_error while the child is still running (join() it first).
  void close();

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
  void check_not_closed(const char* member) const;
  void check_started(const char* member) const;

  // optional, so that a moved-to Process can hold closures, which cannot be assigned.
  std::optional<std::tuple<F, Args...>> call_;
  std::string name_;
  bool daemon_ = false;
  bool closed_ = false;
  // On the heap, so that active_children()'s registry keeps its address across moves.
  std::unique_ptr<detail::started_child> child_;
};

// ---------------------------------------------------------------------------

inline process_info current_process() { return {::getpid(), detail::this_process().name}; }

inline std::optional<process_info> parent_process() {
  const auto& s = detail::this_process();
  if (!s.in_child) return std::nullopt;
  return process_info{s.parent_pid, s.parent_name};
}

inline std::vector<process_info> active_children() {
  std::vector<process_info> running;
  detail::child_registry::instance().for_each_running(
      [&](pid_t pid, const std::string& name) { running.emplace_back(pid, name); });
  return running;
}

inline std::size_t cpu_count() noexcept { return detail::cpu_count(); }

[[noreturn]] inline void exit(int code) {
  if (detail::this_process().in_child) throw detail::exit_request{code};
  std::exit(code);
}

template <class F, class... Args>
void Process<F, Args...>::check_not_closed(const char* member) const {
  if (closed_)
    throw usage_error(std::string("procpool::Process::") + member + ": " + name_ +
                      " was closed; after close() only pid(), exitcode(), is_alive() and name() "
                      "answer: make a new Process to run again");
}

template <class F, class... Args>
void Process<F, Args...>::check_started(const char* member) const {
  check_not_closed(member);
  if (!child_)
    throw usage_error(std::string("procpool::Process::") + member + ": " + name_ +
                      " was never started; call start() first");
}

template <class F, class... Args>
void Process<F, Args...>::start() {
  check_not_closed("start");
  if (child_) throw usage_error("procpool::Process::start: " + name_ + " was already started; a Process starts once");
  if (!call_) throw usage_error("procpool::Process::start: this Process was moved from");
  auto& registry = detail::child_registry::instance();
  registry.prepare_for_fork();
  auto child = std::make_unique<detail::started_child>(name_);  // before fork: nothing fails after
  // The child runs the callable once, so it may have the stored values (as std::thread).
  child->pid = detail::spawn(name_, [this] {
    std::apply([](F& f, Args&... a) { std::invoke(std::move(f), std::move(a)...); }, *call_);
  });
  // Nothing else may reap the child yet, so the pidfd names it, not a reuse of its pid.
  try {
    child->pidfd = detail::open_pidfd(child->pid);
  } catch (const std::system_error& e) {
    child->pidfd_errno = e.code().value();  // sentinel() reports it; the child runs regardless
  }
  child_ = std::move(child);
  registry.add(child_.get());
}

template <class F, class... Args>
bool Process<F, Args...>::reap(bool block) const {
  std::lock_guard reaping(child_->reap_mutex);
  return child_->reap_locked(block);
}

template <class F, class... Args>
void Process<F, Args...>::join() {
  check_started("join");
  reap(true);
}

template <class F, class... Args>
template <class Rep, class Period>
bool Process<F, Args...>::join_for(std::chrono::duration<Rep, Period> timeout) {
  check_started("join_for");
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
  if (!child_) return std::nullopt;
  std::lock_guard reaping(child_->reap_mutex);
  child_->reap_locked(false);
  return child_->exitcode;
}

template <class F, class... Args>
void Process<F, Args...>::signal(int sig) {
  check_not_closed(sig == SIGKILL ? "kill" : "terminate");
  if (child_ && !reap(false)) detail::send_signal(child_->pid, sig);
}

template <class F, class... Args>
int Process<F, Args...>::sentinel() const {
  check_started("sentinel");
  if (child_->pidfd < 0)
    throw std::system_error(child_->pidfd_errno, std::generic_category(),
                            "procpool::Process::sentinel: " + name_ +
                                " has no pidfd: pidfd_open failed when it started (it needs "
                                "Linux 5.3 or later and a free fd); join() and exitcode() still work");
  return child_->pidfd;
}

template <class F, class... Args>
void Process<F, Args...>::close() {
  if (closed_) return;
  if (child_) {
    if (!reap(false))
      throw usage_error("procpool::Process::close: " + name_ +
                        " is still running; join() it first (after terminate() or kill() to end it now)");
    detail::child_registry::instance().remove(child_.get());
    child_->close_pidfd();
  }
  closed_ = true;
}

template <class F, class... Args>
void Process<F, Args...>::take(Process&& o) noexcept(nothrow_move) {
  call_.reset();
  if (o.call_) call_.emplace(std::move(*o.call_));
  o.call_.reset();
  name_ = std::move(o.name_);
  daemon_ = o.daemon_;
  closed_ = std::exchange(o.closed_, false);
  child_ = std::move(o.child_);
}

template <class F, class... Args>
void Process<F, Args...>::finish() noexcept {
  if (!child_) return;
  try {
    if (!closed_) {
      if (daemon_ && !reap(false)) {
        detail::send_signal(child_->pid, SIGTERM);
        if (!join_for(std::chrono::seconds(1))) detail::send_signal(child_->pid, SIGKILL);
      }
      reap(true);
    }
  } catch (...) {
    // waitpid can only fail here if someone else reaped the child: nothing left to clean.
  }
  detail::child_registry::instance().remove(child_.get());
  child_->close_pidfd();
  child_.reset();
}

}  // namespace procpool
