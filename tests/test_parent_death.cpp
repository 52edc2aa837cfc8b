// The death of the process that built a pool: killed by SIGKILL or SIGTERM,
// or interrupted by Ctrl-C (SIGINT to its process group or to it alone). Its
// workers die with it, within a second, and are not left as zombies.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog; the children
// forked here end with _exit (support/child.hpp).

#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/pipe.hpp"
#include "support/proc.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

namespace {

/// A child builds a pool whose tasks spin forever, reports its worker pids,
/// and is killed with @p sig; every worker must be gone within 1 s.
/// @p from_thread: the pool is built and driven by a second thread of the
/// child (its workers cannot rely on PR_SET_PDEATHSIG, which follows the
/// forking thread, and poll getppid() instead).
void check_orphans(int sig, bool from_thread) {
  subreaper_scope reaper;
  shared<std::atomic<int>> spinning;  // workers that began their task
  std::atomic<int>* s = spinning.get();
  test_pipe p;
  const pid_t child = fork_child([&]() -> int {
    p.close_read();
    auto body = [&] {
      auto spin = [s](int) {
        s->fetch_add(1);
        volatile std::uint64_t x = 0;
        for (;;) x = x + 1;  // busy forever: only the worker's end stops it
        return 0;
      };
      procpool::Pool pool(spin, 3);
      auto r = pool.map_async(iota_vec(30), {.chunksize = 1});
      const auto t0 = Clock::now();
      while (s->load() < 3 && Clock::now() - t0 < 10s) r.wait_for(5ms);
      std::string line;
      for (pid_t w : pool.pids()) line += std::to_string(w) + " ";
      write_all(p.write_fd(), line + "\n");
      for (;;) ::pause();  // until the test kills us
    };
    if (from_thread)
      std::thread(body).join();
    else
      body();
    return 0;
  });
  p.close_write();
  p.set_nonblocking_read();
  const auto line = p.read_line(15s);
  if (!line) kill_and_reap(child);
  REQUIRE(line);
  const auto workers = parse_pids(*line);
  REQUIRE(workers.size() == 3);
  for (pid_t w : workers) CHECK(proc_ppid(w) == child);
  CHECK(s->load() == 3);

  const auto t0 = Clock::now();
  ::kill(child, sig);
  const auto cst = wait_child(child, 5000ms);
  if (!cst) kill_and_reap(child);
  REQUIRE(cst);
  CHECK(WIFSIGNALED(*cst));
  CHECK(WTERMSIG(*cst) == sig);
  const auto gone = wait_gone(workers, 1000ms);
  const double total = ms_since(t0);
  double worst = 0;
  for (auto& [pid, r] : gone) {
    INFO("worker " << pid << " state " << proc_state(pid));
    CHECK(r.gone);
    CHECK(r.by_us);  // reparented here and reaped: not left a zombie
    worst = std::max(worst, r.ms);
    if (r.by_us && !from_thread) CHECK((WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGKILL));
  }
  std::fprintf(stderr, "[timing] parent killed by %s (pool %s): all %zu spinning workers gone %.2f ms after the parent was reaped, %.2f ms after the kill\n",
               sig == SIGKILL ? "SIGKILL" : "SIGTERM",
               from_thread ? "built by a second thread" : "built by the main thread", workers.size(),
               worst, total);
  CHECK(total < 1000.0);
  cleanup_survivors(gone);
}

}  // namespace

TEST_CASE("the workers die with their parent", "[failure][orphan]") {
  watchdog wd(60s);
  SECTION("SIGKILL, pool built by the main thread") { check_orphans(SIGKILL, false); }
  SECTION("SIGTERM, pool built by the main thread") { check_orphans(SIGTERM, false); }
  SECTION("SIGKILL, pool built by another thread") { check_orphans(SIGKILL, true); }
}

namespace {

struct ctrl_c_result {
  std::optional<int> child_status;
  double child_ms = 0;
  std::vector<pid_t> workers;
  std::map<pid_t, end_seen> gone;
  std::string child_said;
};

/// A child in its own process group runs map over slow tasks; the test sends
/// SIGINT to the group, as a terminal's Ctrl-C does (or to the child alone).
ctrl_c_result run_ctrl_c(bool whole_group, bool child_handles_sigint) {
  shared<std::atomic<int>> started;  // tasks begun
  std::atomic<int>* s = started.get();
  test_pipe p;
  const pid_t child = fork_child([&]() -> int {
    p.close_read();
    ::setpgid(0, 0);
    static volatile std::sig_atomic_t interrupted = 0;
    if (child_handles_sigint) {
      struct sigaction sa {};
      sa.sa_handler = [](int) { interrupted = 1; };
      ::sigaction(SIGINT, &sa, nullptr);
    }
    auto slow = [s](int i) {
      s->fetch_add(1);
      sleep_ms(50);
      return i * 2;
    };
    procpool::Pool pool(slow, 2);
    std::string line;
    for (pid_t w : pool.pids()) line += std::to_string(w) + " ";
    write_all(p.write_fd(), line + "\n");
    const auto out = pool.map(iota_vec(60), {.chunksize = 1});  // ~1.5 s of work
    bool right = out.size() == 60;
    for (int i = 0; right && i < 60; ++i) right = out[i] == 2 * i;
    write_all(p.write_fd(), std::string("map returned ") + (right ? "right" : "WRONG") +
                                   (interrupted ? " after SIGINT" : " without SIGINT") + "\n");
    return right ? 0 : 1;
  });
  ::setpgid(child, child);  // also from here, so the group exists before we signal it
  p.close_write();
  p.set_nonblocking_read();
  ctrl_c_result res;
  const auto line = p.read_line(15s);
  if (!line) {
    kill_and_reap(child);
    return res;
  }
  res.workers = parse_pids(*line);
  const auto w0 = Clock::now();
  while (s->load() < 4 && Clock::now() - w0 < 10s) sleep_ms(1);
  const auto t0 = Clock::now();
  ::kill(whole_group ? -child : child, SIGINT);
  res.child_status = wait_child(child, 5000ms);
  res.child_ms = ms_since(t0);
  if (!res.child_status) kill_and_reap(child);
  res.gone = wait_gone(res.workers, 1000ms);
  if (auto said = p.read_line(100ms)) res.child_said = *said;
  cleanup_survivors(res.gone);
  return res;
}

}  // namespace

TEST_CASE("Ctrl-C ends the caller of map, and its workers with it", "[failure][sigint]") {
  watchdog wd(40s);
  subreaper_scope reaper;
  for (bool whole_group : {true, false}) {
    INFO((whole_group ? "SIGINT to the process group" : "SIGINT to the caller alone"));
    const auto r = run_ctrl_c(whole_group, false);
    REQUIRE(r.workers.size() == 2);
    REQUIRE(r.child_status);
    CHECK(WIFSIGNALED(*r.child_status));
    CHECK(WTERMSIG(*r.child_status) == SIGINT);
    CHECK(r.child_ms < 1000.0);
    CHECK(r.child_said.empty());  // map never returned
    double worst = 0;
    for (auto& [pid, g] : r.gone) {
      INFO("worker " << pid);
      CHECK(g.gone);
      CHECK(g.by_us);  // reaped here: no zombie left behind
      if (g.by_us) CHECK((WIFSIGNALED(g.status) && WTERMSIG(g.status) == SIGKILL));
      worst = std::max(worst, g.ms);
    }
    std::fprintf(stderr, "[timing] SIGINT (%s): caller dead after %.2f ms, workers gone %.2f ms later\n",
                 whole_group ? "group" : "caller", r.child_ms, worst);
  }
}

TEST_CASE("Ctrl-C with a SIGINT handler in the caller leaves map running", "[failure][sigint]") {
  watchdog wd(40s);
  subreaper_scope reaper;
  // The workers ignore SIGINT, and map does not give up on EINTR: with a
  // handler installed, the caller's map finishes with every result right and
  // the handler's flag is for the caller to look at afterwards.
  const auto r = run_ctrl_c(true, true);
  REQUIRE(r.child_status);
  CHECK(WIFEXITED(*r.child_status));
  CHECK(WEXITSTATUS(*r.child_status) == 0);
  CHECK(r.child_said == "map returned right after SIGINT");
  for (auto& [pid, g] : r.gone) CHECK(g.gone);
}
