// A pipeline of four processes joined by two Queues: a producer sends the
// numbers 1..100000, two workers square them, the main process adds the
// squares up. A worker stops at the end marker (0), one per worker.
//
//   $ ./queue_pipeline
//   sum of squares of 1..100000: 333338333350000 (expected 333338333350000)
//   worker 1 squared 51234 numbers, worker 2 squared 48766   (any split)
#include <procpool/procpool.hpp>

#include <cstdio>
#include <utility>

int main() {
  constexpr long n = 100000;
  procpool::Queue<long> numbers({.maxsize = 1000});  // a bounded stage: the producer waits
  procpool::Queue<std::pair<int, long>> squares;     // (worker, square)

  procpool::Process producer([&] {
    for (long i = 1; i <= n; ++i) numbers.put(i);
    numbers.put(0);
    numbers.put(0);
  });
  auto square = [&](int me) {
    for (long x; (x = numbers.get()) != 0;) squares.put({me, x * x});
    squares.put({me, 0});
  };
  procpool::Process worker1(square, 1), worker2(square, 2);
  producer.start();
  worker1.start();
  worker2.start();

  long sum = 0, by[3] = {0, 0, 0};
  for (int ended = 0; ended < 2;) {
    const auto [who, sq] = squares.get();
    if (sq == 0) {
      ++ended;
      continue;
    }
    sum += sq;
    ++by[who];
  }
  producer.join();
  worker1.join();
  worker2.join();
  const long expected = n * (n + 1) * (2 * n + 1) / 6;
  std::printf("sum of squares of 1..%ld: %ld (expected %ld)\n", n, sum, expected);
  std::printf("worker 1 squared %ld numbers, worker 2 squared %ld\n", by[1], by[2]);
  return sum == expected && by[1] + by[2] == n ? 0 : 1;
}
