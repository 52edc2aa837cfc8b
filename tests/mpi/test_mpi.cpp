// procpool::mpi::Pool under mpiexec -np 3: rank 0 makes the calls and checks
// them; ranks 1 and 2 serve. Every rank runs every TEST_CASE, in the same
// order, so every rank builds the same pools in the same order (SPMD); on a
// serving rank a test ends once its pool's constructor has served it.

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <procpool/mpi/pool.hpp>

using namespace std::chrono_literals;
namespace mpi = procpool::mpi;

namespace {

struct point {
  double x = 0, y = 0;
  std::string label;
  template <class A>
  void serialize(A& a) {
    a(x, y, label);
  }
};

long square(long x) { return x * x; }

std::vector<int> iota_vec(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

}  // namespace

TEST_CASE("mpi: map, try_map, starmap and the ranks' workers") {
  mpi::Pool pool(square);
  if (!pool.is_master()) return;
  REQUIRE(pool.ranks().size() == 2);
  REQUIRE(pool.size() >= 2);
  std::vector<long> in(100'000);
  for (long i = 0; i < 100'000; ++i) in[static_cast<std::size_t>(i)] = i;
  const auto out = pool.map(in);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) REQUIRE(out[i] == in[i] * in[i]);
  REQUIRE(pool.map(std::vector<long>{}).empty());
  const auto o = pool.try_map(std::vector<long>{1, 2, 3});
  REQUIRE(o.size() == 3);
  REQUIRE(o[2].value() == 9);
  pool.close();
  pool.join();
  REQUIRE_THROWS_AS(pool.map(in), procpool::usage_error);
}

TEST_CASE("mpi: strings, vectors and cereal types cross both ways") {
  mpi::Pool pool([](const point& p) {
    return std::make_pair(p.label + "!", std::vector<double>{p.x, p.y, p.x + p.y});
  });
  if (!pool.is_master()) return;
  std::vector<point> in;
  for (int i = 0; i < 500; ++i) in.push_back({double(i), 0.5, std::string(i % 50, 'a')});
  const auto out = pool.map(in);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    REQUIRE(out[i].first == in[i].label + "!");
    REQUIRE(out[i].second == std::vector<double>{in[i].x, 0.5, in[i].x + 0.5});
  }
}

TEST_CASE("mpi: starmap, apply_async, map_async, imap and imap_unordered") {
  mpi::Pool pool([](int a, int b) { return a * 10 + b; });
  if (!pool.is_master()) return;
  std::vector<std::tuple<int, int>> pairs;
  for (int i = 0; i < 1000; ++i) pairs.emplace_back(i, i % 10);
  const auto s = pool.starmap(pairs);
  REQUIRE(s.size() == 1000);
  for (int i = 0; i < 1000; ++i) REQUIRE(s[static_cast<std::size_t>(i)] == i * 10 + i % 10);
  auto a = pool.apply_async(4, 2);
  auto b = pool.starmap_async(pairs);
  REQUIRE(a.get() == 42);
  REQUIRE(b.get() == s);
  REQUIRE(b.successful());
  REQUIRE(pool.apply(7, 1) == 71);
}

TEST_CASE("mpi: imap in order, imap_unordered as completed") {
  mpi::Pool pool([](int x) { return 2 * x; });
  if (!pool.is_master()) return;
  std::vector<int> got;
  for (int v : pool.imap(iota_vec(5000))) got.push_back(v);
  REQUIRE(got.size() == 5000);
  for (int i = 0; i < 5000; ++i) REQUIRE(got[static_cast<std::size_t>(i)] == 2 * i);
  std::multiset<int> un;
  for (int v : pool.imap_unordered(iota_vec(3000), {.chunksize = 7})) un.insert(v);
  REQUIRE(un.size() == 3000);
  REQUIRE(*un.rbegin() == 2 * 2999);
}

TEST_CASE("mpi: a task error fails its item only, naming it") {
  mpi::Pool pool([](int x) {
    if (x % 7 == 3) throw std::runtime_error("bad " + std::to_string(x));
    return x;
  });
  if (!pool.is_master()) return;
  std::vector<int> in(200);
  for (int i = 0; i < 200; ++i) in[static_cast<std::size_t>(i)] = i;
  const auto o = pool.try_map(in);
  for (int i = 0; i < 200; ++i) {
    const auto& r = o[static_cast<std::size_t>(i)];
    if (i % 7 == 3) {
      REQUIRE(!r.ok());
      try {
        std::rethrow_exception(r.error());
      } catch (const procpool::task_error& e) {
        REQUIRE(e.index() == static_cast<std::size_t>(i));
        REQUIRE(e.message() == "bad " + std::to_string(i));
        REQUIRE(e.type_name() == "std::runtime_error");
      }
    } else {
      REQUIRE(r.value() == i);
    }
  }
  REQUIRE_THROWS_AS(pool.map(in), procpool::task_error);
}

TEST_CASE("mpi: a task that crashes its worker fails with worker_lost; the rank goes on") {
  mpi::Pool pool([](int x) {
    if (x == 5) {
      ::signal(SIGSEGV, SIG_DFL);  // not Catch2's handler, inherited through fork
      ::raise(SIGSEGV);
    }
    return x + 1;
  });
  if (!pool.is_master()) return;
  std::vector<int> in(40);
  for (int i = 0; i < 40; ++i) in[static_cast<std::size_t>(i)] = i;
  const auto o = pool.try_map(in);
  for (int i = 0; i < 40; ++i) {
    if (i != 5) {
      REQUIRE(o[static_cast<std::size_t>(i)].value() == i + 1);
      continue;
    }
    try {
      std::rethrow_exception(o[5].error());
    } catch (const procpool::worker_lost& e) {
      REQUIRE(e.index() == 5);
      REQUIRE(e.exitcode() == -SIGSEGV);
      REQUIRE(std::string(e.what()).find("on rank ") != std::string::npos);
    }
  }
  // Both ranks still serve.
  REQUIRE(pool.map(std::vector<int>{10, 20, 30}) == std::vector<int>{11, 21, 31});
}

TEST_CASE("mpi: task_timeout kills the item's worker on its rank; the others finish") {
  mpi::Pool pool(
      [](int x) {
        if (x == 0) std::this_thread::sleep_for(30s);
        return x;
      },
      procpool::pool_options{.task_timeout = 300ms});
  if (!pool.is_master()) return;
  const auto t0 = std::chrono::steady_clock::now();
  const auto o = pool.try_map(std::vector<int>{0, 1, 2, 3}, {.chunksize = 1});
  REQUIRE(std::chrono::steady_clock::now() - t0 < 10s);
  REQUIRE_THROWS_AS(o[0].value(), procpool::task_timeout);
  REQUIRE(o[3].value() == 3);
}

TEST_CASE("mpi: a call's own timeout crosses to the rank that runs it") {
  mpi::Pool pool([](int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  });
  if (!pool.is_master()) return;
  auto slow = pool.apply_async(procpool::call_options{.timeout = 200ms}, 20'000);
  auto quick = pool.apply_async(procpool::call_options{.timeout = 5s}, 10);
  REQUIRE_THROWS_AS(slow.get(), procpool::task_timeout);
  REQUIRE(quick.get() == 10);
  const auto o = pool.try_map(std::vector<int>{10, 20'000, 10}, {.chunksize = 1, .timeout = 200ms});
  REQUIRE(o[0].value() == 10);
  REQUIRE_THROWS_AS(o[1].value(), procpool::task_timeout);
  REQUIRE(o[2].value() == 10);
}

TEST_CASE("mpi: terminate fails what is unfinished; the ranks stop serving") {
  mpi::Pool pool([](int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  });
  if (!pool.is_master()) return;
  auto r = pool.map_async(std::vector<int>(50, 200));
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  pool.terminate();
  REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
  REQUIRE_THROWS_AS(r.get(), procpool::pool_terminated);
  REQUIRE_THROWS_AS(pool.map(std::vector<int>{1}), procpool::usage_error);
}

TEST_CASE("mpi: close and join return with an imap not read to the end") {
  mpi::Pool pool([](int x) { return x + 1; });
  if (!pool.is_master()) return;
  auto range = pool.imap(iota_vec(10'000), {.chunksize = 10});
  auto it = range.begin();
  REQUIRE(*it == 1);
  pool.close();
  pool.join();  // every item ran, unread or not (Python's join returns here)
  int n = 1;
  for (++it; it != range.end(); ++it) ++n;
  REQUIRE(n == 10'000);
}

TEST_CASE("mpi: an imap left early leaves the pool usable") {
  mpi::Pool pool([](int x) {
    std::this_thread::sleep_for(1ms);
    return x;
  });
  if (!pool.is_master()) return;
  for (int round = 0; round < 3; ++round) {
    int seen = 0;
    for (int v : pool.imap(iota_vec(2000), {.chunksize = 5})) {
      (void)v;
      if (++seen == 10) break;  // chunks are still out; their answers come to a dropped job
    }
    REQUIRE(seen == 10);
  }
  REQUIRE(pool.map(iota_vec(100)) == iota_vec(100));
}

TEST_CASE("mpi: a rank whose initializer fails gets no more work; the other rank runs it") {
  mpi::Pool pool([](int x) { return x; },
                 procpool::pool_options{.initializer = [] {
                   if (mpi::session::current().rank() == 2) throw std::runtime_error("no GPU here");
                 }});
  if (!pool.is_master()) return;
  const auto first = pool.try_map(iota_vec(40), {.chunksize = 1});
  std::size_t failed = 0;
  for (const auto& o : first) {
    if (o.ok()) continue;
    ++failed;
    REQUIRE_THROWS_AS(o.value(), procpool::initializer_error);
  }
  REQUIRE(failed > 0);
  REQUIRE(pool.map(iota_vec(200)) == iota_vec(200));  // all on rank 1 now
}

TEST_CASE("mpi: done callbacks run once, with the value or the error, waited for or not") {
  mpi::Pool pool([](int x) {
    if (x < 0) throw std::runtime_error("negative");
    std::this_thread::sleep_for(std::chrono::milliseconds(x));
    return x;
  });
  if (!pool.is_master()) return;
  // Nobody waits: the progress thread runs it.
  std::atomic<int> seen{0};
  auto a = pool.apply_async(50);
  a.add_done_callback([&](const int& v) { seen = v; });
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (seen.load() == 0 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  REQUIRE(seen.load() == 50);
  REQUIRE(a.get() == 50);
  // The error callback, for a task that throws; get() still throws the task's error.
  std::atomic<bool> failed{false};
  auto b = pool.apply_async(-1);
  b.add_done_callback([](const int&) { FAIL("value callback for a failed call"); },
                      [&](std::exception_ptr e) { failed = e != nullptr; });
  REQUIRE_THROWS_AS(b.get(), procpool::task_error);
  REQUIRE(failed.load());
  // Added once the result is there: runs before add_done_callback returns.
  auto c = pool.apply_async(1);
  c.wait();
  int direct = 0;
  c.add_done_callback([&](const int& v) { direct = v; });
  REQUIRE(direct == 1);
  // A callback that throws: get() throws callback_error with it nested.
  auto d = pool.map_async(std::vector<int>{1, 2});
  d.add_done_callback([](const std::vector<int>&) { throw std::logic_error("in callback"); });
  try {
    (void)d.get();
    FAIL("no callback_error");
  } catch (const procpool::callback_error& e) {
    REQUIRE_THROWS_AS(std::rethrow_if_nested(e), std::logic_error);
  }
  // A callback that calls the pool and waits for it, on the progress thread.
  std::atomic<int> chained{0};
  auto f = pool.apply_async(5);
  f.add_done_callback([&](const int& v) { chained = pool.apply(v + 1); });
  f.wait();
  REQUIRE(chained.load() == 6);
  // terminate() fails what is unfinished, and runs its error callbacks before it returns.
  std::atomic<bool> terminated{false};
  auto g = pool.apply_async(5'000);
  g.add_done_callback([](const int&) {},
                      [&](std::exception_ptr e) {
                        try {
                          std::rethrow_exception(e);
                        } catch (const procpool::pool_terminated&) {
                          terminated = true;
                        } catch (...) {
                        }
                      });
  std::this_thread::sleep_for(100ms);
  pool.terminate();
  REQUIRE(terminated.load());
}

TEST_CASE("mpi: a 300 MiB argument crosses in pieces") {
  mpi::Pool pool([](const std::vector<char>& v) {
    std::size_t sum = 0;
    for (char c : v) sum += static_cast<unsigned char>(c);
    return std::make_pair(v.size(), sum);
  });
  if (!pool.is_master()) return;
  std::vector<char> big(std::size_t{300} << 20, 1);
  big.back() = 3;
  const auto r = pool.apply(big);
  REQUIRE(r.first == big.size());
  REQUIRE(r.second == big.size() + 2);
}

TEST_CASE("mpi: no rank idles while another holds work not started (40 sleeps of 20 ms)") {
  // Each item reports the serving rank that ran it: its worker's parent.
  mpi::Pool pool([](int) {
    std::this_thread::sleep_for(20ms);
    return static_cast<long>(::getppid());
  });
  if (!pool.is_master()) return;
  for (int round = 0; round < 2; ++round) {
    const auto pids = pool.map(std::vector<int>(40, 0));
    std::map<long, int> per_rank;
    for (long p : pids) ++per_rank[p];
    REQUIRE(per_rank.size() == 2);
    for (const auto& [pid, n] : per_rank) {
      INFO("rank pid " << pid << " ran " << n << " items");
      REQUIRE(n >= 10);
    }
  }
}

TEST_CASE("mpi: a second pool while one is open on rank 0 is a usage_error there") {
  mpi::Pool pool(square);
  if (!pool.is_master()) return;
  REQUIRE_THROWS_WITH(mpi::Pool(square), Catch::Contains("another mpi::Pool is open on rank 0"));
  REQUIRE(pool.apply(3L) == 9);
}

TEST_CASE("mpi: pools that differ across ranks are a usage_error on every rank") {
  auto& s = mpi::session::current();
  if (s.is_master()) {
    REQUIRE_THROWS_WITH(mpi::Pool([](int x) { return x; }),
                        Catch::Contains("with the same function, in the same order"));
  } else {
    REQUIRE_THROWS_AS(mpi::Pool([](long x) { return x; }), procpool::usage_error);
  }
}

TEST_CASE("mpi: after a refused pool, the next one opens on every rank") {
  mpi::Pool pool(square);
  if (!pool.is_master()) return;
  REQUIRE(pool.apply(12L) == 144);
}

int main(int argc, char** argv) {
  mpi::session s(argc, argv);
  Catch::Session cs;
  const int failed = cs.run(argc, argv);
  if (s.is_master() || failed) return failed;
  // A pool rank 0 never builds: its session's end tells the serving ranks.
  try {
    mpi::Pool extra(square);
  } catch (const procpool::usage_error& e) {
    if (std::string(e.what()).find("which rank 0 never built") != std::string::npos) return 0;
  }
  std::printf("rank %d: a pool rank 0 never built did not end in usage_error\n", s.rank());
  return 1;
}
