// Workers that die: killed by a signal mid-task or from outside, ending with
// abort(), _exit(), exit() or procpool::exit(), dying in their initializer or
// while receiving an item; retries of what they ran. The item a worker ran
// fails with worker_lost, the others complete, and the pool goes on.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/outcome.hpp"
#include "support/proc.hpp"
#include "support/sanitizers.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

namespace {

enum class death { sigkill, sigsegv, abort_call, exit3 };

[[noreturn]] void die(death how) {
  switch (how) {
    case death::sigkill:
      ::kill(::getpid(), SIGKILL);
      break;
    case death::sigsegv:
      // The default action, even under a sanitizer that handles SIGSEGV itself.
      ::signal(SIGSEGV, SIG_DFL);
      ::raise(SIGSEGV);
      break;
    case death::abort_call:
      ::signal(SIGABRT, SIG_DFL);
      std::abort();
    case death::exit3:
      ::_exit(3);
  }
  ::_exit(111);  // not reached
}

struct death_case {
  death how;
  const char* description;  // what what() must say
  int exitcode;             // worker_lost::exitcode()
};

/// A worker dies in item 17 (as @p dc says): map, try_map, imap_unordered and
/// imap each fail that item alone, and the pool goes on with a replacement.
void check_worker_death(const death_case& dc) {
  watchdog wd(60s, "worker death test");
  constexpr int bad = 17;
  const death how = dc.how;
  auto f = [how](int i) {
    if (i == bad) die(how);
    return i * i;
  };
  procpool::Pool pool(f, 2);
  const std::vector<pid_t> before = pool.pids();
  REQUIRE(before.size() == 2);
  const std::vector<int> in = iota_vec(50);

  // map: throws worker_lost for exactly that item, after every other ran.
  {
    std::optional<procpool::worker_lost> caught;
    try {
      (void)pool.map(in);
    } catch (const procpool::worker_lost& e) {
      caught = e;
    }
    REQUIRE(caught);
    CHECK(caught->index() == bad);
    CHECK(caught->pid() != 0);
    CHECK(caught->exitcode() == dc.exitcode);
    const std::string what = caught->what();
    INFO(what);
    CHECK(contains(what, "item " + std::to_string(bad)));
    CHECK(contains(what, dc.description));
    CHECK(contains(what, std::to_string(caught->pid())));
    CHECK_FALSE(dynamic_cast<const procpool::task_timeout*>(&*caught));
  }

  // try_map: every other item's value, that item's error.
  {
    auto out = pool.try_map(in);
    REQUIRE(out.size() == in.size());
    check_only_failed<procpool::worker_lost>(
        out, bad, [](int i) { return i * i; },
        [&](const procpool::worker_lost& e) {
          CHECK(e.index() == bad);
          CHECK(contains(e.what(), dc.description));
          CHECK(e.exitcode() == dc.exitcode);
        });
  }

  // imap_unordered: all other results come; the dead item's error is met once.
  {
    std::multiset<int> got;
    int errors = 0;
    auto r = pool.imap_unordered(in);
    for (auto it = r.begin(); it != r.end(); ++it) {
      try {
        got.insert(*it);
      } catch (const procpool::worker_lost& e) {
        ++errors;
        CHECK(e.index() == bad);
      }
    }
    CHECK(errors == 1);
    std::multiset<int> want;
    for (int i = 0; i < 50; ++i)
      if (i != bad) want.insert(i * i);
    CHECK(got == want);
  }

  // imap (ordered) too: the error sits at its place in the order.
  {
    std::vector<int> got;
    std::vector<std::size_t> failed_at;
    auto r = pool.imap(in);
    for (auto it = r.begin(); it != r.end(); ++it) {
      try {
        got.push_back(*it);
      } catch (const procpool::worker_lost&) {
        failed_at.push_back(got.size());
      }
    }
    CHECK(failed_at == std::vector<std::size_t>{bad});
    CHECK(got.size() == 49);
  }

  // The pool is usable afterwards and runs on replacements.
  const std::vector<int> again = pool.map(iota_vec(40, 100));
  for (int i = 0; i < 40; ++i) CHECK(again[i] == (100 + i) * (100 + i));
  const std::vector<pid_t> after = pool.pids();
  CHECK(after.size() == 2);
  std::set<pid_t> old(before.begin(), before.end());
  int replaced = 0;
  for (pid_t p : after) {
    replaced += old.count(p) == 0;
    CHECK(::kill(p, 0) == 0);
  }
  CHECK(replaced >= 1);
  // The dead workers were reaped: none of the old pids is our zombie.
  for (pid_t p : before)
    if (!std::count(after.begin(), after.end(), p)) CHECK(proc_state(p) != 'Z');
}

}  // namespace

TEST_CASE("a worker killed by SIGKILL mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::sigkill, "killed by SIGKILL", -SIGKILL});
}

TEST_CASE("a worker killed by SIGSEGV mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::sigsegv, "killed by SIGSEGV", -SIGSEGV});
}

TEST_CASE("a worker that calls abort() mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::abort_call, "killed by SIGABRT", -SIGABRT});
}

TEST_CASE("a worker that calls _exit(3) mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::exit3, "exited with code 3", 3});
}

TEST_CASE("a worker's death is noticed promptly", "[failure][death][latency]") {
  watchdog wd(30s);
  auto f = [](int i) {
    if (i < 0) ::kill(::getpid(), SIGKILL);
    return i + 1;
  };
  procpool::Pool pool(f, 2);
  REQUIRE(pool.apply_async(1).get() == 2);  // warm
  std::vector<double> lat;
  for (int k = 0; k < 20; ++k) {
    const auto t0 = Clock::now();
    auto r = pool.apply_async(-1);
    bool threw = false;
    try {
      (void)r.get();
    } catch (const procpool::worker_lost& e) {
      threw = true;
      CHECK(e.exitcode() == -SIGKILL);
      CHECK(e.index() == 0);
    }
    lat.push_back(ms_since(t0));
    REQUIRE(threw);
    REQUIRE(pool.apply_async(k).get() == k + 1);  // and it goes on
  }
  std::sort(lat.begin(), lat.end());
  std::fprintf(stderr, "[timing] death -> worker_lost from apply_async().get(): min %.2f ms, median %.2f ms, max %.2f ms\n",
               lat.front(), lat[lat.size() / 2], lat.back());
  CHECK(lat[lat.size() / 2] < 100.0);
  CHECK(lat.back() < 500.0);
}

TEST_CASE("a worker killed from outside fails its item with worker_lost", "[failure][death]") {
  watchdog wd(30s);
  shared<std::atomic<pid_t>> sleeper_pid;  // the worker running the slow item
  constexpr int slow = 7;
  std::atomic<pid_t>* sleeper = sleeper_pid.get();
  auto f = [sleeper](int i) {
    if (i == slow) {
      sleeper->store(::getpid());
      sleep_ms(5000);
      return -1;
    }
    sleep_ms(10);
    return 3 * i;
  };
  procpool::Pool pool(f, 2);
  pid_t killed = 0;
  double kill_at_ms = 0;
  std::atomic<bool> mapped{false};
  const auto t0 = Clock::now();
  std::thread killer([&] {
    // Wait for the sleeping item to start, then kill its worker from outside.
    while (sleeper->load() == 0 && Clock::now() - t0 < 10s) sleep_ms(1);
    killed = sleeper->load();
    std::vector<pid_t> pids;
    if (killed) {
      pids = pool.pids();
      if (std::count(pids.begin(), pids.end(), killed)) ::kill(killed, SIGKILL);
    }
    kill_at_ms = ms_since(t0);
    // Free nothing and do not exit while the pool may fork the replacement:
    // a thread's exit returns its allocator cache under a lock, and a child
    // forked then hangs in its first malloc under ASan and TSan (see
    // busy_threads in test_fork_threads.cpp).
    while (!mapped.load()) sleep_ms(1);
  });
  std::vector<procpool::outcome<int>> out;
  try {
    out = pool.try_map(iota_vec(30), {.chunksize = 1});
  } catch (...) {
    mapped = true;
    killer.join();
    throw;
  }
  const double total = ms_since(t0);
  mapped = true;
  killer.join();
  REQUIRE(killed != 0);
  REQUIRE(out.size() == 30);
  check_only_failed<procpool::worker_lost>(
      out, slow, [](int i) { return 3 * i; },
      [&](const procpool::worker_lost& e) {
        CHECK(e.index() == slow);
        CHECK(e.pid() == killed);
        CHECK(e.exitcode() == -SIGKILL);
        CHECK(contains(e.what(), "killed by SIGKILL"));
        CHECK(contains(e.what(), "item 7"));
      });
  std::fprintf(stderr, "[timing] external SIGKILL at %.1f ms, try_map returned at %.1f ms\n", kill_at_ms,
               total);
  CHECK(total < 4000.0);  // did not wait for the 5 s sleep
  const auto pids = pool.pids();
  CHECK(pids.size() == 2);
  CHECK(std::count(pids.begin(), pids.end(), killed) == 0);
  CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{3, 6});
}

TEST_CASE("retries rerun an item whose worker died", "[failure][retries]") {
  watchdog wd(60s);
  struct counters {
    std::atomic<int> attempts[64];
  };
  shared<counters> c;
  counters* cs = c.get();
  constexpr int flaky = 5;   // crashes on its first attempt only
  constexpr int doomed = 9;  // crashes on every attempt
  auto f = [cs](int i) {
    const int a = cs->attempts[i].fetch_add(1);
    if (i == flaky && a == 0) ::kill(::getpid(), SIGKILL);
    if (i == doomed) ::kill(::getpid(), SIGKILL);
    return i * 10;
  };

  SECTION("retries = 1") {
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .retries = 1});
    auto out = pool.try_map(iota_vec(40));
    REQUIRE(out.size() == 40);
    check_only_failed<procpool::worker_lost>(
        out, doomed, [](int i) { return i * 10; },
        [&](const procpool::worker_lost& e) {
          CHECK(e.index() == doomed);
          CHECK(contains(e.what(), "killed by SIGKILL"));
        });
    CHECK(cs->attempts[flaky].load() == 2);
    CHECK(cs->attempts[doomed].load() == 2);  // the first run and one retry
    for (int i = 0; i < 40; ++i) CHECK(cs->attempts[i].load() >= 1);
  }
  SECTION("retries = 3, chunksize 1") {
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .retries = 3});
    auto out = pool.try_map(iota_vec(40), {.chunksize = 1});
    CHECK(out[flaky].ok());
    CHECK_FALSE(out[doomed].ok());
    CHECK(cs->attempts[flaky].load() == 2);
    CHECK(cs->attempts[doomed].load() == 4);
    // With one item per chunk nothing else ran twice.
    for (int i = 0; i < 40; ++i)
      if (i != flaky && i != doomed) CHECK(cs->attempts[i].load() == 1);
  }
  SECTION("retries = 0: the flaky item fails too") {
    procpool::Pool pool(f, 2);
    auto out = pool.try_map(iota_vec(40));
    CHECK_FALSE(out[flaky].ok());
    CHECK_FALSE(out[doomed].ok());
    CHECK(cs->attempts[flaky].load() == 1);
    CHECK(cs->attempts[doomed].load() == 1);
  }
}

TEST_CASE("a death while large messages stream through small queues", "[failure][death]") {
  // 800 KB arguments and results through 16 KiB rings: chunks are half sent
  // or half answered when a worker dies; the rest must be requeued whole.
  watchdog wd(60s);
  auto f = [](const std::vector<double>& v) {
    if (v[0] == 5.0 || v[0] == 12.0) ::kill(::getpid(), SIGKILL);
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) r[i] = v[i] * 2;
    return r;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .queue_bytes = 16 << 10});
  std::vector<std::vector<double>> in;
  for (int k = 0; k < 20; ++k) in.push_back(std::vector<double>(100'000, static_cast<double>(k)));
  auto out = pool.try_map(in, {.chunksize = 2});
  REQUIRE(out.size() == 20);
  for (int k = 0; k < 20; ++k) {
    INFO("item " << k);
    if (k == 5 || k == 12) {
      CHECK_FALSE(out[k].ok());
    } else {
      REQUIRE(out[k].ok());
      const auto& r = out[k].value();
      REQUIRE(r.size() == 100'000);
      CHECK(r.front() == 2.0 * k);
      CHECK(r.back() == 2.0 * k);
    }
  }
}

TEST_CASE("an idle worker killed from outside is replaced without errors", "[failure][death]") {
  watchdog wd(30s);
  auto f = [](int x) { return x * 2; };
  procpool::Pool pool(f, 2);
  REQUIRE(pool.map(std::vector<int>{1, 2, 3}) == std::vector<int>{2, 4, 6});
  const auto before = pool.pids();
  ::kill(before[0], SIGKILL);
  sleep_ms(20);
  const auto out = pool.try_map(iota_vec(50));
  for (int i = 0; i < 50; ++i) {
    INFO("item " << i);
    REQUIRE(out[i].ok());
    CHECK(out[i].value() == 2 * i);
  }
  const auto after = pool.pids();
  CHECK(after.size() == 2);
  CHECK(std::count(after.begin(), after.end(), before[0]) == 0);
  CHECK(std::count(after.begin(), after.end(), before[1]) == 1);
}

int exit_on_three(int x) {
  if (x == 3) std::exit(3);  // as C libraries do: runs static destructors
  return x;
}

// A replacement worker is forked while the engine's lock is held. exit() in
// a task then ran ~Pool of the static pool in the worker, which waited for
// that inherited lock for ever, and the parent for the worker.
TEST_CASE("exit() in a task of a static pool's replacement worker ends just that worker",
          "[failure][fork]") {
  watchdog wd(30s);
  static procpool::Pool<int (*)(int)> pool(exit_on_three, 2);
  const auto first = pool.pids();
  for (pid_t p : first) ::kill(p, SIGKILL);
  // Both workers replaced (the pool notices on its next rounds).
  const auto until = std::chrono::steady_clock::now() + 10s;
  auto replaced = [&] {
    const auto now = pool.pids();
    if (now.size() != 2) return false;
    for (pid_t p : now)
      if (std::find(first.begin(), first.end(), p) != first.end()) return false;
    return true;
  };
  while (!replaced()) {
    (void)pool.try_map(std::vector<int>{0, 1}, {.chunksize = 1});
    REQUIRE(std::chrono::steady_clock::now() < until);
  }
  const auto out = pool.try_map(std::vector<int>{1, 2, 3, 4}, {.chunksize = 1});
  REQUIRE(out.size() == 4);
  const auto e = error_as<procpool::worker_lost>(out[2]);
  REQUIRE(e);
  CHECK(e->exitcode() == 3);
  CHECK(out[3].value() == 4);
}

namespace {

/// Outcomes of items 0..9 (x -> 2x) whose item 5 called procpool::exit(7):
/// that item fails with worker_lost, each other one has its value.
template <class Outcomes>
void check_exit_7_at_item_5(const Outcomes& out) {
  REQUIRE(out.size() == 10);
  check_only_failed<procpool::worker_lost>(
      out, 5, [](int i) { return i * 2; },
      [](const procpool::worker_lost& e) {
        CHECK(e.exitcode() == 7);
        CHECK(e.index() == 5);
      });
}

/// An argument whose load() calls procpool::exit(7) for one value (a string
/// member: not trivially copyable, so it crosses through cereal and load()).
struct exits_on_load {
  int v = 0;
  std::string s = "x";
  template <class Ar>
  void save(Ar& ar) const {
    ar(v, s);
  }
  template <class Ar>
  void load(Ar& ar) {
    ar(v, s);
    if (v == 5) procpool::exit(7);
  }
};

}  // namespace

TEST_CASE("procpool::exit(n) in a task ends its worker: that item fails, the rest complete",
          "[failure][exit]") {
  watchdog wd(60s);
  procpool::Pool pool(
      [](int x) {
        if (x == 5) procpool::exit(7);
        return x * 2;
      },
      procpool::pool_options{.processes = 2});
  check_exit_7_at_item_5(pool.try_map(iota_vec(10), {.chunksize = 1}));
  CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{2, 4});
}

// Decoding caught everything, so procpool::exit(n) there became a task_error
// naming procpool::detail::exit_request, and the worker went on.
TEST_CASE("procpool::exit(n) in an argument's load() ends its worker like in a task",
          "[failure][exit]") {
  watchdog wd(60s);
  procpool::Pool pool([](const exits_on_load& a) { return a.v * 2; }, 2);
  std::vector<exits_on_load> in(10);
  for (int i = 0; i < 10; ++i) in[static_cast<std::size_t>(i)].v = i;
  const auto before = pool.pids();
  check_exit_7_at_item_5(pool.try_map(in, {.chunksize = 1}));
  CHECK(pool.pids() != before);  // that worker ended and was replaced
}

// A death before the initializer returned broke the pool for good, even a
// SIGKILL from outside (or the OOM killer) during an initializer that works.
TEST_CASE("a worker killed during a working initializer is replaced and the pool goes on",
          "[failure][initializer]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x + 1; },
                      procpool::pool_options{.processes = 2, .initializer = [] {
                        sleep_ms(300);
                      }});
  const auto pids = pool.pids();
  REQUIRE(::kill(pids[0], SIGKILL) == 0);  // in its initializer
  CHECK(pool.map(iota_vec(20)) == iota_vec(20, 1));
}

TEST_CASE("workers that keep dying in the initializer make the pool unusable, saying so",
          "[failure][initializer]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x; }, procpool::pool_options{.processes = 2, .initializer = [] {
                                                 ::_exit(9);
                                               }});
  try {
    (void)pool.map(std::vector<int>{1, 2, 3});
    FAIL("no initializer_error");
  } catch (const procpool::initializer_error& e) {
    INFO(e.what());
    CHECK(contains(e.what(), "before it was ready"));
    CHECK(contains(e.what(), "exited with code 9"));
  }
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}), procpool::initializer_error);
}


// Sanitizers reserve terabytes of address space, so RLIMIT_AS cannot be used under them.
#if !defined(PROCPOOL_TEST_ASAN) && !defined(PROCPOOL_TEST_TSAN)
TEST_CASE("a worker that keeps dying while receiving an item fails it instead of respawning forever",
          "[failure][oom]") {
  watchdog wd(60s);
  // Each worker may map 128 MiB more than it starts with: receiving a 200 MiB
  // argument fails with bad_alloc before any item runs, every time. (200 MiB
  // also stays under this binary's 256 MiB allocation cap.)
  procpool::Pool pool([](const std::vector<char>& v) { return v.size(); },
                      procpool::pool_options{.processes = 1, .initializer = [] {
                                               std::ifstream statm("/proc/self/statm");
                                               std::size_t pages = 0;
                                               statm >> pages;
                                               const rlim_t limit = pages * 4096 + (rlim_t{128} << 20);
                                               rlimit r{limit, limit};
                                               ::setrlimit(RLIMIT_AS, &r);
                                             }});
  const std::vector<char> big(std::size_t{200} << 20, 'x');
  auto r = pool.apply_async(big);
  try {
    (void)r.get();
    FAIL("a 200 MiB argument went through a 128 MiB address-space limit");
  } catch (const procpool::worker_lost& e) {
    CHECK(std::string(e.what()).find("died before it started") != std::string::npos);
  }
  CHECK(pool.apply_async(std::vector<char>(10, 'y')).get() == 10u);
}
#endif
