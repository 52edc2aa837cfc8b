// Tests of the primitives processes share: Lock, RLock, Event, Value, Array,
// SharedMemory. Real fork, real SIGKILL of a peer at the worst moment; every
// wait in the test process is bounded. No Catch2 assertion runs in a child: a
// child reports through its exit code.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"

#include <chrono>
#include <csignal>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;

/// A child that takes @p lock (@p times times), says so on @p held, and waits to be killed.
template <class L>
pid_t holder(L& lock, procpool::Event& held, int times = 1) {
  return fork_child([&] {
    for (int i = 0; i < times; ++i) lock.acquire();
    held.set();
    for (;;) ::pause();
    return 0;
  });
}

/// The line of /proc/self/maps holding @p p: what backs that mapping. (Counting
/// /dev/shm's entries instead raced with tests beside it that create named blocks.)
std::string mapping_of(const void* p) {
  std::ifstream maps("/proc/self/maps");
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  for (std::string line; std::getline(maps, line);) {
    std::uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2 && at >= lo && at < hi) return line;
  }
  return {};
}

}  // namespace

TEST_CASE("Lock: a holder killed by SIGKILL leaves it acquirable, and the next holder is told") {
  procpool::Lock lock;
  procpool::Event held;
  const pid_t pid = holder(lock, held);
  REQUIRE(held.wait(10s));
  CHECK_FALSE(lock.try_lock());
  CHECK_FALSE(lock.acquire(50ms));
  kill_and_reap(pid);
  REQUIRE(lock.acquire(5s));
  CHECK(lock.holder_died());
  lock.release();
  REQUIRE(lock.acquire(5s));
  CHECK_FALSE(lock.holder_died());
  lock.release();
}

TEST_CASE("Lock: a process waiting for it gets it when the holder releases it") {
  procpool::Lock lock;
  procpool::Event held;
  const pid_t pid = fork_child([&] {
    lock.acquire();
    held.set();
    sleep_ms(100);
    lock.release();
    return 0;
  });
  REQUIRE(held.wait(10s));
  const auto t0 = Clock::now();
  REQUIRE(lock.acquire(10s));
  CHECK(ms_since(t0) >= 50);
  CHECK_FALSE(lock.holder_died());
  lock.release();
  CHECK(exit_status(pid) == 0);
}

TEST_CASE("Lock: acquiring it twice in one thread or releasing it unheld is a usage_error") {
  procpool::Lock lock;
  CHECK_THROWS_AS(lock.release(), procpool::usage_error);
  lock.acquire();
  CHECK_THROWS_WITH(lock.acquire(), Catch::Contains("use RLock"));
  CHECK_THROWS_AS(lock.acquire(10ms), procpool::usage_error);
  std::string other;
  std::thread([&] {
    try {
      lock.release();
    } catch (const procpool::usage_error& e) {
      other = e.what();
    }
  }).join();
  CHECK(contains(other, "does not hold it"));
  lock.release();
  std::lock_guard g(lock);  // Lockable
}

TEST_CASE("Lock: held by one process at a time, four processes add to shared memory with none lost") {
  procpool::Lock lock;
  procpool::Array<long, 1> total;
  std::vector<pid_t> kids;
  for (int k = 0; k < 4; ++k)
    kids.push_back(fork_child([&] {
      for (int i = 0; i < 20000; ++i) {
        std::lock_guard g(lock);
        volatile long* p = &total[0];
        *p = *p + 1;
      }
      return 0;
    }));
  for (pid_t p : kids) CHECK(exit_status(p) == 0);
  CHECK(total[0] == 80000);
}

TEST_CASE("RLock: nests in one thread, excludes other processes, and survives its holder's death") {
  procpool::RLock lock;
  lock.acquire();
  lock.acquire();
  lock.release();
  lock.release();
  CHECK_THROWS_AS(lock.release(), procpool::usage_error);
  procpool::Event held;
  const pid_t pid = holder(lock, held, 3);
  REQUIRE(held.wait(10s));
  CHECK_FALSE(lock.acquire(50ms));
  kill_and_reap(pid);
  REQUIRE(lock.acquire(5s));
  CHECK(lock.holder_died());
  REQUIRE(lock.acquire(5s));  // nested: still the same holder's
  lock.release();
  lock.release();
  // Released as often as acquired: free for another process now.
  const pid_t taker = fork_child([&] { return lock.acquire(5s) ? 0 : 1; });
  CHECK(exit_status(taker) == 0);
}

TEST_CASE("Lock: a Pool worker killed while holding the lock its function captured does not lock out the rest") {
  procpool::Lock lock;
  procpool::Pool pool(
      [lock](int x) mutable {
        std::lock_guard g(lock);
        if (x == 0) ::kill(::getpid(), SIGKILL);
        return x;
      },
      2);
  const auto out = pool.try_map(std::vector<int>{0, 1, 2, 3});
  REQUIRE(out.size() == 4);
  CHECK_FALSE(out[0].ok());
  for (int i = 1; i < 4; ++i) CHECK(out[static_cast<std::size_t>(i)].value() == i);
  REQUIRE(lock.acquire(5s));
  lock.release();
}

TEST_CASE("Value: four processes add under its lock and through atomic(), with no update lost") {
  procpool::Value<long> locked(0), atomic(0);
  std::vector<pid_t> kids;
  for (int k = 0; k < 4; ++k)
    kids.push_back(fork_child([&] {
      for (int i = 0; i < 10000; ++i) {
        {
          std::lock_guard g(locked.get_lock());
          locked.set(locked.get() + 1);
        }
        atomic.atomic().fetch_add(1);
      }
      return 0;
    }));
  for (pid_t p : kids) CHECK(exit_status(p) == 0);
  CHECK(locked.get() == 40000);
  CHECK(atomic.get() == 40000);
}

TEST_CASE("Value: a struct set in a child is read whole in the parent") {
  struct point {
    double x, y;
    int tag;
  };
  procpool::Value<point> v(point{1, 2, 3});
  CHECK(v.get().tag == 3);
  const pid_t pid = fork_child([&] {
    v.set(point{4.5, 5.5, 6});
    return 0;
  });
  CHECK(exit_status(pid) == 0);
  CHECK(v.get().x == 4.5);
  CHECK(v.get().tag == 6);
}

TEST_CASE("Array: what a child writes the parent reads, and sizes and bounds are checked") {
  procpool::Array<int> a(1000, 7);
  CHECK(a.size() == 1000);
  CHECK(a[999] == 7);
  const pid_t pid = fork_child([&] {
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int>(i);
    return 0;
  });
  CHECK(exit_status(pid) == 0);
  long sum = 0;
  for (int x : a) sum += x;
  CHECK(sum == 999L * 1000 / 2);
  CHECK_THROWS_AS(a.at(1000), std::out_of_range);
  procpool::Array<double, 3> b{1.5, 2.5, 3.5};
  CHECK(b.span().size() == 3);
  CHECK(b[2] == 3.5);
  CHECK_THROWS_AS((procpool::Array<int, 3>{1, 2}), procpool::usage_error);
  procpool::Array<int, 4> zeros;
  CHECK(zeros[3] == 0);
}

TEST_CASE("Event: a child's set wakes the parent, and a wait on a clear event times out") {
  procpool::Event e;
  CHECK_FALSE(e.is_set());
  CHECK_FALSE(e.wait(30ms));
  const pid_t pid = fork_child([&] {
    sleep_ms(50);
    e.set();
    return 0;
  });
  REQUIRE(e.wait(10s));
  CHECK(e.is_set());
  CHECK(exit_status(pid) == 0);
  e.clear();
  CHECK_FALSE(e.is_set());
  // A waiter killed while waiting leaves nothing behind: set() does not wait for anyone.
  const pid_t waiter = fork_child([&] {
    e.wait();
    return 0;
  });
  sleep_ms(30);
  kill_and_reap(waiter);
  e.set();
  CHECK(e.wait(1s));
}

TEST_CASE("Event: set wakes a process that waits without a timeout") {
  procpool::Event e;
  const pid_t sleeper = fork_child([&] {
    e.wait();  // returns only when woken
    return 0;
  });
  sleep_ms(50);
  e.set();
  CHECK(exit_status(sleeper) == 0);  // killed after 30 s if not woken
}

TEST_CASE("SharedMemory: anonymous blocks are shared with forks and leave nothing in /dev/shm") {
  procpool::SharedMemory shm(1 << 20);
  // Backed by no file in /dev/shm, so nothing there can outlive it, whoever dies.
  const std::string mapping = mapping_of(shm.data());
  INFO(mapping);
  CHECK(!mapping.empty());
  CHECK(mapping.find("/dev/shm/") == std::string::npos);
  CHECK(shm.size() == (1 << 20));
  CHECK(shm.name().empty());
  const pid_t pid = fork_child([&] {
    std::memcpy(shm.data() + 1000, "hello", 5);
    ::kill(::getpid(), SIGKILL);  // the owner of nothing: killed, it leaves nothing
    return 0;
  });
  CHECK(exit_status(pid) == 128 + SIGKILL);
  CHECK(std::memcmp(shm.data() + 1000, "hello", 5) == 0);
  CHECK_THROWS_AS(procpool::SharedMemory(0), procpool::usage_error);
}

TEST_CASE("SharedMemory: a named block is attached by name, and its creator removes the name") {
  std::string name;
  {
    auto shm = procpool::SharedMemory::create("", 4096);
    name = shm.name();
    REQUIRE(std::filesystem::exists("/dev/shm/" + name));
    // What the anonymous test's check tells apart: this mapping is the file's.
    CHECK(mapping_of(shm.data()).find("/dev/shm/" + name) != std::string::npos);
    CHECK_THROWS_WITH(procpool::SharedMemory::create(name, 10), Catch::Contains("exists"));
    // A process that is not a fork of this block's mapping attaches by name (a
    // fork stands in for it here: it maps the block afresh).
    const pid_t pid = fork_child([&] {
      auto other = procpool::SharedMemory::attach(name);
      if (other.size() != 4096) return 2;
      std::memcpy(other.data(), "named", 5);
      return 0;
    });
    CHECK(exit_status(pid) == 0);
    CHECK(std::memcmp(shm.data(), "named", 5) == 0);
    CHECK(std::filesystem::exists("/dev/shm/" + name));  // the child's copy did not remove it
  }
  CHECK_FALSE(std::filesystem::exists("/dev/shm/" + name));
  CHECK_THROWS_WITH(procpool::SharedMemory::attach(name), Catch::Contains("create() it first"));
  CHECK_THROWS_AS(procpool::SharedMemory::create("a/b", 10), procpool::usage_error);
  auto kept = procpool::SharedMemory::create("", 10);
  kept.unlink();
  CHECK_FALSE(std::filesystem::exists("/dev/shm/" + kept.name()));
}
