// Seed 000 "# 06": four processes, each printing its number.
//
//   $ ./four_processes
//   Process 0 prints 0.        (the four lines in any order)
//   ...
//   Main process completed.
//
// With --pids, seed 001 "Q6": numbers 1..4, each line naming the child's pid
// through current_process(). Each child prints its whole line with one call,
// so lines never interleave the way the Python seed's output did.
//
//   $ ./four_processes --pids
//   Process ID: 4242 - Number: 1
//   ...
#include <procpool/procpool.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

/// Function to be executed by each process.
void print_number(int number) { std::printf("Process %d prints %d.\n", number, number); }

void print_pid_and_number(int number) {
  std::printf("Process ID: %d - Number: %d\n", static_cast<int>(procpool::current_process().pid()),
              number);
}

int main(int argc, char** argv) {
  const bool pids = argc > 1 && std::strcmp(argv[1], "--pids") == 0;
  auto* fn = pids ? print_pid_and_number : print_number;
  const int first = pids ? 1 : 0;

  std::vector<procpool::Process<void (*)(int), int>> processes;
  for (int i = first; i < first + 4; ++i) processes.emplace_back(fn, i);
  for (auto& process : processes) process.start();
  for (auto& process : processes) process.join();

  if (!pids) std::puts("Main process completed.");
}
