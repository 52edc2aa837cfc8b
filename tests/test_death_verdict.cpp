// Tests of what a worker's death does to the work it held
// (include/procpool/detail/death_verdict.hpp): which item is blamed and each
// chunk's fate. Plain data in, plain data out: no fork. The engine carries
// the verdict out; test_failure.cpp checks that through real deaths.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/common.hpp"

#include <csignal>
#include <cstdint>
#include <exception>
#include <string>

namespace {

namespace pd = procpool::detail;

constexpr unsigned no_retries = 0;

}  // namespace

TEST_CASE("death verdict: the chunk that was running has its item blamed, the rest requeued") {
  const pd::death_blame blame{7, 3};  // chunk 7, item 3
  const auto v = pd::judge_chunk(blame, 7, 10, false, 0, 0, no_retries);
  CHECK(v.fate == pd::chunk_fate::blamed);
  CHECK(v.item == 3);
  CHECK_FALSE(v.retry);
  CHECK(v.orphaned == 0);
}

TEST_CASE("death verdict: a blamed item runs again while retries remain") {
  const pd::death_blame blame{7, 0};
  CHECK(pd::judge_chunk(blame, 7, 1, false, 0, 0, 2).retry);
  CHECK(pd::judge_chunk(blame, 7, 1, false, 1, 0, 2).retry);
  CHECK_FALSE(pd::judge_chunk(blame, 7, 1, false, 2, 0, 2).retry);  // the third run was the last
}

TEST_CASE("death verdict: chunks queued behind a blamed item are bystanders") {
  const pd::death_blame blame{7, 3};
  const auto v = pd::judge_chunk(blame, 8, 10, false, 0, 2, no_retries);
  CHECK(v.fate == pd::chunk_fate::requeued);
  CHECK(v.orphaned == 2);  // not counted: the worker died running something else
}

TEST_CASE("death verdict: an item index past the chunk blames nothing in it") {
  // What the worker wrote cannot be trusted to fit: the chunk runs again whole.
  const pd::death_blame blame{7, 10};
  CHECK(pd::judge_chunk(blame, 7, 10, false, 0, 0, no_retries).fate == pd::chunk_fate::requeued);
}

TEST_CASE("death verdict: a worker that died running nothing orphans its chunks, up to a limit") {
  const pd::death_blame nothing{};
  unsigned orphaned = 0;
  for (unsigned death = 1; death <= pd::max_orphaned; ++death) {
    const auto v = pd::judge_chunk(nothing, 5, 4, false, 0, orphaned, no_retries);
    INFO("death " << death);
    CHECK(v.fate == pd::chunk_fate::requeued);
    CHECK(v.orphaned == death);
    orphaned = v.orphaned;
  }
  const auto last = pd::judge_chunk(nothing, 5, 4, false, 0, orphaned, no_retries);
  CHECK(last.fate == pd::chunk_fate::lost);
  CHECK(last.orphaned == pd::max_orphaned + 1);
}

TEST_CASE("death verdict: a chunk taken back before the death stays with its new worker") {
  const pd::death_blame blame{7, 0};
  CHECK(pd::judge_chunk(blame, 7, 3, true, 0, 0, no_retries).fate == pd::chunk_fate::elsewhere);
  CHECK(pd::judge_chunk({}, 7, 3, true, 0, 0, no_retries).fate == pd::chunk_fate::elsewhere);
}

TEST_CASE("death verdict: a timeout blames what the check saw, any other death what was written") {
  const pd::death_blame seen{4, 1}, written{5, 0};
  CHECK(pd::death_blame::of(true, seen, written).seq == 4);
  CHECK(pd::death_blame::of(false, seen, written).seq == 5);
}

TEST_CASE("death verdict: an express call is blamed by its cell") {
  const pd::death_blame blame{pd::express_seq | 5, 0};
  CHECK(blame.on_cell());
  CHECK(blame.cell() == 5);
  CHECK_FALSE(pd::death_blame{7, 0}.on_cell());
  // No chunk has the express bit in its sequence number: none is blamed.
  CHECK(pd::judge_chunk(blame, 5, 3, false, 0, 0, no_retries).fate == pd::chunk_fate::requeued);
}

TEST_CASE("death verdict: the errors name the worker, the item and the cause") {
  try {
    std::rethrow_exception(pd::blamed_error(12, 4321, -9, false, 0));
  } catch (const procpool::worker_lost& e) {
    const std::string what = e.what();
    CHECK(what.find("4321") != std::string::npos);
    CHECK(what.find("item 12") != std::string::npos);
    CHECK(what.find("SIGKILL") != std::string::npos);
  }
  try {
    std::rethrow_exception(pd::blamed_error(3, 99, -9, true, 250));
  } catch (const procpool::task_timeout& e) {
    CHECK(std::string(e.what()).find("task_timeout (250 ms)") != std::string::npos);
  }
  try {
    std::rethrow_exception(pd::lost_error(8, 77, -9, 4));
  } catch (const procpool::worker_lost& e) {
    CHECK(std::string(e.what()).find("4 workers died before it started") != std::string::npos);
  }
}

TEST_CASE("death verdict: a SIGKILL the pool did not send hints at the OOM killer, with the memory") {
  constexpr std::uint64_t gib = std::uint64_t{1} << 30;
  const std::string oom = procpool_test::what_of(pd::blamed_error(17, 1234, -SIGKILL, false, 0, false, gib * 21 / 10));
  CHECK(oom ==
        "procpool: worker 1234 was killed by SIGKILL, not by the pool (the OOM killer? see dmesg) "
        "while running item 17; its memory (RSS) was 2.1 GiB at its last check");
  // No reading yet: no memory said.
  const std::string unread = procpool_test::what_of(pd::blamed_error(17, 1234, -SIGKILL, false, 0, false, 0));
  CHECK(unread.find("OOM killer") != std::string::npos);
  CHECK(unread.find("memory") == std::string::npos);
  // The pool's own kills are not the OOM killer's: a corrupt stream, a timeout.
  const std::string corrupt = procpool_test::what_of(pd::blamed_error(17, 1234, -SIGKILL, false, 0, true, gib));
  CHECK(corrupt.find("OOM") == std::string::npos);
  CHECK(corrupt.find("1.0 GiB") != std::string::npos);
  const std::string timeout = procpool_test::what_of(pd::blamed_error(17, 1234, -SIGKILL, true, 250, false, gib));
  CHECK(timeout.find("OOM") == std::string::npos);
  CHECK(timeout.find("task_timeout (250 ms)") != std::string::npos);
  // Another death says the memory, and no OOM.
  const std::string segv = procpool_test::what_of(pd::blamed_error(5, 1234, -SIGSEGV, false, 0, false, 300 << 20));
  CHECK(segv.find("OOM") == std::string::npos);
  CHECK(segv.find("killed by SIGSEGV while running item 5; its memory (RSS) was 300 MiB") !=
        std::string::npos);
}

TEST_CASE("death verdict: sizes in messages read as people write them") {
  CHECK(pd::describe_bytes(0) == "0 bytes");
  CHECK(pd::describe_bytes(512) == "512 bytes");
  CHECK(pd::describe_bytes(1536) == "1.5 KiB");
  CHECK(pd::describe_bytes(std::uint64_t{64} << 20) == "64 MiB");
  CHECK(pd::describe_bytes((std::uint64_t{35} << 20) / 10) == "3.5 MiB");
  CHECK(pd::describe_bytes(std::uint64_t{5} << 40) == "5.0 TiB");
}

TEST_CASE("death verdict: a worker over max_memory_per_child from its start is a usage_error") {
  try {
    std::rethrow_exception(pd::memory_floor_error(42, std::uint64_t{300} << 20, std::uint64_t{256} << 20));
    FAIL("no usage_error");
  } catch (const procpool::usage_error& e) {
    const std::string what = e.what();
    CHECK(what.find("worker 42 started with 300 MiB") != std::string::npos);
    CHECK(what.find("over max_memory_per_child (256 MiB)") != std::string::npos);
  }
}
