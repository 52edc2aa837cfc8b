// Ping-pong over a Pipe between the main process and a child: the child
// answers each number with the next one. Then the child is killed, and the
// main process's recv ends with eof_error instead of waiting for ever.
//
//   $ ./pipe_ping_pong
//   10000 round trips, the last answer 10000
//   after the child was killed: recv threw eof_error
#include <procpool/procpool.hpp>

#include <csignal>
#include <cstdio>

#include <unistd.h>

int main() {
  auto [mine, childs] = procpool::Pipe<int>();
  procpool::Process child([&childs = childs] {
    for (;;) childs.send(childs.recv() + 1);
  });
  child.start();
  int last = 0;
  for (int i = 0; i < 10000; ++i) {
    mine.send(i);
    last = mine.recv();
  }
  std::printf("10000 round trips, the last answer %d\n", last);
  child.kill();
  child.join();
  try {
    static_cast<void>(mine.recv());
    std::printf("after the child was killed: recv returned\n");
    return 1;
  } catch (const procpool::eof_error&) {
    std::printf("after the child was killed: recv threw eof_error\n");
  }
  return last == 10000 ? 0 : 1;
}
