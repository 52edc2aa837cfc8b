// Tests of what a worker's death does to the work it held
// (include/procpool/detail/death_verdict.hpp): which item is blamed and each
// chunk's fate. Plain data in, plain data out: no fork. The engine carries
// the verdict out; test_failure.cpp checks that through real deaths.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

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
