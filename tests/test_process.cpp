// Tests of procpool::Process with real fork, real signals and real pipes.
//
// Rules every test here keeps:
//  * No Catch2 assertion runs in a child: a child only reports through a pipe
//    or its exit code, and the parent checks.
//  * Catch2 installs handlers for SIGTERM, SIGABRT, SIGSEGV, ... while a test
//    runs, and a forked child inherits them. A child that is meant to die by one
//    of those signals first calls default_signals() and only then tells the
//    parent it is ready, so the signal kills it instead of making it print a
//    Catch2 failure report.
//  * No assertion runs while fd 1 or fd 2 is redirected (its report would land
//    in the temporary file): redirections are restored first.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/child.hpp"
#include "support/pipe.hpp"
#include "support/proc.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <stdio_ext.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace procpool_test;
using Task = procpool::Process<std::function<void()>>;

/// Waits (at most 5 s) for the one byte a child writes once it is ready.
bool wait_ready(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 5000) != 1) return false;
  char c = 0;
  return ::read(fd, &c, 1) == 1 && c == 'r';
}

/// In a child: tell the parent "ready" through fd, then sleep until killed.
[[noreturn]] void ready_then_sleep(int fd) noexcept {
  default_signals();
  write_all(fd, "r");
  for (;;) ::pause();
}

/// Points fd (1 or 2) at an unlinked temporary file until restore().
class Redirect {
 public:
  explicit Redirect(int fd) : fd_(fd) {
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    char path[] = "/tmp/procpool-test-XXXXXX";
    file_ = ::mkstemp(path);
    REQUIRE(file_ >= 0);
    ::unlink(path);
    saved_ = ::dup(fd_);
    REQUIRE(saved_ >= 0);
    REQUIRE(::dup2(file_, fd_) == fd_);
  }
  Redirect(const Redirect&) = delete;
  Redirect& operator=(const Redirect&) = delete;
  ~Redirect() { restore(); }

  /// Puts fd back and returns what was written to the file.
  std::string restore() {
    if (saved_ < 0) return {};
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    ::dup2(saved_, fd_);
    ::close(std::exchange(saved_, -1));
    std::string text;
    char buf[512];
    off_t at = 0;
    for (ssize_t n; (n = ::pread(file_, buf, sizeof buf, at)) > 0; at += n) {
      text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(std::exchange(file_, -1));
    return text;
  }

 private:
  int fd_;
  int file_ = -1;
  int saved_ = -1;
};

// The atexit probe: a handler registered in the test process that writes to
// g_atexit_fd when that is set. A child must never run it.
int g_atexit_fd = -1;

void atexit_probe() {
  if (g_atexit_fd >= 0) write_all(g_atexit_fd, "atexit ran in pid " + std::to_string(::getpid()) + "\n");
}

/// Parses "Process-N"; 0 if the name has another form.
unsigned default_name_number(const std::string& name) {
  const std::string prefix = "Process-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size()) return 0;
  const std::string digits = name.substr(prefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return 0;
  return static_cast<unsigned>(std::stoul(digits));
}

}  // namespace

// ---------------------------------------------------------------------------
// Exit codes

TEST_CASE("a callable that returns gives exit code 0", "[process][exitcode]") {
  procpool::Process p([] {});
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("procpool::exit(3) in the child gives exit code 3 and unwinds", "[process][exitcode]") {
  test_pipe pipe;
  struct Unwound {
    int fd;
    ~Unwound() { write_all(fd, "unwound"); }
  };
  procpool::Process p([w = pipe.write_fd()] {
    Unwound guard{w};
    procpool::exit(3);
  });
  p.start();
  pipe.close_write();
  p.join();
  CHECK(p.exitcode() == 3);
  CHECK(read_all(pipe.read_fd()) == "unwound");
}

TEST_CASE("_exit(4) in the child gives exit code 4", "[process][exitcode]") {
  procpool::Process p([] { ::_exit(4); });
  p.start();
  p.join();
  CHECK(p.exitcode() == 4);
}

TEST_CASE("a callable that throws gives exit code 1 and one line on stderr", "[process][exitcode]") {
  procpool::Process p([] { throw std::runtime_error("boom"); });
  Redirect err(2);
  p.start();
  p.join();
  const std::string text = err.restore();
  CHECK(p.exitcode() == 1);
  CHECK(text == "Process " + p.name() + ": std::runtime_error: boom\n");
}

TEST_CASE("std::abort in the child gives exit code -SIGABRT", "[process][exitcode][signal]") {
  procpool::Process p([] {
    default_signals();
    std::abort();
  });
  p.start();
  p.join();
  CHECK(p.exitcode() == -SIGABRT);
}

TEST_CASE("kill() of a sleeping child gives exit code -SIGKILL", "[process][exitcode][signal]") {
  test_pipe ready;
  procpool::Process p([w = ready.write_fd()] { ready_then_sleep(w); });
  p.start();
  REQUIRE(wait_ready(ready.read_fd()));
  p.kill();
  p.join();
  CHECK(p.exitcode() == -SIGKILL);
}

TEST_CASE("terminate() of a sleeping child gives exit code -SIGTERM promptly",
          "[process][exitcode][signal]") {
  test_pipe ready;
  procpool::Process p([w = ready.write_fd()] { ready_then_sleep(w); });
  p.start();
  REQUIRE(wait_ready(ready.read_fd()));
  const auto t0 = Clock::now();
  p.terminate();
  REQUIRE(p.join_for(1s));
  CHECK(ms_since(t0) < 500.0);
  CHECK(p.exitcode() == -SIGTERM);
}

TEST_CASE("kill() and terminate() after the child ended change nothing", "[process][signal]") {
  procpool::Process p([] { procpool::exit(6); });
  p.start();
  p.join();
  CHECK_NOTHROW(p.terminate());
  CHECK_NOTHROW(p.kill());
  CHECK(p.exitcode() == 6);
}

// ---------------------------------------------------------------------------
// join / join_for

TEST_CASE("join_for times out in about the time asked, then kill and join", "[process][join]") {
  test_pipe ready;
  procpool::Process p([w = ready.write_fd()] { ready_then_sleep(w); });
  p.start();
  REQUIRE(wait_ready(ready.read_fd()));
  const auto t0 = Clock::now();
  const bool ended = p.join_for(200ms);
  const double took_ms = ms_since(t0);
  CHECK_FALSE(ended);
  CHECK(took_ms >= 190.0);
  CHECK(took_ms < 600.0);
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());
  p.kill();
  p.join();
  CHECK(p.exitcode() == -SIGKILL);
}

TEST_CASE("join_for returns true as soon as the child ends", "[process][join]") {
  procpool::Process p([] { ::usleep(50'000); });
  p.start();
  const auto t0 = Clock::now();
  CHECK(p.join_for(5s));
  CHECK(ms_since(t0) < 1000.0);
  CHECK(p.exitcode() == 0);
  CHECK(p.join_for(0s));  // already reaped
}

// A huge timeout (hours::max()) means "wait": the deadline saturates instead
// of overflowing (which would be undefined and return false at once).
TEST_CASE("join_for with a huge timeout waits for the child", "[process][join]") {
  procpool::Process p([] { ::usleep(200'000); });
  p.start();
  const bool ended = p.join_for(std::chrono::hours::max());
  const bool alive = p.is_alive();
  p.join();
  CHECK(ended);
  CHECK_FALSE(alive);
  CHECK(p.exitcode() == 0);
}

TEST_CASE("join twice is fine", "[process][join]") {
  procpool::Process p([] { procpool::exit(2); });
  p.start();
  p.join();
  p.join();
  CHECK(p.exitcode() == 2);
}

// ---------------------------------------------------------------------------
// pids and names

TEST_CASE("the pid is the same seen from both sides", "[process][pid]") {
  test_pipe pipe;
  procpool::Process p([w = pipe.write_fd()] {
    const auto parent = procpool::parent_process();
    write_all(w, std::to_string(::getpid()) + "\n" + std::to_string(procpool::current_process().pid()) +
                     "\n" + std::to_string(parent ? parent->pid() : -1) + "\n" +
                     (parent ? parent->name() : std::string("<none>")) + "\n" +
                     procpool::current_process().name() + "\n");
  });
  CHECK(p.pid() == 0);
  p.start();
  pipe.close_write();
  const std::string text = read_all(pipe.read_fd());
  p.join();
  REQUIRE(p.exitcode() == 0);

  const std::string expected = std::to_string(p.pid()) + "\n" + std::to_string(p.pid()) + "\n" +
                               std::to_string(::getpid()) + "\n" + "MainProcess\n" + p.name() + "\n";
  CHECK(text == expected);
  CHECK(p.pid() > 0);
  CHECK(p.pid() != ::getpid());
}

TEST_CASE("the main process is MainProcess and has no parent", "[process][pid]") {
  CHECK(procpool::current_process().name() == "MainProcess");
  CHECK(procpool::current_process().pid() == ::getpid());
  CHECK_FALSE(procpool::parent_process().has_value());
  CHECK(procpool::cpu_count() >= 1);
}

TEST_CASE("a grandchild sees its parent's name and pid", "[process][pid]") {
  test_pipe pipe;
  procpool::Process outer([w = pipe.write_fd()] {
    procpool::Process inner([w] {
      const auto parent = procpool::parent_process();
      write_all(w, (parent ? parent->name() + " " + std::to_string(parent->pid()) : std::string("<none>")) +
                       " " + procpool::current_process().name() + "\n");
    });
    inner.set_name("inner");
    inner.start();
    inner.join();
    procpool::exit(*inner.exitcode() == 0 ? 0 : 9);
  });
  outer.set_name("outer");
  outer.start();
  pipe.close_write();
  const std::string text = read_all(pipe.read_fd());
  outer.join();
  CHECK(outer.exitcode() == 0);
  CHECK(text == "outer " + std::to_string(outer.pid()) + " inner\n");
}

TEST_CASE("default names are Process-N, numbered in order, and set_name renames", "[process][name]") {
  procpool::Process a([] {});
  procpool::Process b([] {});
  const unsigned na = default_name_number(a.name());
  const unsigned nb = default_name_number(b.name());
  INFO(a.name() << " " << b.name());
  CHECK(na > 0);
  CHECK(nb == na + 1);

  test_pipe pipe;
  procpool::Process c([w = pipe.write_fd()] { write_all(w, procpool::current_process().name()); });
  c.set_name("renamed worker");
  CHECK(c.name() == "renamed worker");
  c.start();
  pipe.close_write();
  CHECK(read_all(pipe.read_fd()) == "renamed worker");
  c.join();
  CHECK(c.exitcode() == 0);
}

// ---------------------------------------------------------------------------
// State: is_alive, exitcode, usage errors

TEST_CASE("is_alive and exitcode before start, while running and after", "[process][state]") {
  test_pipe gate;
  procpool::Process p([r = gate.read_fd(), w = gate.write_fd()] {
    wait_for_gate(r, w);
    procpool::exit(5);
  });
  CHECK_FALSE(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());

  p.start();
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());
  ::usleep(20'000);
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());

  gate.close_write();
  p.join();
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == 5);
}

TEST_CASE("start twice throws usage_error", "[process][state]") {
  procpool::Process p([] {});
  p.start();
  CHECK_THROWS_AS(p.start(), procpool::usage_error);
  p.join();
  CHECK_THROWS_AS(p.start(), procpool::usage_error);
  CHECK(p.exitcode() == 0);
}

TEST_CASE("join and join_for before start throw usage_error", "[process][state]") {
  procpool::Process p([] {});
  CHECK_THROWS_AS(p.join(), procpool::usage_error);
  CHECK_THROWS_AS(p.join_for(10ms), procpool::usage_error);
  CHECK_THROWS_AS(p.join(), procpool::error);  // usage_error is a procpool::error
  CHECK_NOTHROW(p.terminate());
  CHECK_NOTHROW(p.kill());
}

// ---------------------------------------------------------------------------
// Moving

TEST_CASE("a vector of running processes survives reallocation", "[process][move]") {
  test_pipe gate;
  std::vector<Task> processes;  // no reserve: emplace_back moves the started ones
  for (int i = 0; i < 6; ++i) {
    processes.emplace_back([i, r = gate.read_fd(), w = gate.write_fd()] {
      wait_for_gate(r, w);
      procpool::exit(10 + i);
    });
    processes.back().start();
  }
  std::set<pid_t> pids;
  for (auto& p : processes) {
    CHECK(p.is_alive());
    pids.insert(p.pid());
  }
  CHECK(pids.size() == processes.size());
  CHECK(pids.count(0) == 0);

  gate.close_write();
  for (std::size_t i = 0; i < processes.size(); ++i) {
    processes[i].join();
    CHECK(processes[i].exitcode() == 10 + static_cast<int>(i));
  }
}

TEST_CASE("move assignment of a running process into another", "[process][move]") {
  test_pipe gate;
  Task a([r = gate.read_fd(), w = gate.write_fd()] {
    wait_for_gate(r, w);
    procpool::exit(7);
  });
  a.set_name("mover");
  a.start();
  const pid_t apid = a.pid();

  Task b([] { procpool::exit(5); });
  b.start();
  const pid_t bpid = b.pid();

  b = std::move(a);  // joins b's own child first

  CHECK(reaped(bpid));
  CHECK(a.pid() == 0);
  CHECK_FALSE(a.is_alive());
  CHECK_FALSE(a.exitcode().has_value());
  CHECK_THROWS_AS(a.join(), procpool::usage_error);

  CHECK(b.pid() == apid);
  CHECK(b.name() == "mover");
  CHECK(b.is_alive());

  Task c(std::move(b));  // move construction of a running process
  CHECK(b.pid() == 0);
  CHECK(c.pid() == apid);
  CHECK(c.is_alive());

  gate.close_write();
  c.join();
  CHECK(c.exitcode() == 7);
}

TEST_CASE("moving a finished process keeps its exit code", "[process][move]") {
  Task a([] { procpool::exit(8); });
  a.start();
  a.join();
  Task b(std::move(a));
  CHECK(b.exitcode() == 8);
  CHECK_FALSE(b.is_alive());
  CHECK_FALSE(a.exitcode().has_value());
}

// A moved-from Process must not start: it would run a moved-from callable.
TEST_CASE("a moved-from Process cannot be started", "[process][move]") {
  Task a([] {});
  Task b(std::move(a));
  Redirect err(2);  // the moved-from std::function throws bad_function_call in the child
  bool threw_usage_error = false;
  try {
    a.start();
  } catch (const procpool::usage_error&) {
    threw_usage_error = true;
  }
  if (a.pid() != 0) a.join();
  err.restore();
  CHECK(threw_usage_error);
  CHECK(a.pid() == 0);
}

// ---------------------------------------------------------------------------
// Destruction: no zombies, daemons

TEST_CASE("no zombie is left after a Process is destroyed", "[process][reap]") {
  pid_t joined = 0, unjoined = 0, killed = 0;
  {
    procpool::Process p([] {});
    p.start();
    p.join();
    joined = p.pid();
  }
  {
    procpool::Process p([] { ::usleep(20'000); });  // the destructor joins it
    p.start();
    unjoined = p.pid();
  }
  {
    test_pipe ready;
    procpool::Process p([w = ready.write_fd()] { ready_then_sleep(w); });
    p.start();
    REQUIRE(wait_ready(ready.read_fd()));
    p.kill();
    killed = p.pid();
  }
  CHECK(reaped(joined));
  CHECK(reaped(unjoined));
  CHECK(reaped(killed));
}

TEST_CASE("the destructor terminates and reaps a daemon sleeping forever", "[process][daemon]") {
  test_pipe ready;
  pid_t pid = 0;
  double took_ms = 0;
  {
    procpool::Process p([w = ready.write_fd()] { ready_then_sleep(w); });
    CHECK_FALSE(p.daemon());
    p.set_daemon(true);
    CHECK(p.daemon());
    p.start();
    pid = p.pid();
    REQUIRE(wait_ready(ready.read_fd()));
    const auto t0 = Clock::now();
    {
      auto dying = std::move(p);  // the moved-to Process is a daemon too
      (void)dying;
    }
    took_ms = ms_since(t0);
    CHECK(p.pid() == 0);
  }
  CHECK(took_ms < 1500.0);
  CHECK(reaped(pid));
}

TEST_CASE("a daemon that ignores SIGTERM is killed one second later", "[process][daemon]") {
  test_pipe ready;
  pid_t pid = 0;
  const auto t0 = Clock::now();
  {
    procpool::Process p([w = ready.write_fd()] {
      std::signal(SIGTERM, SIG_IGN);
      write_all(w, "r");
      for (;;) ::pause();
    });
    p.set_daemon(true);
    p.start();
    pid = p.pid();
    REQUIRE(wait_ready(ready.read_fd()));
  }
  const double took_ms = ms_since(t0);
  CHECK(took_ms >= 900.0);
  CHECK(took_ms < 1800.0);
  CHECK(reaped(pid));
}

// ---------------------------------------------------------------------------
// stdio and atexit

TEST_CASE("stdio buffered before start is written once, the child's is not lost", "[process][stdio]") {
  int code = -100;
  Redirect out(1);
  std::printf("before");  // neither newline nor flush: sits in the parent's buffer
  {
    procpool::Process p([] { std::printf("child\n"); });
    p.start();
    p.join();
    code = p.exitcode().value_or(-99);
  }
  std::printf("after\n");
  std::fflush(stdout);
  const std::string text = out.restore();
  CHECK(code == 0);
  CHECK(text == "beforechild\nafter\n");
}

TEST_CASE("iostreams buffered before start are written once, the child's are not lost",
          "[process][stdio]") {
  int code = -100;
  Redirect out(1);
  std::cout << "before";
  {
    procpool::Process p([] {
      std::cout << "child";  // no flush, no newline: the child must flush it at exit
      procpool::exit(2);
    });
    p.start();
    p.join();
    code = p.exitcode().value_or(-99);
  }
  std::cout << "after\n" << std::flush;
  const std::string text = out.restore();
  CHECK(code == 2);
  CHECK(text == "beforechildafter\n");
}

// fork_with must flush stdio *under* the stdout/stderr locks: otherwise another
// thread's printf can land in stdout's buffer between flush and fork, and the
// child writes it again at exit. Each child reports whether it started with
// bytes pending in stdout's buffer (__fpending).
TEST_CASE("another thread's stdout output is never copied into a child",
          "[process][stdio][threads]") {
  std::cout.flush();
  std::fflush(nullptr);
  const int saved = ::dup(1);
  REQUIRE(saved >= 0);
  const int devnull = ::open("/dev/null", O_WRONLY);
  REQUIRE(devnull >= 0);
  ::dup2(devnull, 1);  // a regular, fully buffered stdout that costs nothing
  ::close(devnull);

  std::atomic<bool> stop{false};
  std::thread printer([&stop] {
    for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) std::printf("line %ld\n", i);
  });
  int forks = 0;
  int dirty = 0;
  const auto t0 = Clock::now();
  while (ms_since(t0) < 1000.0 && dirty == 0) {
    procpool::Process p([] { ::_exit(__fpending(stdout) > 0 ? 1 : 0); });
    p.start();
    p.join();
    ++forks;
    if (p.exitcode() != 0) ++dirty;
  }
  stop = true;
  printer.join();
  std::fflush(stdout);
  ::dup2(saved, 1);
  ::close(saved);
  INFO(forks << " forks");
  CHECK(dirty == 0);
}

TEST_CASE("the child never runs the parent's atexit handlers", "[process][atexit]") {
  static const bool registered = std::atexit(atexit_probe) == 0;
  REQUIRE(registered);

  test_pipe probe;
  g_atexit_fd = probe.write_fd();
  std::vector<int> codes;
  {
    procpool::Process returns([] {});
    procpool::Process exits([] { procpool::exit(3); });
    procpool::Process throws([] { throw std::logic_error("no atexit please"); });
    Redirect err(2);  // the thrown exception's report
    returns.start();
    exits.start();
    throws.start();
    returns.join();
    exits.join();
    throws.join();
    err.restore();
    codes = {returns.exitcode().value_or(-99), exits.exitcode().value_or(-99),
             throws.exitcode().value_or(-99)};
  }
  g_atexit_fd = -1;
  probe.close_write();
  CHECK(codes == std::vector<int>{0, 3, 1});
  CHECK(read_all(probe.read_fd()).empty());
}
