// A soak under faults: threads mixing every kind of call on one pool while
// another thread SIGKILLs random workers at random instants, for a bounded
// time. It checks what a user is promised:
//  - exactly once: every item of every call comes back once, as its right
//    value or as worker_lost (the item its worker died running); nothing is
//    lost, doubled or wrong, and no other error appears;
//  - no hang: the whole run is bounded (alarm), and so is ctest's TIMEOUT;
//  - nothing left: after each pool is destroyed, no child, no new fd, no new
//    /dev/shm entry.
// Pools are rebuilt every few seconds, so construction and destruction run
// under kills too.
//
//   stress_soak [--seconds N] [--threads N] [--workers N]
//
// Exit code 0 when every check held, 1 otherwise (each violation is printed).

#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <dirent.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::atomic<long> g_violations{0};
std::mutex g_print;

void violation(const std::string& what) {
  ++g_violations;
  std::lock_guard lk(g_print);
  std::fprintf(stderr, "VIOLATION: %s\n", what.c_str());
}

/// The work: a value the parent can check, with a little CPU time now and then.
long work(long x) {
  if (x % 97 == 0) {
    volatile long s = 0;
    for (long i = 0; i < 20'000; ++i) s = s + i;
  }
  return x * 3 + 1;
}
long expected(long x) { return x * 3 + 1; }

std::size_t count_dir(const char* path) {
  std::size_t n = 0;
  if (DIR* d = ::opendir(path)) {
    while (const dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
    ::closedir(d);
  }
  return n;
}

bool no_children() {
  errno = 0;
  return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

struct stats {
  std::atomic<long> calls{0}, items{0}, blamed{0}, orphaned{0}, kills{0}, pools{0};
};
stats g_stats;

/// The index a failed item reports, or -1 when its error is not worker_lost.
/// A death fails only the item its worker was running ("while running item
/// N", counted as blamed); work whose workers died running nothing fails only
/// after max_orphaned + 1 such deaths ("N workers died before it started").
long lost_index(const std::exception_ptr& e, std::string& other) {
  try {
    std::rethrow_exception(e);
  } catch (const procpool::worker_lost& w) {
    const std::string what = w.what();
    if (what.find("while running item") != std::string::npos) {
      ++g_stats.blamed;
    } else if (const auto at = what.find(" workers died before it started");
               at != std::string::npos) {
      const auto from = what.rfind(": ", at);
      const long deaths = from == std::string::npos ? 0 : std::atol(what.c_str() + from + 2);
      if (deaths <= static_cast<long>(procpool::detail::max_orphaned))
        violation("item " + std::to_string(w.index()) + " failed after " +
                  std::to_string(deaths) + " deaths before it started: " + what);
      ++g_stats.orphaned;
    } else {
      violation("worker_lost saying neither which item ran nor how often: " + what);
    }
    return static_cast<long>(w.index());
  } catch (const std::exception& x) {
    other = x.what();
  } catch (...) {
    other = "(not a std::exception)";
  }
  return -1;
}

using pool_t = procpool::Pool<long (*)(long)>;

/// One thread's calls, until @p stop.
void caller(pool_t& pool, unsigned seed, const std::atomic<bool>& stop) {
  stats& st = g_stats;
  std::mt19937 rng(seed);
  while (!stop.load()) {
    const int kind = static_cast<int>(rng() % 5);
    const long n = 1 + static_cast<long>(rng() % (kind >= 3 ? 64 : 5000));
    const long base = static_cast<long>(rng() % 1'000'000);
    std::vector<long> in(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) in[static_cast<std::size_t>(i)] = base + i;
    ++st.calls;
    st.items += n;
    std::string where = "call kind " + std::to_string(kind) + " of " + std::to_string(n);
    try {
      if (kind == 0) {  // try_map: one outcome per item, in order
        const auto out = pool.try_map(in);
        if (out.size() != in.size()) violation(where + ": " + std::to_string(out.size()) + " outcomes");
        for (std::size_t i = 0; i < out.size(); ++i) {
          if (out[i].ok()) {
            if (out[i].value() != expected(in[i])) violation(where + ": wrong value at " + std::to_string(i));
            continue;
          }
          std::string other;
          const long idx = lost_index(out[i].error(), other);
          if (idx != static_cast<long>(i)) violation(where + ": item " + std::to_string(i) + " failed with " + (other.empty() ? "index " + std::to_string(idx) : other));
        }
      } else if (kind == 1 || kind == 2) {  // imap (ordered) / imap_unordered: each index once
        std::vector<int> seen(static_cast<std::size_t>(n), 0);
        const auto take = [&](auto&& range) {
          for (auto it = range.begin(); it != range.end(); ++it) {
            try {
              const long v = *it;
              const long i = (v - 1) / 3 - base;
              if (v != expected(base + i) || i < 0 || i >= n) {
                violation(where + ": value " + std::to_string(v) + " from no input");
                continue;
              }
              ++seen[static_cast<std::size_t>(i)];
            } catch (...) {
              std::string other;
              const long idx = lost_index(std::current_exception(), other);
              if (idx < 0 || idx >= n) {
                violation(where + ": an item failed with " + (other.empty() ? "index " + std::to_string(idx) : other));
                continue;
              }
              ++seen[static_cast<std::size_t>(idx)];
                }
          }
        };
        if (kind == 1)
          take(pool.imap(in));
        else
          take(pool.imap_unordered(in));
        for (long i = 0; i < n; ++i)
          if (seen[static_cast<std::size_t>(i)] != 1)
            violation(where + ": item " + std::to_string(i) + " came out " + std::to_string(seen[static_cast<std::size_t>(i)]) + " times");
      } else if (kind == 4) {  // apply_async with done callbacks, read through as_completed
        std::vector<std::atomic<int>> fired(in.size());
        std::vector<procpool::async_result<long>> rs;
        rs.reserve(in.size());
        for (std::size_t i = 0; i < in.size(); ++i) {
          rs.push_back(pool.apply_async(in[i]));
          const long want = expected(in[i]);
          rs.back().add_done_callback(
              [&fired, i, want, where](const long& v) {
                if (v != want) violation(where + ": wrong value in a callback");
                ++fired[i];
              },
              [&fired, i, where](std::exception_ptr e) {
                std::string other;
                if (lost_index(e, other) != 0) violation(where + ": error callback got " + other);
                ++fired[i];
              });
        }
        std::size_t yielded = 0;
        for (std::size_t i : procpool::as_completed(rs)) {
          ++yielded;
          // as_completed yields a result once its callbacks ran.
          if (fired[i].load() != 1)
            violation(where + ": callback of " + std::to_string(i) + " ran " + std::to_string(fired[i].load()) + " times");
        }
        if (yielded != rs.size()) violation(where + ": as_completed yielded " + std::to_string(yielded));
      } else {  // a burst of apply_async (express lane when a worker polls)
        std::vector<procpool::async_result<long>> rs;
        rs.reserve(in.size());
        for (long x : in) rs.push_back(pool.apply_async(x));
        for (std::size_t i = 0; i < rs.size(); ++i) {
          try {
            if (rs[i].get() != expected(in[i])) violation(where + ": wrong apply_async value");
          } catch (...) {
            std::string other;
            if (lost_index(std::current_exception(), other) != 0) violation(where + ": apply_async failed with " + other);
            }
        }
      }
    } catch (const std::exception& e) {
      violation(where + ": the call threw " + e.what());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 20, threads = 3;
  std::size_t workers = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string opt = argv[i];
    if (opt == "--seconds") seconds = std::atoi(argv[i + 1]);
    else if (opt == "--threads") threads = std::atoi(argv[i + 1]);
    else if (opt == "--workers") workers = static_cast<std::size_t>(std::atoi(argv[i + 1]));
  }
  ::alarm(static_cast<unsigned>(seconds + 60));  // no hang: SIGALRM ends the run
  const std::size_t fds_before = count_dir("/proc/self/fd");
  const std::size_t shm_before = count_dir("/dev/shm");
  stats& st = g_stats;
  const auto end = Clock::now() + std::chrono::seconds(seconds);
  unsigned seed = 12345;
  while (Clock::now() < end) {
    {
      pool_t pool(&work, workers);
      ++st.pools;
      std::atomic<bool> stop{false};
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t) ts.emplace_back(caller, std::ref(pool), seed++, std::cref(stop));
      // The killer: a random worker, at a random instant, every 2-50 ms.
      std::mt19937 rng(seed++);
      const auto pool_end = std::min(end, Clock::now() + 4s);
      while (Clock::now() < pool_end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2 + rng() % 49));
        const auto pids = pool.pids();
        if (pids.empty()) continue;
        ::kill(pids[rng() % pids.size()], SIGKILL);
        ++st.kills;
      }
      stop.store(true);
      for (auto& t : ts) t.join();
    }
    if (!no_children()) violation("a child is left after a pool was destroyed");
  }
  if (count_dir("/proc/self/fd") != fds_before) violation("fds: " + std::to_string(fds_before) + " before, " + std::to_string(count_dir("/proc/self/fd")) + " after");
  if (count_dir("/dev/shm") != shm_before) violation("/dev/shm entries changed");
  if (st.blamed.load() > st.kills.load())
    violation(std::to_string(st.blamed.load()) + " items blamed for " +
              std::to_string(st.kills.load()) + " kills: a death failed more than its item");
  std::printf("soak: %d s, %ld pools, %ld calls, %ld items, %ld kills, %ld items blamed, "
              "%ld lost after repeated deaths, %ld violations\n",
              seconds, st.pools.load(), st.calls.load(), st.items.load(), st.kills.load(),
              st.blamed.load(), st.orphaned.load(), g_violations.load());
  return g_violations.load() == 0 ? 0 : 1;
}
