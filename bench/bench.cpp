// procpool benchmarks, C++ side: procpool, a std::thread pool baseline
// (thread_pool.hpp), a boost::interprocess::message_queue process pool
// (mq_pool.hpp), serial code and memcpy, on the same work as python_peers.py.
//
//   procpool_bench SECTION [--workers N] [--iters25 N]
//
// SECTION is one of: calibrate, a, b, c, d (also does f), e. Each section is
// meant to run in its own process (bench/run.sh does so), so that one
// section's memory does not make another's fork()s slower.
//
// Output: CSV on stdout, one measurement a line: workload,peer,value,unit.
// Lines starting with '#' are information (calibration, sample counts).
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mq_pool.hpp"
#include "thread_pool.hpp"

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
/// the machine runs; every peer is timed by this same rule.
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

// ------------------------------------------------------------------ (a) map over small ints

std::int64_t square(int x) { return std::int64_t{x} * x; }

void section_a() {
  constexpr int n = 1'000'000;
  std::vector<int> xs(n);
  std::iota(xs.begin(), xs.end(), 0);
  const auto ok = [](const std::vector<std::int64_t>& r) {
    return r.size() == n && r[12345] == 12345LL * 12345 && r[n - 1] == std::int64_t{n - 1} * (n - 1);
  };
  {
    // The same lambda as the thread pool's below (a function pointer would
    // cost procpool an indirect call per item that the thread pool does not pay).
    procpool::Pool pool([](int x) { return square(x); }, g_workers);
    std::vector<std::int64_t> r;
    const double t = best_time(10, [&] { r = pool.map(xs); });
    check(ok(r), "a/procpool");
    emit("a.map_ints", "procpool", n / t, "items/s");
  }
  {
    bench::thread_pool tp(g_workers);
    std::vector<std::int64_t> r;
    const double t = best_time(10, [&] { r = tp.map([](int x) { return square(x); }, xs); });
    check(ok(r), "a/threads");
    emit("a.map_ints", "threads", n / t, "items/s");
  }
  {
    // Python's chunking rule, len / (4 * workers): this queue's best. With
    // procpool's 8,192-item chunks it ran 2-3x slower here (a message costs more).
    const std::size_t chunk = (n + 4 * g_workers - 1) / (4 * g_workers);
    bench::mq_pool mq(g_workers, chunk * sizeof(int), chunk * sizeof(std::int64_t), 4,
                      [](std::uint32_t, const char* in, std::size_t len, std::vector<char>& out) {
                        const std::size_t k = len / sizeof(int);
                        const std::size_t at = out.size();
                        out.resize(at + k * sizeof(std::int64_t));
                        for (std::size_t i = 0; i < k; ++i) {
                          int x;
                          std::memcpy(&x, in + i * sizeof x, sizeof x);
                          const std::int64_t y = square(x);
                          std::memcpy(out.data() + at + i * sizeof y, &y, sizeof y);
                        }
                      });
    std::vector<std::int64_t> r;
    const double t = best_time(10, [&] {
      r.assign(n, 0);
      std::vector<std::future<void>> futs;
      for (std::size_t b = 0; b < n; b += chunk) {
        const std::size_t e = std::min<std::size_t>(n, b + chunk);
        futs.push_back(mq.submit(1, xs.data() + b, (e - b) * sizeof(int),
                                 [&r, b](const char* p, std::size_t len) {
                                   std::memcpy(r.data() + b, p, len);
                                 }));
      }
      for (auto& f : futs) f.get();
    });
    check(ok(r), "a/mq");
    emit("a.map_ints", "mq", n / t, "items/s");
  }
  {
    std::vector<std::int64_t> r(n);
    const double t = best_time(10, [&] {
      for (int i = 0; i < n; ++i) r[i] = square(xs[i]);
      asm volatile("" : : "r"(r.data()) : "memory");
    });
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

// The three ways a round trip is timed, the same for every peer:
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

int tiny(int x) { return x * x; }

/// tiny() as a message_queue pool handler: one int in, one int out.
void tiny_handler(std::uint32_t, const char* in, std::size_t, std::vector<char>& out) {
  int x;
  std::memcpy(&x, in, sizeof x);
  const int y = tiny(x);
  const std::size_t at = out.size();
  out.resize(at + sizeof y);
  std::memcpy(out.data() + at, &y, sizeof y);
}

void section_b() {
  constexpr std::size_t n_idle = 20000, n_sleep = 1000, n_busy = 5000;
  constexpr double max_s = 2.0;
  double rate = 0;
  {
    procpool::Pool pool(tiny, g_workers);
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
    auto once = [&](int x) { check(tp.submit([x] { return tiny(x); }).get() == x * x, "b/threads"); };
    emit_latency("idle", "threads", measure_rtt(n_idle, max_s, once));
    emit_latency("sleep", "threads", measure_rtt(n_sleep, max_s, once, sleep_gap));
    auto l = busy_rtt(
        n_busy, max_s, [&](int x) { return tp.submit([x] { return tiny(x); }); },
        [](auto& f) { f.get(); }, once, rate);
    emit_latency("busy", "threads", l);
    emit("b.busy.bg_rate", "threads", rate, "tasks/s");
  }
  {
    bench::mq_pool mq(g_workers, sizeof(int), sizeof(int), 64, tiny_handler);
    auto call = [&](int x, int* result) {
      return mq.submit(1, &x, sizeof x, [result](const char* p, std::size_t) {
        if (result) std::memcpy(result, p, sizeof *result);
      });
    };
    auto once = [&](int x) {
      int y = 0;
      call(x, &y).get();
      check(y == x * x, "b/mq");
    };
    emit_latency("idle", "mq", measure_rtt(n_idle, max_s, once));
    emit_latency("sleep", "mq", measure_rtt(n_sleep, max_s, once, sleep_gap));
    auto l = busy_rtt(
        n_busy, max_s, [&](int x) { return call(x, nullptr); }, [](auto& f) { f.get(); }, once,
        rate);
    emit_latency("busy", "mq", l);
    emit("b.busy.bg_rate", "mq", rate, "tasks/s");
  }
}

// ------------------------------------------------------------------ (c) bandwidth

constexpr std::size_t MiB = std::size_t{1} << 20;

std::uint64_t length(const std::vector<char>& b) { return b.size(); }

void section_c() {
  constexpr std::size_t count = 256;
  const double total = static_cast<double>(count * MiB);
  std::vector<std::vector<char>> bufs(count);
  for (std::size_t i = 0; i < count; ++i) bufs[i].assign(MiB, static_cast<char>(i));  // distinct
  std::vector<char> big(256 * MiB);
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i >> 12);
  const auto ok_map = [&](const std::vector<std::uint64_t>& r) {
    return r.size() == count && r.front() == MiB && r.back() == MiB;
  };

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
    procpool::Pool pool(length, g_workers);
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
    const double t = best_time(5, [&] { r = tp.map(length, bufs); });
    check(ok_map(r), "c/threads map");
    emit("c.map_1MiB", "threads", total / t / 1e6, "MB/s");
    std::uint64_t got = 0;
    const double t2 = best_time(3, [&] { got = tp.submit([&] { return length(big); }).get(); });
    check(got == big.size(), "c/threads apply");
    emit("c.apply_256MiB", "threads", static_cast<double>(big.size()) / t2 / 1e6, "MB/s");
  }
  const auto mq_handler = [](std::uint32_t, const char*, std::size_t len, std::vector<char>& out) {
    const std::uint64_t n = len;  // f(buffer) = its length
    const std::size_t at = out.size();
    out.resize(at + sizeof n);
    std::memcpy(out.data() + at, &n, sizeof n);
  };
  {
    bench::mq_pool mq(g_workers, MiB, sizeof(std::uint64_t), 4, mq_handler);
    std::vector<std::uint64_t> r;
    const double t = best_time(5, [&] {
      r.assign(count, 0);
      std::vector<std::future<void>> futs;
      for (std::size_t i = 0; i < count; ++i)
        futs.push_back(mq.submit(1, bufs[i].data(), bufs[i].size(),
                                 [&r, i](const char* p, std::size_t) { std::memcpy(&r[i], p, 8); }));
      for (auto& f : futs) f.get();
    });
    check(ok_map(r), "c/mq map");
    emit("c.map_1MiB", "mq", total / t / 1e6, "MB/s");
  }
  {
    bench::mq_pool mq(g_workers, big.size(), sizeof(std::uint64_t), 1, mq_handler);
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

/// ~25 ms of dependent integer arithmetic for iters25 iterations.
std::uint64_t burn(std::uint64_t iters) {
  std::uint64_t x = iters;
  for (std::uint64_t i = 0; i < iters; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    x ^= x >> 29;
  }
  return x;
}

std::uint64_t calibrate() {
  // Iterations per second from the best of a few 100 ms runs.
  std::uint64_t iters = 1'000'000;
  double best = 1e9;
  for (int k = 0; k < 8; ++k) {
    volatile std::uint64_t sink = 0;
    const double t = time_s([&] { sink = burn(iters); });
    (void)sink;
    if (t < 0.05) {
      iters *= 2;
      --k;
      continue;
    }
    best = std::min(best, t / static_cast<double>(iters));
  }
  return static_cast<std::uint64_t>(0.025 / best);
}

/// 40 equal tasks of iters25, and a skewed mix with the same total: the task
/// at position p has rank r = (17 p) mod 40 and costs 40 / (H_40 (r + 1)) units.
std::vector<std::uint64_t> tasks_equal(std::uint64_t iters25) { return std::vector<std::uint64_t>(40, iters25); }
std::vector<std::uint64_t> tasks_skewed(std::uint64_t iters25) {
  double h = 0;
  for (int r = 1; r <= 40; ++r) h += 1.0 / r;
  std::vector<std::uint64_t> t(40);
  for (int p = 0; p < 40; ++p) {
    const int r = (17 * p) % 40;
    t[p] = static_cast<std::uint64_t>(static_cast<double>(iters25) * 40.0 / (h * (r + 1)));
  }
  return t;
}

std::vector<std::uint64_t> serial(const std::vector<std::uint64_t>& tasks) {
  std::vector<std::uint64_t> r(tasks.size());
  for (std::size_t i = 0; i < tasks.size(); ++i) r[i] = burn(tasks[i]);
  return r;
}

double run_procpool(const std::vector<std::uint64_t>& tasks, std::size_t workers, int reps,
                    const std::vector<std::uint64_t>& expect) {
  procpool::Pool pool(burn, workers);
  std::vector<std::uint64_t> r;
  const double t = best_time(reps, [&] { r = pool.map(tasks, {.chunksize = 1}); }, false);
  check(r == expect, "d/procpool");
  return t;
}

double run_threads(const std::vector<std::uint64_t>& tasks, std::size_t workers, int reps,
                   const std::vector<std::uint64_t>& expect) {
  bench::thread_pool tp(workers);
  std::vector<std::uint64_t> r;
  const double t = best_time(reps, [&] { r = tp.map(burn, tasks, 1); }, false);
  check(r == expect, "d/threads");
  return t;
}

double run_mq(const std::vector<std::uint64_t>& tasks, std::size_t workers, int reps,
              const std::vector<std::uint64_t>& expect) {
  bench::mq_pool mq(workers, 8, 8, 64,
                    [](std::uint32_t, const char* in, std::size_t, std::vector<char>& out) {
                      std::uint64_t it;
                      std::memcpy(&it, in, 8);
                      const std::uint64_t y = burn(it);
                      const std::size_t at = out.size();
                      out.resize(at + 8);
                      std::memcpy(out.data() + at, &y, 8);
                    });
  std::vector<std::uint64_t> r;
  const double t = best_time(reps, [&] {
    r.assign(tasks.size(), 0);
    std::vector<std::future<void>> futs;
    for (std::size_t i = 0; i < tasks.size(); ++i)
      futs.push_back(mq.submit(1, &tasks[i], 8, [&r, i](const char* p, std::size_t) {
        std::memcpy(&r[i], p, 8);
      }));
    for (auto& f : futs) f.get();
  }, false);
  check(r == expect, "d/mq");
  return t;
}

void section_d(std::uint64_t iters25) {
  std::printf("#info,iters25,%llu\n", static_cast<unsigned long long>(iters25));
  const auto eq = tasks_equal(iters25), sk = tasks_skewed(iters25);
  std::vector<std::uint64_t> eq_r, sk_r;
  const double s_eq = best_time(3, [&] { eq_r = serial(eq); }, false);
  const double s_sk = best_time(3, [&] { sk_r = serial(sk); }, false);
  emit("d.equal.time", "serial", s_eq, "s");
  emit("d.skew.time", "serial", s_sk, "s");
  struct peer {
    const char* name;
    double (*run)(const std::vector<std::uint64_t>&, std::size_t, int,
                  const std::vector<std::uint64_t>&);
  };
  const peer peers[] = {{"procpool", run_procpool}, {"threads", run_threads}, {"mq", run_mq}};
  for (const auto& p : peers) {
    const double t_eq = p.run(eq, g_workers, 3, eq_r);
    const double t_sk = p.run(sk, g_workers, 3, sk_r);
    emit("d.equal.time", p.name, t_eq, "s");
    emit("d.equal", p.name, s_eq / t_eq, "x serial");
    emit("d.skew.time", p.name, t_sk, "s");
    emit("d.skew", p.name, s_sk / t_sk, "x serial");
  }
  // (f) scaling of the equal workload, 1 to 2 x cores workers.
  const std::size_t max_w = 2 * std::thread::hardware_concurrency();
  for (std::size_t w = 1; w <= max_w; ++w)
    for (const auto& p : peers) {
      const double t = p.run(eq, w, 2, eq_r);
      emit("f.w" + std::to_string(w), p.name, s_eq / t, "x serial");
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
  run("ctor_dtor", "procpool", [&] { procpool::Pool pool(tiny, 2); });
  run("ctor_map_close_join", "procpool", [&] {
    procpool::Pool pool(tiny, 2);
    check(pool.map(four).back() == 16, "e/procpool");
    pool.close();
    pool.join();
  });
  run("ctor_dtor", "threads", [&] { bench::thread_pool tp(2); });
  run("ctor_map_close_join", "threads", [&] {
    bench::thread_pool tp(2);
    check(tp.map(tiny, four).back() == 16, "e/threads");
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
  std::uint64_t iters25 = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string opt = argv[i];
    if (opt == "--workers") g_workers = std::strtoul(argv[i + 1], nullptr, 10);
    else if (opt == "--iters25") iters25 = std::strtoull(argv[i + 1], nullptr, 10);
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
    section_d(iters25 ? iters25 : calibrate());
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
    std::fprintf(stderr, "usage: %s calibrate|a|b|c|d|e [--workers N] [--iters25 N]\n", argv[0]);
    return 1;
  }
  try {
    return run(argv[1], argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "procpool_bench: %s\n", e.what());
    return 2;
  }
}
