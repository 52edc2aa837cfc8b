// Tests of Process::sentinel(), Process::close() and procpool::active_children(),
// with real fork and real signals.
//
// Rules every test here keeps (as in test_process.cpp):
//  * No Catch2 assertion runs in a child: a child reports through a pipe or its
//    exit code, and the parent checks.
//  * A child meant to die by a signal calls default_signals() first.
//  * A child that waits holds a gate: it blocks until the parent closes the
//    write end, so that no test depends on timing to keep a child running.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/pipe.hpp"
#include "support/proc.hpp"
#include "support/syscall_override.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <functional>
#include <cstdio>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/types.h>
#include <unistd.h>

namespace {

using namespace procpool_test;
using Task = procpool::Process<std::function<void()>>;

/// poll() on one fd: its revents, 0 on timeout.
short poll_one(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  const int n = ::poll(&p, 1, timeout_ms);
  return n == 1 ? p.revents : 0;
}

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

/// True when @p fd is an open pidfd. A child may reuse the number of a pidfd
/// it closed for another file (a pool worker opens /proc/self/statm).
bool is_pidfd(int fd) {
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char target[64] = {};
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  return n > 0 && std::string(target, static_cast<std::size_t>(n)) == "anon_inode:[pidfd]";
}

std::vector<pid_t> active_pids() {
  std::vector<pid_t> pids;
  for (const auto& c : procpool::active_children()) pids.push_back(c.pid());
  return pids;
}

bool has(const std::vector<pid_t>& pids, pid_t pid) {
  return std::find(pids.begin(), pids.end(), pid) != pids.end();
}

/// The message of the usage_error @p fn throws; "<no usage_error>" if it does not.
template <class Fn>
std::string usage_message(Fn fn) {
  try {
    fn();
  } catch (const procpool::usage_error& e) {
    return e.what();
  }
  return "<no usage_error>";
}

}  // namespace

// ---------------------------------------------------------------------------
// sentinel

TEST_CASE("poll on two sentinels wakes for the child that ended, not the one still running",
          "[process][sentinel]") {
  test_pipe gate;
  procpool::Process waits([r = gate.read_fd(), w = gate.write_fd()] { wait_for_gate(r, w); });
  procpool::Process ends([] { procpool::exit(3); });
  waits.start();
  ends.start();

  pollfd fds[2] = {{waits.sentinel(), POLLIN, 0}, {ends.sentinel(), POLLIN, 0}};
  REQUIRE(::poll(fds, 2, 5000) == 1);
  CHECK(fds[0].revents == 0);
  CHECK((fds[1].revents & POLLIN) != 0);
  CHECK(waits.is_alive());

  gate.close_write();
  CHECK((poll_one(waits.sentinel(), 5000) & POLLIN) != 0);
  waits.join();
  ends.join();
  CHECK(waits.exitcode() == 0);
  CHECK(ends.exitcode() == 3);
}

TEST_CASE("a sentinel becomes readable when the child is killed, and stays so after join",
          "[process][sentinel][signal]") {
  test_pipe gate;
  procpool::Process p([r = gate.read_fd(), w = gate.write_fd()] {
    default_signals();
    wait_for_gate(r, w);
  });
  p.start();
  const int fd = p.sentinel();
  CHECK(poll_one(fd, 50) == 0);
  p.kill();
  CHECK((poll_one(fd, 5000) & POLLIN) != 0);
  p.join();
  CHECK(p.exitcode() == -SIGKILL);
  CHECK(p.sentinel() == fd);
  CHECK((poll_one(fd, 0) & POLLIN) != 0);
}

TEST_CASE("the sentinel is close-on-exec and owned by the Process", "[process][sentinel]") {
  int fd = -1;
  {
    procpool::Process p([] {});
    p.start();
    fd = p.sentinel();
    CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    p.join();
  }
  CHECK_FALSE(fd_open(fd));  // the destructor closed it
}

TEST_CASE("sentinel before start and after close throws usage_error naming the process",
          "[process][sentinel][state]") {
  procpool::Process p([] {});
  p.set_name("watched");
  const std::string before = usage_message([&] { (void)p.sentinel(); });
  CHECK(contains(before, "sentinel"));
  CHECK(contains(before, "watched"));
  CHECK(contains(before, "start()"));
  p.start();
  p.join();
  const int fd = p.sentinel();
  p.close();
  CHECK_FALSE(fd_open(fd));
  const std::string after = usage_message([&] { (void)p.sentinel(); });
  CHECK(contains(after, "watched"));
  CHECK(contains(after, "closed"));
}

TEST_CASE("when pidfd_open fails, start() still runs the child and sentinel() says why",
          "[process][sentinel][syscalls]") {
  procpool::detail::syscall_table t = procpool::detail::real_syscalls;
  t.pidfd_open = [](pid_t, unsigned) -> int {
    errno = ENOSYS;
    return -1;
  };
  procpool::Process p([] { procpool::exit(5); });
  p.set_name("old-kernel");
  {
    syscall_override no_pidfd(t);
    p.start();
  }
  try {
    (void)p.sentinel();
    FAIL("sentinel() did not throw");
  } catch (const procpool::usage_error&) {
    FAIL("a missing pidfd is not a usage error");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ENOSYS);
    CHECK(contains(e.what(), "old-kernel"));
    CHECK(contains(e.what(), "pidfd_open"));
  }
  p.join();
  CHECK(p.exitcode() == 5);
}

// ---------------------------------------------------------------------------
// close

TEST_CASE("close while the child runs throws usage_error, and after join it closes",
          "[process][close][state]") {
  test_pipe gate;
  procpool::Process p([r = gate.read_fd(), w = gate.write_fd()] {
    wait_for_gate(r, w);
    procpool::exit(4);
  });
  p.set_name("busy");
  p.start();
  const std::string running = usage_message([&] { p.close(); });
  CHECK(contains(running, "busy"));
  CHECK(contains(running, "still running"));
  CHECK(contains(running, "join()"));
  CHECK(p.is_alive());
  CHECK(has(active_pids(), p.pid()));  // a failed close leaves the Process as it was

  gate.close_write();
  p.join();
  p.close();
  CHECK_NOTHROW(p.close());  // idempotent
  CHECK(p.exitcode() == 4);
  CHECK_FALSE(p.is_alive());
  CHECK(p.pid() > 0);
  CHECK(p.name() == "busy");
}

TEST_CASE("after close, start, join, join_for, sentinel, terminate and kill throw usage_error",
          "[process][close][state]") {
  procpool::Process p([] { procpool::exit(2); });
  p.set_name("done");
  p.start();
  p.join();
  p.close();
  const std::vector<std::pair<const char*, std::function<void()>>> calls = {
      {"start", [&] { p.start(); }},
      {"join", [&] { p.join(); }},
      {"join_for", [&] { (void)p.join_for(10ms); }},
      {"sentinel", [&] { (void)p.sentinel(); }},
      {"terminate", [&] { p.terminate(); }},
      {"kill", [&] { p.kill(); }},
  };
  for (const auto& [member, call] : calls) {
    INFO(member);
    const std::string msg = usage_message(call);
    CHECK(contains(msg, std::string("procpool::Process::") + member + ": done was closed"));
  }
  CHECK(p.exitcode() == 2);
}

TEST_CASE("close reaps a child that ended but was not joined, and keeps its exit code",
          "[process][close]") {
  procpool::Process p([] { procpool::exit(7); });
  p.start();
  REQUIRE(wait_zombie(p.pid()));
  p.close();
  CHECK(reaped(p.pid()));
  CHECK(p.exitcode() == 7);
}

TEST_CASE("close of a Process never started: it can no longer start", "[process][close][state]") {
  procpool::Process p([] {});
  p.close();
  CHECK_THROWS_AS(p.start(), procpool::usage_error);
  CHECK(p.pid() == 0);
  CHECK_FALSE(p.exitcode().has_value());
}

// ---------------------------------------------------------------------------
// active_children

TEST_CASE("active_children lists a running child, not an ended one, whose exit code is kept",
          "[process][active_children]") {
  test_pipe gate;
  procpool::Process runs([r = gate.read_fd(), w = gate.write_fd()] { wait_for_gate(r, w); });
  runs.set_name("runner");
  procpool::Process ends([] { procpool::exit(4); });
  runs.start();
  ends.start();
  REQUIRE(wait_zombie(ends.pid()));

  const auto children = procpool::active_children();
  REQUIRE(children.size() == 1);
  CHECK(children[0].pid() == runs.pid());
  CHECK(children[0].name() == "runner");
  CHECK(reaped(ends.pid()));  // active_children reaped it...
  CHECK(ends.exitcode() == 4);  // ...and left its exit code with its Process
  ends.join();
  CHECK(ends.exitcode() == 4);

  gate.close_write();
  runs.join();
  CHECK(procpool::active_children().empty());
}

TEST_CASE("active_children follows Processes as they move, and drops destroyed ones",
          "[process][active_children][move]") {
  test_pipe gate;
  std::vector<Task> tasks;  // no reserve: emplace_back moves the started ones
  for (int i = 0; i < 5; ++i) {
    tasks.emplace_back([r = gate.read_fd(), w = gate.write_fd()] { wait_for_gate(r, w); });
    tasks.back().start();
  }
  std::vector<pid_t> started;
  for (const auto& t : tasks) started.push_back(t.pid());
  CHECK(active_pids() == started);  // in start order

  Task moved = std::move(tasks[1]);
  CHECK(active_pids() == started);
  gate.close_write();
  tasks.erase(tasks.begin());  // joins and destroys tasks[0]
  CHECK_FALSE(has(active_pids(), started[0]));
  moved.join();
  CHECK_FALSE(has(active_pids(), started[1]));
  tasks.clear();
  CHECK(procpool::active_children().empty());
}

TEST_CASE("active_children is empty in a Process child, a pool worker and a forked child, "
          "which do not keep the parent's pidfds",
          "[process][active_children][sentinel]") {
  test_pipe gate;
  procpool::Process sibling([r = gate.read_fd(), w = gate.write_fd()] { wait_for_gate(r, w); });
  sibling.start();
  const int inherited = sibling.sentinel();
  REQUIRE(procpool::active_children().size() == 1);

  procpool::Process child([inherited] {
    procpool::exit(procpool::active_children().size() * 10 + (is_pidfd(inherited) ? 1 : 0));
  });
  child.start();
  child.join();
  CHECK(child.exitcode() == 0);

  procpool::Pool pool([inherited](int) {
    return static_cast<int>(procpool::active_children().size() * 10 + (is_pidfd(inherited) ? 1 : 0));
  }, 1);
  CHECK(pool.map(std::vector<int>{0}) == std::vector<int>{0});
  pool.terminate();

  const pid_t raw = fork_child([inherited] {
    return static_cast<int>(procpool::active_children().size() * 10 + (is_pidfd(inherited) ? 1 : 0));
  });
  const auto status = wait_child(raw, 10s);
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);

  CHECK(is_pidfd(inherited));  // the parent's own stays open
  gate.close_write();
  sibling.join();
}

TEST_CASE("active_children in another thread never steals a child from join",
          "[process][active_children][threads]") {
  std::atomic<bool> stop{false};
  std::atomic<long> scans{0};
  std::thread scanner([&] {
    while (!stop.load()) {
      (void)procpool::active_children();
      scans.fetch_add(1);
    }
  });
  int wrong = 0;
  std::string failure;
  const auto t0 = Clock::now();
  for (int i = 0; ms_since(t0) < 1500.0 || i < 50; ++i) {
    procpool::Process p([i] { procpool::exit(i % 100); });
    try {
      p.start();
      if (i % 2) {
        p.join();
      } else {
        while (!p.join_for(1ms)) {
        }
      }
      if (p.exitcode() != i % 100) ++wrong;
    } catch (const std::exception& e) {
      failure = type_and_what(e);
      break;
    }
  }
  stop = true;
  scanner.join();
  INFO(scans.load() << " scans");
  CHECK(failure.empty());
  CHECK(wrong == 0);
  CHECK(no_children());
}
