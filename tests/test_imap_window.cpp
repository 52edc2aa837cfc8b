// imap's window set by the caller (map_options::buffersize) and its timed
// next (imap_range::next_for). Items sleep, so what is checked does not
// depend on the machine's load.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;
using namespace std::chrono_literals;

namespace {

/// @p n items of value 0, counting how many the pool has read (in the parent).
class counted_input {
 public:
  class iterator {
   public:
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    iterator(std::size_t i, std::atomic<std::size_t>* reads) : i_(i), reads_(reads) {}
    int operator*() const {
      ++*reads_;
      return 0;
    }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    iterator operator++(int) {
      auto o = *this;
      ++i_;
      return o;
    }
    bool operator==(const iterator& o) const { return i_ == o.i_; }

   private:
    std::size_t i_ = 0;
    std::atomic<std::size_t>* reads_ = nullptr;
  };
  counted_input(std::size_t n, std::atomic<std::size_t>& reads) : n_(n), reads_(&reads) {}
  iterator begin() const { return {0, reads_}; }
  iterator end() const { return {n_, reads_}; }

 private:
  std::size_t n_;
  std::atomic<std::size_t>* reads_;
};

/// How many items imap has read after its first result was handed out and
/// the pool had time to read ahead.
std::size_t read_ahead(procpool::map_options options) {
  std::atomic<std::size_t> reads{0};
  procpool::Pool pool([](int) { return 1; }, 2);
  counted_input input(100000, reads);
  auto results = pool.imap_unordered(input, options);
  auto it = results.begin();
  CHECK(*it == 1);
  std::this_thread::sleep_for(100ms);
  (void)pool.map(std::vector<int>{0});  // drives the pool once more
  return reads.load();
}

}  // namespace

TEST_CASE("buffersize bounds the items imap reads ahead of its reader") {
  watchdog dog(30s);
  const std::size_t bounded = read_ahead({.buffersize = 8});
  CHECK(bounded >= 1);
  CHECK(bounded <= 9);  // 8 in flight or waiting, besides the one read
  CHECK(read_ahead({}) > 9);  // the default window is wider: the check above can fail
}

TEST_CASE("imap with buffersize 1 still hands out every result, in order") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::vector<int> in{5, 0, 3, 1, 0, 2, 4};
  std::vector<int> out;
  for (int v : pool.imap(in, {.buffersize = 1})) out.push_back(v);
  CHECK(out == in);
}

TEST_CASE("buffersize is for imap only: map says so") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}, {.buffersize = 4}), procpool::usage_error);
  CHECK_THROWS_AS(pool.map_async(std::vector<int>{1}, {.buffersize = 4}), procpool::usage_error);
  CHECK(pool.map(std::vector<int>{1}) == std::vector<int>{1});
}

TEST_CASE("next_for times out while the next result runs, then hands it out") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto results = pool.imap(std::vector<int>{300, 0, -1, 7});
  CHECK_THROWS_AS(results.next_for(20ms), procpool::timeout_error);
  CHECK(results.next_for(10s) == 300);
  CHECK(results.next_for(10s) == 0);
  CHECK_THROWS_AS(results.next_for(10s), procpool::task_error);  // item 2's error
  CHECK(results.next_for(10s) == 7);
  CHECK(results.next_for(10s) == std::nullopt);
  CHECK(results.next_for(0ms) == std::nullopt);
}

TEST_CASE("a range is read either by a loop or by next_for") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto looped = pool.imap(std::vector<int>{1, 2});
  auto it = looped.begin();
  CHECK(*it == 1);
  CHECK_THROWS_AS(looped.next_for(1s), procpool::usage_error);
  auto pulled = pool.imap(std::vector<int>{1, 2});
  CHECK(pulled.next_for(1s) == 1);
  CHECK_THROWS_AS(pulled.begin(), procpool::usage_error);
}
