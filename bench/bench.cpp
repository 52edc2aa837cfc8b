// procpool benchmarks, C++ side: procpool, a std::thread pool baseline
// (thread_pool.hpp), a boost::interprocess::message_queue process pool
// (mq_pool.hpp), serial code and memcpy, on the same work as python_peers.py.
// Every peer calls the same out-of-line work functions (work.cpp).
//
//   procpool_bench SECTION [--workers N] [--iters20 N]
//
// SECTION is one of: calibrate, a, b, c, d (also does f), e. Each section is
// meant to run in its own process (bench/run.sh does so), so that one
// section's memory does not make another's fork()s slower.
//
// Sections a to d measure each workload twice, by the same rule for every peer:
//   cold: what a new user runs. A fresh pool with default options, one call,
//         timed from the pool's construction to its destruction; the median
//         of a few samples, each in a child process forked for it;
//   warm: one pool kept across calls; the best of N calls.
//
// Output: CSV on stdout, one measurement a line: workload,peer,value,unit.
// Lines starting with '#' are information (calibration, sample counts, the
// items each procpool worker ran).
#include <procpool/procpool.hpp>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mq_pool.hpp"
#include "thread_pool.hpp"
#include "work.hpp"

namespace {

using clk = std::chrono::steady_clock;

double seconds(clk::duration d) { return std::chrono::duration<double>(d).count(); }

template <class Fn>
double time_s(Fn&& fn) {
  const auto t0 = clk::now();
  fn();
  return seconds(clk::now() - t0);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  std::size_t k = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::clamp<std::size_t>(k, 1, v.size()) - 1];
}

/// Best (shortest) wall time of @p reps runs of fn, after one untimed warm-up
/// run when @p warm. The best run is the one least disturbed by whatever else
/// the machine runs; every peer's warm figure is timed by this same rule.
template <class Fn>
double best_time(int reps, Fn&& fn, bool warm = true) {
  if (warm) fn();
  double best = 1e300;
  for (int i = 0; i < reps; ++i) best = std::min(best, time_s(fn));
  return best;
}

void emit(const std::string& workload, const char* peer, double value, const char* unit) {
  std::printf("%s,%s,%.6g,%s\n", workload.c_str(), peer, value, unit);
  std::fflush(stdout);
}

/// Throws (so that every pool is destroyed and every queue removed) on a wrong result.
void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("wrong result in ") + what);
}

std::size_t g_workers = 2;

// ------------------------------------------------------------------ cold runs

// Samples of a cold figure: more for the short workloads, which vary more.
constexpr int cold_short = 5;
constexpr int cold_long = 3;  // the ~1 s CPU-bound workloads of (d)

/// Wall time of one cold run, in a child forked for it. @p run builds its
/// pool, makes one call and destroys the pool, all of it timed, and returns
/// the call's result, which @p ok checks untimed. The children fork from a
/// process that has run no pool of the section yet, so every sample of every
/// peer starts alike, as a new user's program does: no workers, and no
/// allocator holding memory that an earlier run faulted in.
template <class Run, class Ok>
double cold_once(const std::string& what, Run& run, Ok& ok) {
  std::fflush(stdout);  // the child must not write this process's buffered output
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid == -1) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    double t = -1;  // -1: the run failed or its result was wrong
    try {
      const auto t0 = clk::now();
      const auto r = run();
      t = seconds(clk::now() - t0);
      if (!ok(r)) t = -1;
    } catch (...) {
      t = -1;
    }
    const bool sent = ::write(fds[1], &t, sizeof t) == static_cast<ssize_t>(sizeof t);
    ::_exit(sent && t >= 0 ? 0 : 2);
  }
  ::close(fds[1]);
  double t = -1;
  const bool got = ::read(fds[0], &t, sizeof t) == static_cast<ssize_t>(sizeof t);
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  check(got && t >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, (what + " (cold)").c_str());
  return t;
}

/// Median wall time of @p samples cold runs (see cold_once).
template <class Run, class Ok>
double cold_median(const std::string& workload, const char* peer, int samples, Run run, Ok ok) {
  std::vector<double> t;
  for (int i = 0; i < samples; ++i) t.push_back(cold_once(workload + "/" + peer, run, ok));
  return median(t);
}

void note_cold(const std::string& workload, int samples) {
  std::printf("#cold_samples,%s,%d\n", workload.c_str(), samples);
}

/// multiprocessing.Pool.map's default chunksize: len / (4 * workers), rounded
/// up. The thread pool and procpool default to it too; the message_queue
/// pool, which has no default, is given it.
std::size_t python_chunk(std::size_t n, std::size_t workers) {
  const std::size_t per = 4 * workers;
  return std::max<std::size_t>(1, (n + per - 1) / per);
}

// ------------------------------------------------------------------ message_queue map

/// A message_queue pool that applies @p fn to every In of a message and
/// replies with the Outs: one message per chunk of @p chunk items.
template <class In, class Out, class Fn>
bench::mq_pool mq_map_pool(std::size_t workers, std::size_t chunk, Fn fn) {
  return bench::mq_pool(
      workers, chunk * sizeof(In), chunk * sizeof(Out), 4,
      [fn](std::uint32_t, const char* in, std::size_t len, std::vector<char>& out) {
        const std::size_t k = len / sizeof(In);
        const std::size_t at = out.size();
        out.resize(at + k * sizeof(Out));
        for (std::size_t i = 0; i < k; ++i) {
          In x;
          std::memcpy(&x, in + i * sizeof x, sizeof x);
          const Out y = fn(x);
          std::memcpy(out.data() + at + i * sizeof y, &y, sizeof y);
        }
      });
}

/// The message_queue pool's map: @p xs in chunks of @p chunk, results in order.
template <class Out, class In>
std::vector<Out> mq_map(bench::mq_pool& mq, const std::vector<In>& xs, std::size_t chunk) {
  std::vector<Out> r(xs.size());
  std::vector<std::future<void>> futs;
  for (std::size_t b = 0; b < xs.size(); b += chunk) {
    const std::size_t e = std::min(xs.size(), b + chunk);
    futs.push_back(mq.submit(1, xs.data() + b, (e - b) * sizeof(In),
                             [&r, b](const char* p, std::size_t len) {
                               std::memcpy(r.data() + b, p, len);
                             }));
  }
  for (auto& f : futs) f.get();
  return r;
}

// ------------------------------------------------------------------ (a) map over small ints

void section_a() {
  constexpr int n = 1'000'000;
  std::vector<int> xs(n);
  std::iota(xs.begin(), xs.end(), 0);
  const auto ok = [](const std::vector<std::int64_t>& r) {
    return r.size() == n && r[12345] == 12345LL * 12345 && r[n - 1] == std::int64_t{n - 1} * (n - 1);
  };
  // One lambda for procpool and the thread pool: each makes a direct call of
  // square() per item (a function pointer would cost procpool an indirect one).
  const auto sq = [](int x) { return bench::square(x); };
  // The message_queue pool's chunks: Python's rule, its best (a message costs
  // it more than a chunk costs procpool, so fewer, larger messages win).
  const std::size_t chunk = python_chunk(n, g_workers);

  const std::string cold = "a.map_ints.cold";
  note_cold(cold, cold_short);
  const auto emit_cold = [&](const char* peer, auto run) {
    emit(cold, peer, n / cold_median(cold, peer, cold_short, run, ok), "items/s");
  };
  emit_cold("procpool", [&] {
    procpool::Pool pool(sq, g_workers);
    return pool.map(xs);
  });
  emit_cold("threads", [&] {
    bench::thread_pool tp(g_workers);
    return tp.map(sq, xs);
  });
  emit_cold("mq", [&] {
    auto mq = mq_map_pool<int, std::int64_t>(g_workers, chunk, sq);
    return mq_map<std::int64_t>(mq, xs, chunk);
  });
  emit_cold("serial", [&] {  // into a fresh vector, as a map returns one
    std::vector<std::int64_t> r(n);
    for (int i = 0; i < n; ++i) r[i] = bench::square(xs[i]);
    return r;
  });

  {
    procpool::Pool pool(sq, g_workers);
    std::vector<std::int64_t> r;
    const double t = best_time(10, [&] { r = pool.map(xs); });
    check(ok(r), "a/procpool");
    emit("a.map_ints", "procpool", n / t, "items/s");
  }
  {
    bench::thread_pool tp(g_workers);
    std::vector<std::int64_t> r;
    const double t = best_time(10, [&] { r = tp.map(sq, xs); });
    check(ok(r), "a/threads");
    emit("a.map_ints", "threads", n / t, "items/s");
  }
  {
    auto mq = mq_map_pool<int, std::int64_t>(g_workers, chunk, sq);
    std::vector<std::int64_t> r;
    const double t = best_time(10, [&] { r = mq_map<std::int64_t>(mq, xs, chunk); });
    check(ok(r), "a/mq");
    emit("a.map_ints", "mq", n / t, "items/s");
  }
  {
    std::vector<std::int64_t> r(n);
    const double t = best_time(10, [&] {
      for (int i = 0; i < n; ++i) r[i] = bench::square(xs[i]);
      asm volatile("" : : "r"(r.data()) : "memory");
    });
    check(ok(r), "a/serial");
    emit("a.map_ints", "serial", n / t, "items/s");
  }
}

// ------------------------------------------------------------------ (b) round-trip latency

struct latency {
  double median_us, p99_us;
  std::size_t samples;
};

/// Times @p once (one round trip) up to @p max_n times or @p max_s seconds,
/// sleeping @p gap between round trips (0: back to back).
template <class Once>
latency measure_rtt(std::size_t max_n, double max_s, Once&& once,
                    std::chrono::microseconds gap = std::chrono::microseconds(0)) {
  for (int i = 0; i < 200; ++i) once(i);  // warm up
  std::vector<double> us;
  us.reserve(max_n);
  const auto start = clk::now();
  for (std::size_t i = 0; i < max_n; ++i) {
    if (gap.count()) std::this_thread::sleep_for(gap);
    const auto t0 = clk::now();
    once(static_cast<int>(i));
    const auto t1 = clk::now();
    us.push_back(seconds(t1 - t0) * 1e6);
    if (seconds(t1 - start) > max_s) break;
  }
  return {median(us), percentile(us, 0.99), us.size()};
}

// The three ways a warm round trip is timed, the same for every peer:
//   idle:  back to back on an otherwise idle pool (workers still spinning
//          from the previous task, if the pool spins);
//   sleep: on an idle pool, 1 ms after the previous one (workers asleep);
//   busy:  every 100 us while another thread keeps 4 tiny tasks in flight.
constexpr auto sleep_gap = std::chrono::microseconds(1000);
constexpr auto busy_gap = std::chrono::microseconds(100);

/// Keeps @p window tiny tasks in flight on another thread while @p probe runs;
/// returns the probe's latencies and the background rate.
template <class Submit, class Wait, class Once>
latency busy_rtt(std::size_t max_n, double max_s, Submit submit, Wait wait, Once once,
                 double& bg_rate) {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> done{0};
  std::thread bg([&] {
    using H = decltype(submit(0));
    std::deque<H> q;
    int i = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      q.push_back(submit(i++));
      if (q.size() >= 4) {
        wait(q.front());
        q.pop_front();
        done.fetch_add(1, std::memory_order_relaxed);
      }
    }
    while (!q.empty()) {
      wait(q.front());
      q.pop_front();
    }
  });
  // Let the stream get going before probing.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t0 = clk::now();
  const std::uint64_t d0 = done.load();
  latency l = measure_rtt(max_n, max_s, once, busy_gap);
  bg_rate = static_cast<double>(done.load() - d0) / seconds(clk::now() - t0);
  stop = true;
  bg.join();
  return l;
}

void emit_latency(const char* mode, const char* peer, const latency& l) {
  emit(std::string("b.") + mode + ".median", peer, l.median_us, "us");
  emit(std::string("b.") + mode + ".p99", peer, l.p99_us, "us");
  std::printf("#samples,b.%s,%s,%zu\n", mode, peer, l.samples);
}

/// tiny() for procpool and the thread pool (a direct call, as in (a)).
const auto tiny_fn = [](int x) { return bench::tiny(x); };

/// tiny() as a message_queue pool handler: one int in, one int out.
void tiny_handler(std::uint32_t, const char* in, std::size_t, std::vector<char>& out) {
  int x;
  std::memcpy(&x, in, sizeof x);
  const int y = bench::tiny(x);
  const std::size_t at = out.size();
  out.resize(at + sizeof y);
  std::memcpy(out.data() + at, &y, sizeof y);
}

/// One round trip of tiny(x) through a message_queue pool.
int mq_tiny(bench::mq_pool& mq, int x) {
  int y = 0;
  mq.submit(1, &x, sizeof x, [&y](const char* p, std::size_t) { std::memcpy(&y, p, sizeof y); })
      .get();
  return y;
}

void section_b() {
  constexpr std::size_t n_idle = 20000, n_sleep = 1000, n_busy = 5000;
  constexpr double max_s = 2.0;

  const std::string cold = "b.cold";
  note_cold(cold, cold_short);
  const auto ok = [](int y) { return y == 49; };
  const auto emit_cold = [&](const char* peer, auto run) {
    emit(cold, peer, 1e3 * cold_median(cold, peer, cold_short, run, ok), "ms");
  };
  emit_cold("procpool", [&] {
    procpool::Pool pool(tiny_fn, g_workers);
    return pool.apply_async(7).get();
  });
  emit_cold("threads", [&] {
    bench::thread_pool tp(g_workers);
    return tp.submit([] { return tiny_fn(7); }).get();
  });
  emit_cold("mq", [&] {
    bench::mq_pool mq(g_workers, sizeof(int), sizeof(int), 64, tiny_handler);
    return mq_tiny(mq, 7);
  });

  double rate = 0;
  {
    procpool::Pool pool(tiny_fn, g_workers);
    auto once = [&](int x) { check(pool.apply_async(x).get() == x * x, "b/procpool"); };
    emit_latency("idle", "procpool", measure_rtt(n_idle, max_s, once));
    emit_latency("sleep", "procpool", measure_rtt(n_sleep, max_s, once, sleep_gap));
    auto l = busy_rtt(
        n_busy, max_s, [&](int x) { return pool.apply_async(x); },
        [](auto& r) { r.get(); }, once, rate);
    emit_latency("busy", "procpool", l);
    emit("b.busy.bg_rate", "procpool", rate, "tasks/s");
  }
  {
    bench::thread_pool tp(g_workers);
    auto once = [&](int x) { check(tp.submit([x] { return tiny_fn(x); }).get() == x * x, "b/threads"); };
    emit_latency("idle", "threads", measure_rtt(n_idle, max_s, once));
    emit_latency("sleep", "threads", measure_rtt(n_sleep, max_s, once, sleep_gap));
    auto l = busy_rtt(
        n_busy, max_s, [&](int x) { return tp.submit([x] { return tiny_fn(x); }); },
        [](auto& f) { f.get(); }, once, rate);
    emit_latency("busy", "threads", l);
    emit("b.busy.bg_rate", "threads", rate, "tasks/s");
  }
  {
    bench::mq_pool mq(g_workers, sizeof(int), sizeof(int), 64, tiny_handler);
    auto once = [&](int x) { check(mq_tiny(mq, x) == x * x, "b/mq"); };
    emit_latency("idle", "mq", measure_rtt(n_idle, max_s, once));
    emit_latency("sleep", "mq", measure_rtt(n_sleep, max_s, once, sleep_gap));
    auto l = busy_rtt(
        n_busy, max_s,
        [&](int x) { return mq.submit(1, &x, sizeof x, {}); }, [](auto& f) { f.get(); }, once,
        rate);
    emit_latency("busy", "mq", l);
    emit("b.busy.bg_rate", "mq", rate, "tasks/s");
  }
}

// ------------------------------------------------------------------ (c) bandwidth

constexpr std::size_t MiB = std::size_t{1} << 20;

/// length() for procpool and the thread pool (a direct call, as in (a)).
const auto length_fn = [](const std::vector<char>& b) { return bench::length(b); };

/// length() as a message_queue pool handler: one buffer in, its length out.
void length_handler(std::uint32_t, const char* in, std::size_t len, std::vector<char>& out) {
  const std::uint64_t n = bench::length(in, len);
  const std::size_t at = out.size();
  out.resize(at + sizeof n);
  std::memcpy(out.data() + at, &n, sizeof n);
}

/// The message_queue pool's map over buffers: one message per buffer.
std::vector<std::uint64_t> mq_map_buffers(bench::mq_pool& mq, const std::vector<std::vector<char>>& bufs) {
  std::vector<std::uint64_t> r(bufs.size());
  std::vector<std::future<void>> futs;
  for (std::size_t i = 0; i < bufs.size(); ++i)
    futs.push_back(mq.submit(1, bufs[i].data(), bufs[i].size(),
                             [&r, i](const char* p, std::size_t) { std::memcpy(&r[i], p, 8); }));
  for (auto& f : futs) f.get();
  return r;
}

void section_c() {
  constexpr std::size_t count = 256;
  const double total = static_cast<double>(count * MiB);
  std::vector<std::vector<char>> bufs(count);
  for (std::size_t i = 0; i < count; ++i) bufs[i].assign(MiB, static_cast<char>(i));  // distinct
  const auto ok_map = [&](const std::vector<std::uint64_t>& r) {
    return r.size() == count && r.front() == MiB && r.back() == MiB;
  };

  // Cold before the 256 MiB buffer exists: the cold runs' processes hold the
  // map's input only, as a user's would.
  const std::string cold = "c.map_1MiB.cold";
  note_cold(cold, cold_short);
  const auto emit_cold = [&](const char* peer, auto run) {
    emit(cold, peer, total / cold_median(cold, peer, cold_short, run, ok_map) / 1e6, "MB/s");
  };
  emit_cold("procpool", [&] {
    procpool::Pool pool(length_fn, g_workers);
    return pool.map(bufs);
  });
  emit_cold("threads", [&] {
    bench::thread_pool tp(g_workers);
    return tp.map(length_fn, bufs);
  });
  emit_cold("mq", [&] {
    bench::mq_pool mq(g_workers, MiB, sizeof(std::uint64_t), 4, length_handler);
    return mq_map_buffers(mq, bufs);
  });

  std::vector<char> big(256 * MiB);
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i >> 12);
  {  // single-thread memcpy, the ceiling of any copy-based transport
    std::vector<char> dst(big.size());
    std::memset(dst.data(), 1, dst.size());
    const double t = best_time(5, [&] {
      std::memcpy(dst.data(), big.data(), big.size());
      asm volatile("" : : "r"(dst.data()) : "memory");
    });
    emit("c.memcpy", "memcpy", static_cast<double>(big.size()) / t / 1e6, "MB/s");
  }
  {
    procpool::Pool pool(length_fn, g_workers);
    std::vector<std::uint64_t> r;
    const double t = best_time(5, [&] { r = pool.map(bufs); });
    check(ok_map(r), "c/procpool map");
    emit("c.map_1MiB", "procpool", total / t / 1e6, "MB/s");
    std::uint64_t got = 0;
    const double t2 = best_time(3, [&] { got = pool.apply_async(big).get(); });
    check(got == big.size(), "c/procpool apply");
    emit("c.apply_256MiB", "procpool", static_cast<double>(big.size()) / t2 / 1e6, "MB/s");
  }
  {
    // Zero-copy: the thread shares the caller's memory. An upper bound, not a peer.
    bench::thread_pool tp(g_workers);
    std::vector<std::uint64_t> r;
    const double t = best_time(5, [&] { r = tp.map(length_fn, bufs); });
    check(ok_map(r), "c/threads map");
    emit("c.map_1MiB", "threads", total / t / 1e6, "MB/s");
    std::uint64_t got = 0;
    const double t2 = best_time(3, [&] { got = tp.submit([&] { return length_fn(big); }).get(); });
    check(got == big.size(), "c/threads apply");
    emit("c.apply_256MiB", "threads", static_cast<double>(big.size()) / t2 / 1e6, "MB/s");
  }
  {
    bench::mq_pool mq(g_workers, MiB, sizeof(std::uint64_t), 4, length_handler);
    std::vector<std::uint64_t> r;
    const double t = best_time(5, [&] { r = mq_map_buffers(mq, bufs); });
    check(ok_map(r), "c/mq map");
    emit("c.map_1MiB", "mq", total / t / 1e6, "MB/s");
  }
  {
    bench::mq_pool mq(g_workers, big.size(), sizeof(std::uint64_t), 1, length_handler);
    std::uint64_t got = 0;
    const double t2 = best_time(3, [&] {
      mq.submit(1, big.data(), big.size(), [&](const char* p, std::size_t) {
          std::memcpy(&got, p, sizeof got);
        }).get();
    });
    check(got == big.size(), "c/mq apply");
    emit("c.apply_256MiB", "mq", static_cast<double>(big.size()) / t2 / 1e6, "MB/s");
  }
}

// ------------------------------------------------------------------ (d) CPU-bound, (f) scaling

/// Iterations of burn() that take 20 ms, from the best of a few 100 ms runs.
std::uint64_t calibrate() {
  std::uint64_t iters = 1'000'000;
  double best = 1e9;
  for (int k = 0; k < 8; ++k) {
    volatile std::uint64_t sink = 0;
    const double t = time_s([&] { sink = bench::burn(iters); });
    (void)sink;
    if (t < 0.05) {
      iters *= 2;
      --k;
      continue;
    }
    best = std::min(best, t / static_cast<double>(iters));
  }
  return static_cast<std::uint64_t>(0.020 / best);
}

/// burn() for procpool and the thread pool (a direct call, as in (a)).
const auto burn_fn = [](std::uint64_t n) { return bench::burn(n); };

/// 40 equal tasks of 20 ms; a skewed mix with the same total, where the task
/// at position p has rank r = (17 p) mod 40 and costs 40 / (H_40 (r + 1))
/// units of 20 ms; and 10,000 tasks of 80 us (the same total).
std::vector<std::uint64_t> tasks_equal(std::uint64_t iters20) { return std::vector<std::uint64_t>(40, iters20); }
std::vector<std::uint64_t> tasks_skewed(std::uint64_t iters20) {
  double h = 0;
  for (int r = 1; r <= 40; ++r) h += 1.0 / r;
  std::vector<std::uint64_t> t(40);
  for (int p = 0; p < 40; ++p) {
    const int r = (17 * p) % 40;
    t[p] = static_cast<std::uint64_t>(static_cast<double>(iters20) * 40.0 / (h * (r + 1)));
  }
  return t;
}
std::vector<std::uint64_t> tasks_short(std::uint64_t iters20) {
  return std::vector<std::uint64_t>(10000, iters20 / 250);
}

/// The serial loop, into a fresh vector.
std::vector<std::uint64_t> serial(const std::vector<std::uint64_t>& tasks) {
  std::vector<std::uint64_t> r(tasks.size());
  for (std::size_t i = 0; i < tasks.size(); ++i) r[i] = bench::burn(tasks[i]);
  return r;
}

// One map of the tasks on each peer's pool, default options (see python_chunk).
auto map_procpool(auto& pool, const std::vector<std::uint64_t>& tasks) { return pool.map(tasks); }
auto map_threads(bench::thread_pool& tp, const std::vector<std::uint64_t>& tasks) {
  return tp.map(burn_fn, tasks);
}
bench::mq_pool mq_burn_pool(std::size_t workers, std::size_t n) {
  return mq_map_pool<std::uint64_t, std::uint64_t>(workers, python_chunk(n, workers), burn_fn);
}
auto map_mq(bench::mq_pool& mq, const std::vector<std::uint64_t>& tasks) {
  return mq_map<std::uint64_t>(mq, tasks, python_chunk(tasks.size(), mq.size()));
}

// Warm: one pool, the best of @p reps maps (no warm-up map: a 1 s map is its own).
double warm_procpool(const std::vector<std::uint64_t>& tasks, std::size_t workers, int reps,
                     const std::vector<std::uint64_t>& expect) {
  procpool::Pool pool(burn_fn, workers);
  std::vector<std::uint64_t> r;
  const double t = best_time(reps, [&] { r = map_procpool(pool, tasks); }, false);
  check(r == expect, "d/procpool");
  return t;
}

double warm_threads(const std::vector<std::uint64_t>& tasks, std::size_t workers, int reps,
                    const std::vector<std::uint64_t>& expect) {
  bench::thread_pool tp(workers);
  std::vector<std::uint64_t> r;
  const double t = best_time(reps, [&] { r = map_threads(tp, tasks); }, false);
  check(r == expect, "d/threads");
  return t;
}

double warm_mq(const std::vector<std::uint64_t>& tasks, std::size_t workers, int reps,
               const std::vector<std::uint64_t>& expect) {
  auto mq = mq_burn_pool(workers, tasks.size());
  std::vector<std::uint64_t> r;
  const double t = best_time(reps, [&] { r = map_mq(mq, tasks); }, false);
  check(r == expect, "d/mq");
  return t;
}

/// Untimed: how many items each worker of a fresh procpool pool with default
/// options runs, as '#items_per_worker,WORKLOAD,N1/N2/...'.
void items_per_worker(const std::string& workload, const std::vector<std::uint64_t>& tasks) {
  procpool::Pool pool(
      [](std::uint64_t n) {
        bench::burn(n);
        return static_cast<int>(::getpid());
      },
      g_workers);
  const std::vector<int> who = pool.map(tasks);
  std::map<int, std::size_t> count;
  for (int p : who) ++count[p];
  std::string counts;
  std::size_t total = 0;
  for (pid_t p : pool.pids()) {
    counts += (counts.empty() ? "" : "/") + std::to_string(count[p]);
    total += count[p];
  }
  check(total == tasks.size(), "d/items_per_worker");
  std::printf("#items_per_worker,%s,%s\n", workload.c_str(), counts.c_str());
}

void section_d(std::uint64_t iters20) {
  std::printf("#info,iters20,%llu\n", static_cast<unsigned long long>(iters20));
  std::printf("#info,iters80us,%llu\n", static_cast<unsigned long long>(iters20 / 250));
  struct workload {
    std::string key;
    std::vector<std::uint64_t> tasks, expect;
    double serial_warm = 0;
  };
  std::vector<workload> wls{{"d.equal", tasks_equal(iters20), {}},
                            {"d.skew", tasks_skewed(iters20), {}},
                            {"d.short", tasks_short(iters20), {}}};
  // The serial loop's warm figure first: it gives the results the others are
  // checked against, and runs no pool.
  for (auto& w : wls) {
    w.serial_warm = best_time(3, [&] { w.expect = serial(w.tasks); }, false);
    emit(w.key + ".time", "serial", w.serial_warm, "s");
  }
  // Cold: a fresh pool with default options, one map, construct to destroy.
  for (auto& w : wls) {
    const std::string key = w.key + ".cold";
    note_cold(key, cold_long);
    const auto ok = [&](const std::vector<std::uint64_t>& r) { return r == w.expect; };
    const double s = cold_median(key, "serial", cold_long, [&] { return serial(w.tasks); }, ok);
    emit(key + ".time", "serial", s, "s");
    const auto emit_cold = [&](const char* peer, auto run) {
      const double t = cold_median(key, peer, cold_long, run, ok);
      emit(key + ".time", peer, t, "s");
      emit(key, peer, s / t, "x serial");
    };
    emit_cold("procpool", [&] {
      procpool::Pool pool(burn_fn, g_workers);
      return map_procpool(pool, w.tasks);
    });
    emit_cold("threads", [&] {
      bench::thread_pool tp(g_workers);
      return map_threads(tp, w.tasks);
    });
    emit_cold("mq", [&] {
      auto mq = mq_burn_pool(g_workers, w.tasks.size());
      return map_mq(mq, w.tasks);
    });
    items_per_worker(w.key, w.tasks);
  }
  // Warm: one pool, the best of 3 maps.
  struct peer {
    const char* name;
    double (*run)(const std::vector<std::uint64_t>&, std::size_t, int,
                  const std::vector<std::uint64_t>&);
  };
  const peer peers[] = {{"procpool", warm_procpool}, {"threads", warm_threads}, {"mq", warm_mq}};
  for (const auto& w : wls)
    for (const auto& p : peers) {
      const double t = p.run(w.tasks, g_workers, 3, w.expect);
      emit(w.key + ".time", p.name, t, "s");
      emit(w.key, p.name, w.serial_warm / t, "x serial");
    }
  // (f) scaling of the equal workload, 1 to 2 x cores workers, warm.
  const std::size_t max_w = 2 * std::thread::hardware_concurrency();
  for (std::size_t n = 1; n <= max_w; ++n)
    for (const auto& p : peers) {
      const double t = p.run(wls[0].tasks, n, 2, wls[0].expect);
      emit("f.w" + std::to_string(n), p.name, wls[0].serial_warm / t, "x serial");
    }
}

// ------------------------------------------------------------------ (e) start + stop

void section_e() {
  constexpr int reps = 30;
  const std::vector<int> four{1, 2, 3, 4};
  auto run = [&](const char* w, const char* peer, auto body) {
    std::vector<double> ms;
    body();  // warm up (page faults, first fork)
    for (int i = 0; i < reps; ++i) ms.push_back(time_s(body) * 1e3);
    emit(std::string("e.") + w, peer, median(ms), "ms");
    std::printf("#p90,e.%s,%s,%.4g\n", w, peer, percentile(ms, 0.9));
  };
  run("ctor_dtor", "procpool", [&] { procpool::Pool pool(tiny_fn, 2); });
  run("ctor_map_close_join", "procpool", [&] {
    procpool::Pool pool(tiny_fn, 2);
    check(pool.map(four).back() == 16, "e/procpool");
    pool.close();
    pool.join();
  });
  run("ctor_dtor", "threads", [&] { bench::thread_pool tp(2); });
  run("ctor_map_close_join", "threads", [&] {
    bench::thread_pool tp(2);
    check(tp.map(tiny_fn, four).back() == 16, "e/threads");
  });
  run("ctor_dtor", "mq", [&] { bench::mq_pool mq(2, 64, 64, 16, tiny_handler); });
  run("ctor_map_close_join", "mq", [&] {
    bench::mq_pool mq(2, 64, 64, 16, tiny_handler);
    std::vector<int> r(4);
    std::vector<std::future<void>> futs;
    for (int i = 0; i < 4; ++i)
      futs.push_back(mq.submit(1, &four[i], sizeof(int), [&r, i](const char* p, std::size_t) {
        std::memcpy(&r[i], p, sizeof(int));
      }));
    for (auto& f : futs) f.get();
    check(r.back() == 16, "e/mq");
  });
}

int run(const std::string& section, int argc, char** argv) {
  std::uint64_t iters20 = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string opt = argv[i];
    if (opt == "--workers") g_workers = std::strtoul(argv[i + 1], nullptr, 10);
    else if (opt == "--iters20") iters20 = std::strtoull(argv[i + 1], nullptr, 10);
  }
  if (section == "calibrate") {
    std::printf("%llu\n", static_cast<unsigned long long>(calibrate()));
  } else if (section == "a") {
    section_a();
  } else if (section == "b") {
    section_b();
  } else if (section == "c") {
    section_c();
  } else if (section == "d") {
    section_d(iters20 ? iters20 : calibrate());
  } else if (section == "e") {
    section_e();
  } else {
    std::fprintf(stderr, "procpool_bench: unknown section %s\n", section.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s calibrate|a|b|c|d|e [--workers N] [--iters20 N]\n", argv[0]);
    return 1;
  }
  try {
    return run(argv[1], argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "procpool_bench: %s\n", e.what());
    return 2;
  }
}
