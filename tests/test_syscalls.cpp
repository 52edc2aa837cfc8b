// Failure paths reached through the system-call seam of detail/posix.hpp:
// fork, waitpid and kill made to fail on purpose, so that what the library does
// then (throw, clean up, break the pool with a clear error) is tested without
// exhausting the machine's processes.
//
// Rules every test here keeps:
//  * A hook is installed by a syscall_override in the test's scope and removed
//    by its destructor, also when an assertion throws.
//  * Children are procpool's (Process, Pool workers), which end with _exit.
//  * Each test ends with no child left: waitpid(-1, WNOHANG) fails with ECHILD.
//  * ctest's TIMEOUT bounds each test; a hang is a failure.

#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/proc.hpp"
#include "support/shared.hpp"
#include "support/syscall_override.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
namespace detail = procpool::detail;
using namespace procpool_test;

// fork, in this process or in a pool's fork server: the first forks_allowed
// calls fork; the rest fail with EAGAIN, as fork does at RLIMIT_NPROC.
std::atomic<int> forks_allowed{0};
std::atomic<int> forks_failed{0};
std::atomic<pid_t> last_forked{0};

template <class Fork>
pid_t budgeted(Fork fork) {
  if (forks_allowed.fetch_sub(1) > 0) {
    const pid_t pid = fork();
    if (pid > 0) last_forked.store(pid);
    return pid;
  }
  forks_failed.fetch_add(1);
  errno = EAGAIN;
  return -1;
}

pid_t budgeted_fork() { return budgeted(::fork); }

pid_t budgeted_fork_in_server(int fd, std::uint32_t index, std::uint32_t number) {
  return budgeted([&] { return detail::request_fork(fd, index, number); });
}

/// Forks succeed @p allowed more times, then fail.
detail::syscall_table fork_fails_after(int allowed) {
  forks_allowed = allowed;
  forks_failed = 0;
  last_forked = 0;
  detail::syscall_table t = detail::real_syscalls;
  t.fork = budgeted_fork;
  t.fork_in_server = budgeted_fork_in_server;
  return t;
}

// waitpid: fails with waitpid_errno the first waitpid_failures times, then is real.
std::atomic<int> waitpid_failures{0};
std::atomic<int> waitpid_errno{0};
std::atomic<int> waitpid_calls{0};

pid_t failing_waitpid(pid_t pid, int* status, int options) {
  waitpid_calls.fetch_add(1);
  if (waitpid_failures.fetch_sub(1) > 0) {
    errno = waitpid_errno.load();
    return -1;
  }
  return ::waitpid(pid, status, options);
}

detail::syscall_table waitpid_fails(int times, int err) {
  waitpid_failures = times;
  waitpid_errno = err;
  waitpid_calls = 0;
  detail::syscall_table t = detail::real_syscalls;
  t.waitpid = failing_waitpid;
  return t;
}

// kill: always fails with kill_errno.
std::atomic<int> kill_errno{0};

int failing_kill(pid_t, int) {
  errno = kill_errno.load();
  return -1;
}

detail::syscall_table kill_fails(int err) {
  kill_errno = err;
  detail::syscall_table t = detail::real_syscalls;
  t.kill = failing_kill;
  return t;
}

/// The what() of the procpool::error that @p fn throws; "(no error)" or
/// "(another exception)" otherwise.
std::string pool_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const procpool::error& e) {
    return e.what();
  } catch (...) {
    return "(another exception)";
  }
  return "(no error)";
}

constexpr const char* replacement_failed = "could not start a replacement worker";

/// Items of at least slow_from sleep 20 ms in the worker.
constexpr int slow_from = 1000;
struct twice {
  template <class T>
  T operator()(T x) const {
    if constexpr (std::is_same_v<T, int>)
      if (x >= slow_from) std::this_thread::sleep_for(20ms);
    return x + x;
  }
};

std::vector<int> slow_items(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(slow_from + i);
  return v;
}

}  // namespace

TEST_CASE("Process::start when fork fails: system_error EAGAIN, nothing left, can start later",
          "[syscalls][fork][process]") {
  REQUIRE(no_children());
  sigset_t mask_before, mask_after;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_before);
  // Run in this process (a failed fork taken for the child), the callable
  // aborts: an _exit(0) here would end the test as if it had passed.
  const pid_t self = ::getpid();
  procpool::Process p([self] {
    if (::getpid() == self) std::abort();
  });
  {
    syscall_override fail(fork_fails_after(0));
    try {
      p.start();
      FAIL("start() did not throw");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == EAGAIN);
      CHECK(e.code() == std::errc::resource_unavailable_try_again);
      CHECK(std::string(e.what()).find("fork") != std::string::npos);
    }
    CHECK(forks_failed == 1);
  }
  CHECK(p.pid() == 0);
  CHECK_FALSE(p.is_alive());
  CHECK_FALSE(p.exitcode());
  CHECK(no_children());
  // fork_with left the caller as it found it: its signal mask, and stdio unlocked.
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_after);
  for (int sig = 1; sig < NSIG; ++sig) {
    INFO("signal " << sig);
    CHECK(::sigismember(&mask_before, sig) == ::sigismember(&mask_after, sig));
  }
  bool out_free = false, err_free = false;
  std::thread([&] {  // another thread: the locks are recursive for their owner
    if ((out_free = ::ftrylockfile(stdout) == 0)) ::funlockfile(stdout);
    if ((err_free = ::ftrylockfile(stderr) == 0)) ::funlockfile(stderr);
  }).join();
  CHECK(out_free);
  CHECK(err_free);
  // The seam removed, the same Process starts.
  p.start();
  CHECK(p.pid() > 0);
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK(no_children());
}

TEST_CASE("Pool construction when a fork fails kills and reaps the workers already forked",
          "[syscalls][fork][pool]") {
  REQUIRE(no_children());
  for (int allowed : {0, 1, 2}) {
    INFO("forks that succeed before the failing one: " << allowed);
    pid_t forked = 0;
    {
      syscall_override fail(fork_fails_after(allowed));
      try {
        procpool::Pool pool(twice{}, 3);
        FAIL("the Pool was built");
      } catch (const std::system_error& e) {
        CHECK(e.code().value() == EAGAIN);
      }
      CHECK(forks_failed == 1);
      forked = last_forked;
    }
    CHECK((forked != 0) == (allowed > 0));
    if (forked) CHECK(proc_state(forked) == 0);  // reaped, not a zombie
    CHECK(no_children());
  }
  // The seam removed, a pool builds.
  procpool::Pool pool(twice{}, 2);
  CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{2, 4});
}

TEST_CASE("a worker killed between calls while forks fail breaks the pool: could not start a "
          "replacement worker",
          "[syscalls][fork][pool][replacement]") {
  REQUIRE(no_children());
  {
    procpool::Pool pool(twice{}, 2);
    CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{2, 4});
    syscall_override fail(fork_fails_after(0));
    const auto pids = pool.pids();
    REQUIRE(pids.size() == 2);
    ::kill(pids[0], SIGKILL);
    REQUIRE(wait_zombie(pids[0]));

    const auto t0 = Clock::now();
    const std::string what = pool_error_of([&] { pool.map(slow_items(20), {.chunksize = 1}); });
    INFO("the error: " << what);
    CHECK(what.find(replacement_failed) != std::string::npos);
    CHECK(what.find("fork") != std::string::npos);  // the system_error's text
    CHECK(ms_since(t0) < 5000.0);
    CHECK(forks_failed >= 1);

    // Later calls say the same, at once.
    CHECK(pool_error_of([&] { pool.map(std::vector<int>{1}); }) == what);
    CHECK(pool_error_of([&] { pool.apply_async(1).get(); }) == what);
    CHECK(pool_error_of([&] { pool.apply_async(std::string("x")).get(); }) == what);
    CHECK(pool.pids() == std::vector<pid_t>{pids[1]});
  }
  CHECK(no_children());
}

TEST_CASE("results finished before the pool broke stay the caller's, express lane included",
          "[syscalls][fork][pool][replacement]") {
  REQUIRE(no_children());
  {
    procpool::Pool pool(twice{}, 2);
    auto str = pool.apply_async(std::string("ab"));  // a job
    auto all = pool.map_async(std::vector<int>{1, 2, 3});
    // An express call: one is taken soon after the workers start polling.
    std::optional<procpool::async_result<int>> num;
    int num_arg = 0;
    for (int i = 0; i < 2000 && !num; ++i) {
      auto r = pool.apply_async(i);
      if (r.express()) {
        num.emplace(std::move(r));
        num_arg = i;
      } else {
        CHECK(r.get() == 2 * i);
      }
    }
    if (!num) WARN("no call took the express lane (a loaded machine?); that part is skipped");
    str.wait();
    all.wait();
    if (num) num->wait();

    // Both workers die, so whichever ran a call: the first death breaks the pool.
    syscall_override fail(fork_fails_after(0));
    const auto pids = pool.pids();
    REQUIRE(pids.size() == 2);
    for (pid_t w : pids) ::kill(w, SIGKILL);
    for (pid_t w : pids) REQUIRE(wait_zombie(w));
    CHECK(pool_error_of([&] { pool.map(slow_items(4)); }).find(replacement_failed) !=
          std::string::npos);
    CHECK(pool.pids().size() < 2);

    CHECK(str.get() == "abab");
    CHECK(all.get() == std::vector<int>{2, 4, 6});
    if (num) CHECK(num->get() == 2 * num_arg);
  }
  CHECK(no_children());
}

TEST_CASE("a worker killed mid-map while forks fail fails that map and the pool, without hanging",
          "[syscalls][fork][pool][replacement]") {
  REQUIRE(no_children());
  struct state {
    std::atomic<pid_t> started_by[64];
  };
  shared<state> st;
  state* s = st.get();
  auto f = [s](int i) {
    s->started_by[i % 64].store(::getpid());
    std::this_thread::sleep_for(50ms);
    return 2 * i;
  };
  {
    procpool::Pool pool(f, 2);
    auto before = pool.map_async(std::vector<int>{40, 41});  // finished before the kill
    before.wait();
    for (auto& p : s->started_by) p.store(0);
    const auto pids = pool.pids();
    REQUIRE(pids.size() == 2);

    syscall_override fail(fork_fails_after(0));
    auto during = pool.map_async(std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                  15, 16, 17, 18, 19},
                                 {.chunksize = 1});
    // Kill the first worker seen running an item of this map.
    const auto w0 = Clock::now();
    pid_t victim = 0;
    while (!victim && Clock::now() - w0 < 10s) {
      for (int i = 0; i < 20 && !victim; ++i) victim = s->started_by[i].load();
      if (!victim) std::this_thread::sleep_for(1ms);
    }
    REQUIRE(victim != 0);
    REQUIRE((victim == pids[0] || victim == pids[1]));
    ::kill(victim, SIGKILL);

    const auto t0 = Clock::now();
    const std::string what = pool_error_of([&] { during.get(); });
    INFO("the error: " << what);
    CHECK(what.find(replacement_failed) != std::string::npos);
    CHECK(ms_since(t0) < 5000.0);  // a bounded wait, not a hang
    CHECK(forks_failed >= 1);
    CHECK(pool_error_of([&] { pool.map(std::vector<int>{1}); }) == what);
    CHECK(before.get() == std::vector<int>{80, 82});
  }
  CHECK(no_children());
}

TEST_CASE("a retiring worker that cannot be replaced breaks the pool with the same error",
          "[syscalls][fork][pool][replacement]") {
  REQUIRE(no_children());
  {
    syscall_override fail(fork_fails_after(2));  // the fork server and the pool's one worker
    procpool::Pool pool(twice{}, {.processes = 1, .max_tasks_per_child = 1});
    const std::string what = pool_error_of([&] { pool.map(std::vector<int>{1, 2, 3}); });
    INFO("the error: " << what);
    CHECK(what.find(replacement_failed) != std::string::npos);
    CHECK(forks_failed >= 1);
    CHECK(pool.pids().empty());
  }
  CHECK(no_children());
}

int no_tid_address(int**) {
  errno = EINVAL;  // a kernel built without CONFIG_CHECKPOINT_RESTORE
  return -1;
}

/// The children of this process that are not among @p workers: the pool's fork server.
std::set<pid_t> others_than(const std::vector<pid_t>& workers) {
  std::set<pid_t> r = child_pids();
  for (pid_t w : workers) r.erase(w);
  return r;
}

TEST_CASE("without PR_GET_TID_ADDRESS the pool forks its workers itself, replacements too",
          "[syscalls][fork][pool][replacement]") {
  REQUIRE(no_children());
  {
    detail::syscall_table t = detail::real_syscalls;
    t.get_tid_address = no_tid_address;  // in the fork server, a copy of this process
    syscall_override no_server(t);
    procpool::Pool pool([](int x) { return x < 0 ? (::kill(::getpid(), SIGKILL), x) : 2 * x; }, 2);
    CHECK(pool.map(std::vector<int>{1, 2, 3}) == std::vector<int>{2, 4, 6});
    const auto before = pool.pids();
    // The replacement is forked by a thread that then ends: it must not die with it.
    std::thread([&] {
      CHECK_FALSE(pool.try_map(std::vector<int>{-1})[0].ok());
      std::this_thread::sleep_for(300ms);  // the replacement is up (and past its prctl)
    }).join();
    const auto after = pool.pids();
    std::this_thread::sleep_for(300ms);
    CHECK(pool.map(std::vector<int>{4}) == std::vector<int>{8});
    CHECK(pool.pids() == after);
    CHECK(after != before);
    CHECK(others_than(after).empty());  // the server said it cannot, and was reaped
    for (pid_t w : after) CHECK(proc_ppid(w) == ::getpid());
  }
  CHECK(no_children());
}

TEST_CASE("a fork server killed from outside is started again for the next replacement",
          "[syscalls][fork][pool][replacement]") {
  REQUIRE(no_children());
  {
    procpool::Pool pool([](int x) { return x < 0 ? (::kill(::getpid(), SIGKILL), x) : 2 * x; }, 2);
    const auto server = others_than(pool.pids());
    REQUIRE(server.size() == 1);
    for (pid_t w : pool.pids()) CHECK(proc_ppid(w) == ::getpid());  // the server's siblings
    ::kill(*server.begin(), SIGKILL);
    REQUIRE(wait_zombie(*server.begin()));
    CHECK_FALSE(pool.try_map(std::vector<int>{-1})[0].ok());  // its worker is replaced
    CHECK(pool.map(std::vector<int>{1, 2, 3, 4}) == std::vector<int>{2, 4, 6, 8});
    const auto now = others_than(pool.pids());
    REQUIRE(now.size() == 1);
    CHECK(*now.begin() != *server.begin());
    CHECK(pool.pids().size() == 2);
  }
  CHECK(no_children());
}

TEST_CASE("join retries a waitpid interrupted by a signal", "[syscalls][waitpid][process]") {
  REQUIRE(no_children());
  procpool::Process p([] {});
  p.start();
  {
    syscall_override eintr(waitpid_fails(3, EINTR));
    p.join();
    CHECK(waitpid_calls == 4);
  }
  CHECK(p.exitcode() == 0);
  CHECK(no_children());
}

TEST_CASE("join when waitpid fails: system_error, and the Process can still be joined",
          "[syscalls][waitpid][process]") {
  REQUIRE(no_children());
  procpool::Process p([] {});
  p.start();
  pid_t dropped = 0;
  {
    syscall_override fail(waitpid_fails(1'000'000, ECHILD));
    try {
      p.join();
      FAIL("join() did not throw");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == ECHILD);
      CHECK(std::string(e.what()).find("waitpid") != std::string::npos);
    }
    // The destructor swallows the failure (it is noexcept: a throw would end the test).
    procpool::Process q([] {});
    q.start();
    dropped = q.pid();
  }
  p.join();  // the seam removed: the child is reaped now
  CHECK(p.exitcode() == 0);
  // q's child was not reaped by its destructor, so it is still ours to reap.
  int status = 0;
  CHECK(::waitpid(dropped, &status, 0) == dropped);
  CHECK(WIFEXITED(status));
  CHECK(no_children());
}

TEST_CASE("Process::kill when kill fails: system_error, but a child already gone is no error",
          "[syscalls][kill][process]") {
  REQUIRE(no_children());
  procpool::Process p([] { ::pause(); });
  p.start();
  {
    syscall_override eperm(kill_fails(EPERM));
    try {
      p.kill();
      FAIL("kill() did not throw");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == EPERM);
      CHECK(std::string(e.what()).find("kill") != std::string::npos);
    }
  }
  {
    syscall_override esrch(kill_fails(ESRCH));
    CHECK_NOTHROW(p.terminate());
  }
  CHECK(p.is_alive());
  p.kill();
  p.join();
  CHECK(p.exitcode() == -SIGKILL);
  CHECK(no_children());
}

TEST_CASE("a worker reaped by another part of the program fails its item with a clear error, "
          "and the pool goes on",
          "[waitpid][pool][reaper]") {
  REQUIRE(no_children());
  {
    // One worker, so the call below runs on it; nothing drives the pool
    // between apply_async and get(), so the test's waitpid comes first.
    procpool::Pool pool([](int ms) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return ms;
    }, 1);
    CHECK(pool.apply_async(1).get() == 1);
    const pid_t victim = pool.pids().at(0);
    auto r = pool.apply_async(10'000);
    std::this_thread::sleep_for(200ms);  // it is running the call
    ::kill(victim, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(victim, &status, 0) == victim);  // a reaper that is not procpool

    std::string what = "(no error)";
    try {
      r.get();
    } catch (const procpool::worker_lost& e) {
      what = e.what();
      CHECK(e.exitcode() == procpool::exitcode_unknown);
    } catch (const std::exception& e) {
      what = std::string("(another exception) ") + e.what();
    }
    INFO("the error: " << what);
    CHECK(what.find("reaped by another part of this program") != std::string::npos);
    CHECK(what.find(std::to_string(victim)) != std::string::npos);
    // Replaced: the pool still works.
    CHECK(pool.apply_async(2).get() == 2);
    CHECK(pool.map(std::vector<int>{3, 4}) == std::vector<int>{3, 4});
    CHECK(pool.pids().at(0) != victim);
  }
  CHECK(no_children());
}
