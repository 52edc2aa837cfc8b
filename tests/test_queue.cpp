// Tests of Queue<T> with real processes: order, types, sizes from 0 bytes to
// 300 MiB, many producers and consumers, and a peer SIGKILLed mid-put and
// mid-get. Every wait in the test process is bounded; a child reports through
// its exit code only.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/mid_item_kill.hpp"
#include "support/sanitizers.hpp"
#include "support/watchdog.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;

struct record {
  std::string name;
  std::vector<double> xs;
  template <class A>
  void serialize(A& a) {
    a(name, xs);
  }
  bool operator==(const record&) const = default;
};

}  // namespace

TEST_CASE("Queue: items of several kinds come out in order, from another process") {
  watchdog wd(60s);
  procpool::Queue<int> ints;
  procpool::Queue<std::string> strings;
  procpool::Queue<record> records;
  procpool::Queue<std::map<std::string, int>> maps;
  const pid_t pid = fork_child([&] {
    for (int i = 0; i < 1000; ++i) ints.put(i);
    strings.put("");
    strings.put("hello");
    records.put(record{"r", {1.5, 2.5}});
    maps.put({{"a", 1}, {"b", 2}});
    return 0;
  });
  for (int i = 0; i < 1000; ++i) REQUIRE(ints.get() == i);
  CHECK(strings.get().empty());
  CHECK(strings.get() == "hello");
  CHECK(records.get() == record{"r", {1.5, 2.5}});
  CHECK(maps.get().at("b") == 2);
  CHECK(exit_status(pid) == 0);
  CHECK(ints.empty());
  CHECK_FALSE(ints.get_nowait());
  CHECK_FALSE(ints.get(10ms));
}

TEST_CASE("Queue: a 300 MiB item streams through a 64 KiB ring") {
  watchdog wd(120s);
  procpool::Queue<std::vector<char>> q(procpool::queue_options{.ring_bytes = 64 << 10});
  const std::size_t n = std::size_t{300} << 20;
  const pid_t pid = fork_child([&] {
    std::vector<char> v(n);
    for (std::size_t i = 0; i < n; i += 4096) v[i] = static_cast<char>(i >> 12);
    q.put(v);
    q.put(std::vector<char>{'e', 'n', 'd'});
    return 0;
  });
  const std::vector<char> v = q.get();
  REQUIRE(v.size() == n);
  bool same = true;
  for (std::size_t i = 0; i < n; i += 4096) same = same && v[i] == static_cast<char>(i >> 12);
  CHECK(same);
  CHECK(q.get() == std::vector<char>{'e', 'n', 'd'});
  CHECK(exit_status(pid) == 0);
}

TEST_CASE("Queue: four producers and three consumers, every item taken exactly once") {
  watchdog wd(120s);
  procpool::Queue<int> q(procpool::queue_options{.ring_bytes = 16 << 10});
  procpool::Array<int> seen(4 * 20000);  // how often each item was taken
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p)
    kids.push_back(fork_child([&, p] {
      for (int i = 0; i < 20000; ++i) q.put(p * 20000 + i);
      return 0;
    }));
  std::vector<pid_t> consumers;
  for (int c = 0; c < 3; ++c)
    consumers.push_back(fork_child([&] {
      for (;;) {
        const auto v = q.get(2s);
        if (!v) return 0;
        seen.atomic(static_cast<std::size_t>(*v)).fetch_add(1);
      }
    }));
  for (pid_t k : kids) CHECK(exit_status(k) == 0);
  for (pid_t k : consumers) CHECK(exit_status(k) == 0);
  int wrong = 0;
  for (int x : seen) wrong += x != 1;
  CHECK(wrong == 0);
}

TEST_CASE("Queue: a producer killed mid-put leaves the rest intact, for a reader mid-item too") {
  watchdog wd(60s);
  procpool::Queue<std::string> q(procpool::queue_options{.ring_bytes = 64 << 10});
  procpool::Event started;
  const std::string huge(8 << 20, 'h');
  const bool reader_first = GENERATE(false, true);
  const pid_t producer = fork_child([&] {
    q.put("before");
    started.set();
    q.put(huge);  // blocks: nobody reads all of it
    return 0;
  });
  REQUIRE(q.get(10s) == std::optional<std::string>("before"));
  REQUIRE(started.wait(10s));
  std::optional<std::string> got;
  std::thread reader;
  sleep_ms(100);  // the producer fills the ring and waits for room
  if (reader_first) {
    // Stopped, the producer writes no more: the reader reads what is there
    // and waits mid-item for the rest, which never comes.
    ::kill(producer, SIGSTOP);
    reader = std::thread([&] { got = q.get(20s); });
    sleep_ms(100);
  }
  kill_and_reap(producer);
  const pid_t next = fork_child([&] {
    q.put("after");
    return 0;
  });
  CHECK(exit_status(next) == 0);
  if (reader_first)
    reader.join();
  else
    got = q.get(20s);
  CHECK(got == std::optional<std::string>("after"));
  CHECK(q.empty());
}

TEST_CASE("Queue: a reader mid-item whose producer is killed gives up on it and honours its timeout") {
  watchdog wd(60s);
  procpool::Queue<std::string> q(procpool::queue_options{.ring_bytes = 64 << 10});
  procpool::Event started;
  const pid_t producer = fork_child([&] {
    started.set();
    q.put(std::string(8 << 20, 'h'));
    return 0;
  });
  REQUIRE(started.wait(10s));
  sleep_ms(100);
  ::kill(producer, SIGSTOP);  // alive, writing no more
  std::optional<std::string> got{"unset"};
  std::thread reader([&] { got = q.get(1s); });
  sleep_ms(100);
  kill_and_reap(producer);  // no other producer comes
  reader.join();
  CHECK_FALSE(got);
  CHECK(q.empty());
}

TEST_CASE("Queue: a consumer killed mid-get loses at most that item, and nobody is stuck") {
  watchdog wd(90s);
  procpool::Queue<streamed> q(procpool::queue_options{.ring_bytes = 4096});
  consumer_killed_mid_item killed(q, [] {});
  const auto got = q.get(60s);  // the rest of the item is dropped
  REQUIRE(got);
  CHECK(got->s == "after");
  killed.join_producer();
  REQUIRE(killed.mid_item());
  CHECK(q.empty());
}

TEST_CASE("Queue: maxsize, timeouts, and close") {
  watchdog wd(60s);
  procpool::Queue<int> q(procpool::queue_options{.maxsize = 2});
  CHECK(q.put_nowait(1));
  q.put(2);
  CHECK(q.full());
  CHECK(q.qsize() == 2);
  CHECK_FALSE(q.put_nowait(3));
  CHECK_FALSE(q.put(3, 20ms));
  CHECK(q.get() == 1);
  CHECK(q.put(3, 1s));
  q.close();
  CHECK_THROWS_AS(q.put(4), procpool::usage_error);
  CHECK(q.get() == 2);
  CHECK(q.get() == 3);
  CHECK_THROWS_AS(q.get(), procpool::closed_error);
  CHECK_THROWS_WITH(q.get(1s), Catch::Contains("closed"));
}

TEST_CASE("Queue: Pool workers put into a queue their function captured") {
  watchdog wd(60s);
  procpool::Queue<int> q;
  procpool::Pool pool(
      [q](int x) mutable {
        q.put(x * x);
        return x;
      },
      2);
  CHECK(pool.map(iota_vec(100)).size() == 100);
  long sum = 0;
  for (int i = 0; i < 100; ++i) sum += q.get();
  CHECK(sum == 328350);
  CHECK(q.empty());
}

// RLIMIT_AS, which the sanitizers' shadow memory would exceed at once.
#if !defined(PROCPOOL_TEST_ASAN) && !defined(PROCPOOL_TEST_TSAN)
TEST_CASE("Queue: an item its consumer has no memory for is dropped, and the queue goes on") {
  watchdog wd(60s);
  procpool::Queue<std::vector<char>> q(procpool::queue_options{.ring_bytes = 64 << 10});
  const pid_t consumer = fork_child([&] {
    const rlimit lim{std::size_t{64} << 20, std::size_t{64} << 20};
    if (::setrlimit(RLIMIT_AS, &lim) != 0) return 3;
    try {
      static_cast<void>(q.get());  // 256 MiB: cannot be allocated here
      return 1;
    } catch (const std::bad_alloc&) {
    }
    const auto next = q.get(10s);
    return next && *next == std::vector<char>{'o', 'k'} ? 0 : 2;
  });
  q.put(std::vector<char>(std::size_t{256} << 20, 'h'));
  q.put(std::vector<char>{'o', 'k'});
  CHECK(exit_status(consumer) == 0);
  CHECK(q.empty());
}
#endif

TEST_CASE("Queue: put_nowait with room succeeds while another producer puts") {
  // Under TSan a timed lock is polled (detail/robust_mutex.hpp), and a thread
  // taking the lock in a tight loop can starve the poll for its 10 ms.
  if (under_tsan) return;
  watchdog wd(60s);
  // 64 MiB of ring holds every item: any false is the other producer's lock.
  procpool::Queue<int> q(procpool::queue_options{.ring_bytes = 64 << 20});
  std::atomic<bool> stop{false};
  std::thread other([&] {
    for (int i = 0; i < 1'000'000 && !stop; ++i) q.put(1);  // 28 MB at most
  });
  int refused = 0;
  for (int i = 0; i < 20'000; ++i) refused += q.put_nowait(2) ? 0 : 1;
  stop = true;
  other.join();
  CHECK(refused == 0);
}
