// procpool: tests of the shared-memory byte ring the pool's queues are made of.
// SPDX-License-Identifier: BSL-1.0
//
// Both ends in one process, on plain memory: what is checked here is the
// bookkeeping of positions, which is the same whatever process holds each end.
// (The cross-process use is covered by test_pool and test_failure.)

#include <procpool/detail/ring.hpp>

#include <cstddef>
#include <numeric>
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
