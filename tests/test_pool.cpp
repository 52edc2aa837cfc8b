// Tests of procpool::Pool through real worker processes, real fork and real
// shared memory: nothing is mocked.
//
// Rules every test here keeps:
//  * No Catch2 assertion runs in a worker or in any other child: tasks only
//    return values (or write to shared memory), and the parent checks.
//  * Catch2 (v2) assertions are not thread-safe: helper threads record what
//    they saw and the test thread checks after joining them.
//  * Every test is bounded by ctest's TIMEOUT; a scenario that a library bug
//    could hang is bounded by a watchdog too (support/watchdog.hpp).
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/proc.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <list>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#if !defined(__clang__) || __clang_major__ >= 15
#include <ranges>
#define PROCPOOL_TEST_HAVE_VIEWS 1
#endif

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

namespace pool_test {

using namespace procpool_test;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

/// try_map outcomes for the ints @p in (out[x] for item x) that are not as
/// expected: an error where @p fails(x), else the value @p want(x).
template <class Outcomes, class Fails, class Want>
std::size_t wrong_outcomes(const Outcomes& out, const std::vector<int>& in, Fails fails, Want want) {
  std::size_t wrong = 0;
  for (int x : in) {
    const auto& o = out[static_cast<std::size_t>(x)];
    wrong += fails(x) ? o.ok() : !o.ok() || o.value() != want(x);
  }
  return wrong;
}

int square(int x) { return x * x; }

/// 64-bit FNV-style hash over 8-byte words (and the tail), fast enough for 300 MiB.
std::uint64_t checksum(const char* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 1099511628211ull;
  return h ^ n;
}

/// A string of @p n bytes that no two offsets agree on for long.
std::string patterned(std::size_t n) {
  std::string s(n, '\0');
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t w = (i / 8 + 1) * 0x9E3779B97F4A7C15ull;
    std::memcpy(s.data() + i, &w, 8);
  }
  for (; i < n; ++i) s[i] = static_cast<char>(i * 31);
  return s;
}

/// A user type that crosses through cereal (it has a serialize() member).
struct Record {
  int id = 0;
  std::string name;
  std::vector<double> samples;
  std::map<std::string, int> counts;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, name, samples, counts);
  }
  bool operator==(const Record&) const = default;
};

/// Its save() throws for v == 3 (the note member keeps it off the bitwise path).
struct FragileSave {
  int v = 0;
  std::string note;
  template <class Archive>
  void save(Archive& ar) const {
    if (v == 3) throw std::runtime_error("cannot encode three");
    ar(v, note);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(v, note);
  }
};

/// Its load() rejects negative values (as a validating type would).
struct CheckedLoad {
  int v = 0;
  std::string note;
  template <class Archive>
  void save(Archive& ar) const {
    ar(v, note);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(v, note);
    if (v < 0) throw std::domain_error("negative value rejected");
  }
};

/// An input range whose iterator throws when it reaches item @p bad.
struct ThrowingRange {
  int n = 0;
  int bad = -1;
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int i = 0;
    int bad = -1;
    int operator*() const {
      if (i == bad) throw std::runtime_error("input " + std::to_string(i) + " unreadable");
      return i;
    }
    iterator& operator++() {
      ++i;
      return *this;
    }
    iterator operator++(int) {
      iterator t = *this;
      ++i;
      return t;
    }
    bool operator==(const iterator& o) const { return i == o.i; }
  };
  iterator begin() const { return {0, bad}; }
  iterator end() const { return {n, bad}; }
};

/// Set by the pool's initializer, in the workers only.
int g_initialized_tag = 0;
pid_t g_initialized_pid = 0;

}  // namespace pool_test

using namespace pool_test;

// ---------------------------------------------------------------- map basics

TEST_CASE("pool: the seed example squares 1..5 with 4 workers", "[pool]") {
  procpool::Pool pool(square, 4);
  CHECK(pool.size() == 4);
  const auto pids = pool.pids();
  REQUIRE(pids.size() == 4);
  CHECK(std::set<pid_t>(pids.begin(), pids.end()).size() == 4);
  for (pid_t p : pids) CHECK(p != ::getpid());
  const std::vector<int> r = pool.map(std::vector<int>{1, 2, 3, 4, 5});
  CHECK(r == std::vector<int>{1, 4, 9, 16, 25});
}

TEST_CASE("pool: map takes a vector, list, span, array, const lvalue and rvalue", "[pool]") {
  procpool::Pool pool(square, 2);
  const std::vector<int> expect{0, 1, 4, 9, 16, 25, 36};

  std::vector<int> v = iota_vec(7);
  CHECK(pool.map(v) == expect);
  CHECK(v == iota_vec(7));  // the input is not consumed

  const std::vector<int> cv = iota_vec(7);
  CHECK(pool.map(cv) == expect);

  CHECK(pool.map(iota_vec(7)) == expect);  // an rvalue, held by the job

  std::list<int> l(cv.begin(), cv.end());
  CHECK(pool.map(l) == expect);

  std::span<const int> s(cv);
  CHECK(pool.map(s) == expect);
  CHECK(pool.map(std::span<const int>(cv).subspan(2, 3)) == std::vector<int>{4, 9, 16});

  int arr[4] = {3, 2, 1, 0};
  CHECK(pool.map(arr) == std::vector<int>{9, 4, 1, 0});
}

#ifdef PROCPOOL_TEST_HAVE_VIEWS
TEST_CASE("pool: map and imap take std::views", "[pool][views]") {
  procpool::Pool pool(square, 2);
  const std::vector<int> r = pool.map(std::views::iota(0, 1000));
  REQUIRE(r.size() == 1000);
  for (int i = 0; i < 1000; ++i) CHECK(r[static_cast<std::size_t>(i)] == i * i);

  const std::vector<int> base = iota_vec(10);
  auto odds = base | std::views::filter([](int x) { return x % 2 == 1; });
  CHECK(pool.map(odds) == std::vector<int>{1, 9, 25, 49, 81});

  // imap over an unbounded view is lazy: take 100 results and stop.
  int n = 0;
  for (int y : pool.imap(std::views::iota(0))) {
    if (y != n * n) FAIL("imap over iota(0): item " << n << " gave " << y);
    if (++n == 100) break;
  }
  CHECK(n == 100);
  CHECK(pool.map(std::vector<int>{12}) == std::vector<int>{144});
}
#endif

TEST_CASE("pool: empty input gives an empty vector, one item one result", "[pool]") {
  procpool::Pool pool(square, 2);
  CHECK(pool.map(std::vector<int>{}).empty());
  CHECK(pool.map(std::list<int>{}).empty());
  CHECK(pool.map(std::vector<int>{-9}) == std::vector<int>{81});
  CHECK(pool.starmap(std::vector<std::tuple<int>>{}).empty());
  int n = 0;
  for ([[maybe_unused]] int y : pool.imap(std::vector<int>{})) ++n;
  for ([[maybe_unused]] int y : pool.imap_unordered(std::vector<int>{})) ++n;
  CHECK(n == 0);
  CHECK(pool.map_async(std::vector<int>{}).get().empty());
  CHECK(pool.try_map(std::vector<int>{}).empty());
}

TEST_CASE("pool: a million items come back in input order", "[pool]") {
  procpool::Pool pool([](int x) { return 2 * x + 1; }, 4);
  const std::vector<int> in = iota_vec(1'000'000);
  const std::vector<int> out = pool.map(in);
  REQUIRE(out.size() == in.size());
  std::size_t wrong = 0, first_wrong = out.size();
  for (std::size_t i = 0; i < out.size(); ++i)
    if (out[i] != 2 * static_cast<int>(i) + 1 && wrong++ == 0) first_wrong = i;
  INFO("first wrong index " << first_wrong);
  CHECK(wrong == 0);
  // And once more with a small explicit chunksize (many more chunks).
  const std::vector<int> out2 = pool.map(in, {.chunksize = 7});
  CHECK(out2 == out);
}

// The queues start at 256 KiB of their 1 MiB and grow for the first message
// that needs more, in each direction, once the queue is empty.
TEST_CASE("pool: small items, then big ones both ways, then small again", "[pool]") {
  procpool::Pool pool([](const std::string& s) { return s + s; }, 2);
  std::vector<std::string> small(1000, "ab");
  for (const auto& r : pool.map(small)) REQUIRE(r == "abab");
  std::vector<std::string> big;
  for (int i = 0; i < 6; ++i) big.emplace_back((std::size_t{3} << 19) + i, static_cast<char>('a' + i));
  const auto doubled = pool.map(big);
  REQUIRE(doubled.size() == big.size());
  for (std::size_t i = 0; i < big.size(); ++i) CHECK(doubled[i] == big[i] + big[i]);
  for (const auto& r : pool.map(small)) REQUIRE(r == "abab");
}

// A fresh map's results are written as they come; 2,048 page faults for 8 MiB
// of results where THP is 'madvise' unless the memory is advised first.
TEST_CASE("pool: a map's results of 4 MiB and more are advised for huge pages", "[pool]") {
  procpool::Pool pool([](int x) { return std::int64_t{x} * 3; }, 2);
  const std::vector<int> in = iota_vec(1'000'000);
  const std::vector<std::int64_t> out = pool.map(in);
  REQUIRE(out.size() == in.size());
  CHECK(out.back() == 2'999'997);
  // The whole 2 MiB pages inside the vector are advised: its middle is one.
  const std::string flags = vm_flags_at(out.data() + out.size() / 2);
  INFO("VmFlags:" << flags);
  CHECK(flags.find(" hg") != std::string::npos);
}

// ---------------------------------------------------------------- argument and result types

TEST_CASE("pool: strings in, sizes out", "[pool][types]") {
  procpool::Pool pool([](const std::string& s) { return s.size(); }, 2);
  const std::vector<std::string> in{"", "a", "hello", std::string(100000, 'x'), "tail"};
  CHECK(pool.map(in) == std::vector<std::size_t>{0, 1, 5, 100000, 4});
  const std::list<std::string> l{"abc", "de"};
  CHECK(pool.map(l) == std::vector<std::size_t>{3, 2});
}

TEST_CASE("pool: a task may take std::string_view of the transferred std::string", "[pool][types]") {
  procpool::Pool pool([](std::string_view s) { return std::string(s.rbegin(), s.rend()); }, 2);
  CHECK(pool.map(std::vector<std::string>{"abc", "", "xy"}) ==
        std::vector<std::string>{"cba", "", "yx"});
}

TEST_CASE("pool: vector<double> in, sum out", "[pool][types]") {
  procpool::Pool pool([](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }, 2);
  std::vector<std::vector<double>> in;
  std::vector<double> expect;
  for (int k = 0; k < 50; ++k) {
    std::vector<double> v(static_cast<std::size_t>(k * 37));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) * 0.25;
    expect.push_back(std::accumulate(v.begin(), v.end(), 0.0));
    in.push_back(std::move(v));
  }
  CHECK(pool.map(in) == expect);
}

TEST_CASE("pool: a cereal-serialized struct in and out", "[pool][types]") {
  procpool::Pool pool(
      [](Record r) {
        r.id *= 10;
        r.name = "seen:" + r.name;
        r.samples.push_back(static_cast<double>(r.samples.size()));
        r.counts["worker"] = static_cast<int>(::getpid() != 0);
        return r;
      },
      2);
  std::vector<Record> in;
  for (int i = 0; i < 20; ++i)
    in.push_back(Record{i, "r" + std::to_string(i), std::vector<double>(static_cast<std::size_t>(i), 1.5),
                        {{"i", i}}});
  const std::vector<Record> out = pool.map(in);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    Record e = in[i];
    e.id *= 10;
    e.name = "seen:" + e.name;
    e.samples.push_back(static_cast<double>(e.samples.size()));
    e.counts["worker"] = 1;
    CHECK(out[i] == e);
  }
}

TEST_CASE("pool: nested containers map<string, vector<int>> in and out", "[pool][types]") {
  using M = std::map<std::string, std::vector<int>>;
  procpool::Pool pool(
      [](const M& m) {
        M out;
        for (const auto& [k, v] : m) {
          std::vector<int> w(v.rbegin(), v.rend());
          w.push_back(static_cast<int>(v.size()));
          out[k + k] = std::move(w);
        }
        return out;
      },
      2);
  std::vector<M> in{M{}, M{{"a", {1, 2, 3}}}, M{{"x", {}}, {"yy", {7}}, {"zzz", std::vector<int>(1000, 4)}}};
  const std::vector<M> out = pool.map(in);
  REQUIRE(out.size() == 3);
  CHECK(out[0].empty());
  CHECK(out[1] == M{{"aa", {3, 2, 1, 3}}});
  std::vector<int> big(1000, 4);
  big.push_back(1000);
  CHECK(out[2] == M{{"xx", {0}}, {"yyyy", {7, 1}}, {"zzzzzz", big}});
}

TEST_CASE("pool: tuple and pair results", "[pool][types]") {
  procpool::Pool pool(
      [](int x) { return std::tuple<int, double, std::string>{x, x / 2.0, std::string(static_cast<std::size_t>(x), 'q')}; },
      2);
  const auto out = pool.map(iota_vec(30));
  REQUIRE(out.size() == 30);
  for (int i = 0; i < 30; ++i)
    CHECK(out[static_cast<std::size_t>(i)] ==
          std::tuple<int, double, std::string>{i, i / 2.0, std::string(static_cast<std::size_t>(i), 'q')});

  procpool::Pool pairs([](const std::string& s) { return std::pair<std::string, std::size_t>{s + "!", s.size()}; }, 2);
  CHECK(pairs.map(std::vector<std::string>{"a", "bcd"}) ==
        std::vector<std::pair<std::string, std::size_t>>{{"a!", 1}, {"bcd!", 3}});
}

TEST_CASE("pool: trivially copyable structs in and out, contiguous or not", "[pool][types]") {
  struct Vec3 {
    double x, y, z;
  };
  struct Scaled {
    Vec3 v;
    int index;
  };
  procpool::Pool pool([](Vec3 v) { return Scaled{{v.x * 2, v.y * 3, v.z * 4}, static_cast<int>(v.x)}; }, 2);
  std::vector<Vec3> in;
  for (int i = 0; i < 3000; ++i) in.push_back(Vec3{static_cast<double>(i), i + 0.5, -i * 1.0});
  auto check = [&](const std::vector<Scaled>& out) {
    REQUIRE(out.size() == in.size());
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < in.size(); ++i) {
      const Scaled& s = out[i];
      wrong += s.v.x != in[i].x * 2 || s.v.y != in[i].y * 3 || s.v.z != in[i].z * 4 ||
               s.index != static_cast<int>(i);
    }
    CHECK(wrong == 0);
  };
  check(pool.map(in));                                              // contiguous: block copies
  check(pool.map(in, {.chunksize = 1}));
  check(pool.map(std::list<Vec3>(in.begin(), in.end()), {.chunksize = 37}));  // item by item
  std::vector<Scaled> streamed;
  for (const Scaled& s : pool.imap(in, {.chunksize = 5})) streamed.push_back(s);
  check(streamed);
}

TEST_CASE("pool: try_map with fixed-size results keeps each outcome at its index", "[pool][errors]") {
  procpool::Pool pool(
      [](int x) {
        if (x % 5 == 2) throw std::range_error("r" + std::to_string(x));
        return x * 7;
      },
      2);
  for (std::size_t chunksize : {std::size_t{1}, std::size_t{4}, std::size_t{0}}) {
    INFO("chunksize " << chunksize);
    auto out = pool.try_map(iota_vec(60), {.chunksize = chunksize});
    REQUIRE(out.size() == 60);
    for (int i = 0; i < 60; ++i) {
      INFO("item " << i);
      auto& o = out[static_cast<std::size_t>(i)];
      if (i % 5 == 2) {
        REQUIRE_FALSE(o.ok());
        try {
          (void)o.value();
        } catch (const procpool::task_error& e) {
          CHECK(e.index() == static_cast<std::size_t>(i));
          CHECK(e.message() == "r" + std::to_string(i));
        }
      } else {
        REQUIRE(o.ok());
        CHECK(o.value() == i * 7);
      }
    }
  }
}

TEST_CASE("pool: a lambda's captured state is there in the workers", "[pool]") {
  std::vector<int> table{10, 20, 30, 40, 50};
  std::string prefix = "item-";
  procpool::Pool pool(
      [table, prefix](int i) { return prefix + std::to_string(table[static_cast<std::size_t>(i)] + i); }, 2);
  CHECK(pool.map(std::vector<int>{4, 0, 2}) == std::vector<std::string>{"item-54", "item-10", "item-32"});

  // Captured by reference: the workers have the state as it was when they forked.
  std::vector<int> live{1, 2, 3};
  procpool::Pool by_ref([&live](int i) { return live[static_cast<std::size_t>(i)]; }, 2);
  live[0] = 100;
  CHECK(by_ref.map(std::vector<int>{0, 1, 2}) == std::vector<int>{1, 2, 3});
}

TEST_CASE("pool: a void function runs exactly once for every item", "[pool]") {
  constexpr int n = 1000;
  shared<std::array<std::atomic<int>, n + 1>> counts;
  auto& hits = *counts;
  std::atomic<int>* h = hits.data();
  procpool::Pool pool([h](int i) { h[i].fetch_add(1); }, 2);
  static_assert(std::is_void_v<decltype(pool.map(std::vector<int>{}))>);
  pool.map(iota_vec(n));
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += hits[static_cast<std::size_t>(i)].load() != 1;
  CHECK(wrong == 0);

  auto r = pool.apply_async(n);
  static_assert(std::is_void_v<decltype(r.get())>);
  r.get();
  CHECK(hits[n].load() == 1);

  auto outcomes = pool.try_map(std::vector<int>{0, 1});
  REQUIRE(outcomes.size() == 2);
  CHECK(outcomes[0].ok());
  CHECK(outcomes[1].ok());
  CHECK(hits[0].load() == 2);

  // A void task that throws still fails its item.
  procpool::Pool thrower(
      [h](int i) {
        if (i == 6) throw std::runtime_error("six");
        h[i].fetch_add(1);
      },
      2);
  try {
    thrower.map(iota_vec(10), {.chunksize = 4});
    FAIL("map did not throw");
  } catch (const procpool::task_error& e) {
    CHECK(e.index() == 6);
    CHECK(e.message() == "six");
  }
  CHECK(hits[9].load() == 2);  // the other items ran
  CHECK(hits[6].load() == 1);
}

// ---------------------------------------------------------------- starmap

TEST_CASE("pool: starmap over pairs and over tuples", "[pool][starmap]") {
  procpool::Pool two([](int a, int b) { return a * 100 + b; }, 2);
  std::vector<std::pair<int, int>> pairs;
  for (int i = 0; i < 50; ++i) pairs.emplace_back(i, 49 - i);
  const std::vector<int> r2 = two.starmap(pairs);
  REQUIRE(r2.size() == 50);
  for (int i = 0; i < 50; ++i) CHECK(r2[static_cast<std::size_t>(i)] == i * 100 + 49 - i);

  procpool::Pool three([](int a, int b, int c) { return std::to_string(a) + "," + std::to_string(b) + "," + std::to_string(c); }, 2);
  const std::vector<std::tuple<int, int, int>> triples{{1, 2, 3}, {-4, 5, -6}, {0, 0, 0}};
  CHECK(three.starmap(triples) == std::vector<std::string>{"1,2,3", "-4,5,-6", "0,0,0"});

  auto fut = three.starmap_async(std::vector<std::tuple<int, int, int>>{{7, 8, 9}});
  CHECK(fut.get() == std::vector<std::string>{"7,8,9"});
}

// ---------------------------------------------------------------- imap

TEST_CASE("pool: imap yields results in input order, chunksize 1 and default", "[pool][imap]") {
  procpool::Pool pool([](int x) { return x * 3 - 1; }, 4);
  const std::vector<int> in = iota_vec(10000);
  for (std::size_t chunksize : {std::size_t{1}, std::size_t{0}}) {
    INFO("chunksize " << chunksize);
    std::vector<int> got;
    got.reserve(in.size());
    for (int y : pool.imap(in, {.chunksize = chunksize})) got.push_back(y);
    REQUIRE(got.size() == in.size());
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < got.size(); ++i) wrong += got[i] != 3 * static_cast<int>(i) - 1;
    CHECK(wrong == 0);
  }
}

TEST_CASE("pool: imap_unordered yields exactly the multiset of results", "[pool][imap]") {
  // Results repeat (x % 100), and some items are slow, so order and multiplicity both matter.
  procpool::Pool pool(
      [](int x) {
        if (x % 97 == 0) sleep_ms(2);
        return x % 100;
      },
      4);
  const std::vector<int> in = iota_vec(5000);
  std::vector<int> got;
  for (int y : pool.imap_unordered(in, {.chunksize = 3})) got.push_back(y);
  std::vector<int> expect;
  for (int x : in) expect.push_back(x % 100);
  std::sort(got.begin(), got.end());
  std::sort(expect.begin(), expect.end());
  CHECK(got == expect);

  std::multiset<int> d;
  for (int y : pool.imap_unordered(iota_vec(300))) d.insert(y);
  CHECK(d.size() == 300);
  for (int k = 0; k < 100; ++k) CHECK(d.count(k) == 3);
}

TEST_CASE("pool: breaking out of imap early leaves the pool usable", "[pool][imap]") {
  shared<std::atomic<int>> ran;
  std::atomic<int>* counter = ran.get();
  procpool::Pool pool(
      [counter](int x) {
        counter->fetch_add(1);
        return x * x;
      },
      2);
  const std::vector<int> in = iota_vec(200000);
  {
    int n = 0;
    for (int y : pool.imap(in, {.chunksize = 1})) {
      if (y != n * n) FAIL("imap item " << n << " gave " << y);
      if (++n == 10) break;
    }
    CHECK(n == 10);
  }
  {
    int n = 0;
    for ([[maybe_unused]] int y : pool.imap_unordered(in, {.chunksize = 4})) {
      if (++n == 25) break;
    }
    CHECK(n == 25);
  }
  CHECK(pool.map(std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
  // imap is lazy: only a bounded window beyond what was read was ever run.
  INFO(ran->load() << " items ran in the workers");
  CHECK(ran->load() < 1000);
  std::vector<int> all;
  for (int y : pool.imap(iota_vec(100))) all.push_back(y);
  REQUIRE(all.size() == 100);
  for (int i = 0; i < 100; ++i) CHECK(all[static_cast<std::size_t>(i)] == i * i);
  auto fut = pool.apply_async(12);
  CHECK(fut.get() == 144);
}

TEST_CASE("pool: imap throws a failed item's error at that item and goes on", "[pool][imap]") {
  procpool::Pool pool(
      [](int x) {
        if (x == 5 || x == 11) throw std::out_of_range("no " + std::string(x == 5 ? "five" : "eleven"));
        return x + 1000;
      },
      2);
  auto r = pool.imap(iota_vec(20), {.chunksize = 2});
  std::vector<int> values;
  std::vector<std::size_t> failed;
  for (auto it = r.begin(); it != r.end(); ++it) {
    try {
      values.push_back(*it);
    } catch (const procpool::task_error& e) {
      failed.push_back(e.index());
      CHECK(e.type_name() == "std::out_of_range");
    }
  }
  CHECK(failed == std::vector<std::size_t>{5, 11});
  std::vector<int> expect;
  for (int i = 0; i < 20; ++i)
    if (i != 5 && i != 11) expect.push_back(i + 1000);
  CHECK(values == expect);
}

// ---------------------------------------------------------------- async

TEST_CASE("pool: apply_async with one and with several arguments", "[pool][async]") {
  procpool::Pool pool(square, 2);
  auto r = pool.apply_async(7);
  CHECK(r.get() == 49);
  CHECK_THROWS_AS(r.get(), procpool::usage_error);  // get() once

  procpool::Pool multi(
      [](int a, double b, const std::string& c, std::vector<int> d) {
        return c + ":" + std::to_string(a + static_cast<int>(b * 2)) + ":" + std::to_string(d.size());
      },
      2);
  const std::string label = "L";
  auto m = multi.apply_async(3, 1.5, label, std::vector<int>{1, 2, 3, 4});
  CHECK(m.get() == "L:6:4");
  CHECK_THROWS_AS(m.get(), procpool::usage_error);

  // Several outstanding at once, collected in reverse order.
  std::vector<procpool::async_result<int>> futs;
  for (int i = 0; i < 20; ++i) futs.push_back(pool.apply_async(i));
  for (int i = 19; i >= 0; --i) CHECK(futs[static_cast<std::size_t>(i)].get() == i * i);
}

TEST_CASE("pool: ready() and wait_for() on a slow task", "[pool][async]") {
  procpool::Pool pool(
      [](int ms) {
        sleep_ms(ms);
        return ms + 1;
      },
      2);
  auto r = pool.apply_async(400);
  CHECK_FALSE(r.ready());
  CHECK_FALSE(r.wait_for(20ms));
  CHECK_FALSE(r.ready());
  CHECK(r.wait_for(10s));
  CHECK(r.ready());
  CHECK(r.get() == 401);

  auto q = pool.apply_async(0);
  q.wait();
  CHECK(q.ready());
  CHECK(q.get() == 1);
}

// ready() is wait_for(0ns): run_until must drive the pool at least once even at a
// past deadline, or nothing reads the worker's answer and ready() stays false.
TEST_CASE("pool: polling ready() alone sees a finished task", "[pool][async]") {
  procpool::Pool pool(square, 2);
  auto r = pool.apply_async(9);
  const auto t0 = Clock::now();
  bool ready = false;
  while (!(ready = r.ready()) && ms_since(t0) < 3000.0) sleep_ms(5);
  CHECK(ready);
  CHECK(r.get() == 81);
}

TEST_CASE("pool: map_async and starmap_async", "[pool][async]") {
  procpool::Pool pool([](int x) { return std::to_string(x); }, 2);
  auto a = pool.map_async(iota_vec(500));
  auto b = pool.map_async(std::vector<int>{-1, -2}, {.chunksize = 1});
  const auto vb = b.get();
  const auto va = a.get();
  CHECK(vb == std::vector<std::string>{"-1", "-2"});
  REQUIRE(va.size() == 500);
  for (int i = 0; i < 500; ++i) CHECK(va[static_cast<std::size_t>(i)] == std::to_string(i));
  CHECK_THROWS_AS(a.get(), procpool::usage_error);

  procpool::Pool star([](int x, const std::string& s) { return s + std::to_string(x); }, 2);
  auto c = star.starmap_async(std::vector<std::pair<int, std::string>>{{1, "a"}, {2, "b"}});
  CHECK(c.get() == std::vector<std::string>{"a1", "b2"});
}

// ---------------------------------------------------------------- errors from tasks

TEST_CASE("pool: an exception thrown by the task becomes task_error", "[pool][errors]") {
  procpool::Pool pool(
      [](int x) {
        if (x == 135) throw std::invalid_argument("odd one out");
        return x;
      },
      2);
  std::vector<int> in;
  for (int i = 0; i < 50; ++i) in.push_back(i * 10 + 5);  // item 13 is 135
  try {
    (void)pool.map(in);
    FAIL("map did not throw");
  } catch (const procpool::task_error& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Contains("std::invalid_argument"));
    CHECK_THAT(what, Contains("odd one out"));
    CHECK_THAT(what, Contains("13"));
    CHECK(e.index() == 13);
    CHECK(e.type_name() == "std::invalid_argument");
    CHECK(e.message() == "odd one out");
  }
  CHECK_THROWS_AS(pool.map(in), procpool::item_error);
  CHECK_THROWS_AS(pool.map(in), procpool::error);
  // The pool keeps working.
  CHECK(pool.map(std::vector<int>{1, 2, 3}) == std::vector<int>{1, 2, 3});
  auto r = pool.apply_async(135);
  CHECK_THROWS_AS(r.get(), procpool::task_error);
  CHECK(pool.apply_async(4).get() == 4);
}

TEST_CASE("pool: the lowest failing index is the one thrown", "[pool][errors]") {
  // Item 17 fails last (it sleeps first); items 67, 117, 167 fail earlier.
  procpool::Pool pool(
      [](int x) {
        if (x % 50 == 17) {
          if (x == 17) sleep_ms(150);
          throw std::runtime_error("fail " + std::to_string(x));
        }
        return -x;
      },
      4);
  for (std::size_t chunksize : {std::size_t{1}, std::size_t{0}}) {
    INFO("chunksize " << chunksize);
    try {
      (void)pool.map(iota_vec(200), {.chunksize = chunksize});
      FAIL("map did not throw");
    } catch (const procpool::task_error& e) {
      CHECK(e.index() == 17);
      CHECK(e.message() == "fail 17");
      CHECK(e.type_name() == "std::runtime_error");
    }
  }
  auto fut = pool.map_async(iota_vec(200, 0), {.chunksize = 5});
  try {
    (void)fut.get();
    FAIL("map_async's get did not throw");
  } catch (const procpool::task_error& e) {
    CHECK(e.index() == 17);
  }
  const auto ok = pool.map(std::vector<int>{1, 2});
  CHECK(ok == std::vector<int>{-1, -2});
}

TEST_CASE("pool: an exception not derived from std::exception is reported by type", "[pool][errors]") {
  procpool::Pool pool(
      [](int x) {
        if (x == 2) throw 42;
        return x;
      },
      2);
  try {
    (void)pool.map(std::vector<int>{0, 1, 2, 3});
    FAIL("map did not throw");
  } catch (const procpool::task_error& e) {
    CHECK(e.index() == 2);
    CHECK(e.type_name() == "int");
  }
  CHECK(pool.map(std::vector<int>{5}) == std::vector<int>{5});
}

TEST_CASE("pool: try_map returns every item's outcome", "[pool][errors]") {
  procpool::Pool pool(
      [](int x) {
        if (x % 4 == 3) throw std::logic_error("bad " + std::to_string(x));
        return std::to_string(x * 2);
      },
      2);
  auto out = pool.try_map(iota_vec(20), {.chunksize = 3});
  REQUIRE(out.size() == 20);
  for (int i = 0; i < 20; ++i) {
    auto& o = out[static_cast<std::size_t>(i)];
    INFO("item " << i);
    if (i % 4 == 3) {
      CHECK_FALSE(o.ok());
      CHECK_FALSE(static_cast<bool>(o));
      REQUIRE(o.error() != nullptr);
      try {
        (void)o.value();
        FAIL("value() of a failed item did not throw");
      } catch (const procpool::task_error& e) {
        CHECK(e.index() == static_cast<std::size_t>(i));
        CHECK(e.type_name() == "std::logic_error");
        CHECK(e.message() == "bad " + std::to_string(i));
      }
    } else {
      CHECK(o.ok());
      CHECK(o.error() == nullptr);
      CHECK(o.value() == std::to_string(i * 2));
    }
  }
}

TEST_CASE("pool: a result whose save() throws in the worker fails only that item", "[pool][errors]") {
  procpool::Pool pool([](int x) { return FragileSave{x, "n" + std::to_string(x)}; }, 2);
  auto out = pool.try_map(iota_vec(8), {.chunksize = 4});
  REQUIRE(out.size() == 8);
  for (int i = 0; i < 8; ++i) {
    INFO("item " << i);
    if (i == 3) {
      REQUIRE_FALSE(out[3].ok());
      try {
        (void)out[3].value();
      } catch (const procpool::task_error& e) {
        CHECK(e.index() == 3);
        CHECK(e.type_name() == "std::runtime_error");
        CHECK(e.message() == "cannot encode three");
      }
    } else {
      REQUIRE(out[static_cast<std::size_t>(i)].ok());
      CHECK(out[static_cast<std::size_t>(i)].value().v == i);
      CHECK(out[static_cast<std::size_t>(i)].value().note == "n" + std::to_string(i));
    }
  }
  CHECK(pool.map(std::vector<int>{7}).at(0).v == 7);
}

// An exception while encoding an argument (a throwing save(), std::bad_alloc,
// or procpool's own "one item encodes to over 4 GiB" usage_error) fails the
// call and nothing else: later calls run, and no wait on the pool, nor its
// destructor, blocks for ever.
TEST_CASE("pool: an argument whose save() throws fails the call and the pool stays usable",
          "[pool][errors]") {
  watchdog wd(20s);
  procpool::Pool pool([](const FragileSave& f) { return f.v * 2; }, 2);
  std::vector<FragileSave> bad;
  for (int i = 0; i < 8; ++i) bad.push_back(FragileSave{i, ""});
  CHECK_THROWS_AS(pool.map(bad, {.chunksize = 1}), std::exception);
  std::vector<FragileSave> good;
  for (int i = 10; i < 30; ++i) good.push_back(FragileSave{i, ""});
  auto r = pool.map_async(good);
  REQUIRE(r.wait_for(5s));  // the pool still runs work
  const std::vector<int> v = r.get();
  REQUIRE(v.size() == 20);
  for (int i = 10; i < 30; ++i) CHECK(v[static_cast<std::size_t>(i - 10)] == 2 * i);
}

TEST_CASE("pool: apply_async with no arguments and with several of mixed kinds", "[pool]") {
  // Regression: apply_async encodes its arguments at the call; std::tuple<> is
  // trivially copyable and travels as one byte, which the element-by-element
  // encoding left out ("a message ended 1 bytes early").
  procpool::Pool none([] { return 42; }, 1);
  CHECK(none.apply_async().get() == 42);
  procpool::Pool mixed(
      [](int a, const std::string& b, const std::vector<double>& c) {
        return b + ":" + std::to_string(a) + ":" + std::to_string(c.size());
      },
      1);
  std::string s = "x";
  auto r = mixed.apply_async(3, s, std::vector<double>(5, 1.0));
  s = "changed after the call";  // the task got a copy, made when apply_async was called
  CHECK(r.get() == "x:3:5");
}

TEST_CASE("pool: apply_async with an argument whose save() throws fails at get()",
          "[pool][errors]") {
  // apply_async encodes its arguments when called; an error doing so is kept
  // and thrown by get(), as for any other failure of the task.
  procpool::Pool pool([](const FragileSave& f, int k) { return f.v * k; }, 2);
  auto bad = pool.apply_async(FragileSave{3, ""}, 2);
  auto good = pool.apply_async(FragileSave{4, "x"}, 3);
  CHECK_THROWS_WITH(bad.get(), Catch::Contains("cannot encode three"));
  CHECK(good.get() == 12);
  CHECK(pool.apply_async(FragileSave{5, ""}, 5).get() == 25);
}

// The same for an input range whose own iterator throws.
TEST_CASE("pool: an input iterator that throws fails the call and the pool stays usable",
          "[pool][errors]") {
  watchdog wd(20s);
  procpool::Pool pool(square, 2);
  std::string what;
  try {
    (void)pool.map(ThrowingRange{50, 7}, {.chunksize = 1});
  } catch (const std::runtime_error& e) {
    what = e.what();
  }
  CHECK(what == "input 7 unreadable");
  auto r = pool.map_async(ThrowingRange{30, -1});
  REQUIRE(r.wait_for(5s));
  const auto v = r.get();
  REQUIRE(v.size() == 30);
  CHECK(v[29] == 29 * 29);
}

// As in Python, every item read before the input threw comes out, then the error.
TEST_CASE("pool: imap hands out every item read before its input threw, then the error",
          "[pool][errors]") {
  watchdog wd(30s);
  procpool::Pool pool(square, 2);
  struct run {
    int n, bad;
    std::size_t chunk;
  };
  for (const run r : {run{50, 7, 2}, run{50, 7, 1}, run{1000, 500, 0}}) {
    for (const bool ordered : {false, true}) {
      INFO((ordered ? "imap" : "imap_unordered") << " over " << r.n << " items, throwing at " << r.bad
                                                 << ", chunksize " << r.chunk);
      std::vector<int> got;
      std::string what;
      try {
        if (ordered) {
          for (int v : pool.imap(ThrowingRange{r.n, r.bad}, {.chunksize = r.chunk})) got.push_back(v);
        } else {
          for (int v : pool.imap_unordered(ThrowingRange{r.n, r.bad}, {.chunksize = r.chunk}))
            got.push_back(v);
        }
      } catch (const std::runtime_error& e) {
        what = e.what();
      }
      CHECK(what == "input " + std::to_string(r.bad) + " unreadable");
      CHECK(got.size() == static_cast<std::size_t>(r.bad));
      if (!ordered) std::sort(got.begin(), got.end());
      std::vector<int> want;
      for (int i = 0; i < r.bad; ++i) want.push_back(i * i);
      CHECK(got == want);
    }
  }
}

// A result whose load() throws in the parent fails its item alone: its bytes
// were length-prefixed and consumed, so the items after it in its chunk are
// still read. The chunk leaves the worker's in-flight list, or that worker's
// later answers are matched to the wrong chunks (later calls fail with "does
// not match the chunk" or hang).
TEST_CASE("pool: a result whose load() throws in the parent fails that item, and the pool goes on",
          "[pool][errors]") {
  watchdog wd(60s);
  procpool::Pool pool([](int x) { return CheckedLoad{x == 3 ? -1 : x, "s" + std::to_string(x)}; }, 2);
  std::string threw;
  try {
    const auto out = pool.try_map(iota_vec(40));
    REQUIRE(out.size() == 40);
    CHECK_FALSE(out[3].ok());
    std::string collateral;
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (i == 3) continue;
      if (!out[i].ok())
        collateral += std::to_string(i) + " ";
      else
        CHECK(out[i].value().v == static_cast<int>(i));
    }
    INFO("other items that failed: " << collateral);
    CHECK(collateral.empty());
  } catch (const std::exception& e) {
    threw = type_and_what(e);
  }
  INFO("try_map threw " << threw);
  CHECK(threw.empty());
  CHECK_THROWS_AS(pool.map(iota_vec(8), {.chunksize = 1}), std::exception);
  // Later calls, without the rejected value, work and do not hang.
  for (const std::size_t chunksize : {std::size_t{0}, std::size_t{1}}) {
    INFO("later call, chunksize " << chunksize);
    auto r = pool.map_async(iota_vec(20, 10), {.chunksize = chunksize});
    REQUIRE(r.wait_for(5s));
    std::vector<CheckedLoad> v;
    std::string err;
    try {
      v = r.get();
    } catch (const std::exception& e) {
      err = type_and_what(e);
    }
    INFO(err);
    CHECK(err.empty());
    REQUIRE(v.size() == 20);
    for (int i = 10; i < 30; ++i) CHECK(v[static_cast<std::size_t>(i - 10)].v == i);
  }
}

// A value whose load() throws fails its item alone even inside a pair (whose
// encoding is element by element, not one length-prefixed block): the next
// item is found past its encoding. On the argument side (in the worker) and
// on the result side (in the parent).
TEST_CASE("pool: a load() that throws inside a pair fails only its item, arguments and results",
          "[pool][errors]") {
  watchdog wd(60s);
  constexpr int n = 1000;
  procpool::Pool args([](const std::pair<CheckedLoad, int>& p) { return p.first.v + p.second; }, 2);
  std::vector<std::pair<CheckedLoad, int>> in;
  for (int i = 0; i < n; ++i) in.push_back({CheckedLoad{i % 100 == 7 ? -1 : i, "a"}, i});
  const auto out = args.try_map(in);  // default chunks: many items per chunk
  REQUIRE(out.size() == static_cast<std::size_t>(n));
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    const bool bad = i % 100 == 7;
    if (!out[static_cast<std::size_t>(i)].ok()) {
      ++failed;
      INFO("item " << i);
      CHECK(bad);
    } else {
      CHECK(out[static_cast<std::size_t>(i)].value() == 2 * i);
    }
  }
  CHECK(failed == n / 100);

  procpool::Pool results([](int i) { return std::pair<CheckedLoad, int>{{i % 100 == 7 ? -1 : i, "r"}, i}; }, 2);
  const auto back = results.try_map(iota_vec(n));
  REQUIRE(back.size() == static_cast<std::size_t>(n));
  failed = 0;
  for (int i = 0; i < n; ++i) {
    const auto& o = back[static_cast<std::size_t>(i)];
    if (!o.ok()) {
      ++failed;
      INFO("item " << i);
      CHECK(i % 100 == 7);
    } else {
      CHECK(o.value().first.v == i);
      CHECK(o.value().second == i);
    }
  }
  CHECK(failed == n / 100);
}

// ---------------------------------------------------------------- workers

TEST_CASE("pool: the initializer runs in every worker, before its tasks", "[pool][workers]") {
  g_initialized_tag = 0;
  g_initialized_pid = 0;
  procpool::Pool pool(
      [](int x) { return std::tuple<int, bool, int>{g_initialized_tag, g_initialized_pid == ::getpid(), x}; },
      procpool::pool_options{.processes = 2, .initializer = [] {
                               g_initialized_tag = 4242;
                               g_initialized_pid = ::getpid();
                             }});
  const auto out = pool.map(iota_vec(40), {.chunksize = 1});
  REQUIRE(out.size() == 40);
  for (int i = 0; i < 40; ++i) {
    INFO("item " << i);
    CHECK(std::get<0>(out[static_cast<std::size_t>(i)]) == 4242);
    CHECK(std::get<1>(out[static_cast<std::size_t>(i)]));  // set in this very worker
    CHECK(std::get<2>(out[static_cast<std::size_t>(i)]) == i);
  }
  CHECK(g_initialized_tag == 0);  // only the workers ran it
  CHECK(g_initialized_pid == 0);
}

// Retiring workers (max_tasks_per_child) may be reaped before their "bye" is
// read; the engine must not reap them twice (waitpid ECHILD).
TEST_CASE("pool: replacement workers run the initializer too", "[pool][workers]") {
  g_initialized_tag = 0;
  procpool::Pool pool(
      [](int x) { return std::tuple<int, bool, int>{g_initialized_tag, g_initialized_pid == ::getpid(), x}; },
      procpool::pool_options{.processes = 2,
                             .initializer =
                                 [] {
                                   g_initialized_tag = 4242;
                                   g_initialized_pid = ::getpid();
                                 },
                             .max_tasks_per_child = 2});
  const auto out = pool.map(iota_vec(12), {.chunksize = 1});
  REQUIRE(out.size() == 12);
  for (int i = 0; i < 12; ++i) {
    INFO("item " << i);
    CHECK(std::get<0>(out[static_cast<std::size_t>(i)]) == 4242);
    CHECK(std::get<1>(out[static_cast<std::size_t>(i)]));
    CHECK(std::get<2>(out[static_cast<std::size_t>(i)]) == i);
  }
  CHECK(g_initialized_tag == 0);
}

// check_workers may reap a retiring worker before its "bye" frame is drained;
// on_death then drains it and must not waitpid the reaped pid again (that threw
// std::system_error("waitpid: No child processes") out of map()).
TEST_CASE("pool: max_tasks_per_child replaces each worker after that many items",
          "[pool][workers]") {
  procpool::Pool pool([](int x) { return std::pair<int, int>{x * x, static_cast<int>(::getpid())}; },
                      procpool::pool_options{.processes = 2, .max_tasks_per_child = 3});
  const auto before = pool.pids();
  REQUIRE(before.size() == 2);
  const auto out = pool.map(iota_vec(30));
  REQUIRE(out.size() == 30);
  std::map<int, int> items_per_pid;
  for (int i = 0; i < 30; ++i) {
    CHECK(out[static_cast<std::size_t>(i)].first == i * i);
    ++items_per_pid[out[static_cast<std::size_t>(i)].second];
  }
  CHECK(items_per_pid.size() >= 10);
  for (const auto& [pid, n] : items_per_pid) {
    INFO("worker " << pid);
    CHECK(n <= 3);
    CHECK(pid != static_cast<int>(::getpid()));
  }
  const auto after = pool.pids();
  CHECK(after.size() == 2);
  for (pid_t p : before) CHECK(std::find(after.begin(), after.end(), p) == after.end());
  // The retired workers were reaped.
  for (pid_t p : before) CHECK(reaped(p));
  // And the pool goes on with fresh workers.
  CHECK(pool.map(std::vector<int>{5, 6}).at(1).first == 36);
}

TEST_CASE("pool: workers are named ForkPoolWorker-N", "[pool][workers]") {
  procpool::Pool pool([](int) { return procpool::current_process().name(); }, 2);
  const auto names = pool.map(iota_vec(40), {.chunksize = 1});
  REQUIRE(names.size() == 40);
  std::set<std::string> distinct;
  for (const auto& n : names) {
    CHECK_THAT(n, StartsWith("ForkPoolWorker-"));
    CHECK(n.size() > std::string("ForkPoolWorker-").size());
    distinct.insert(n);
  }
  CHECK(distinct.size() <= 2);
  CHECK(procpool::current_process().name() == "MainProcess");
}

// ---------------------------------------------------------------- big messages

TEST_CASE("pool: a 300 MiB argument through apply_async", "[pool][big]") {
  procpool::Pool pool(
      [](const std::string& s) { return std::pair<std::size_t, std::uint64_t>{s.size(), checksum(s.data(), s.size())}; },
      2);
  constexpr std::size_t n = std::size_t{300} << 20;
  std::string big = patterned(n);
  const std::uint64_t expect = checksum(big.data(), big.size());
  auto r = pool.apply_async(std::move(big));
  const auto [size, sum] = r.get();
  CHECK(size == n);
  CHECK(sum == expect);
  CHECK(pool.apply_async(std::string("small")).get().first == 5);  // the pool goes on
}

TEST_CASE("pool: a 200 MiB result", "[pool][big]") {
  procpool::Pool pool(
      [](std::size_t mib) {
        std::string s(mib << 20, 'x');
        for (std::size_t k = 0; k < mib; ++k) s[k << 20] = static_cast<char>('0' + k % 10);
        s[1] = 'A';
        s.back() = 'Z';
        return s;
      },
      2);
  const std::string r = pool.apply_async(std::size_t{200}).get();
  REQUIRE(r.size() == (std::size_t{200} << 20));
  CHECK(r[1] == 'A');
  CHECK(r[2] == 'x');
  CHECK(r[r.size() - 2] == 'x');
  CHECK(r.back() == 'Z');
  std::size_t wrong = 0;
  for (std::size_t k = 0; k < 200; ++k) wrong += r[k << 20] != static_cast<char>('0' + k % 10);
  CHECK(wrong == 0);
  CHECK(r[(std::size_t{100} << 20) + 12345] == 'x');
}

TEST_CASE("pool: with queue_bytes 4096, 10 MB arguments and results stream through", "[pool][big]") {
  auto transform = [](std::string s) {
    std::reverse(s.begin(), s.end());
    for (char& c : s) c = static_cast<char>(c ^ 0x5a);
    return s;
  };
  procpool::Pool pool(transform, procpool::pool_options{.processes = 2, .queue_bytes = 4096});
  const std::string a = patterned(10'000'000);
  const std::string expect = transform(a);
  CHECK(pool.apply_async(a).get() == expect);
  const std::string b = patterned(10'000'001);
  const auto out = pool.map(std::vector<std::string>{a, "tiny", b});
  REQUIRE(out.size() == 3);
  CHECK(out[0] == expect);
  CHECK(out[1] == transform("tiny"));
  CHECK(out[2] == transform(b));
}

TEST_CASE("pool: answers that wrap around the end of a small queue arrive intact",
          "[pool][big]") {
  // With a 4 KiB queue, answers of many sizes keep wrapping around its end:
  // fixed-size values are copied in two pieces straight from the queue,
  // answers with errors or variable-size values take the copying path.
  auto f = [](int x) {
    if (x % 97 == 13) throw std::runtime_error("item " + std::to_string(x));
    return std::int64_t{x} * 1'000'003;
  };
  auto g = [](int x) { return std::string(static_cast<std::size_t>(x % 61), static_cast<char>('a' + x % 26)); };
  procpool::Pool pf(f, procpool::pool_options{.processes = 2, .queue_bytes = 4096});
  procpool::Pool pg(g, procpool::pool_options{.processes = 2, .queue_bytes = 4096});
  const std::vector<int> in = iota_vec(20000, 0);
  for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{61}, std::size_t{100}, std::size_t{0}}) {
    INFO("chunksize " << chunk);
    const auto out = pf.try_map(in, {.chunksize = chunk});
    REQUIRE(out.size() == in.size());
    CHECK(wrong_outcomes(
              out, in, [](int x) { return x % 97 == 13; },
              [](int x) { return std::int64_t{x} * 1'000'003; }) == 0);
    const auto s = pg.map(in, {.chunksize = chunk});
    REQUIRE(s.size() == in.size());
    std::size_t wrong = 0;
    for (int x : in) wrong += s[static_cast<std::size_t>(x)] != g(x);
    CHECK(wrong == 0);
  }
  std::vector<int> clean;
  for (int x : in)
    if (x % 97 != 13) clean.push_back(x);
  const auto v = pf.map(clean, {.chunksize = 37});
  REQUIRE(v.size() == clean.size());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < clean.size(); ++i) wrong += v[i] != std::int64_t{clean[i]} * 1'000'003;
  CHECK(wrong == 0);
}

TEST_CASE("pool: answers written straight into the queue, past its room and with errors, arrive intact",
          "[pool][big]") {
  // A worker encodes an answer straight into the result queue when the queue
  // has 4 KiB or more in one piece; an answer that outgrows that room, or an
  // error record that does, moves to the worker's own memory and is copied in.
  // With a 16 KiB queue, answers of 0-12 KB meet every one of these cases.
  auto g = [](int x) {
    if (x % 53 == 7) throw std::runtime_error("item " + std::to_string(x) + std::string(x % 3000, '!'));
    return std::string(static_cast<std::size_t>(x * 37 % 12000), static_cast<char>('a' + x % 26));
  };
  procpool::Pool pool(g, procpool::pool_options{.processes = 2, .queue_bytes = 16 << 10});
  const std::vector<int> in = iota_vec(3000, 0);
  for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{40}, std::size_t{0}}) {
    INFO("chunksize " << chunk);
    const auto out = pool.try_map(in, {.chunksize = chunk});
    REQUIRE(out.size() == in.size());
    CHECK(wrong_outcomes(out, in, [](int x) { return x % 53 == 7; }, g) == 0);
  }
}

// ---------------------------------------------------------------- threads

TEST_CASE("pool: map from two threads at once on one pool", "[pool][threads]") {
  procpool::Pool pool([](int x) { return static_cast<long long>(x) * 3 + 1; }, 2);
  std::array<std::string, 2> problems;
  auto run = [&](int who) {
    try {
      for (int round = 0; round < 6; ++round) {
        const int first = who * 1'000'000 + round * 10'000;
        const std::vector<int> in = iota_vec(20000 + who * 777, first);
        const auto out = pool.map(in, {.chunksize = static_cast<std::size_t>(round % 2 ? 1 + who : 0)});
        if (out.size() != in.size()) {
          problems[static_cast<std::size_t>(who)] = "wrong size";
          return;
        }
        for (std::size_t i = 0; i < in.size(); ++i)
          if (out[i] != static_cast<long long>(in[i]) * 3 + 1) {
            problems[static_cast<std::size_t>(who)] =
                "round " + std::to_string(round) + " item " + std::to_string(i) + " wrong";
            return;
          }
      }
    } catch (const std::exception& e) {
      problems[static_cast<std::size_t>(who)] = std::string("threw: ") + e.what();
    }
  };
  std::thread t0(run, 0), t1(run, 1);
  t0.join();
  t1.join();
  CHECK(problems[0] == "");
  CHECK(problems[1] == "");
  CHECK(pool.map(std::vector<int>{1}) == std::vector<long long>{4});
}

TEST_CASE("pool: imap, map and apply_async from three threads at once", "[pool][threads]") {
  procpool::Pool pool([](int x) { return x * 2; }, 2);
  std::array<std::string, 3> problems;
  std::thread t_imap([&] {
    try {
      int i = 0;
      for (int y : pool.imap(iota_vec(20000), {.chunksize = 16}))
        if (y != 2 * i++ && problems[0].empty()) problems[0] = "imap item " + std::to_string(i - 1);
      if (i != 20000) problems[0] = "imap gave " + std::to_string(i) + " items";
    } catch (const std::exception& e) {
      problems[0] = e.what();
    }
  });
  std::thread t_map([&] {
    try {
      for (int round = 0; round < 5; ++round) {
        const auto out = pool.map(iota_vec(10000, round));
        for (int i = 0; i < 10000; ++i)
          if (out[static_cast<std::size_t>(i)] != 2 * (i + round)) {
            problems[1] = "map item " + std::to_string(i);
            return;
          }
      }
    } catch (const std::exception& e) {
      problems[1] = e.what();
    }
  });
  std::thread t_apply([&] {
    try {
      for (int i = 0; i < 200; ++i)
        if (pool.apply_async(i).get() != 2 * i) {
          problems[2] = "apply_async " + std::to_string(i);
          return;
        }
    } catch (const std::exception& e) {
      problems[2] = e.what();
    }
  });
  t_imap.join();
  t_map.join();
  t_apply.join();
  CHECK(problems[0] == "");
  CHECK(problems[1] == "");
  CHECK(problems[2] == "");
}

// A thread that waits for a result while another thread drives (waiting for a
// worker) takes over driving, and the other waits until it is done. Both must
// get their results, also when one of them gives up at a timeout.
TEST_CASE("pool: callers that take over driving from a waiting thread all get their results",
          "[pool][threads]") {
  procpool::Pool pool(
      [](int x) {
        if (x < 0) sleep_ms(-x);
        return x * 3;
      },
      2);
  std::string slow_problem, timed_problem;
  std::thread slow([&] {
    try {
      // Drives first, mostly asleep waiting for this task; replaced below.
      if (pool.apply_async(-400).get() != -1200) slow_problem = "wrong result";
    } catch (const std::exception& e) {
      slow_problem = std::string("threw: ") + e.what();
    }
  });
  std::thread timed([&] {
    try {
      auto r = pool.apply_async(-300);
      sleep_ms(20);
      if (r.wait_for(50ms)) timed_problem = "ready too early";
      if (r.get() != -900) timed_problem = "wrong result";
    } catch (const std::exception& e) {
      timed_problem = std::string("threw: ") + e.what();
    }
  });
  sleep_ms(50);
  std::size_t wrong = 0;
  for (int i = 0; i < 3000; ++i) wrong += pool.apply_async(i).get() != i * 3;
  slow.join();
  timed.join();
  CHECK(wrong == 0);
  CHECK(slow_problem == "");
  CHECK(timed_problem == "");
}

// Waiting keeps no per-thread state: a thread_local made before the first wait
// is destroyed after anything the wait could have left, and may wait again.
TEST_CASE("pool: a thread_local's destructor can wait on a pool", "[pool][threads]") {
  procpool::Pool pool(square, 1);
  using P = decltype(pool);
  struct waits_at_exit {
    P* pool;
    int* out;
    ~waits_at_exit() { *out = pool->apply_async(6).get(); }
  };
  int first = 0, last = 0;
  std::thread t([&] {
    thread_local waits_at_exit later{&pool, &last};
    first = pool.apply_async(5).get();
  });
  t.join();
  CHECK(first == 25);
  CHECK(last == 36);
}

TEST_CASE("pool: four threads of apply_async round trips at once", "[pool][threads]") {
  procpool::Pool pool([](int x) { return x + 7; }, 2);
  std::array<std::size_t, 4> wrong{};
  std::array<std::string, 4> threw;
  std::vector<std::thread> ts;
  for (std::size_t t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      try {
        const int base = static_cast<int>(t) * 100'000;
        // One at a time, and a few in flight: both wait while others drive.
        for (int i = 0; i < 2000; ++i) {
          if (i % 2) {
            wrong[t] += pool.apply_async(base + i).get() != base + i + 7;
          } else {
            auto a = pool.apply_async(base + i);
            auto b = pool.apply_async(base + i + 1);
            wrong[t] += b.get() != base + i + 8;
            wrong[t] += a.get() != base + i + 7;
          }
        }
      } catch (const std::exception& e) {
        threw[t] = e.what();
      }
    });
  for (auto& th : ts) th.join();
  for (std::size_t t = 0; t < 4; ++t) {
    CHECK(wrong[t] == 0);
    CHECK(threw[t] == "");
  }
}

// ---------------------------------------------------------------- close, join, terminate

TEST_CASE("pool: close() forbids new work and join() needs close() first", "[pool][lifecycle]") {
  procpool::Pool pool(square, 2);
  CHECK_THROWS_AS(pool.join(), procpool::usage_error);
  CHECK(pool.map(std::vector<int>{3}) == std::vector<int>{9});  // join's refusal broke nothing
  pool.close();
  CHECK_THROWS_AS(pool.map(std::vector<int>{1, 2}), procpool::usage_error);
  CHECK_THROWS_AS(pool.apply_async(1), procpool::usage_error);
  CHECK_THROWS_AS(pool.imap(std::vector<int>{1}), procpool::usage_error);
  CHECK_THROWS_AS(pool.map_async(std::vector<int>{1}), procpool::usage_error);
  CHECK_THROWS_AS(pool.starmap(std::vector<std::tuple<int>>{{1}}), procpool::usage_error);
  pool.close();  // twice is harmless
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}), procpool::usage_error);
}

// join() makes every worker say "bye": the same double-reap race as above.
TEST_CASE("pool: close() then join() finishes pending map_async work first", "[pool][lifecycle]") {
  procpool::Pool pool(
      [](int x) {
        sleep_ms(3);
        return x + 1;
      },
      2);
  auto r = pool.map_async(iota_vec(120), {.chunksize = 1});
  auto single = pool.apply_async(41);
  const auto pids = pool.pids();
  pool.close();
  pool.join();
  CHECK(pool.pids().empty());
  for (pid_t p : pids) CHECK(reaped(p));
  CHECK(r.ready());
  const auto v = r.get();
  REQUIRE(v.size() == 120);
  for (int i = 0; i < 120; ++i) CHECK(v[static_cast<std::size_t>(i)] == i + 1);
  CHECK(single.get() == 42);
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}), procpool::usage_error);
  pool.join();  // again: nothing to do
}

TEST_CASE("pool: terminate() fails unfinished async results with pool_terminated, promptly",
          "[pool][lifecycle]") {
  procpool::Pool pool(
      [](int ms) {
        sleep_ms(ms);
        return ms;
      },
      2);
  auto many = pool.map_async(std::vector<int>{10000, 10000, 10000, 10000});
  auto one = pool.apply_async(10000);
  CHECK_FALSE(one.wait_for(200ms));  // the workers are inside the 10 s tasks now
  const auto pids = pool.pids();
  const auto t0 = Clock::now();
  pool.terminate();
  CHECK_THROWS_AS(many.get(), procpool::pool_terminated);
  CHECK_THROWS_AS(one.get(), procpool::pool_terminated);
  CHECK(ms_since(t0) < 2000.0);
  for (pid_t p : pids) CHECK(reaped(p));
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}), procpool::usage_error);
  pool.terminate();  // twice is harmless
}

TEST_CASE("pool: destroying the pool fails pending async results with pool_terminated",
          "[pool][lifecycle]") {
  std::optional<procpool::async_result<int>> r;
  const auto t0 = Clock::now();
  {
    procpool::Pool pool(
        [](int ms) {
          sleep_ms(ms);
          return ms;
        },
        2);
    r.emplace(pool.apply_async(10000));
  }
  CHECK_THROWS_AS(r->get(), procpool::pool_terminated);
  CHECK(ms_since(t0) < 2000.0);
}

// terminate() from another thread must not wait for a get() in progress to get
// its result (the driving thread kept re-taking the pool); the get() fails.
TEST_CASE("pool: terminate() from another thread interrupts a get() in progress",
          "[pool][lifecycle][threads]") {
  procpool::Pool pool(
      [](int ms) {
        sleep_ms(ms);
        return ms;
      },
      2);
  auto r = pool.apply_async(4000);
  std::exception_ptr err;
  bool got_value = false;
  double get_returned_at_ms = 0;
  const auto t0 = Clock::now();
  std::thread waiter([&] {
    try {
      (void)r.get();
      got_value = true;
    } catch (...) {
      err = std::current_exception();
    }
    get_returned_at_ms = ms_since(t0);
  });
  sleep_ms(300);
  const auto t1 = Clock::now();
  pool.terminate();
  const double terminate_took_ms = ms_since(t1);
  waiter.join();
  CHECK(terminate_took_ms < 2000.0);
  CHECK(get_returned_at_ms < 2500.0);
  CHECK_FALSE(got_value);
  REQUIRE(err != nullptr);
  CHECK_THROWS_AS(std::rethrow_exception(err), procpool::pool_terminated);
}

// The same with two callers: one driving round trips, one replaced by it and
// waiting for a long task. Both end with pool_terminated, promptly.
TEST_CASE("pool: terminate() ends both a driving caller and one it took over from",
          "[pool][lifecycle][threads]") {
  procpool::Pool pool(
      [](int x) {
        if (x < 0) sleep_ms(-x);
        return x;
      },
      2);
  std::exception_ptr slow_err, fast_err;
  int fast_done = 0;
  std::thread slow([&] {
    try {
      (void)pool.apply_async(-5000).get();
    } catch (...) {
      slow_err = std::current_exception();
    }
  });
  sleep_ms(50);
  std::thread fast([&] {
    try {
      for (;; ++fast_done) (void)pool.apply_async(fast_done).get();
    } catch (...) {
      fast_err = std::current_exception();
    }
  });
  sleep_ms(200);
  const auto t0 = Clock::now();
  pool.terminate();
  slow.join();
  fast.join();
  CHECK(ms_since(t0) < 2000.0);
  CHECK(fast_done > 0);
  REQUIRE(slow_err != nullptr);
  CHECK_THROWS_AS(std::rethrow_exception(slow_err), procpool::pool_terminated);
  REQUIRE(fast_err != nullptr);
  // Terminated mid-round trip, or refused the next one.
  CHECK_THROWS_AS(std::rethrow_exception(fast_err), procpool::error);
}

// Once a stream job is aborted, the abort error is reported once and the range
// ends, so an imap loop that catches item errors and goes on does end.
TEST_CASE("pool: an imap loop that skips failed items ends after terminate()",
          "[pool][imap][lifecycle]") {
  procpool::Pool pool(square, 2);
  const std::vector<int> in = iota_vec(1000);
  auto r = pool.imap(in, {.chunksize = 1});
  int steps = 0, values = 0, terminated = 0;
  auto it = r.begin();
  for (; it != r.end() && steps < 5000; ++it, ++steps) {
    if (steps == 10) pool.terminate();
    try {
      if (*it != values * values) break;
      ++values;
    } catch (const procpool::pool_terminated&) {
      ++terminated;
    }
  }
  INFO(steps << " steps: " << values << " values, " << terminated << " pool_terminated errors");
  CHECK(it == r.end());
  CHECK(steps <= 1000);
  CHECK(values >= 10);
  CHECK(terminated >= 1);
}

TEST_CASE("pool: a moved Pool keeps working and its results stay valid", "[pool][lifecycle]") {
  procpool::Pool a(square, 2);
  auto pending = a.apply_async(6);
  procpool::Pool b(std::move(a));
  CHECK(b.size() == 2);
  CHECK(b.map(std::vector<int>{2, 3}) == std::vector<int>{4, 9});
  CHECK(pending.get() == 36);
  procpool::Pool c(square, 1);
  const auto old_c = c.pids();
  c = std::move(b);  // c's own workers are terminated and reaped
  for (pid_t p : old_c) CHECK(reaped(p));
  CHECK(c.size() == 2);
  CHECK(c.apply_async(5).get() == 25);
}

TEST_CASE("pool: destroying the pool leaves no zombie", "[pool][lifecycle]") {
  std::vector<pid_t> pids;
  {
    procpool::Pool pool(square, 4);
    CHECK(pool.map(iota_vec(100)).at(99) == 99 * 99);
    pids = pool.pids();
    REQUIRE(pids.size() == 4);
    for (pid_t p : pids) CHECK_FALSE(reaped(p));
  }
  for (pid_t p : pids) {
    INFO("worker " << p);
    CHECK(reaped(p));
  }
  // A pool destroyed mid-work, too.
  std::vector<pid_t> busy;
  {
    procpool::Pool pool(
        [](int ms) {
          sleep_ms(ms);
          return ms;
        },
        2);
    auto r = pool.map_async(std::vector<int>{5000, 5000});
    busy = pool.pids();
  }
  for (pid_t p : busy) CHECK(reaped(p));
}

// std::vector<bool> has no data(): the block-copy fast path must not be used for it.
TEST_CASE("pool: a predicate returning bool", "[pool][types]") {
  procpool::Pool pool([](int x) { return x % 3 == 0; }, 2);
  CHECK(pool.map(std::vector<int>{0, 1, 2, 3}) == std::vector<bool>{true, false, false, true});
  CHECK(pool.apply_async(4).get() == false);
}
