// The shared primitives' costs, one line of CSV each: workload,peer,ns,ns.
// Peers: procpool's Lock, a process-shared robust pthread mutex is what it is;
// std::mutex (threads only, the floor); boost::interprocess::interprocess_mutex
// in shared memory (not robust in Boost 1.74). Python's are in primitives.py.
// The lock figures are the best of 7 runs of 1,000,000 operations, in one
// process, uncontended: the cost a caller pays when nobody else holds the
// lock. The Queue figures move items from a forked producer to the parent
// through a fresh Queue with default options: the whole run, fork to join,
// once (cold) and the best of 5 (warm).
#include <procpool/procpool.hpp>

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

constexpr int ops = 1'000'000;

template <class Fn>
double best_ns_per_op(Fn fn) {
  double best = 1e300;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < ops; ++i) fn();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / ops);
  }
  return best;
}

void emit(const char* workload, const char* peer, double ns) {
  std::printf("%s,%s,%.2f,ns\n", workload, peer, ns);
}

}  // namespace

/// Seconds to move @p n items made by @p make from a forked producer to this
/// process through a fresh Queue.
template <class T, class Make>
double queue_run(int n, Make make) {
  const auto t0 = std::chrono::steady_clock::now();
  procpool::Queue<T> q;
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (int i = 0; i < n; ++i) q.put(make(i));
    ::_exit(0);
  }
  std::size_t got = 0;
  for (int i = 0; i < n; ++i) {
    const T v = q.get();
    got += sizeof v;
  }
  ::waitpid(pid, nullptr, 0);
  if (got == 0) std::printf("#impossible\n");
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <class T, class Make>
void queue_figures(const char* workload, int n, Make make) {
  const double cold = queue_run<T>(n, make);
  double warm = 1e300;
  for (int r = 0; r < 5; ++r) warm = std::min(warm, queue_run<T>(n, make));
  std::printf("%s/cold,procpool,%.6g,s\n%s/warm,procpool,%.6g,s\n", workload, cold, workload, warm);
}

/// Seconds to memcpy @p n MiB, as bench.cpp's (c) measures it: one 256 MiB
/// copy into memory already touched, the ceiling of any copy-based transport.
double memcpy_run(int n) {
  std::vector<char> a(std::size_t{256} << 20, 'a'), b(a.size(), 'b');
  double best = 1e300;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), a.size());
    asm volatile("" : : "r"(b.data()) : "memory");
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * n / 256.0;
}

int main() {
  {
    procpool::Lock lock;
    emit("lock", "procpool", best_ns_per_op([&] {
           lock.acquire();
           lock.release();
         }));
    std::mutex m;
    emit("lock", "std::mutex", best_ns_per_op([&] {
           m.lock();
           m.unlock();
         }));
    auto region = boost::interprocess::anonymous_shared_memory(4096);
    auto* bm = new (region.get_address()) boost::interprocess::interprocess_mutex;
    emit("lock", "boost", best_ns_per_op([&] {
           bm->lock();
           bm->unlock();
         }));
  }
  {
    procpool::Value<long> v(0);
    emit("value_locked_add", "procpool", best_ns_per_op([&] {
           std::lock_guard g(v.get_lock());
           v.set(v.get() + 1);
         }));
    emit("value_atomic_add", "procpool", best_ns_per_op([&] { v.atomic().fetch_add(1); }));
  }
  {  // Pipe round trip of one int, with a forked echo: median of 20,000
    auto [mine, theirs] = procpool::Pipe<int>();
    const pid_t pid = ::fork();
    if (pid == 0) {
      for (;;) {
        const int x = theirs.recv();
        if (x < 0) ::_exit(0);
        theirs.send(x + 1);
      }
    }
    std::vector<double> t;
    for (int i = 0; i < 20000; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      mine.send(i);
      if (mine.recv() != i + 1) std::printf("#wrong answer\n");
      t.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
    }
    mine.send(-1);
    ::waitpid(pid, nullptr, 0);
    std::sort(t.begin(), t.end());
    emit("pipe_rtt", "procpool", t[t.size() / 2]);
  }
  queue_figures<int>("queue_ints", 1'000'000, [](int i) { return i; });
  const std::vector<char> mib(std::size_t{1} << 20, 'm');
  queue_figures<std::vector<char>>("queue_1mib", 1000, [&](int) -> const std::vector<char>& { return mib; });
  std::printf("queue_1mib/warm,memcpy,%.6g,s\n", memcpy_run(1000));
  {
    procpool::Event e;
    emit("event_set_is_set", "procpool", best_ns_per_op([&] {
           e.set();
           static_cast<void>(e.is_set());
         }));
  }
}
