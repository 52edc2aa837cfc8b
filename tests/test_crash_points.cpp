// Deaths at the worst instants (detail/crash_point.hpp): a child arms one
// crash point and is SIGKILLed there, between two stores that belong
// together; the test checks what the surviving processes see.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/watchdog.hpp"

#include <atomic>
#include <chrono>
#include <csignal>

#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;
using procpool::detail::crash_point;

/// The crash point this process dies at (set in a child only).
std::atomic<int> armed_point{-1};

/// In a child: the next time @p p is reached, SIGKILL this process there.
void die_at(crash_point p) {
  armed_point.store(static_cast<int>(p));
  procpool::detail::crash_hook.store(+[](crash_point q) {
    if (static_cast<int>(q) == armed_point.load()) ::kill(::getpid(), SIGKILL);
  });
}

}  // namespace

TEST_CASE("crash points: a producer killed between publishing an item and counting it") {
  watchdog wd(30s);
  procpool::Queue<int> q;
  const pid_t pid = fork_child([&] {
    q.put(1);
    die_at(crash_point::queue_published);
    q.put(2);
    return 0;  // not reached: killed inside put(2)
  });
  CHECK(exit_status(pid) == 128 + SIGKILL);
  // Item 2 was published whole: it is there, and counted once settled.
  CHECK(q.qsize() == 2);
  CHECK_FALSE(q.empty());
  CHECK(q.get(5s) == 1);
  CHECK(q.get(5s) == 2);
  CHECK(q.qsize() == 0);
  q.put(3);
  CHECK(q.qsize() == 1);
  CHECK(q.get(5s) == 3);
  CHECK(q.empty());
}

TEST_CASE("crash points: a consumer killed between counting an item and consuming it") {
  watchdog wd(30s);
  procpool::Queue<int> q;
  q.put(1);
  q.put(2);
  const pid_t pid = fork_child([&] {
    die_at(crash_point::queue_counted);
    (void)q.get();
    return 0;  // not reached: killed inside get()
  });
  CHECK(exit_status(pid) == 128 + SIGKILL);
  // Item 1 was still in the ring: the next consumer gets it, and the count
  // says two items, not one.
  CHECK(q.qsize() == 2);
  CHECK(q.get(5s) == 1);
  CHECK(q.qsize() == 1);
  CHECK_FALSE(q.empty());
  CHECK(q.get(5s) == 2);
  CHECK(q.empty());
}

TEST_CASE("crash points: a JoinableQueue consumer killed there is settled by qsize, join sees the item") {
  watchdog wd(30s);
  procpool::JoinableQueue<int> q;
  q.put(1);
  const pid_t pid = fork_child([&] {
    die_at(crash_point::queue_counted);
    (void)q.get();
    return 0;
  });
  CHECK(exit_status(pid) == 128 + SIGKILL);
  CHECK(q.qsize() == 1);
  CHECK(q.get(5s) == 1);
  q.task_done();
  CHECK(q.join(5s));
}

TEMPLATE_TEST_CASE("crash points: a process killed mid-acquire is rolled back, and its units come back", "",
                   procpool::Semaphore, procpool::BoundedSemaphore) {
  watchdog wd(30s);
  TestType sem(3);
  const pid_t pid = fork_child([&] {
    sem.acquire();
    die_at(crash_point::semaphore_changing);
    sem.acquire();  // its books say two units, the count says one: rolled back to one
    return 0;
  });
  CHECK(exit_status(pid) == 128 + SIGKILL);
  // The change it died in is undone, and the unit it held comes back: three, not four.
  for (int i = 0; i < 3; ++i) CHECK(sem.acquire(5s));
  CHECK_FALSE(sem.acquire(100ms));
  for (int i = 0; i < 3; ++i) sem.release();
  CHECK(sem.get_value() == 3);
}
