// Tests of Semaphore, BoundedSemaphore and Condition with real processes: the
// units of a holder killed by SIGKILL come back, at most N processes are in at
// once, notify wakes waiters in other processes, and a waiter killed asleep
// wedges no one. Every wait in the test process is bounded; a child reports
// through its exit code only.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/watchdog.hpp"

#include <chrono>
#include <mutex>
#include <vector>

#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;

}  // namespace

TEMPLATE_TEST_CASE("Semaphore: counts units, and acquire waits, times out, or fails at once",
                   "", procpool::Semaphore, procpool::BoundedSemaphore) {
  TestType sem(2);
  CHECK(sem.get_value() == 2);
  CHECK(sem.acquire());
  CHECK(sem.acquire(false));
  CHECK_FALSE(sem.acquire(false));
  CHECK_FALSE(sem.acquire(30ms));
  CHECK(sem.get_value() == 0);
  sem.release();
  CHECK(sem.acquire(1s));
  sem.release();
  sem.release();
  CHECK(sem.get_value() == 2);
  { std::lock_guard hold(sem); CHECK(sem.get_value() == 1); }
  CHECK(sem.get_value() == 2);
}

TEST_CASE("Semaphore: BoundedSemaphore refuses a release past its initial value, Semaphore does not") {
  procpool::BoundedSemaphore bounded(1);
  CHECK_THROWS_WITH(bounded.release(), Catch::Contains("never passes its initial value of 1"));
  CHECK(bounded.get_value() == 1);
  procpool::Semaphore plain(1);
  plain.release();
  CHECK(plain.get_value() == 2);
  CHECK_THROWS_AS(procpool::Semaphore(std::size_t{1} << 32), procpool::usage_error);
}

TEMPLATE_TEST_CASE("Semaphore: the units of a holder killed by SIGKILL come back", "",
                   procpool::Semaphore, procpool::BoundedSemaphore) {
  watchdog wd(30s);
  TestType sem(3);
  procpool::Event holding;
  const pid_t pid = fork_child([&] {
    sem.acquire();
    sem.acquire();
    holding.set();
    for (;;) ::pause();
    return 0;
  });
  REQUIRE(holding.wait(10s));
  CHECK(sem.acquire(1s));
  CHECK_FALSE(sem.acquire(50ms));  // the other two are the child's
  kill_and_reap(pid);
  CHECK(sem.acquire(5s));
  CHECK(sem.acquire(5s));
  CHECK_FALSE(sem.acquire(false));
  for (int i = 0; i < 3; ++i) sem.release();
  CHECK(sem.get_value() == 3);
}

TEST_CASE("Semaphore: the unit of a Pool worker killed while holding it comes back") {
  // A worker that the pool's fork server started knows its own pid: the unit
  // is recorded as its, not the server's.
  watchdog wd(30s);
  procpool::Semaphore sem(1);
  procpool::Pool pool(
      [sem](int x) mutable {
        if (!sem.acquire(5s)) return -1;
        if (x == 0) ::kill(::getpid(), SIGKILL);
        sem.release();
        return x;
      },
      1);
  CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{1, 2});
  CHECK_FALSE(pool.try_map(std::vector<int>{0})[0].ok());
  CHECK(sem.acquire(5s));
  sem.release();
  CHECK(pool.map(std::vector<int>{3}) == std::vector<int>{3});
}

TEST_CASE("Semaphore: a waiting process gets the unit another process releases") {
  watchdog wd(30s);
  procpool::Semaphore signal(0);
  const pid_t pid = fork_child([&] { return signal.acquire(10s) ? 0 : 1; });
  sleep_ms(50);
  signal.release();  // this process holds none: a plain release
  CHECK(exit_status(pid) == 0);
  CHECK(signal.get_value() == 0);
}

TEST_CASE("Semaphore: four processes, never more than two inside at once") {
  watchdog wd(60s);
  procpool::BoundedSemaphore sem(2);
  procpool::Value<int> inside(0), most(0);
  procpool::Event go;  // all four start together
  std::vector<pid_t> kids;
  for (int k = 0; k < 4; ++k)
    kids.push_back(fork_child([&] {
      go.wait();
      for (int i = 0; i < 30; ++i) {
        std::lock_guard hold(sem);
        const int now = inside.atomic().fetch_add(1) + 1;
        int m = most.atomic().load();
        while (now > m && !most.atomic().compare_exchange_weak(m, now)) {
        }
        sleep_ms(1);
        inside.atomic().fetch_sub(1);
      }
      return 0;
    }));
  go.set();
  for (const pid_t p : kids) CHECK(exit_status(p) == 0);
  CHECK(most.atomic().load() == 2);
  CHECK(sem.get_value() == 2);
}

TEST_CASE("Condition: notify wakes a process waiting for a predicate") {
  watchdog wd(60s);
  procpool::Condition cond;
  procpool::Value<int> items(0);
  const pid_t pid = fork_child([&] {
    std::unique_lock hold(cond);
    cond.wait_for([&] { return items.get() > 0; });  // no timeout: only a notify ends it
    return 0;
  });
  sleep_ms(100);
  {
    std::lock_guard hold(cond);
    items.set(1);
    cond.notify();
  }
  CHECK(exit_status(pid) == 0);  // killed after 30 s if not woken
}

TEST_CASE("Condition: notify_all wakes every waiting process") {
  watchdog wd(60s);
  procpool::Condition<procpool::Lock> cond{procpool::Lock()};
  procpool::Value<int> go(0), waiting(0);
  std::vector<pid_t> kids;
  for (int k = 0; k < 3; ++k)
    kids.push_back(fork_child([&] {
      std::unique_lock hold(cond);
      waiting.atomic().fetch_add(1);
      cond.wait_for([&] { return go.get() == 1; });
      return 0;
    }));
  REQUIRE(eventually([&] { return waiting.atomic().load() == 3; }));
  {
    std::lock_guard hold(cond);
    go.set(1);
    cond.notify_all();
  }
  for (const pid_t p : kids) CHECK(exit_status(p) == 0);
}

TEST_CASE("Condition: wait and notify without the lock are usage_errors, and a wait times out holding it") {
  procpool::Condition cond;
  CHECK_THROWS_AS(cond.wait(), procpool::usage_error);
  CHECK_THROWS_AS(cond.notify(), procpool::usage_error);
  CHECK_THROWS_AS(cond.notify_all(), procpool::usage_error);
  // Over an RLock held twice: wait releases both levels, and takes both back.
  cond.acquire();
  cond.acquire();
  procpool::Value<int> got_in(0);
  const pid_t pid = fork_child([&] {
    if (!cond.acquire(10s)) return 1;
    got_in.set(1);
    cond.notify();
    cond.release();
    return 0;
  });
  CHECK(cond.wait_for([&] { return got_in.get() == 1; }, 10s));
  CHECK(cond.get_lock().held_by_me() == 2);
  CHECK(exit_status(pid) == 0);
  CHECK_FALSE(cond.wait(20ms));
  CHECK(cond.get_lock().held_by_me() == 2);
  cond.release();
  cond.release();
}

TEST_CASE("Condition: a waiter killed asleep wedges neither notify nor the next waiter") {
  watchdog wd(60s);
  procpool::Condition cond;
  procpool::Value<int> stage(0);
  procpool::Event asleep;
  const pid_t victim = fork_child([&] {
    std::unique_lock hold(cond);
    asleep.set();
    cond.wait();
    return 0;
  });
  REQUIRE(asleep.wait(10s));
  sleep_ms(50);
  kill_and_reap(victim);
  const pid_t next = fork_child([&] {
    std::unique_lock hold(cond);
    stage.set(1);
    cond.wait_for([&] { return stage.get() == 2; });
    return 0;
  });
  REQUIRE(eventually([&] { return stage.get() == 1; }));
  {
    std::lock_guard hold(cond);  // the victim was asleep: the lock was free
    CHECK_FALSE(cond.get_lock().holder_died());
    stage.set(2);
    cond.notify();
  }
  CHECK(exit_status(next) == 0);
}
