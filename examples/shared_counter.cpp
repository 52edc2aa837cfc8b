// A counter in shared memory, incremented by four processes: first without
// its lock, where updates are lost (a read and the write after it are two
// steps another process can come between), then with it, where none is.
// Then a worker is killed while it holds the lock, and the others go on.
//
//   $ ./shared_counter
//   without the lock: 31337 of 400000 (the rest lost)   (any number up to 400000)
//   with the lock:    400000 of 400000
//   after a holder was killed: the next holder was told, and the count is 400001
#include <procpool/procpool.hpp>

#include <csignal>
#include <cstdio>
#include <mutex>
#include <vector>

#include <unistd.h>

constexpr int processes = 4;
constexpr long per_process = 100000;

/// Runs @p body in four processes at once and waits for them.
template <class Body>
void in_four_processes(Body body) {
  std::vector<procpool::Process<Body>> ps;
  for (int i = 0; i < processes; ++i) ps.emplace_back(body);
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();
}

int main() {
  procpool::Value<long> counter(0);
  in_four_processes([&] {
    for (long i = 0; i < per_process; ++i) counter.set(counter.get() + 1);  // two steps
  });
  const long total = processes * per_process;
  std::printf("without the lock: %ld of %ld (the rest lost)\n", counter.get(), total);

  counter.set(0);
  in_four_processes([&] {
    for (long i = 0; i < per_process; ++i) {
      std::lock_guard hold(counter.get_lock());  // the read and the write as one step
      counter.set(counter.get() + 1);
    }
  });
  std::printf("with the lock:    %ld of %ld\n", counter.get(), total);

  // A holder killed with the lock held: the lock is not left locked.
  procpool::Process killed([&] {
    counter.get_lock().acquire();
    ::kill(::getpid(), SIGKILL);
  });
  killed.start();
  killed.join();
  std::lock_guard hold(counter.get_lock());
  const bool told = counter.get_lock().holder_died();
  counter.set(counter.get() + 1);
  std::printf("after a holder was killed: the next holder was %s, and the count is %ld\n",
              told ? "told" : "NOT told", counter.get());
  return told && counter.get() == total + 1 ? 0 : 1;
}
