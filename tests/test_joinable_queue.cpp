// Tests of JoinableQueue<T> with real processes: join() waits for every
// task_done(), and never for ever for items a consumer took and then died
// with (SIGKILL between get and task_done, and mid-get), or could not decode.
// Every wait in the test process is bounded; a child reports through its
// exit code only.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/mid_item_kill.hpp"
#include "support/watchdog.hpp"

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;

/// An int whose load() throws for a negative value (a string member: not
/// copied as bytes).
struct picky {
  int v = 0;
  std::string name = "p";
  template <class A>
  void save(A& a) const {
    a(v, name);
  }
  template <class A>
  void load(A& a) {
    a(v, name);
    if (v < 0) throw std::runtime_error("picky: negative");
  }
};

}  // namespace

TEST_CASE("JoinableQueue: join waits for every task_done of two consumer processes") {
  watchdog wd(60s);
  procpool::JoinableQueue<int> q;
  procpool::Value<long> sum(0);
  procpool::Event go;
  const auto consumer = [&] {
    return fork_child([&] {
      go.wait();
      for (;;) {
        const auto v = q.get(2s);
        if (!v) return 0;
        if (*v < 0) return 0;
        sleep_ms(1);
        sum.atomic().fetch_add(*v);
        q.task_done();
      }
    });
  };
  const pid_t a = consumer(), b = consumer();
  for (int i = 1; i <= 200; ++i) q.put(i);
  CHECK_FALSE(q.join(100ms));  // nobody has started
  go.set();
  q.join();
  CHECK(sum.atomic().load() == 200 * 201 / 2);
  CHECK(q.empty());
  q.put(-1);
  q.put(-1);
  CHECK(exit_status(a) == 0);
  CHECK(exit_status(b) == 0);
}

TEST_CASE("JoinableQueue: task_done more often than get in a process is a usage_error") {
  procpool::JoinableQueue<std::string> q;
  CHECK_THROWS_AS(q.task_done(), procpool::usage_error);
  q.put("a");
  CHECK(q.get() == "a");
  q.task_done();
  CHECK_THROWS_WITH(q.task_done(), Catch::Contains("more times than this process got items"));
  CHECK(q.join(1s));
  // An item another process got is owed by that process, not by this one.
  q.put("b");
  const pid_t pid = fork_child([&] { return q.get() == "b" ? 0 : 1; });
  CHECK(exit_status(pid) == 0);
  CHECK_THROWS_AS(q.task_done(), procpool::usage_error);
  CHECK_THROWS_AS(q.join(), procpool::items_lost_error);  // it exited without task_done
}

TEST_CASE("JoinableQueue: a consumer killed between get and task_done has its items reported lost") {
  watchdog wd(60s);
  procpool::JoinableQueue<int> q;
  procpool::Event holding;
  for (int i = 0; i < 5; ++i) q.put(i);
  const pid_t pid = fork_child([&] {
    for (int i = 0; i < 3; ++i) static_cast<void>(q.get());
    q.task_done();
    holding.set();
    for (;;) ::pause();
    return 0;
  });
  REQUIRE(holding.wait(10s));
  for (int i = 0; i < 2; ++i) {
    REQUIRE(q.get(5s));
    q.task_done();
  }
  CHECK_FALSE(q.join(50ms));  // two items still with the consumer
  kill_and_reap(pid);
  const auto t0 = Clock::now();
  try {
    q.join();
    FAIL("join returned although two items were lost");
  } catch (const procpool::items_lost_error& e) {
    CHECK(contains(e.what(), "2 item(s)"));
    CHECK(contains(e.what(), std::to_string(pid)));
  }
  CHECK(ms_since(t0) < 5000);
  CHECK(q.join(1s));  // reported once
  q.put(7);
  CHECK(q.get() == 7);
  CHECK_FALSE(q.join(20ms));
  q.task_done();
  CHECK(q.join(1s));
}

TEST_CASE("JoinableQueue: a consumer killed mid-get leaves join neither hung nor wrong") {
  watchdog wd(90s);
  // No other consumer comes until join() ends.
  procpool::JoinableQueue<streamed> q(procpool::queue_options{.ring_bytes = 4096});
  consumer_killed_mid_item killed(q, [&] { q.task_done(); });
  CHECK_THROWS_WITH(static_cast<void>(q.join(10s)), Catch::Contains("1 item(s)"));
  const auto got = q.get(60s);  // reads past the rest of the lost item
  REQUIRE(got);
  CHECK(got->s == "after");
  killed.join_producer();
  q.task_done();
  REQUIRE(killed.mid_item());
  CHECK(q.join(5s));
}

TEST_CASE("JoinableQueue: an item that does not decode is owed no task_done and reported lost") {
  watchdog wd(30s);
  procpool::JoinableQueue<picky> q;
  q.put(picky{1});
  q.put(picky{-1});
  q.put(picky{3});
  CHECK(q.get().v == 1);
  q.task_done();
  CHECK_THROWS_WITH(q.get(), Catch::Contains("negative"));
  CHECK(q.get().v == 3);
  q.task_done();
  CHECK_THROWS_WITH(q.join(), Catch::Contains("did not decode"));
  CHECK(q.join(1s));
}

TEST_CASE("JoinableQueue: the books settle a dead reader's item only once its first chunk is gone") {
  procpool::detail::shared_block<procpool::detail::task_ledger> books(
      "test", procpool::detail::task_ledger::extra_bytes());
  procpool::detail::task_ledger& l = *books;
  const std::uint32_t slot = l.slot_of(12345, "test");
  bool handed = false;
  procpool::detail::task_ledger::hooks h{&l, slot, &handed};
  h.begin(7);
  l.settle_reader(7);  // its first chunk is still in the ring: the next reader gets it
  CHECK(l.slots()[slot].got.load() == 0);
  h.begin(7);
  l.settle_reader(0);  // consumed: it died with it
  CHECK(l.slots()[slot].got.load() == 1);
  l.settle_reader(0);  // settled once
  CHECK(l.slots()[slot].got.load() == 1);
  h.begin(8);
  h.taken();  // the caller has it: nothing to settle
  l.settle_reader(0);
  CHECK(l.slots()[slot].got.load() == 2);
  CHECK(handed);
}
