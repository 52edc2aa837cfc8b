// Runs the bundled example programs and compares what they print with the
// seeds' expected output (shared/seeds/README.md), line by line, once with
// stdout to a pipe and once with stdout to a file (both fully buffered, so a
// line buffered before fork would show up twice if the library did not flush).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#ifndef PROCPOOL_EXAMPLES_DIR
#error "PROCPOOL_EXAMPLES_DIR must name the directory of the example binaries"
#endif

namespace {

struct Run {
  int status = -1;  // as returned by pclose / system
  std::vector<std::string> lines;
};

std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

std::string command_for(const std::string& example, const std::string& args) {
  std::string cmd = quoted(std::string(PROCPOOL_EXAMPLES_DIR) + "/" + example);
  if (!args.empty()) cmd += " " + args;
  return cmd;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  if (!text.empty() && text.back() != '\n') lines.push_back("<missing final newline>");
  return lines;
}

/// stdout to a pipe.
Run run_to_pipe(const std::string& example, const std::string& args = "") {
  Run run;
  std::fflush(nullptr);
  FILE* pipe = ::popen(command_for(example, args).c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string text;
  char buf[512];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) text.append(buf, n);
  run.status = ::pclose(pipe);
  run.lines = split_lines(text);
  return run;
}

/// stdout to a regular file.
Run run_to_file(const std::string& example, const std::string& args = "") {
  Run run;
  char path[] = "/tmp/procpool-example-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::fflush(nullptr);
  run.status = std::system((command_for(example, args) + " > " + quoted(path)).c_str());
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  ::unlink(path);
  run.lines = split_lines(text.str());
  return run;
}

bool exited_zero(int status) { return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

void check_worker(const Run& run) {
  CHECK(exited_zero(run.status));
  CHECK(run.lines == std::vector<std::string>{"Worker process executing.", "Main process completed."});
}

void check_four_processes(const Run& run) {
  CHECK(exited_zero(run.status));
  REQUIRE(run.lines.size() == 5);
  std::vector<std::string> first(run.lines.begin(), run.lines.begin() + 4);
  std::sort(first.begin(), first.end());
  CHECK(first == std::vector<std::string>{"Process 0 prints 0.", "Process 1 prints 1.",
                                          "Process 2 prints 2.", "Process 3 prints 3."});
  CHECK(run.lines.back() == "Main process completed.");
}

void check_four_processes_pids(const Run& run) {
  CHECK(exited_zero(run.status));
  REQUIRE(run.lines.size() == 4);
  const std::regex line_re(R"(Process ID: ([0-9]+) - Number: ([0-9]+))");
  std::set<std::string> pids;
  std::set<int> numbers;
  for (const auto& line : run.lines) {
    std::smatch m;
    INFO("line: " << line);
    REQUIRE(std::regex_match(line, m, line_re));
    pids.insert(m[1].str());
    numbers.insert(std::stoi(m[2].str()));
  }
  CHECK(pids.size() == 4);
  CHECK(numbers == std::set<int>{1, 2, 3, 4});
}

}  // namespace

TEST_CASE("example worker", "[examples]") {
  SECTION("stdout to a pipe") { check_worker(run_to_pipe("worker")); }
  SECTION("stdout to a file") { check_worker(run_to_file("worker")); }
}

TEST_CASE("example four_processes", "[examples]") {
  SECTION("stdout to a pipe") { check_four_processes(run_to_pipe("four_processes")); }
  SECTION("stdout to a file") { check_four_processes(run_to_file("four_processes")); }
}

TEST_CASE("example four_processes --pids", "[examples]") {
  SECTION("stdout to a pipe") { check_four_processes_pids(run_to_pipe("four_processes", "--pids")); }
  SECTION("stdout to a file") { check_four_processes_pids(run_to_file("four_processes", "--pids")); }
}

#ifdef PROCPOOL_HAVE_SQUARES
TEST_CASE("example squares", "[examples]") {
  const std::vector<std::string> expected{"[1, 4, 9, 16, 25]"};
  SECTION("stdout to a pipe") {
    const Run run = run_to_pipe("squares");
    CHECK(exited_zero(run.status));
    CHECK(run.lines == expected);
  }
  SECTION("stdout to a file") {
    const Run run = run_to_file("squares");
    CHECK(exited_zero(run.status));
    CHECK(run.lines == expected);
  }
}
#endif

TEST_CASE("example shared_counter", "[examples]") {
  const Run run = run_to_pipe("shared_counter");
  CHECK(exited_zero(run.status));
  REQUIRE(run.lines.size() == 3);
  CHECK(run.lines[0].rfind("without the lock: ", 0) == 0);
  CHECK(run.lines[1] == "with the lock:    400000 of 400000");
  CHECK(run.lines[2] ==
        "after a holder was killed: the next holder was told, and the count is 400001");
}

TEST_CASE("example queue_pipeline", "[examples]") {
  const Run run = run_to_pipe("queue_pipeline");
  CHECK(exited_zero(run.status));
  REQUIRE(run.lines.size() == 2);
  CHECK(run.lines[0] == "sum of squares of 1..100000: 333338333350000 (expected 333338333350000)");
  CHECK(run.lines[1].rfind("worker 1 squared ", 0) == 0);
}

TEST_CASE("example pipe_ping_pong", "[examples]") {
  const Run run = run_to_pipe("pipe_ping_pong");
  CHECK(exited_zero(run.status));
  const std::vector<std::string> expected{"10000 round trips, the last answer 10000",
                                          "after the child was killed: recv threw eof_error"};
  CHECK(run.lines == expected);
}

TEST_CASE("example barrier_stages", "[examples]") {
  const Run run = run_to_pipe("barrier_stages");
  CHECK(exited_zero(run.status));
  REQUIRE(run.lines.size() == 6);
  for (std::size_t i = 0; i < 6; ++i)
    CHECK(run.lines[i].find(i < 3 ? "stage 1 done" : "stage 2 done") != std::string::npos);
}
