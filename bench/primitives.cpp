// The shared primitives' costs, one line of CSV each: workload,peer,ns,ns.
// Peers: procpool's Lock, a process-shared robust pthread mutex is what it is;
// std::mutex (threads only, the floor); boost::interprocess::interprocess_mutex
// in shared memory (not robust in Boost 1.74). Python's are in primitives.py.
// Each figure is the best of 7 runs of 1,000,000 operations, in one process,
// uncontended: the cost a caller pays when nobody else holds the lock.
#include <procpool/procpool.hpp>

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <new>

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
  {
    procpool::Event e;
    emit("event_set_is_set", "procpool", best_ns_per_op([&] {
           e.set();
           static_cast<void>(e.is_set());
         }));
  }
}
