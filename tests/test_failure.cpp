// Failure handling of procpool::Pool with real processes and real signals:
// workers that die mid-task (SIGKILL, SIGSEGV, abort, _exit), external kills,
// retries, task timeouts, the death of the parent, Ctrl-C, leaks over many
// pools, corrupted bytes, and fork() while other threads run.
//
// Every test is bounded twice: by ctest's TIMEOUT and by a watchdog of its own
// that ends the process with a message, so a hang fails in seconds, not minutes.
// Children forked here never return into Catch2: they end with _exit.

#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <vector>

#include <catch2/catch.hpp>

#include "support/alloc_cap.hpp"
#include "support/express.hpp"
#include "support/sanitizers.hpp"

// Allocations above 256 MiB throw std::bad_alloc in this binary (see
// support/alloc_cap.hpp); no test here needs that much at once. ThreadSanitizer defines
// operator new itself (not replaceable), so not there.
#ifndef PROCPOOL_TEST_TSAN
PROCPOOL_TEST_CAP_ALLOCATIONS(std::size_t{256} << 20)
#endif

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

double ms_since(clk::time_point t0) {
  return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
}

void sleep_for_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

#ifdef PROCPOOL_TEST_ASAN
constexpr bool under_asan = true;
#else
constexpr bool under_asan = false;
#endif
#ifdef PROCPOOL_TEST_TSAN
constexpr bool under_tsan = true;
#else
constexpr bool under_tsan = false;
#endif
/// ASan and TSan replace malloc with the sanitizer runtime's allocator.
constexpr bool sanitizer_malloc = under_asan || under_tsan;

/// Ends the whole test process with a message if the test has not finished in
/// time: a hang fails fast (and the workers follow through their death signal).
class watchdog {
 public:
  explicit watchdog(std::chrono::seconds limit, const char* what = "test")
      : err_(::fcntl(2, F_DUPFD_CLOEXEC, 3)),  // stderr as it is now, even if redirected later
        t_([this, limit, what] {
          std::unique_lock lk(m_);
          started_ = true;
          cv_.notify_all();
          if (!cv_.wait_for(lk, limit, [this] { return done_; })) {
            char msg[160];
            const int n = std::snprintf(msg, sizeof msg,
                                        "\nWATCHDOG: %s did not finish within %llds; aborting\n",
                                        what, static_cast<long long>(limit.count()));
            if (n > 0) (void)!::write(err_, msg, static_cast<std::size_t>(n));
            std::_Exit(124);
          }
        }) {
    // Return only once the thread sleeps in wait_for. Under clang 14's ASan a
    // thread that is still starting can hold an allocator lock; a worker
    // forked at that instant blocked forever in its first free() (seen in CI:
    // 2 runs in 40 of one test hung, none in 100 with this wait). See
    // busy_threads below for the same runtime limit.
    std::unique_lock lk(m_);
    cv_.wait(lk, [this] { return started_; });
  }
  ~watchdog() {
    {
      std::lock_guard lk(m_);
      done_ = true;
    }
    cv_.notify_all();
    t_.join();
    ::close(err_);
  }

 private:
  int err_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  bool started_ = false;
  std::thread t_;  // last: started after the members it uses
};

/// An object in MAP_SHARED anonymous memory, mapped before the pool forks, so
/// that workers and the test see the same bytes (attempt counters, pids).
template <class T>
class shared {
 public:
  shared() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
    p_ = new (p) T();
  }
  ~shared() {
    p_->~T();
    ::munmap(p_, sizeof(T));
  }
  shared(const shared&) = delete;
  shared& operator=(const shared&) = delete;
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }
  T* get() const { return p_; }

 private:
  T* p_;
};

std::vector<int> iota_vec(int from, int to) {
  std::vector<int> v;
  for (int i = from; i < to; ++i) v.push_back(i);
  return v;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...), or 0 when there
/// is no such process.
char proc_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!f || !std::getline(f, s)) return 0;
  const auto rp = s.rfind(')');
  if (rp == std::string::npos || rp + 2 >= s.size()) return 0;
  return s[rp + 2];
}

/// The ppid field of /proc/<pid>/stat, or -1.
pid_t proc_ppid(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!f || !std::getline(f, s)) return -1;
  const auto rp = s.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream is(s.substr(rp + 2));
  char st;
  pid_t ppid = -1;
  is >> st >> ppid;
  return ppid;
}

/// Gone: no such process, or a zombie (dead, waiting to be reaped).
bool process_gone(pid_t pid) {
  if (::kill(pid, 0) == -1 && errno == ESRCH) return true;
  const char st = proc_state(pid);
  return st == 0 || st == 'Z' || st == 'X';
}

std::size_t count_dir(const char* path) {
  std::size_t n = 0;
  if (DIR* d = ::opendir(path)) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
    ::closedir(d);
  }
  return n;
}

std::size_t open_fds() { return count_dir("/proc/self/fd"); }
/// The names in /dev/shm. Other programs on the machine may add and remove
/// theirs meanwhile, so tests check that no *new* name is left, not the count.
std::set<std::string> shm_names() {
  std::set<std::string> names;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.insert(e->d_name);
    ::closedir(d);
  }
  return names;
}

/// Names in @p after that were not in @p before.
std::size_t new_names(const std::set<std::string>& before, const std::set<std::string>& after) {
  std::size_t n = 0;
  for (const auto& name : after) n += before.count(name) == 0;
  return n;
}

/// Children of this process: the union of /proc/self/task/*/children.
std::set<pid_t> child_pids() {
  std::set<pid_t> r;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/children");
      pid_t p;
      while (f >> p) r.insert(p);
    }
    ::closedir(d);
  }
  return r;
}

std::size_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// Makes this process the reaper of orphaned descendants for the scope: the
/// workers of a child that dies are reparented here, where the test can
/// waitpid() them and so prove they are gone, not zombies. (PID 1 in a
/// container may never reap.)
class subreaper_scope {
 public:
  subreaper_scope() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }
  ~subreaper_scope() {
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    // Reap whatever orphan is left (nothing else of ours runs in these tests).
    int st;
    while (::waitpid(-1, &st, WNOHANG) > 0) {
    }
  }
};

struct reaped {
  bool gone = false;
  bool by_us = false;  // reaped here (so we know its status)
  int status = 0;
  double ms = 0;  // when it was seen gone, from the start of the wait
};

/// Waits up to @p limit for each pid to end: reaps those reparented to this
/// process (see subreaper_scope), accepts those that vanished otherwise.
std::map<pid_t, reaped> wait_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds limit) {
  std::map<pid_t, reaped> r;
  for (pid_t p : pids) r[p];
  const auto t0 = clk::now();
  for (;;) {
    bool all = true;
    for (auto& [pid, st] : r) {
      if (st.gone) continue;
      int status = 0;
      const pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w == pid) {
        st = {true, true, status, ms_since(t0)};
      } else if (w == -1 && errno == ECHILD && process_gone(pid)) {
        st = {true, false, 0, ms_since(t0)};
      } else {
        all = false;
      }
    }
    if (all || clk::now() - t0 > limit) break;
    sleep_for_ms(1);
  }
  return r;
}

/// Kills and reaps what wait_gone left alive, if it is still our descendant.
void cleanup_survivors(const std::map<pid_t, reaped>& r) {
  for (auto& [pid, st] : r) {
    if (st.gone) continue;
    if (proc_ppid(pid) == ::getpid()) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
}

/// A pipe; the forked child writes, the test reads with a deadline.
class pipe_pair {
 public:
  pipe_pair() {
    if (::pipe2(fd_, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  }
  ~pipe_pair() {
    close_read();
    close_write();
  }
  int read_fd() const { return fd_[0]; }
  int write_fd() const { return fd_[1]; }
  void close_read() {
    if (fd_[0] >= 0) ::close(fd_[0]);
    fd_[0] = -1;
  }
  void close_write() {
    if (fd_[1] >= 0) ::close(fd_[1]);
    fd_[1] = -1;
  }
  /// Reads one '\n'-terminated line within @p limit; nullopt on timeout or EOF.
  std::optional<std::string> read_line(std::chrono::milliseconds limit) {
    std::string line;
    const auto t0 = clk::now();
    while (clk::now() - t0 < limit) {
      char c;
      const ssize_t n = ::read(fd_[0], &c, 1);
      if (n == 1) {
        if (c == '\n') return line;
        line += c;
      } else if (n == 0) {
        return std::nullopt;
      } else if (errno == EAGAIN) {
        sleep_for_ms(1);
      } else if (errno != EINTR) {
        return std::nullopt;
      }
    }
    return std::nullopt;
  }
  void set_nonblocking_read() { ::fcntl(fd_[0], F_SETFL, ::fcntl(fd_[0], F_GETFL) | O_NONBLOCK); }

 private:
  int fd_[2] = {-1, -1};
};

void write_all_fd(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n > 0)
      off += static_cast<std::size_t>(n);
    else if (n == -1 && errno != EINTR)
      return;
  }
}

std::vector<pid_t> parse_pids(const std::string& line) {
  std::istringstream is(line);
  std::vector<pid_t> r;
  pid_t p;
  while (is >> p) r.push_back(p);
  return r;
}

/// A forked child that runs @p body and always ends with _exit, never
/// returning into Catch2. It dies with the test process, and after 60 s at most.
template <class Body>
pid_t fork_child(Body body) {
  const pid_t test = ::getpid();
  const pid_t pid = ::fork();
  if (pid == -1) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    // A real program's dispositions, not Catch2's fatal-signal handlers.
    for (int sig : {SIGINT, SIGTERM, SIGSEGV, SIGABRT, SIGILL, SIGFPE, SIGBUS})
      ::signal(sig, SIG_DFL);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != test) ::_exit(99);
    ::alarm(60);
    int code = 0;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

/// waitpid with a deadline; nullopt if the child did not end in time.
std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds limit) {
  const auto t0 = clk::now();
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r == -1 && errno != EINTR) return std::nullopt;
    if (clk::now() - t0 > limit) return std::nullopt;
    sleep_for_ms(1);
  }
}

void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

// ------------------------------------------------------------------ deaths

enum class death { sigkill, sigsegv, abort_call, exit3 };

[[noreturn]] void die(death how) {
  switch (how) {
    case death::sigkill:
      ::kill(::getpid(), SIGKILL);
      break;
    case death::sigsegv:
      // The default action, even under a sanitizer that handles SIGSEGV itself.
      ::signal(SIGSEGV, SIG_DFL);
      ::raise(SIGSEGV);
      break;
    case death::abort_call:
      ::signal(SIGABRT, SIG_DFL);
      std::abort();
    case death::exit3:
      ::_exit(3);
  }
  ::_exit(111);  // not reached
}

struct death_case {
  death how;
  const char* description;  // what what() must say
  int exitcode;             // worker_lost::exitcode()
};

/// The checks of item 1 of the brief, for one way of dying.
void check_worker_death(const death_case& dc) {
  watchdog wd(60s, "worker death test");
  constexpr int bad = 17;
  const death how = dc.how;
  auto f = [how](int i) {
    if (i == bad) die(how);
    return i * i;
  };
  procpool::Pool pool(f, 2);
  const std::vector<pid_t> before = pool.pids();
  REQUIRE(before.size() == 2);
  const std::vector<int> in = iota_vec(0, 50);

  // map: throws worker_lost for exactly that item, after every other ran.
  {
    std::optional<procpool::worker_lost> caught;
    try {
      (void)pool.map(in);
    } catch (const procpool::worker_lost& e) {
      caught = e;
    }
    REQUIRE(caught);
    CHECK(caught->index() == bad);
    CHECK(caught->pid() != 0);
    CHECK(caught->exitcode() == dc.exitcode);
    const std::string what = caught->what();
    INFO(what);
    CHECK(contains(what, "item " + std::to_string(bad)));
    CHECK(contains(what, dc.description));
    CHECK(contains(what, std::to_string(caught->pid())));
    CHECK_FALSE(dynamic_cast<const procpool::task_timeout*>(&*caught));
  }

  // try_map: every other item's value, that item's error.
  {
    auto out = pool.try_map(in);
    REQUIRE(out.size() == in.size());
    for (int i = 0; i < 50; ++i) {
      INFO("item " << i);
      if (i == bad) {
        REQUIRE_FALSE(out[i].ok());
        try {
          std::rethrow_exception(out[i].error());
        } catch (const procpool::worker_lost& e) {
          CHECK(e.index() == bad);
          CHECK(contains(e.what(), dc.description));
          CHECK(e.exitcode() == dc.exitcode);
        } catch (...) {
          FAIL("item " << bad << " failed with something other than worker_lost");
        }
      } else {
        REQUIRE(out[i].ok());
        CHECK(out[i].value() == i * i);
      }
    }
  }

  // imap_unordered: all other results come; the dead item's error is met once.
  {
    std::multiset<int> got;
    int errors = 0;
    auto r = pool.imap_unordered(in);
    for (auto it = r.begin(); it != r.end(); ++it) {
      try {
        got.insert(*it);
      } catch (const procpool::worker_lost& e) {
        ++errors;
        CHECK(e.index() == bad);
      }
    }
    CHECK(errors == 1);
    std::multiset<int> want;
    for (int i = 0; i < 50; ++i)
      if (i != bad) want.insert(i * i);
    CHECK(got == want);
  }

  // imap (ordered) too: the error sits at its place in the order.
  {
    std::vector<int> got;
    std::vector<std::size_t> failed_at;
    auto r = pool.imap(in);
    for (auto it = r.begin(); it != r.end(); ++it) {
      try {
        got.push_back(*it);
      } catch (const procpool::worker_lost&) {
        failed_at.push_back(got.size());
      }
    }
    CHECK(failed_at == std::vector<std::size_t>{bad});
    CHECK(got.size() == 49);
  }

  // The pool is usable afterwards and runs on replacements.
  const std::vector<int> again = pool.map(iota_vec(100, 140));
  for (int i = 0; i < 40; ++i) CHECK(again[i] == (100 + i) * (100 + i));
  const std::vector<pid_t> after = pool.pids();
  CHECK(after.size() == 2);
  std::set<pid_t> old(before.begin(), before.end());
  int replaced = 0;
  for (pid_t p : after) {
    replaced += old.count(p) == 0;
    CHECK(::kill(p, 0) == 0);
  }
  CHECK(replaced >= 1);
  // The dead workers were reaped: none of the old pids is our zombie.
  for (pid_t p : before)
    if (!std::count(after.begin(), after.end(), p)) CHECK(proc_state(p) != 'Z');
}

}  // namespace

TEST_CASE("a worker killed by SIGKILL mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::sigkill, "killed by SIGKILL", -SIGKILL});
}

TEST_CASE("a worker killed by SIGSEGV mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::sigsegv, "killed by SIGSEGV", -SIGSEGV});
}

TEST_CASE("a worker that calls abort() mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::abort_call, "killed by SIGABRT", -SIGABRT});
}

TEST_CASE("a worker that calls _exit(3) mid-task fails exactly its item", "[failure][death]") {
  check_worker_death({death::exit3, "exited with code 3", 3});
}

TEST_CASE("a worker's death is noticed promptly", "[failure][death][latency]") {
  watchdog wd(30s);
  auto f = [](int i) {
    if (i < 0) ::kill(::getpid(), SIGKILL);
    return i + 1;
  };
  procpool::Pool pool(f, 2);
  REQUIRE(pool.apply_async(1).get() == 2);  // warm
  std::vector<double> lat;
  for (int k = 0; k < 20; ++k) {
    const auto t0 = clk::now();
    auto r = pool.apply_async(-1);
    bool threw = false;
    try {
      (void)r.get();
    } catch (const procpool::worker_lost& e) {
      threw = true;
      CHECK(e.exitcode() == -SIGKILL);
      CHECK(e.index() == 0);
    }
    lat.push_back(ms_since(t0));
    REQUIRE(threw);
    REQUIRE(pool.apply_async(k).get() == k + 1);  // and it goes on
  }
  std::sort(lat.begin(), lat.end());
  std::fprintf(stderr, "[timing] death -> worker_lost from apply_async().get(): min %.2f ms, median %.2f ms, max %.2f ms\n",
               lat.front(), lat[lat.size() / 2], lat.back());
  CHECK(lat[lat.size() / 2] < 100.0);
  CHECK(lat.back() < 500.0);
}

TEST_CASE("a worker killed from outside fails its item with worker_lost", "[failure][death]") {
  watchdog wd(30s);
  struct state {
    std::atomic<pid_t> sleeper{0};
  };
  shared<state> st;
  constexpr int slow = 7;
  state* s = st.get();
  auto f = [s](int i) {
    if (i == slow) {
      s->sleeper.store(::getpid());
      sleep_for_ms(5000);
      return -1;
    }
    sleep_for_ms(10);
    return 3 * i;
  };
  procpool::Pool pool(f, 2);
  pid_t killed = 0;
  double kill_at_ms = 0;
  std::atomic<bool> mapped{false};
  const auto t0 = clk::now();
  std::thread killer([&] {
    // Wait for the sleeping item to start, then kill its worker from outside.
    while (s->sleeper.load() == 0 && clk::now() - t0 < 10s) sleep_for_ms(1);
    killed = s->sleeper.load();
    std::vector<pid_t> pids;
    if (killed) {
      pids = pool.pids();
      if (std::count(pids.begin(), pids.end(), killed)) ::kill(killed, SIGKILL);
    }
    kill_at_ms = ms_since(t0);
    // Free nothing and do not exit while the pool may fork the replacement:
    // a thread's exit returns its allocator cache under a lock, and a child
    // forked then hangs in its first malloc under ASan and TSan (see
    // busy_threads below).
    while (!mapped.load()) sleep_for_ms(1);
  });
  std::vector<procpool::outcome<int>> out;
  try {
    out = pool.try_map(iota_vec(0, 30), {.chunksize = 1});
  } catch (...) {
    mapped = true;
    killer.join();
    throw;
  }
  const double total = ms_since(t0);
  mapped = true;
  killer.join();
  REQUIRE(killed != 0);
  REQUIRE(out.size() == 30);
  for (int i = 0; i < 30; ++i) {
    INFO("item " << i);
    if (i == slow) {
      REQUIRE_FALSE(out[i].ok());
      try {
        std::rethrow_exception(out[i].error());
      } catch (const procpool::worker_lost& e) {
        CHECK(e.index() == slow);
        CHECK(e.pid() == killed);
        CHECK(e.exitcode() == -SIGKILL);
        CHECK(contains(e.what(), "killed by SIGKILL"));
        CHECK(contains(e.what(), "item 7"));
      } catch (...) {
        FAIL("not worker_lost");
      }
    } else {
      REQUIRE(out[i].ok());
      CHECK(out[i].value() == 3 * i);
    }
  }
  std::fprintf(stderr, "[timing] external SIGKILL at %.1f ms, try_map returned at %.1f ms\n", kill_at_ms,
               total);
  CHECK(total < 4000.0);  // did not wait for the 5 s sleep
  const auto pids = pool.pids();
  CHECK(pids.size() == 2);
  CHECK(std::count(pids.begin(), pids.end(), killed) == 0);
  CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{3, 6});
}

TEST_CASE("retries rerun an item whose worker died", "[failure][retries]") {
  watchdog wd(60s);
  struct counters {
    std::atomic<int> attempts[64];
  };
  shared<counters> c;
  counters* cs = c.get();
  constexpr int flaky = 5;   // crashes on its first attempt only
  constexpr int doomed = 9;  // crashes on every attempt
  auto f = [cs](int i) {
    const int a = cs->attempts[i].fetch_add(1);
    if (i == flaky && a == 0) ::kill(::getpid(), SIGKILL);
    if (i == doomed) ::kill(::getpid(), SIGKILL);
    return i * 10;
  };

  SECTION("retries = 1") {
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .retries = 1});
    auto out = pool.try_map(iota_vec(0, 40));
    REQUIRE(out.size() == 40);
    for (int i = 0; i < 40; ++i) {
      INFO("item " << i);
      if (i == doomed) {
        REQUIRE_FALSE(out[i].ok());
        try {
          std::rethrow_exception(out[i].error());
        } catch (const procpool::worker_lost& e) {
          CHECK(e.index() == doomed);
          CHECK(contains(e.what(), "killed by SIGKILL"));
        } catch (...) {
          FAIL("not worker_lost");
        }
      } else {
        REQUIRE(out[i].ok());
        CHECK(out[i].value() == i * 10);
      }
    }
    CHECK(cs->attempts[flaky].load() == 2);
    CHECK(cs->attempts[doomed].load() == 2);  // the first run and one retry
    for (int i = 0; i < 40; ++i) CHECK(cs->attempts[i].load() >= 1);
  }
  SECTION("retries = 3, chunksize 1") {
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .retries = 3});
    auto out = pool.try_map(iota_vec(0, 40), {.chunksize = 1});
    CHECK(out[flaky].ok());
    CHECK_FALSE(out[doomed].ok());
    CHECK(cs->attempts[flaky].load() == 2);
    CHECK(cs->attempts[doomed].load() == 4);
    // With one item per chunk nothing else ran twice.
    for (int i = 0; i < 40; ++i)
      if (i != flaky && i != doomed) CHECK(cs->attempts[i].load() == 1);
  }
  SECTION("retries = 0: the flaky item fails too") {
    procpool::Pool pool(f, 2);
    auto out = pool.try_map(iota_vec(0, 40));
    CHECK_FALSE(out[flaky].ok());
    CHECK_FALSE(out[doomed].ok());
    CHECK(cs->attempts[flaky].load() == 1);
    CHECK(cs->attempts[doomed].load() == 1);
  }
}

TEST_CASE("task_timeout kills a worker whose item runs too long", "[failure][timeout]") {
  watchdog wd(30s);
  constexpr int slow = 3;
  auto f = [](int i) {
    if (i == slow) sleep_for_ms(10'000);
    return i + 1000;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = 200ms});
  const auto before = pool.pids();
  const auto t0 = clk::now();
  auto out = pool.try_map(iota_vec(0, 20));
  const double elapsed = ms_since(t0);
  REQUIRE(out.size() == 20);
  for (int i = 0; i < 20; ++i) {
    INFO("item " << i);
    if (i == slow) {
      REQUIRE_FALSE(out[i].ok());
      try {
        std::rethrow_exception(out[i].error());
      } catch (const procpool::task_timeout& e) {
        CHECK(e.index() == slow);
        CHECK(e.pid() != 0);
        CHECK(e.exitcode() == -SIGKILL);
        CHECK(contains(e.what(), "task_timeout"));
        CHECK(contains(e.what(), "item 3"));
      } catch (...) {
        FAIL("not task_timeout");
      }
    } else {
      REQUIRE(out[i].ok());
      CHECK(out[i].value() == i + 1000);
    }
  }
  std::fprintf(stderr, "[timing] try_map with one 10 s item under task_timeout=200ms: %.1f ms\n", elapsed);
  CHECK(elapsed < 2000.0);

  // map throws the same error, as a task_timeout (and so a worker_lost).
  const auto t1 = clk::now();
  CHECK_THROWS_AS(pool.map(iota_vec(0, 8)), procpool::task_timeout);
  CHECK(ms_since(t1) < 2000.0);

  // The pool is usable afterwards, with replaced workers.
  CHECK(pool.map(std::vector<int>{10, 20}) == std::vector<int>{1010, 1020});
  CHECK(pool.pids().size() == 2);
  CHECK(pool.pids() != before);
}

// terminate() and a broken pool abort every job still listed, and a job that
// has completed can still be (its last answer read while reaping a worker,
// after that round handed work out); it keeps its results.
TEST_CASE("a call that had finished keeps its result when the pool is terminated after",
          "[failure][lifetime]") {
  watchdog wd(60s);
  auto f = [](const std::string& s) { return s + "!"; };  // not express-eligible
  int failed = 0;
  for (int i = 0; i < 150; ++i) {
    procpool::Pool pool(f, 2);
    auto one = pool.apply_async(std::string("a"));
    auto all = pool.map_async(std::vector<std::string>{"b", "c"});
    one.wait();
    all.wait();
    pool.terminate();
    try {
      if (one.get() != "a!" || all.get() != std::vector<std::string>{"b!", "c!"}) ++failed;
    } catch (const procpool::pool_terminated&) {
      ++failed;
    }
  }
  CHECK(failed == 0);
}

int times_ten(int x) { return x * 10; }

// A pool works only in the process that built it. A Process child calling
// the parent's pool drove the parent's workers (the parent's next map got the
// child's answers), and a forked copy destroyed in a child (as exit() destroys
// a static pool) killed the parent's workers.
TEST_CASE("a pool used from another process: usage_error there, the builder's pool untouched",
          "[failure][fork]") {
  watchdog wd(30s);
  procpool::Pool<int (*)(int)> pool(times_ten, 2);
  const auto pids = pool.pids();
  procpool::Process child([&pool] {
    try {
      auto r = pool.map_async(std::vector<int>{7, 7, 7, 7, 7, 7, 7, 7});
      (void)r;
    } catch (const procpool::usage_error& e) {
      const std::string what = e.what();
      procpool::exit(what.find("belongs to process") != std::string::npos ? 42 : 2);
    }
    procpool::exit(1);  // no error: wrong
  });
  child.start();
  child.join();
  CHECK(child.exitcode() == 42);
  CHECK(pool.map(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}) ==
        std::vector<int>{10, 20, 30, 40, 50, 60, 70, 80});

  std::optional<procpool::Pool<int (*)(int)>> copy_holder;
  copy_holder.emplace(times_ten, 2);
  const auto copy_pids = copy_holder->pids();
  const pid_t forked = ::fork();
  REQUIRE(forked >= 0);
  if (forked == 0) {
    copy_holder.reset();  // the child's copy is destroyed
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(forked, &status, 0) == forked);
  CHECK(WIFEXITED(status));
  for (pid_t p : copy_pids) CHECK(::kill(p, 0) == 0);  // still running
  CHECK(copy_holder->pids() == copy_pids);
  CHECK(copy_holder->map(std::vector<int>{1, 2}) == std::vector<int>{10, 20});
  CHECK(pool.pids() == pids);
}

int exit_on_three(int x) {
  if (x == 3) std::exit(3);  // as C libraries do: runs static destructors
  return x;
}

// A replacement worker is forked while the engine's lock is held. exit() in
// a task then ran ~Pool of the static pool in the worker, which waited for
// that inherited lock for ever, and the parent for the worker.
TEST_CASE("exit() in a task of a static pool's replacement worker ends just that worker",
          "[failure][fork]") {
  watchdog wd(30s);
  static procpool::Pool<int (*)(int)> pool(exit_on_three, 2);
  const auto first = pool.pids();
  for (pid_t p : first) ::kill(p, SIGKILL);
  // Both workers replaced (the pool notices on its next rounds).
  const auto until = std::chrono::steady_clock::now() + 10s;
  auto replaced = [&] {
    const auto now = pool.pids();
    if (now.size() != 2) return false;
    for (pid_t p : now)
      if (std::find(first.begin(), first.end(), p) != first.end()) return false;
    return true;
  };
  while (!replaced()) {
    (void)pool.try_map(std::vector<int>{0, 1}, {.chunksize = 1});
    REQUIRE(std::chrono::steady_clock::now() < until);
  }
  const auto out = pool.try_map(std::vector<int>{1, 2, 3, 4}, {.chunksize = 1});
  REQUIRE(out.size() == 4);
  REQUIRE_FALSE(out[2].ok());
  try {
    std::rethrow_exception(out[2].error());
  } catch (const procpool::worker_lost& e) {
    CHECK(e.exitcode() == 3);
  }
  CHECK(out[3].value() == 4);
}

int slow_plus_one(int x) {
  sleep_for_ms(300);
  return x + 1;
}
int plus_two(int x) { return x + 2; }

// The defaulted move assignment dropped the old pool without terminating it:
// a pending result kept its engine running, and a replacement worker forked
// later called the freed function (ASan: heap-use-after-free in run_chunk).
TEST_CASE("move-assigning a Pool terminates the old pool, as destroying it does",
          "[failure][lifetime]") {
  watchdog wd(30s);
  procpool::Pool<int (*)(int)> pool(slow_plus_one, 2);
  auto pending = pool.apply_async(1);
  const auto old_pids = pool.pids();
  pool = procpool::Pool<int (*)(int)>(plus_two, 2);
  CHECK_THROWS_AS(pending.get(), procpool::pool_terminated);
  for (pid_t p : old_pids) CHECK(::kill(p, 0) == -1);  // killed and reaped
  CHECK(pool.map(iota_vec(0, 3)) == std::vector<int>{2, 3, 4});
}

// join() used to wait for an imap window that waited for its reader. As in
// Python, join() runs everything submitted and the results stay readable.
TEST_CASE("close() and join() return with imap ranges not fully read; their results stay",
          "[failure][join]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return 2 * x; }, 2);
  const auto in = iota_vec(0, 2000);
  auto ordered = pool.imap(in, {.chunksize = 1});  // a window of 64 items
  auto unordered = pool.imap_unordered(in, {.chunksize = 1});
  auto it = ordered.begin();
  for (int i = 0; i < 3; ++i, ++it) REQUIRE(*it == 2 * i);
  pool.close();
  pool.join();
  std::vector<int> rest;
  for (; it != ordered.end(); ++it) rest.push_back(*it);
  REQUIRE(rest.size() == in.size() - 3);
  for (std::size_t i = 0; i < rest.size(); ++i) REQUIRE(rest[i] == 2 * static_cast<int>(i + 3));
  std::vector<int> all;
  for (int v : unordered) all.push_back(v);
  std::sort(all.begin(), all.end());
  REQUIRE(all.size() == in.size());
  for (std::size_t i = 0; i < all.size(); ++i) REQUIRE(all[i] == 2 * static_cast<int>(i));
}

// The limit is kept in nanoseconds: converted unchecked, 18,446,744,073,710 ms
// (~584.5 years, just past 2^64 ns) became 0.45 ms and every item timed out.
TEST_CASE("task_timeout: a huge limit means none, a negative one is a usage_error",
          "[failure][timeout]") {
  watchdog wd(30s);
  auto f = [](int i) {
    sleep_for_ms(10);
    return i;
  };
  const auto in = iota_vec(0, 10);
  for (const auto limit :
       {std::chrono::milliseconds::max(), std::chrono::milliseconds(18'446'744'073'710)}) {
    INFO("task_timeout = " << limit.count() << " ms");
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = limit});
    CHECK(pool.map(in) == in);
  }
  try {
    procpool::Pool pool(f, procpool::pool_options{.processes = 1, .task_timeout = -5ms});
    FAIL("no usage_error");
  } catch (const procpool::usage_error& e) {
    CHECK(contains(e.what(), "task_timeout is negative (-5 ms)"));
  }
}

TEST_CASE("task_timeout is per item, not per chunk", "[failure][timeout]") {
  watchdog wd(30s);
  // 10 items of 60 ms in one chunk: 600 ms per chunk, but each item is well
  // within the 300 ms limit, so nothing may time out.
  auto f = [](int i) {
    sleep_for_ms(60);
    return i;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = 300ms});
  auto out = pool.try_map(iota_vec(0, 20), {.chunksize = 10});
  for (int i = 0; i < 20; ++i) {
    INFO("item " << i);
    REQUIRE(out[i].ok());
    CHECK(out[i].value() == i);
  }
}

namespace {

/// A child builds a pool whose tasks spin forever, reports its worker pids,
/// and is killed with @p sig; every worker must be gone within 1 s.
/// @p from_thread: the pool is built and driven by a second thread of the
/// child (its workers cannot rely on PR_SET_PDEATHSIG, which follows the
/// forking thread, and poll getppid() instead).
void check_orphans(int sig, bool from_thread) {
  subreaper_scope reaper;
  struct state {
    std::atomic<int> spinning{0};
  };
  shared<state> st;
  state* s = st.get();
  pipe_pair p;
  const pid_t child = fork_child([&]() -> int {
    p.close_read();
    auto body = [&] {
      auto spin = [s](int) {
        s->spinning.fetch_add(1);
        volatile std::uint64_t x = 0;
        for (;;) x = x + 1;  // busy forever: only the worker's end stops it
        return 0;
      };
      procpool::Pool pool(spin, 3);
      auto r = pool.map_async(iota_vec(0, 30), {.chunksize = 1});
      const auto t0 = clk::now();
      while (s->spinning.load() < 3 && clk::now() - t0 < 10s) r.wait_for(5ms);
      std::string line;
      for (pid_t w : pool.pids()) line += std::to_string(w) + " ";
      write_all_fd(p.write_fd(), line + "\n");
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
  CHECK(s->spinning.load() == 3);

  const auto t0 = clk::now();
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

TEST_CASE("a death while large messages stream through small queues", "[failure][death]") {
  // 800 KB arguments and results through 16 KiB rings: chunks are half sent
  // or half answered when a worker dies; the rest must be requeued whole.
  watchdog wd(60s);
  auto f = [](const std::vector<double>& v) {
    if (v[0] == 5.0 || v[0] == 12.0) ::kill(::getpid(), SIGKILL);
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) r[i] = v[i] * 2;
    return r;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .queue_bytes = 16 << 10});
  std::vector<std::vector<double>> in;
  for (int k = 0; k < 20; ++k) in.push_back(std::vector<double>(100'000, static_cast<double>(k)));
  auto out = pool.try_map(in, {.chunksize = 2});
  REQUIRE(out.size() == 20);
  for (int k = 0; k < 20; ++k) {
    INFO("item " << k);
    if (k == 5 || k == 12) {
      CHECK_FALSE(out[k].ok());
    } else {
      REQUIRE(out[k].ok());
      const auto& r = out[k].value();
      REQUIRE(r.size() == 100'000);
      CHECK(r.front() == 2.0 * k);
      CHECK(r.back() == 2.0 * k);
    }
  }
}

TEST_CASE("an idle worker killed from outside is replaced without errors", "[failure][death]") {
  watchdog wd(30s);
  auto f = [](int x) { return x * 2; };
  procpool::Pool pool(f, 2);
  REQUIRE(pool.map(std::vector<int>{1, 2, 3}) == std::vector<int>{2, 4, 6});
  const auto before = pool.pids();
  ::kill(before[0], SIGKILL);
  sleep_for_ms(20);
  const auto out = pool.try_map(iota_vec(0, 50));
  for (int i = 0; i < 50; ++i) {
    INFO("item " << i);
    REQUIRE(out[i].ok());
    CHECK(out[i].value() == 2 * i);
  }
  const auto after = pool.pids();
  CHECK(after.size() == 2);
  CHECK(std::count(after.begin(), after.end(), before[0]) == 0);
  CHECK(std::count(after.begin(), after.end(), before[1]) == 1);
}

namespace {

struct ctrl_c_result {
  std::optional<int> child_status;
  double child_ms = 0;
  std::vector<pid_t> workers;
  std::map<pid_t, reaped> gone;
  std::string child_said;
};

/// A child in its own process group runs map over slow tasks; the test sends
/// SIGINT to the group, as a terminal's Ctrl-C does (or to the child alone).
ctrl_c_result run_ctrl_c(bool whole_group, bool child_handles_sigint) {
  struct state {
    std::atomic<int> started{0};
  };
  shared<state> st;
  state* s = st.get();
  pipe_pair p;
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
      s->started.fetch_add(1);
      sleep_for_ms(50);
      return i * 2;
    };
    procpool::Pool pool(slow, 2);
    std::string line;
    for (pid_t w : pool.pids()) line += std::to_string(w) + " ";
    write_all_fd(p.write_fd(), line + "\n");
    const auto out = pool.map(iota_vec(0, 60), {.chunksize = 1});  // ~1.5 s of work
    bool right = out.size() == 60;
    for (int i = 0; right && i < 60; ++i) right = out[i] == 2 * i;
    write_all_fd(p.write_fd(), std::string("map returned ") + (right ? "right" : "WRONG") +
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
  const auto w0 = clk::now();
  while (s->started.load() < 4 && clk::now() - w0 < 10s) sleep_for_ms(1);
  const auto t0 = clk::now();
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

TEST_CASE("1000 pools leave no fds, shm, children or memory behind", "[failure][leaks]") {
  watchdog wd(100s);
  auto f = [](int x) { return x + 1; };
  {  // warm up lazily allocated state (iostreams, the allocator, ...)
    procpool::Pool pool(f, 2);
    (void)pool.map(std::vector<int>{1, 2, 3});
  }
  const std::size_t fds0 = open_fds(), rss0 = rss_bytes();
  const auto shm0 = shm_names();
  const std::set<pid_t> kids0 = child_pids();
  const int n = 1000;
  const auto t0 = clk::now();
  int wrong = 0;
  for (int k = 0; k < n; ++k) {
    procpool::Pool pool(f, 2);  // the destructor terminates it
    const auto out = pool.map(std::vector<int>{k, k + 1, k + 2});
    wrong += out != std::vector<int>{k + 1, k + 2, k + 3};
  }
  const double elapsed = ms_since(t0);
  const std::size_t fds1 = open_fds(), rss1 = rss_bytes();
  const auto shm1 = shm_names();
  const std::set<pid_t> kids1 = child_pids();
  std::fprintf(stderr, "[timing] %d pools of 2 workers created, mapped, destroyed: %.0f ms (%.2f ms each); fds %zu->%zu, /dev/shm %zu->%zu, children %zu->%zu, RSS %.1f->%.1f MiB\n",
               n, elapsed, elapsed / n, fds0, fds1, shm0.size(), shm1.size(), kids0.size(), kids1.size(),
               static_cast<double>(rss0) / (1 << 20), static_cast<double>(rss1) / (1 << 20));
  CHECK(wrong == 0);
  CHECK(fds1 == fds0);
  CHECK(new_names(shm0, shm1) == 0);
  CHECK(kids1 == kids0);
  // AddressSanitizer keeps freed memory in quarantine (256 MiB by default), so
  // RSS grows under it without a leak; LeakSanitizer checks leaks at exit there.
  CHECK(rss1 < rss0 + (std::size_t{under_asan ? 64 : 4} << 20));
}

// The next three tests guard one race: a worker that leaves (stop -> "bye" ->
// _exit, after join() or max_tasks_per_child) can be reaped by check_workers()'
// waitpid(WNOHANG) before its "bye" frame is read; reading it must not reap the
// pid again (that threw ECHILD out of map()/join() and left the dead pid in
// the slot, to be SIGKILLed later after possible reuse).

TEST_CASE("pools ended with close() and join() leave nothing behind", "[failure][leaks]") {
  watchdog wd(100s);
  auto f = [](int x) { return x + 1; };
  const std::size_t fds0 = open_fds();
  const std::set<pid_t> kids0 = child_pids();
  const int n = 300;
  int failures = 0;
  std::string first;
  const auto t0 = clk::now();
  for (int k = 0; k < n; ++k) {
    procpool::Pool pool(f, 2);
    try {
      const auto out = pool.map(std::vector<int>{k, k + 1});
      if (out != std::vector<int>{k + 1, k + 2}) throw std::runtime_error("wrong values");
      pool.close();
      pool.join();
      if (!pool.pids().empty()) throw std::runtime_error("live pids after join()");
    } catch (const std::exception& e) {
      if (!failures++) first = procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
    }
  }
  std::fprintf(stderr, "[timing] %d pools closed and joined: %.0f ms; %d of them failed%s%s\n", n,
               ms_since(t0), failures, failures ? ", first: " : "", first.c_str());
  INFO(first);
  CHECK(failures == 0);
  CHECK(open_fds() == fds0);
  CHECK(child_pids() == kids0);
}

TEST_CASE("max_tasks_per_child = 1 loses nothing", "[failure][leaks]") {
  watchdog wd(60s);
  auto f = [](int x) { return std::make_pair(x, static_cast<int>(::getpid())); };
  for (std::size_t procs : {std::size_t{2}, std::size_t{4}}) {
    INFO(procs << " workers");
    procpool::Pool pool(f, procpool::pool_options{.processes = procs, .max_tasks_per_child = 1});
    const auto t0 = clk::now();
    std::vector<std::pair<int, int>> out;
    std::string error;
    try {
      auto r = pool.map_async(iota_vec(0, 200));
      REQUIRE(r.wait_for(30s));
      out = r.get();
    } catch (const std::exception& e) {
      error = procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
    }
    const double elapsed = ms_since(t0);
    INFO(error);
    CHECK(error.empty());
    REQUIRE(out.size() == 200);
    std::set<int> pids;
    for (int i = 0; i < 200; ++i) {
      CHECK(out[i].first == i);
      pids.insert(out[i].second);
    }
    CHECK(pids.size() >= 195);  // one worker per item (pid_max is small: a pid may recur)
    std::fprintf(stderr, "[timing] max_tasks_per_child=1, %zu workers, 200 items: %.0f ms\n", procs, elapsed);
    CHECK(pool.map(std::vector<int>{7}).at(0).first == 7);
    pool.close();
    pool.join();
  }
  CHECK(child_pids().empty());
}

TEST_CASE("a retiring worker reaped before its bye is read does not break the pool",
          "[failure][leaks][stress]") {
  watchdog wd(90s);
  auto f = [](int x) { return x ^ 0x5a5a; };
  const auto t0 = clk::now();
  int rounds = 0;
  std::string failure;
  std::optional<procpool::Pool<decltype(f)>> broken;
  while (ms_since(t0) < 5000.0 && failure.empty()) {
    procpool::Pool pool(f, procpool::pool_options{.processes = 4, .max_tasks_per_child = 1});
    try {
      const auto out = pool.map(iota_vec(0, 300), {.chunksize = 1});
      for (int i = 0; i < 300; ++i)
        if (out[i] != (i ^ 0x5a5a)) failure = "wrong value at " + std::to_string(i);
    } catch (const std::exception& e) {
      failure = procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
      broken.emplace(std::move(pool));
      break;
    }
    ++rounds;
  }
  std::fprintf(stderr, "[timing] retiring-worker stress: %d clean rounds of 300 one-item workers in %.0f ms%s%s\n",
               rounds, ms_since(t0), failure.empty() ? "" : "; then: ", failure.c_str());
  INFO(failure);
  CHECK(failure.empty());
  if (broken) {
    // What the caller is left with: does the pool recover?
    std::string again;
    try {
      (void)broken->map(std::vector<int>{1, 2, 3});
    } catch (const std::exception& e) {
      again = e.what();
    }
    INFO("the next map: " << (again.empty() ? "ok" : again));
    CHECK(again.empty());
    for (pid_t p : broken->pids()) {
      INFO("pids() lists " << p);
      CHECK(!process_gone(p));
    }
  }
}

// ------------------------------------------------------------------ bad bytes

namespace {

struct record {
  std::string name;
  std::vector<double> xs;
  int id = 0;
  std::map<std::string, int> tags;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(name, xs, id, tags);
  }
  bool operator==(const record&) const = default;
};

using map_t = std::map<std::string, std::vector<int>>;
using tup_t = std::tuple<int, std::string>;

template <class T>
procpool::detail::byte_buffer encoded(const T& v) {
  procpool::detail::byte_buffer b;
  procpool::detail::encode(b, v);
  return b;
}

/// decode<T> of [p, p + n): a value, decode_error, or a finding.
template <class T>
std::string decode_verdict(const char* p, std::size_t n) {
  try {
    procpool::detail::reader r(p, n);
    (void)procpool::detail::decode<T>(r);
    return "ok";
  } catch (const procpool::decode_error&) {
    return "decode_error";
  } catch (const std::exception& e) {
    return "OTHER " + procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
  } catch (...) {
    return "OTHER non-std exception";
  }
}

template <class T>
void check_truncations(const T& v) {
  const auto b = encoded(v);
  {
    procpool::detail::reader r(b.data(), b.size());
    CHECK(procpool::detail::decode<T>(r) == v);
    CHECK(r.remaining() == 0);
  }
  for (std::size_t n = 0; n < b.size(); ++n) {
    INFO("truncated to " << n << " of " << b.size() << " bytes");
    CHECK(decode_verdict<T>(b.data(), n) == "decode_error");
  }
}

}  // namespace

TEST_CASE("decode of truncated buffers throws decode_error", "[failure][decode]") {
  check_truncations(std::vector<double>{1.5, -2.25, 1e300});
  check_truncations(std::string("hello, procpool"));
  check_truncations(map_t{{"a", {1, 2, 3}}, {"bb", {}}, {"ccc", {-7}}});
  check_truncations(tup_t{42, "forty-two"});
  check_truncations(record{"r", {1.0, 2.0}, 7, {{"k", 1}, {"l", 2}}});
  check_truncations(std::vector<record>{record{"x", {}, 1, {}}, record{"y", {3.0}, 2, {{"z", 3}}}});
}

TEST_CASE("decode of random bytes: a value or decode_error", "[failure][decode]") {
  // Types whose sizes procpool checks itself; every seed's verdict must be
  // "ok" or "decode_error".
  for (unsigned seed = 1; seed <= 2000; ++seed) {
    std::mt19937 rng(seed);
    std::vector<char> buf(rng() % 64);
    for (auto& c : buf) c = static_cast<char>(rng());
    // Small plausible lengths now and then, so decoding gets past the first field.
    if (buf.size() >= 8 && seed % 3 == 0) {
      const std::uint64_t n = rng() % 16;
      std::memcpy(buf.data(), &n, 8);
    }
    INFO("seed " << seed);
    for (const std::string& v :
         {decode_verdict<std::vector<double>>(buf.data(), buf.size()),
          decode_verdict<std::string>(buf.data(), buf.size()),
          decode_verdict<tup_t>(buf.data(), buf.size()),
          decode_verdict<std::pair<std::uint64_t, std::vector<int>>>(buf.data(), buf.size())}) {
      CHECK((v == "ok" || v == "decode_error"));
    }
  }
}

TEST_CASE("decode of corrupted cereal data: a value or decode_error", "[failure][decode]") {
  // Bit flips and byte overwrites of valid cereal encodings (the outer length
  // prefix kept, so cereal reads them). Element counts inside cereal data are
  // not checked against the bytes left: cereal resize()s a std::string or a
  // std::vector to the count it reads before reading the elements, so a
  // corrupted count throws std::length_error, or std::bad_alloc (here, through
  // this binary's 256 MiB allocation cap; elsewhere after allocating up to all
  // of memory, or an abort under AddressSanitizer), not decode_error.
  std::map<std::string, int> verdicts;
  std::string first_other;
  auto mutate_and_check = [&](auto value, unsigned seed) {
    using T = decltype(value);
    auto b = encoded(value);
    std::mt19937 rng(seed);
    std::vector<char> buf(b.data(), b.data() + b.size());
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = 8 + rng() % (buf.size() - 8);  // keep the outer length prefix
      switch (rng() % 3) {
        case 0: buf[at] = static_cast<char>(buf[at] ^ (1 << (rng() % 8))); break;
        case 1: buf[at] = static_cast<char>(rng()); break;
        default: buf[at] = static_cast<char>(rng() % 3); break;
      }
    }
    const std::string v = decode_verdict<T>(buf.data(), buf.size());
    ++verdicts[v.substr(0, 48)];
    if (v != "ok" && v != "decode_error" && first_other.empty())
      first_other = "seed " + std::to_string(seed) + ", " +
                    procpool::detail::demangle(typeid(T).name()) + ": " + v;
  };
  for (unsigned seed = 1; seed <= 300; ++seed) {
    mutate_and_check(map_t{{"alpha", {1, 2, 3}}, {"b", {}}, {"gamma", {9, 9}}}, seed);
    mutate_and_check(record{"name", {1.0, 2.0, 3.0}, 5, {{"t", 1}}}, seed);
  }
  int others = 0;
  for (auto& [v, n] : verdicts) {
    std::fprintf(stderr, "[decode] %5d x %s\n", n, v.c_str());
    if (v != "ok" && v != "decode_error") others += n;
  }
  INFO(others << " of 600 corrupted inputs threw something else; first: " << first_other);
  CHECK(others == 0);
}

TEST_CASE("decode of a cereal element count past max_size throws decode_error",
          "[failure][decode]") {
  // A std::string and a std::vector<int> inside cereal data, whose element
  // count was corrupted to 2^62: cereal resize()s before reading, and the
  // std::length_error escapes decode() instead of becoming decode_error.
  // (Counts that fit max_size but not memory, 2^33 say, allocate that much
  // first: std::bad_alloc, or an abort under AddressSanitizer.)
  auto set_count = [](procpool::detail::byte_buffer& b, std::size_t at, std::uint64_t n) {
    std::memcpy(b.data() + at, &n, sizeof n);
  };
  {
    auto b = encoded(map_t{{"k", {1, 2}}});
    // [u64 prefix][u64 map size][u64 key length]["k"][u64 vector size][ints]
    set_count(b, 8 + 8 + 8 + 1, std::uint64_t{1} << 62);
    const std::string v = decode_verdict<map_t>(b.data(), b.size());
    INFO(v);
    CHECK(v == "decode_error");
  }
  {
    auto b = encoded(record{"abc", {}, 0, {}});
    set_count(b, 8, std::uint64_t{1} << 62);  // the name's length
    const std::string v = decode_verdict<record>(b.data(), b.size());
    INFO(v);
    CHECK(v == "decode_error");
  }
}

namespace {

/// A result type whose load() rejects one value, as a validating type might.
struct picky {
  int v = 0;
  std::string s;
  template <class Ar>
  void save(Ar& ar) const {
    ar(v, s);
  }
  template <class Ar>
  void load(Ar& ar) {
    ar(v, s);
    if (v == 13) throw std::domain_error("picky: 13 is not allowed");
  }
};

}  // namespace

TEST_CASE("a result whose load() throws in the parent fails that item, and the pool goes on",
          "[failure][decode]") {
  // result_job::deliver() catches decode_error only. Another exception from a
  // result's load() escapes on_message() before the chunk is popped from the
  // worker's in-flight queue, so every later answer is matched against the
  // wrong chunk: items fail with "does not match the chunk", and the last
  // chunk never completes (the next calls hang).
  watchdog wd(60s);
  auto f = [](int x) { return picky{x, "s" + std::to_string(x)}; };
  procpool::Pool pool(f, 2);
  std::string first;
  try {
    auto out = pool.try_map(iota_vec(0, 40));
    REQUIRE(out.size() == 40);
    CHECK_FALSE(out[13].ok());
    // Only item 13: its bytes were length-prefixed and already consumed when
    // its load() threw, so the items after it in the chunk can still be read.
    std::string collateral;
    for (int i = 0; i < 40; ++i) {
      if (i == 13) continue;
      if (!out[i].ok())
        collateral += std::to_string(i) + " ";
      else
        CHECK(out[i].value().v == i);
    }
    INFO("other items that failed: " << collateral);
    CHECK(collateral.empty());
  } catch (const std::exception& e) {
    first = procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
  }
  INFO("try_map threw " << first);
  CHECK(first.empty());
  // Later calls, with no 13 in them, must work and not hang.
  for (int round = 0; round < 2; ++round) {
    INFO("later call " << round);
    auto r = pool.map_async(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8});
    const bool ready = r.wait_for(5s);
    CHECK(ready);
    if (!ready) break;
    std::vector<picky> out;
    std::string err;
    try {
      out = r.get();
    } catch (const std::exception& e) {
      err = e.what();
    }
    INFO(err);
    CHECK(err.empty());
    CHECK(out.size() == 8);
  }
}

// ------------------------------------------------------------------ fork and threads

namespace {

/// Threads that allocate, lock a mutex and log with printf and fprintf(stderr)
/// as fast as they can, with stdout and stderr redirected to files.
///
/// Under AddressSanitizer and ThreadSanitizer they do not allocate: clang 14's
/// sanitizer runtimes do not hold their allocator's locks across fork(), so a
/// child forked while another thread refills its allocator cache blocks
/// forever in its first malloc (seen here: a worker stuck in
/// SizeClassAllocator64::GetFromAllocator, from spawn()'s std::string
/// assignment under ASan, from worker_main's first buffer under TSan, in 2 of
/// 75 runs under load). glibc's malloc resets its locks in the child; that is
/// what the uninstrumented build tests.
class busy_threads {
 public:
  explicit busy_threads(int n) {
    std::fflush(nullptr);
    out_path_ = tmp_path("out");
    err_path_ = tmp_path("err");
    saved_out_ = ::dup(1);
    saved_err_ = ::dup(2);
    const int o = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const int e = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::close(o);
    ::close(e);
    // Stdio buffers are allocated on first use: do it here, before any thread runs.
    std::printf("busy_threads: start\n");
    std::fprintf(stderr, "busy_threads: start\n");
    for (int t = 0; t < n; ++t)
      threads_.emplace_back([this, t] {
        std::mt19937 rng(static_cast<unsigned>(t));
        std::vector<void*> held;
        held.reserve(128);  // before the first fork, so the vector never allocates later
        ready_.fetch_add(1);
        for (long line = 0; !stop_.load(std::memory_order_relaxed); ++line) {
          if (!sanitizer_malloc) {  // see above
            held.push_back(std::malloc(1 + rng() % 4096));
            if (held.size() > 64 || rng() % 2) {
              const std::size_t k = rng() % held.size();
              std::free(held[k]);
              held.erase(held.begin() + static_cast<long>(k));
            }
          }
          {
            std::lock_guard lk(mutex_);
            ++counter_;
          }
          std::printf("thread %d line %ld\n", t, line);
          if (line % 16 == 0) std::fprintf(stderr, "thread %d err %ld\n", t, line);
          if (line % 64 == 0) std::this_thread::yield();
        }
        for (void* p : held) std::free(p);
      });
    while (ready_.load() < n) std::this_thread::yield();
  }
  /// Stops the threads, restores stdout and stderr. Idempotent.
  void stop() {
    if (stopped_) return;
    stopped_ = true;
    stop_ = true;
    for (auto& t : threads_) t.join();
    std::fflush(nullptr);
    ::dup2(saved_out_, 1);
    ::dup2(saved_err_, 2);
    ::close(saved_out_);
    ::close(saved_err_);
  }
  ~busy_threads() {
    stop();
    std::remove(out_path_.c_str());
    std::remove(err_path_.c_str());
  }
  const std::string& out_path() const { return out_path_; }
  long counter() const { return counter_; }

 private:
  static std::string tmp_path(const char* tag) {
    return "/tmp/procpool_test_failure_" + std::to_string(::getpid()) + "_" + tag;
  }
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<int> ready_{0};
  bool stopped_ = false;
  std::mutex mutex_;
  long counter_ = 0;
  std::string out_path_, err_path_;
  int saved_out_ = -1, saved_err_ = -1;
};

}  // namespace

TEST_CASE("pools fork correctly while other threads allocate, lock and log",
          "[failure][threads]") {
  watchdog wd(100s);
  auto f = [](int x) {
    std::vector<int> v(static_cast<std::size_t>(x % 50 + 1), x);  // allocate in the worker
    return static_cast<long>(v.size()) * x;
  };
  auto expect = [](int x) { return static_cast<long>(x % 50 + 1) * x; };
  int wrong = 0;
  std::string error;
  double pools_ms = 0, deaths_ms = 0;
  busy_threads busy(4);
  try {
    const auto t0 = clk::now();
    for (int k = 0; k < 20; ++k) {
      procpool::Pool pool(f, 2);
      const auto out = pool.map(iota_vec(0, 100));
      for (int i = 0; i < 100; ++i) wrong += out[i] != expect(i);
    }
    pools_ms = ms_since(t0);
    // Re-forks from a parent with busy threads: every item kills its worker
    // after its first, so each replacement is forked while the threads run.
    const auto t1 = clk::now();
    auto g = [](int x) {
      if (x % 2) ::kill(::getpid(), SIGKILL);
      return x;
    };
    procpool::Pool pool(g, 2);
    auto out = pool.try_map(iota_vec(0, 100), {.chunksize = 1});
    for (int i = 0; i < 100; ++i) wrong += (i % 2) ? out[i].ok() : !(out[i].ok() && out[i].value() == i);
    deaths_ms = ms_since(t1);
  } catch (const std::exception& e) {
    error = e.what();
  }
  busy.stop();
  std::fprintf(stderr, "[timing] with 4 busy threads: 20 pools x 100 items %.0f ms; 50 deaths and re-forks %.0f ms; %ld lock rounds\n",
               pools_ms, deaths_ms, busy.counter());
  INFO(error);
  CHECK(error.empty());
  CHECK(wrong == 0);
  CHECK(busy.counter() > 0);
}

TEST_CASE("max_tasks_per_child = 1 re-forks while other threads allocate, lock and log",
          "[failure][threads]") {
  // Fails through the bye/waitpid race described above, not through the threads.
  watchdog wd(100s);
  auto f = [](int x) {
    std::vector<int> v(static_cast<std::size_t>(x % 50 + 1), x);
    return static_cast<long>(v.size()) * x;
  };
  int wrong = 0;
  std::string error;
  busy_threads busy(4);
  const auto t0 = clk::now();
  try {
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .max_tasks_per_child = 1});
    auto r = pool.map_async(iota_vec(0, 150));
    if (!r.wait_for(60s)) throw std::runtime_error("not done after 60 s");
    const auto out = r.get();
    for (int i = 0; i < 150; ++i) wrong += out[i] != static_cast<long>(i % 50 + 1) * i;
    pool.close();
    pool.join();
  } catch (const std::exception& e) {
    error = procpool::detail::demangle(typeid(e).name()) + ": " + e.what();
  }
  const double ms = ms_since(t0);
  busy.stop();
  std::fprintf(stderr, "[timing] with 4 busy threads: 150 items with max_tasks_per_child=1: %.0f ms%s%s\n", ms,
               error.empty() ? "" : "; error: ", error.c_str());
  INFO(error);
  CHECK(error.empty());
  CHECK(wrong == 0);
}

TEST_CASE("workers do not print again what other threads had buffered at fork",
          "[failure][threads]") {
  // Workers end with child_exit(), which flushes stdio. Whatever another
  // thread wrote into stdout's buffer between fork_with's flush and its fork
  // was in the worker's copy of the buffer too, and was printed a second time
  // (180-240 duplicated lines per run here) until fork_with flushed under the
  // stdio locks (dc1ed5f).
  watchdog wd(60s);
  auto f = [](int x) { return x; };
  std::map<std::string, int> lines;
  {
    busy_threads busy(4);
    for (int k = 0; k < 5; ++k) {
      // Workers that retire end through child_exit(), which flushes stdio.
      procpool::Pool pool(f, procpool::pool_options{.processes = 2, .max_tasks_per_child = 1});
      try {
        (void)pool.map(iota_vec(0, 40));
        pool.close();
        pool.join();
      } catch (const std::system_error&) {
        // the bye/waitpid race above; beside the point here
      }
    }
    busy.stop();
    std::ifstream in(busy.out_path());
    std::string s;
    while (std::getline(in, s)) ++lines[s];
  }
  int dup = 0;
  std::string example;
  for (auto& [s, n] : lines)
    if (n > 1) {
      ++dup;
      if (example.empty()) example = s + " (x" + std::to_string(n) + ")";
    }
  std::fprintf(stderr, "[threads] %zu distinct log lines, %d printed more than once%s%s\n",
               lines.size(), dup, dup ? ", e.g. " : "", example.c_str());
  CHECK(dup == 0);
}

TEST_CASE("a pool built by a thread that has ended keeps its work", "[failure][threads]") {
  // PR_SET_PDEATHSIG fires when the *thread* that forked a worker ends: a pool
  // built (or driven) by a short-lived thread must not lose in-flight items.
  watchdog wd(30s);
  auto f = [](int x) {
    sleep_for_ms(100);
    return x + 1;
  };
  using pool_t = procpool::Pool<decltype(f)>;
  std::optional<pool_t> pool;
  std::optional<decltype(pool->map_async(std::vector<int>{}))> r;
  std::vector<int> in = iota_vec(0, 8);
  std::thread([&] {
    pool.emplace(f, 2);
    r.emplace(pool->map_async(in, {.chunksize = 1}));
  }).join();
  REQUIRE(r->wait_for(10s));
  std::string error;
  std::vector<int> out;
  try {
    out = r->get();
  } catch (const std::exception& e) {
    error = e.what();
  }
  INFO(error);
  CHECK(error.empty());
  CHECK(out == iota_vec(1, 9));
  CHECK(pool->map(std::vector<int>{1}) == std::vector<int>{2});
}

TEST_CASE("workers replaced by a thread that has ended keep their work", "[failure][threads]") {
  // Thread A drives the pool while its items kill their workers, so A forks
  // the replacements; A ends while those replacements run the main thread's items.
  watchdog wd(30s);
  auto f = [](int x) {
    if (x < 0) ::kill(::getpid(), SIGKILL);
    if (x >= 1000) sleep_for_ms(150);
    return x;
  };
  procpool::Pool pool(f, 2);
  const auto before = pool.pids();
  auto slow = pool.map_async(iota_vec(1000, 1008), {.chunksize = 1});
  std::thread([&] { (void)pool.try_map(std::vector<int>{-1, -2, -3, -4}, {.chunksize = 1}); }).join();
  std::string error;
  std::vector<int> out;
  try {
    if (!slow.wait_for(20s)) throw std::runtime_error("not done after 20 s");
    out = slow.get();
  } catch (const std::exception& e) {
    error = e.what();
  }
  INFO(error);
  CHECK(error.empty());
  CHECK(out == iota_vec(1000, 1008));
  CHECK(pool.pids() != before);
}

// ------------------------------------------------ found in review

TEST_CASE("procpool::exit(n) in a task ends its worker; that item fails, the rest complete",
          "[failure][exit]") {
  watchdog wd(60s);
  procpool::Pool pool(
      [](int x) {
        if (x == 5) procpool::exit(7);
        return x * 2;
      },
      procpool::pool_options{.processes = 2});
  const auto out = pool.try_map(std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {.chunksize = 1});
  REQUIRE(out.size() == 10);
  for (int i = 0; i < 10; ++i) {
    if (i == 5) {
      REQUIRE_FALSE(out[5].ok());
      try {
        std::rethrow_exception(out[5].error());
      } catch (const procpool::worker_lost& e) {
        CHECK(e.exitcode() == 7);
        CHECK(e.index() == 5);
      }
    } else {
      CHECK(out[static_cast<std::size_t>(i)].value() == i * 2);
    }
  }
  CHECK(pool.map(std::vector<int>{1, 2}) == std::vector<int>{2, 4});
}

namespace {

/// An argument whose load() calls procpool::exit(7) for one value (a string
/// member: not trivially copyable, so it crosses through cereal and load()).
struct exits_on_load {
  int v = 0;
  std::string s = "x";
  template <class Ar>
  void save(Ar& ar) const {
    ar(v, s);
  }
  template <class Ar>
  void load(Ar& ar) {
    ar(v, s);
    if (v == 5) procpool::exit(7);
  }
};

}  // namespace

// Decoding caught everything, so procpool::exit(n) there became a task_error
// naming procpool::detail::exit_request, and the worker went on.
TEST_CASE("procpool::exit(n) in an argument's load() ends its worker like in a task",
          "[failure][exit]") {
  watchdog wd(60s);
  procpool::Pool pool([](const exits_on_load& a) { return a.v * 2; }, 2);
  std::vector<exits_on_load> in(10);
  for (int i = 0; i < 10; ++i) in[static_cast<std::size_t>(i)].v = i;
  const auto before = pool.pids();
  const auto out = pool.try_map(in, {.chunksize = 1});
  REQUIRE(out.size() == 10);
  for (int i = 0; i < 10; ++i) {
    INFO("item " << i);
    if (i != 5) {
      CHECK(out[static_cast<std::size_t>(i)].value() == i * 2);
      continue;
    }
    REQUIRE_FALSE(out[5].ok());
    try {
      std::rethrow_exception(out[5].error());
    } catch (const procpool::worker_lost& e) {
      CHECK(e.exitcode() == 7);
      CHECK(e.index() == 5);
    } catch (const std::exception& e) {
      FAIL("not worker_lost: " << e.what());
    }
  }
  CHECK(pool.pids() != before);  // that worker ended and was replaced
}

// A death before the initializer returned broke the pool for good, even a
// SIGKILL from outside (or the OOM killer) during an initializer that works.
TEST_CASE("a worker killed during a working initializer is replaced; the pool goes on",
          "[failure][initializer]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x + 1; },
                      procpool::pool_options{.processes = 2, .initializer = [] {
                        sleep_for_ms(300);
                      }});
  const auto pids = pool.pids();
  REQUIRE(::kill(pids[0], SIGKILL) == 0);  // in its initializer
  CHECK(pool.map(iota_vec(0, 20)) == iota_vec(1, 21));
}

TEST_CASE("workers that keep dying in the initializer make the pool unusable, saying so",
          "[failure][initializer]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x; }, procpool::pool_options{.processes = 2, .initializer = [] {
                                                 ::_exit(9);
                                               }});
  try {
    (void)pool.map(std::vector<int>{1, 2, 3});
    FAIL("no initializer_error");
  } catch (const procpool::initializer_error& e) {
    INFO(e.what());
    CHECK(contains(e.what(), "before it was ready"));
    CHECK(contains(e.what(), "exited with code 9"));
  }
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}), procpool::initializer_error);
}

TEST_CASE("close() and join() finish on a pool whose initializer failed in one worker",
          "[failure][lifecycle]") {
  watchdog wd(30s);
  // Shared memory: only the first worker to start throws.
  auto* first = static_cast<std::atomic<int>*>(
      ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(first != MAP_FAILED);
  new (first) std::atomic<int>(0);
  {
    procpool::Pool pool([](int x) { return x; },
                        procpool::pool_options{.processes = 2, .initializer = [first] {
                                                 if (first->fetch_add(1) == 0)
                                                   throw std::runtime_error("first worker only");
                                               }});
    CHECK_THROWS_AS(pool.map(std::vector<int>{1, 2, 3}), procpool::initializer_error);
    pool.close();
    const auto t0 = clk::now();
    pool.join();  // used to hang: no stop frame went to the live worker
    CHECK(ms_since(t0) < 5000.0);
  }
  ::munmap(first, sizeof(std::atomic<int>));
}

// Sanitizers reserve terabytes of address space, so RLIMIT_AS cannot be used under them.
#if !defined(PROCPOOL_TEST_ASAN) && !defined(PROCPOOL_TEST_TSAN)
TEST_CASE("a worker that keeps dying while receiving an item fails it instead of respawning forever",
          "[failure][oom]") {
  watchdog wd(60s);
  // Each worker may map 128 MiB more than it starts with: receiving a 200 MiB
  // argument fails with bad_alloc before any item runs, every time. (200 MiB
  // also stays under this binary's 256 MiB allocation cap.)
  procpool::Pool pool([](const std::vector<char>& v) { return v.size(); },
                      procpool::pool_options{.processes = 1, .initializer = [] {
                                               std::ifstream statm("/proc/self/statm");
                                               std::size_t pages = 0;
                                               statm >> pages;
                                               const rlim_t limit = pages * 4096 + (rlim_t{128} << 20);
                                               rlimit r{limit, limit};
                                               ::setrlimit(RLIMIT_AS, &r);
                                             }});
  const std::vector<char> big(std::size_t{200} << 20, 'x');
  auto r = pool.apply_async(big);
  try {
    (void)r.get();
    FAIL("a 200 MiB argument went through a 128 MiB address-space limit");
  } catch (const procpool::worker_lost& e) {
    CHECK(std::string(e.what()).find("died before it started") != std::string::npos);
  }
  CHECK(pool.apply_async(std::vector<char>(10, 'y')).get() == 10u);
}
#endif

// Counted by this binary's operator new (support/alloc_cap.hpp), so not under TSan.
#ifndef PROCPOOL_TEST_TSAN
TEST_CASE("maps of big items reuse the parent's message buffers", "[memory]") {
  watchdog wd(60s);
  // Each 1 MiB item is a chunk of its own. Each chunk's message used to be a
  // new 2 MiB allocation, which glibc could hand back to the kernel when freed
  // and fault in again: thousands of page faults per map, half the bandwidth.
  std::vector<std::vector<char>> bufs(48);
  std::vector<std::uint64_t> want;
  for (std::size_t i = 0; i < bufs.size(); ++i) {
    bufs[i].assign((std::size_t{1} << 20) + i, static_cast<char>(i));
    want.push_back(bufs[i].size() + static_cast<unsigned char>(bufs[i].back()));
  }
  procpool::Pool pool(
      [](const std::vector<char>& b) {
        return static_cast<std::uint64_t>(b.size() + static_cast<unsigned char>(b.back()));
      },
      2);
  REQUIRE(pool.map(bufs) == want);  // the buffers the next maps reuse
  const std::size_t before = procpool_test::big_allocations.load();
  for (int k = 0; k < 3; ++k) REQUIRE(pool.map(bufs) == want);
  // 144 (one per chunk) without the reuse; 0 here, unless a loaded machine
  // kept fewer chunks in flight during the first map than during a later one
  // (then at most the 4 the pool keeps, and one being filled).
  CHECK(procpool_test::big_allocations.load() - before <= 5);
}
#endif

// ------------------------------------------------------------ the express lane

namespace {

/// A flag in shared memory that calls of -1 wait on, and the pid of the
/// worker that last began one.
struct hold_flag {
  hold_flag() {
    mem_ = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mem_ != MAP_FAILED);
    flag = new (mem_) std::atomic<int>(1);
    pid = new (static_cast<char*>(mem_) + 64) std::atomic<int>(0);
  }
  ~hold_flag() { ::munmap(mem_, 4096); }
  hold_flag(const hold_flag&) = delete;
  hold_flag& operator=(const hold_flag&) = delete;
  void* mem_;
  std::atomic<int>* flag;
  std::atomic<int>* pid;
};

/// The task of the held tests: a call of -1 runs while the flag is set (at most 20 s).
int run_held(std::atomic<int>* hold, std::atomic<int>* pid, int i) {
  if (i < 0) pid->store(::getpid());
  for (int ms = 0; i < 0 && hold->load() && ms < 20'000; ++ms) sleep_for_ms(1);
  return i;
}

/// A call of -1 that took the express lane and is held; the calls that did not
/// take it are let go at once and waited for.
template <class Pool>
auto held_express_call(Pool& pool, hold_flag& hold)
    -> std::optional<decltype(pool.apply_async(0))> {
  for (int k = 0; k < 1000; ++k) {
    (void)pool.apply_async(0).get();  // the workers poll
    auto r = pool.apply_async(-1);
    if (r.express()) return r;
    hold.flag->store(0);
    r.wait();
    hold.flag->store(1);
  }
  return std::nullopt;
}

}  // namespace


// Callers on three threads while a worker is killed every 2 ms: each call
// gets its answer or worker_lost, the pool goes on, and close() + join()
// return. (A replacement's wake event is reset while another thread may post
// to it and notify it.)
TEST_CASE("express lane: calls from three threads while workers are killed and replaced",
          "[failure][express]") {
  watchdog wd(60s);
  if (!procpool_test::have_two_cpus()) return;
  procpool::Pool pool([](int x) { return x + 1; }, 2);
  std::atomic<bool> stop{false};
  std::atomic<long> answered{0}, lost{0}, wrong{0};
  // Several callers: a respawn runs in whichever one drives, while the others post.
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&] {
      for (int i = 0; !stop.load(); ++i) {
        try {
          if (pool.apply_async(i).get() == i + 1) ++answered;
          else ++wrong;
        } catch (const procpool::worker_lost&) {
          ++lost;  // the call ran in a worker killed under it
        }
      }
    });
  for (int k = 0; k < 200; ++k) {
    const auto pids = pool.pids();
    if (!pids.empty()) ::kill(pids[static_cast<std::size_t>(k) % pids.size()], SIGKILL);
    sleep_for_ms(2);
  }
  stop = true;
  for (auto& c : callers) c.join();
  INFO("answered " << answered << ", lost " << lost);
  CHECK(wrong == 0);
  CHECK(answered > 0);
  CHECK(pool.map(iota_vec(0, 4)) == std::vector<int>{1, 2, 3, 4});
  // A worker killed between finishing a cell and saying so must not leave
  // join() waiting for a call that is over.
  pool.close();
  pool.join();
}

TEST_CASE("express lane: a worker that dies running the call fails it with worker_lost",
          "[failure][express]") {
  if (!procpool_test::have_two_cpus()) return;
  watchdog wd(60s);
  auto f = [](int i) {
    if (i < 0) ::kill(::getpid(), SIGKILL);
    return i + 1;
  };
  procpool::Pool pool(f, 2);
  for (int k = 0; k < 3; ++k) {
    auto r = procpool_test::express_call_after(pool, [&] { (void)pool.apply_async(0).get(); }, -1);
    REQUIRE(r);
    try {
      (void)r->get();
      FAIL("no worker_lost");
    } catch (const procpool::task_timeout&) {
      FAIL("task_timeout without a timeout");
    } catch (const procpool::worker_lost& e) {
      CHECK(e.exitcode() == -SIGKILL);
      CHECK(e.index() == 0);
      CHECK(contains(e.what(), "killed by SIGKILL"));
    }
    CHECK(pool.apply_async(k).get() == k + 1);  // and it goes on
  }
  CHECK(pool.pids().size() == 2);
}

TEST_CASE("express lane: task_timeout kills a worker running the call", "[failure][express]") {
  if (!procpool_test::have_two_cpus()) return;
  watchdog wd(60s);
  hold_flag hold;
  auto f = [h = hold.flag, p = hold.pid](int i) { return run_held(h, p, i); };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = 200ms});
  auto r = held_express_call(pool, hold);
  REQUIRE(r);
  const auto t0 = clk::now();
  try {
    (void)r->get();
    FAIL("no task_timeout");
  } catch (const procpool::task_timeout& e) {
    CHECK(e.exitcode() == -SIGKILL);
    CHECK(contains(e.what(), "task_timeout"));
  }
  std::fprintf(stderr, "[timing] express call past task_timeout=200ms failed after %.1f ms\n",
               ms_since(t0));
  CHECK(pool.apply_async(5).get() == 5);
}

TEST_CASE("express lane: dropped results still run, free their cells, and join waits for them",
          "[failure][express]") {
  if (!procpool_test::have_two_cpus()) return;
  watchdog wd(60s);
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const int wfd = fds[1];
  auto f = [wfd](int i) {
    sleep_for_ms(i % 3);
    (void)!::write(wfd, &i, sizeof i);  // under PIPE_BUF: whole
    return i;
  };
  // Read as the calls write: a full pipe would block them.
  std::multiset<int> ran;
  std::thread reader([&] {
    int v;
    while (::read(fds[0], &v, sizeof v) == static_cast<ssize_t>(sizeof v)) ran.insert(v);
  });
  std::set<int> submitted;
  {
    procpool::Pool pool(f, 2);
    int dropped = 0, k = 0;
    const auto until = clk::now() + 20s;
    for (; dropped < 100 && clk::now() < until; ++k) {
      auto r = pool.apply_async(k);
      submitted.insert(k);
      if (r.express())
        ++dropped;  // never read: destroyed here
      else
        r.wait();
    }
    std::fprintf(stderr, "[express] %d of %d calls took the lane\n", dropped, k);
    CHECK(dropped == 100);
    // All four cells of a worker were dropped many times over: still usable.
    auto last = procpool_test::express_call(pool, 3);
    REQUIRE(last);
    submitted.insert(3);
    pool.close();
    pool.join();  // waits for the dropped calls too
    CHECK(last->get() == 3);
  }
  ::close(wfd);  // the workers' copies are closed: they have exited
  reader.join();
  ::close(fds[0]);
  for (int k : submitted) CHECK(ran.count(k) >= 1);
}

TEST_CASE("express lane: close() refuses new calls, terminate() fails the running one",
          "[failure][express]") {
  if (!procpool_test::have_two_cpus()) return;
  watchdog wd(60s);
  hold_flag hold;
  auto f = [h = hold.flag, p = hold.pid](int i) { return run_held(h, p, i); };
  using pool_type = procpool::Pool<decltype(f)>;
  {
    pool_type pool(f, 2);
    auto r = held_express_call(pool, hold);
    REQUIRE(r);
    pool.close();
    CHECK_THROWS_AS(pool.apply_async(1), procpool::usage_error);
    CHECK_FALSE(r->ready());
    hold.flag->store(0);
    pool.join();  // waits for the call
    CHECK(r->ready());
    CHECK(r->get() == -1);
  }
  hold.flag->store(1);
  std::optional<decltype(std::declval<pool_type&>().apply_async(0))> r;
  {
    pool_type pool(f, 2);
    r = held_express_call(pool, hold);
    REQUIRE(r);
  }  // destroyed: terminated, with the call still running
  CHECK_THROWS_AS(r->get(), procpool::pool_terminated);
}

TEST_CASE("express lane: a long express call keeps queued work off its worker",
          "[failure][express]") {
  if (!procpool_test::have_two_cpus()) return;
  watchdog wd(60s);
  hold_flag hold;
  auto f = [h = hold.flag, p = hold.pid](int i) { return run_held(h, p, i); };
  procpool::Pool pool(f, 2);
  // Held on the first worker: the one the queues fill first.
  std::optional<decltype(pool.apply_async(0))> r;
  for (int k = 0; k < 100 && !r; ++k) {
    hold.pid->store(0);
    auto c = held_express_call(pool, hold);
    REQUIRE(c);
    const auto until = clk::now() + 5s;
    while (hold.pid->load() == 0 && clk::now() < until) sleep_for_ms(1);
    if (hold.pid->load() == pool.pids().front()) {
      r = std::move(c);
    } else {
      hold.flag->store(0);
      CHECK(c->get() == -1);
      hold.flag->store(1);
    }
  }
  REQUIRE(r);
  sleep_for_ms(20);  // long enough that the first worker counts as busy
  auto m = pool.map_async(std::vector<int>{1, 2, 3, 4});
  // Queued behind the held call, it would wait the 20 s the call is held.
  CHECK(m.wait_for(10s));
  hold.flag->store(0);
  CHECK(r->get() == -1);
  CHECK(m.get() == std::vector<int>{1, 2, 3, 4});
}
