// procpool: tests of the shared-memory byte ring the pool's queues are made of.
// SPDX-License-Identifier: BSL-1.0
//
// Both ends in one process, on plain memory: what is checked here is the
// bookkeeping of positions, which is the same whatever process holds each end.
// (The cross-process use is covered by every test of a Pool.)

#include <procpool/detail/buffer.hpp>
#include <procpool/detail/ring.hpp>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace {

struct ring_pair {
  explicit ring_pair(std::size_t cap)
      : data(cap), producer(&control, data.data(), cap), consumer(&control, data.data(), cap) {}
  procpool::detail::ring_control control;
  std::vector<char> data;
  procpool::detail::byte_ring producer;
  procpool::detail::byte_ring consumer;
};

std::vector<char> bytes(std::size_t n, char first) {
  std::vector<char> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

}  // namespace

TEST_CASE("ring: each end sees every byte the other published, however it read before",
          "[ring]") {
  // Regression: each end cached the other's position and refreshed it only
  // when the cache said empty (or full). A reader left with 14 cached bytes
  // then never saw the rest of a 16-byte header, and the pool spun forever.
  ring_pair r(4096);
  const auto a = bytes(100, 0);
  REQUIRE(r.producer.write_some(a.data(), a.size()) == 100);
  REQUIRE(r.consumer.readable() == 100);
  std::vector<char> out(100);
  REQUIRE(r.consumer.read_some(out.data(), 86) == 86);
  CHECK(r.consumer.readable() == 14);
  const auto b = bytes(16, 100);
  REQUIRE(r.producer.write_some(b.data(), b.size()) == 16);
  CHECK(r.consumer.readable() == 30);
  REQUIRE(r.consumer.read_some(out.data(), 30) == 30);
  CHECK(out[0] == a[86]);
  CHECK(out[29] == b[15]);
}

TEST_CASE("ring: the writer sees space the reader freed, however little it wrote before",
          "[ring]") {
  ring_pair r(4096);
  const auto a = bytes(4096, 0);
  REQUIRE(r.producer.write_some(a.data(), 4096) == 4096);
  CHECK(r.producer.writable() == 0);
  std::vector<char> out(4096);
  REQUIRE(r.consumer.read_some(out.data(), 10) == 10);
  CHECK(r.producer.writable() == 10);
  REQUIRE(r.producer.write_some(a.data(), 2) == 2);
  CHECK(r.producer.writable() == 8);
  REQUIRE(r.consumer.read_some(out.data(), 100) == 100);
  CHECK(r.producer.writable() == 108);
}

TEST_CASE("ring: bytes that wrap around the end are read in place in two pieces", "[ring]") {
  ring_pair r(4096);
  std::vector<char> sink(4000);
  const auto fill = bytes(4000, 0);
  REQUIRE(r.producer.write_some(fill.data(), 4000) == 4000);
  REQUIRE(r.consumer.read_some(sink.data(), 4000) == 4000);
  const auto msg = bytes(300, 7);  // 96 bytes before the end, 204 after
  REQUIRE(r.producer.write_some(msg.data(), msg.size()) == 300);
  const auto p = r.consumer.spans(300);
  CHECK(p.na == 96);
  CHECK(p.nb == 204);
  std::vector<char> got(300);
  p.copy(0, got.data(), 10);
  p.copy(10, got.data() + 10, 290);
  CHECK(got == msg);
  std::vector<char> mid(20);
  p.copy(90, mid.data(), 20);  // across the seam
  CHECK(std::vector<char>(msg.begin() + 90, msg.begin() + 110) == mid);
  r.consumer.consume(300);
  CHECK(r.consumer.readable() == 0);
  CHECK(r.producer.writable() == 4096);
}

TEST_CASE("ring: bytes written in place are unseen until committed, and stop at the end",
          "[ring]") {
  ring_pair r(4096);
  std::vector<char> sink(4000);
  const auto fill = bytes(4000, 0);
  REQUIRE(r.producer.write_some(fill.data(), 4000) == 4000);
  std::size_t n = 0;
  r.producer.write_space(n);
  CHECK(n == 96);  // the reader has not freed anything yet
  REQUIRE(r.consumer.read_some(sink.data(), 1000) == 1000);
  char* at = r.producer.write_space(n);
  CHECK(n == 96);  // 1096 free, but only 96 in one piece before the end
  const auto msg = bytes(96, 3);
  std::copy(msg.begin(), msg.end(), at);
  CHECK(r.consumer.readable() == 3000);  // not yet published
  r.producer.commit(96);
  CHECK(r.consumer.readable() == 3096);
  REQUIRE(r.consumer.read_some(sink.data(), 3000) == 3000);
  std::vector<char> got(96);
  REQUIRE(r.consumer.read_some(got.data(), 96) == 96);
  CHECK(got == msg);
  at = r.producer.write_space(n);
  CHECK(n == 4096);  // wrapped to the start, all free
  CHECK(at == r.data.data());
}

TEST_CASE("ring: starts small, and grows only when empty, for a message over half of it",
          "[ring]") {
  namespace pd = procpool::detail;
  constexpr std::size_t cap = 4 * pd::initial_ring_bytes;
  ring_pair r(cap);
  constexpr char untouched = '\x5a';
  std::fill(r.data.begin(), r.data.end(), untouched);
  r.producer.start_small();
  REQUIRE(r.producer.capacity() == pd::initial_ring_bytes);
  REQUIRE(r.consumer.capacity() == pd::initial_ring_bytes);
  // A stream of small messages, through positions far past the capacity,
  // stays in the first part of the memory.
  const auto msg = bytes(1000, 1);
  std::vector<char> out(msg.size());
  for (int i = 0; i < 5000; ++i) {
    r.producer.grow_for(msg.size());
    REQUIRE(r.producer.write_some(msg.data(), msg.size()) == msg.size());
    REQUIRE(r.consumer.read_some(out.data(), out.size()) == out.size());
    REQUIRE(out == msg);
  }
  CHECK(r.producer.capacity() == pd::initial_ring_bytes);
  CHECK(std::all_of(r.data.begin() + pd::initial_ring_bytes, r.data.end(),
                    [](char c) { return c == untouched; }));
  // A big message while bytes are unread: no growth yet (the reader maps
  // positions with the size it has), the message streams through in pieces.
  const auto big = bytes(3 * pd::initial_ring_bytes / 4, 7);
  REQUIRE(r.producer.write_some(msg.data(), 10) == 10);
  r.producer.grow_for(big.size());
  CHECK(r.producer.capacity() == pd::initial_ring_bytes);
  REQUIRE(r.consumer.read_some(out.data(), 10) == 10);
  // Empty now: it grows, and the big message goes in whole and reads back.
  r.producer.grow_for(big.size());
  REQUIRE(r.producer.capacity() == cap);
  REQUIRE(r.consumer.capacity() == cap);
  REQUIRE(r.producer.write_some(big.data(), big.size()) == big.size());
  std::vector<char> back(big.size());
  REQUIRE(r.consumer.read_some(back.data(), back.size()) == back.size());
  CHECK(back == big);
  // A ring whose capacity is the initial size or less never changes.
  ring_pair small(pd::initial_ring_bytes / 2);
  small.producer.start_small();
  CHECK(small.producer.capacity() == pd::initial_ring_bytes / 2);
  small.producer.grow_for(pd::initial_ring_bytes);
  CHECK(small.producer.capacity() == pd::initial_ring_bytes / 2);
}

TEST_CASE("byte_buffer: a borrowed buffer writes in place, and moves out when it outgrows it",
          "[ring]") {
  std::vector<char> room(64, 'z');
  procpool::detail::byte_buffer b;
  b.borrow(room.data(), room.size());
  CHECK(b.borrowed());
  b.append("hello", 5);
  CHECK(b.data() == room.data());
  CHECK(std::string(room.data(), 5) == "hello");
  const auto more = bytes(100, 1);
  b.append(more.data(), more.size());  // past the 64 borrowed bytes
  CHECK_FALSE(b.borrowed());
  CHECK(b.data() != room.data());
  REQUIRE(b.size() == 105);
  CHECK(std::string(b.data(), 5) == "hello");
  CHECK(std::vector<char>(b.data() + 5, b.data() + 105) == more);
  b.borrow(room.data(), room.size());  // frees its own memory (ASan: no leak), not room's
  CHECK(b.size() == 0);
}
