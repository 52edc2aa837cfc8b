// Tests of Pipe with real processes: round trips, one-way ends, close, poll,
// big items, and a peer SIGKILLed while another process still holds a copy of
// its end. Every wait is bounded; a child reports through its exit code only.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/watchdog.hpp"

#include <chrono>
#include <csignal>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;

}  // namespace

TEST_CASE("Pipe: round trips both ways, with items of two types") {
  watchdog wd(60s);
  auto [here, there] = procpool::Pipe<std::vector<int>, std::string>();  // here sends vectors
  const pid_t pid = fork_child([&, &there = there] {
    for (;;) {
      const std::vector<int> v = there.recv();
      if (v.empty()) return 0;
      there.send(std::to_string(v.size()) + ":" + std::to_string(v.back()));
    }
  });
  for (int i = 1; i <= 1000; ++i) {
    here.send(std::vector<int>(static_cast<std::size_t>(i), i));
    REQUIRE(here.recv() == std::to_string(i) + ":" + std::to_string(i));
  }
  here.send({});
  CHECK(exit_status(pid) == 0);
}

TEST_CASE("Pipe: a peer killed by SIGKILL ends recv with eof_error, though another process holds its end") {
  watchdog wd(60s);
  auto [mine, theirs] = procpool::Pipe<int>();
  // A bystander holds a copy of the peer's end and lives on: a file pipe
  // would give no EOF here.
  const pid_t bystander = fork_child([&] {
    ::pause();
    return 0;
  });
  const pid_t peer = fork_child([&, &theirs = theirs] {
    theirs.send(1);
    theirs.send(2);
    ::kill(::getpid(), SIGKILL);
    return 0;
  });
  CHECK(exit_status(peer) == 128 + SIGKILL);
  CHECK(mine.recv() == 1);  // what it sent before it died is received
  CHECK(mine.recv() == 2);
  CHECK_THROWS_AS(mine.recv(), procpool::eof_error);
  CHECK(mine.poll());  // the end is there to be seen
  CHECK_THROWS_AS(mine.send(3), procpool::broken_pipe_error);
  kill_and_reap(bystander);
}

TEST_CASE("Pipe: a send waiting on a full pipe ends with broken_pipe_error when the peer dies") {
  watchdog wd(60s);
  auto [mine, theirs] = procpool::Pipe<std::string>(true, 4096);
  procpool::Event ready;
  const pid_t peer = fork_child([&, &theirs = theirs] {
    theirs.send("hello");  // makes it the peer
    ready.set();
    ::pause();
    return 0;
  });
  REQUIRE(ready.wait(10s));
  CHECK(mine.recv() == "hello");
  std::thread killer([&] {
    sleep_ms(100);
    kill_and_reap(peer);
  });
  CHECK_THROWS_AS(mine.send(std::string(1 << 20, 'x')), procpool::broken_pipe_error);
  killer.join();
}

TEST_CASE("Pipe: close ends the peer's recv after what was sent, and its send") {
  watchdog wd(60s);
  auto [a, b] = procpool::Pipe<int>();
  a.send(7);
  a.close();
  CHECK(a.closed());
  CHECK(b.recv() == 7);
  CHECK_THROWS_AS(b.recv(), procpool::eof_error);
  CHECK_THROWS_AS(b.send(1), procpool::broken_pipe_error);
  CHECK_THROWS_AS(a.send(1), procpool::usage_error);
}

TEST_CASE("Pipe: one-way ends, poll, timeouts and a 50 MiB item") {
  watchdog wd(60s);
  auto [reader, writer] = procpool::Pipe<std::vector<char>>(false);
  CHECK_THROWS_AS(reader.send({}), procpool::usage_error);
  CHECK_THROWS_AS(writer.recv(), procpool::usage_error);
  CHECK_FALSE(reader.poll());
  CHECK_FALSE(reader.poll(20ms));
  CHECK_FALSE(reader.recv(20ms));
  const pid_t pid = fork_child([&, &writer = writer] {
    writer.send(std::vector<char>(std::size_t{50} << 20, 'z'));
    return 0;
  });
  CHECK(reader.poll(10s));
  const auto v = reader.recv();
  CHECK(v.size() == (std::size_t{50} << 20));
  CHECK(v.back() == 'z');
  CHECK(exit_status(pid) == 0);
}
