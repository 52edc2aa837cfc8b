// procpool tests: a consumer killed in the middle of a big item, for Queue and
// JoinableQueue. The item is a string that crosses as encoded bytes, so the
// reader's buffer grows chunk by chunk (a bare string's is sized whole at its
// first chunk): its growing RSS says it is in the middle of the item.
#pragma once

#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <thread>

#include <sys/types.h>

#include "child.hpp"
#include "common.hpp"
#include "proc.hpp"

namespace procpool_test {

struct streamed {
  std::string s;
  template <class A>
  void serialize(A& a) {
    a(s);
  }
};

/// On @p q (of streamed, with a 4 KiB ring: about 1 KiB a chunk): a thread
/// here puts "first", 256 MiB, then "after"; a forked consumer gets "first",
/// runs @p after_first, and is SIGKILLed once it has read 16 MiB of the big
/// item. The thread's last puts end once someone reads past the item.
template <class Q>
class consumer_killed_mid_item {
 public:
  template <class AfterFirst>
  consumer_killed_mid_item(Q& q, AfterFirst after_first) {
    using namespace std::chrono_literals;
    procpool::Event reading;
    const pid_t consumer = fork_child([&] {
      if (q.get().s != "first") return 1;
      after_first();
      reading.set();
      static_cast<void>(q.get());
      return 0;
    });
    producer_ = std::thread([&q, this] {
      const streamed huge{std::string(std::size_t{256} << 20, 'h')};
      q.put(streamed{"first"});
      putting_ = true;
      q.put(huge);
      put_done_ = true;
      q.put(streamed{"after"});
    });
    REQUIRE(reading.wait(30s));
    const std::size_t rss = rss_bytes(consumer);
    REQUIRE(eventually([&] { return putting_.load(); }));
    REQUIRE(eventually([&] { return rss_bytes(consumer) > rss + (16 << 20); }));
    kill_and_reap(consumer);
    mid_item_ = !put_done_;
  }
  ~consumer_killed_mid_item() { join_producer(); }

  /// The kill came while the big item was still being put (else the test did
  /// not test what it says).
  bool mid_item() const noexcept { return mid_item_; }
  void join_producer() {
    if (producer_.joinable()) producer_.join();
  }

 private:
  std::thread producer_;
  std::atomic<bool> putting_{false}, put_done_{false};
  bool mid_item_ = false;
};

}  // namespace procpool_test
