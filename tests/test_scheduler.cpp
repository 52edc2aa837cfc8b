// Tests of the scheduler's rule: no worker sits idle while another worker
// holds items it has not started (include/procpool/detail/scheduler.hpp).
//
// The policy functions are plain data in, plain data out, and are tested as
// such. The rule itself is tested through real pools: items sleep (so CPU
// noise cannot change who runs what) and report the pid that ran them; with
// 40 items of 20 ms on 2 workers, each worker must run at least a quarter.
// Every case is bounded by ctest's timeout; no assertion runs in a worker.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <thread>
#include <vector>

#include <signal.h>
#include <unistd.h>

namespace scheduler_test {

namespace pd = procpool::detail;
using namespace std::chrono_literals;

constexpr int items = 40;
constexpr int item_ms = 20;

constexpr int long_from = 1000;  // items from here sleep 100 ms
constexpr int long_ms = 100;

/// The pool's function: sleeps (item_ms; long_ms from long_from on; not at all
/// for negative items), then answers (pid << 32 | x), so the parent sees both
/// who ran an item and that the answer is the item's own.
std::int64_t sleepy(int x) {
  if (x >= 0) std::this_thread::sleep_for(std::chrono::milliseconds(x >= long_from ? long_ms : item_ms));
  return (static_cast<std::int64_t>(::getpid()) << 32) | static_cast<std::uint32_t>(x);
}

/// Items run by each pid; fails the test if an answer is not its item's.
std::map<pid_t, int> per_worker(const std::vector<std::int64_t>& answers,
                                const std::vector<int>& inputs) {
  REQUIRE(answers.size() == inputs.size());
  std::map<pid_t, int> count;
  for (std::size_t i = 0; i < answers.size(); ++i) {
    CHECK(static_cast<int>(answers[i] & 0xffffffff) == inputs[i]);
    ++count[static_cast<pid_t>(answers[i] >> 32)];
  }
  return count;
}

/// Each of @p workers pids ran at least a quarter of @p total items.
void require_balanced(const std::map<pid_t, int>& count, std::size_t workers, int total) {
  INFO("items per worker:" << [&] {
    std::string s;
    for (auto [pid, n] : count) s += " " + std::to_string(pid) + ":" + std::to_string(n);
    return s;
  }());
  REQUIRE(count.size() == workers);
  for (auto [pid, n] : count) CHECK(n >= total / 4);
}

std::vector<int> inputs(int n = items, int first = 0) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = first + i;
  return v;
}

/// apply_async of every input at once, then get() of each.
std::vector<std::int64_t> burst(procpool::Pool<std::int64_t (*)(int)>& pool,
                                const std::vector<int>& in) {
  std::vector<procpool::async_result<std::int64_t>> calls;
  for (int x : in) calls.push_back(pool.apply_async(x));
  std::vector<std::int64_t> got;
  for (auto& c : calls) got.push_back(c.get());
  return got;
}

// ---------------------------------------------------------------- the policy

TEST_CASE("scheduler policy: queue depth follows the last chunk's time") {
  CHECK(pd::queue_depth(-1) == 2);  // nothing known yet
  CHECK(pd::queue_depth(1'000) == pd::max_queue_depth);
  CHECK(pd::queue_depth(1'000'000) == 2);
  CHECK(pd::queue_depth(20'000'000) == 1);
}

TEST_CASE("scheduler policy: guided chunks shrink to one item as the input drains") {
  // A chosen chunk size is kept.
  CHECK(pd::chunk_items(5, false, 3, 2) == 5);
  // Unknown length: the cap.
  CHECK(pd::chunk_items(7, true, 0, 2) == 7);
  // 40 items, 2 workers, Python's cap of 5: 5 while plenty is left, then less.
  CHECK(pd::chunk_items(5, true, 40, 2) == 5);
  CHECK(pd::chunk_items(5, true, 12, 2) == 3);
  CHECK(pd::chunk_items(5, true, 4, 2) == 1);
  CHECK(pd::chunk_items(5, true, 1, 2) == 1);
  std::uint64_t left = 40;
  std::size_t last = 0, chunks = 0;
  while (left) {
    last = pd::chunk_items(5, true, left, 2);
    left -= last;
    ++chunks;
  }
  CHECK(last == 1);
  CHECK(chunks > 8);  // finer than Python's 8 chunks of 5
  // Not finer than what runs min_chunk_ns: quick items keep whole chunks.
  CHECK(pd::min_chunk_items(-1, 0) == 1);
  CHECK(pd::min_chunk_items(20'000'000, 5) == 1);              // 4 ms an item
  CHECK(pd::min_chunk_items(800'000, 10) == 2);                // 80 us an item
  CHECK(pd::min_chunk_items(24'000, 8192) == 68266);           // 3 ns an item
  CHECK(pd::chunk_items(8192, true, 1000, 2, 68266) == 8192);  // the cap still holds
  CHECK(pd::chunk_items(5, true, 4, 2, 2) == 2);
}

TEST_CASE("scheduler policy: an idle worker takes from the busiest, once the chunk has waited") {
  const std::int64_t now = 10'000'000'000;
  std::int64_t retry = INT64_MAX;
  std::vector<pd::worker_load> w(3);
  w[0] = {true, 0, 0};
  w[1] = {false, 2, now - pd::steal_after_ns};
  w[2] = {false, 5, now - 2 * pd::steal_after_ns};
  CHECK(pd::pick_donor(w, now, retry) == 2);
  CHECK(retry == INT64_MAX);
  // Too young: nothing moves, and the caller is told when to look again.
  w[2].oldest_sent_ns = now - 1'000;
  w[1].unstarted = 0;
  CHECK(pd::pick_donor(w, now, retry) == -1);
  CHECK(retry == now - 1'000 + pd::steal_after_ns);
  // Nothing unstarted anywhere.
  w[2].unstarted = 0;
  retry = INT64_MAX;
  CHECK(pd::pick_donor(w, now, retry) == -1);
  CHECK(retry == INT64_MAX);
}

TEST_CASE("scheduler policy: a claim word is won by exactly one of worker and parent") {
  pd::claim_board b;
  b.reset();
  b.post(3, 42);
  CHECK_FALSE(b.is_started(3, 42));
  CHECK(b.take(3, 42));
  CHECK(b.is_started(3, 42));
  CHECK_FALSE(b.revoke(3, 42));  // started: the parent cannot take it back
  b.post(4, 43);
  CHECK(b.revoke(4, 43));
  CHECK_FALSE(b.take(4, 43));  // taken back: the worker skips it
  CHECK_FALSE(b.take(4, 44));  // a word left from another chunk never matches
  // Raced from two threads, many times: exactly one side wins each chunk.
  for (std::uint64_t seq = 100; seq < 2100; ++seq) {
    b.post(0, seq);
    std::atomic<int> wins{0};
    std::thread t([&] { wins += b.take(0, seq) ? 1 : 0; });
    wins += b.revoke(0, seq) ? 1 : 0;
    t.join();
    REQUIRE(wins == 1);
  }
}

// ---------------------------------------------------------------- real pools

TEST_CASE("scheduler: map with default options spreads over both workers, fresh and warm") {
  procpool::Pool pool(sleepy, 2);
  const auto in = inputs();
  require_balanced(per_worker(pool.map(in), in), 2, items);
  require_balanced(per_worker(pool.map(in), in), 2, items);
}

TEST_CASE("scheduler: map_async, starmap and try_map spread over both workers") {
  procpool::Pool pool(sleepy, 2);
  const auto in = inputs();
  require_balanced(per_worker(pool.map_async(in).get(), in), 2, items);
  std::vector<std::tuple<int>> tuples;
  for (int x : in) tuples.emplace_back(x);
  require_balanced(per_worker(pool.starmap(tuples), in), 2, items);
  std::vector<std::int64_t> values;
  for (auto& o : pool.try_map(in)) values.push_back(o.value());
  require_balanced(per_worker(values, in), 2, items);
}

TEST_CASE("scheduler: imap and imap_unordered spread over both workers") {
  procpool::Pool pool(sleepy, 2);
  const auto in = inputs();
  std::vector<std::int64_t> got;
  for (auto v : pool.imap(in)) got.push_back(v);
  require_balanced(per_worker(got, in), 2, items);
  got.clear();
  for (auto v : pool.imap_unordered(in)) got.push_back(v);
  std::sort(got.begin(), got.end(), [](auto a, auto b) { return (a & 0xffffffff) < (b & 0xffffffff); });
  require_balanced(per_worker(got, in), 2, items);
}

TEST_CASE("scheduler: a burst of apply_async calls spreads over both workers") {
  procpool::Pool pool(sleepy, 2);
  // Five calls of 100 ms at once, on a fresh pool, then on a warm one.
  const auto few = inputs(5, long_from);
  require_balanced(per_worker(burst(pool, few), few), 2, 5);
  require_balanced(per_worker(burst(pool, few), few), 2, 5);
  const auto in = inputs();
  require_balanced(per_worker(burst(pool, in), in), 2, items);
}

TEST_CASE("scheduler: two maps submitted from two threads each spread over both workers") {
  procpool::Pool pool(sleepy, 2);
  const auto in = inputs();
  std::vector<std::int64_t> a, b;
  std::thread ta([&] { a = pool.map(in); });
  std::thread tb([&] { b = pool.map(in); });
  ta.join();
  tb.join();
  require_balanced(per_worker(a, in), 2, items);
  require_balanced(per_worker(b, in), 2, items);
}

TEST_CASE("scheduler: right after a worker is killed and replaced, both workers share a map") {
  procpool::Pool pool(sleepy, 2);
  // Quick items first: the survivor then has a history of quick chunks (deep
  // queues).
  const auto quick = inputs(64, -64);
  (void)pool.map(quick, {.chunksize = 1});
  const auto before = pool.pids();
  REQUIRE(before.size() == 2);
  REQUIRE(::kill(before[1], SIGKILL) == 0);  // the survivor is the one filled first
  // Wait for the replacement (the pool notices on its next round).
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (pool.pids() == before || pool.pids().size() != 2) {
    (void)pool.map(quick, {.chunksize = 1});
    REQUIRE(std::chrono::steady_clock::now() < deadline);
  }
  const auto in = inputs();
  require_balanced(per_worker(pool.map(in), in), 2, items);
}

}  // namespace scheduler_test
