// procpool tests: pipes between a test and the children it forks.
#pragma once

#include <cerrno>
#include <chrono>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "common.hpp"

namespace procpool_test {

/// Writes all of @p s, retrying after EINTR; gives up on any other error.
inline void write_all(int fd, const std::string& s) noexcept {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n == -1 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

/// Reads until end of file (every write end closed).
inline std::string read_all(int fd) {
  std::string out;
  char buf[512];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == -1 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

/// The pids in a line of pids separated by spaces.
inline std::vector<pid_t> parse_pids(const std::string& line) {
  std::istringstream is(line);
  std::vector<pid_t> r;
  pid_t p;
  while (is >> p) r.push_back(p);
  return r;
}

/// A pipe (O_CLOEXEC) whose ends the destructor closes. Children forked
/// after it inherit both ends; each side closes the end it does not use.
class test_pipe {
 public:
  test_pipe() {
    if (::pipe2(fd_, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  }
  ~test_pipe() {
    close_read();
    close_write();
  }
  test_pipe(const test_pipe&) = delete;
  test_pipe& operator=(const test_pipe&) = delete;
  int read_fd() const { return fd_[0]; }
  int write_fd() const { return fd_[1]; }
  void close_read() {
    if (fd_[0] >= 0) ::close(std::exchange(fd_[0], -1));
  }
  void close_write() {
    if (fd_[1] >= 0) ::close(std::exchange(fd_[1], -1));
  }
  void set_nonblocking_read() { ::fcntl(fd_[0], F_SETFL, ::fcntl(fd_[0], F_GETFL) | O_NONBLOCK); }
  /// Reads one '\n'-terminated line within @p limit (after set_nonblocking_read());
  /// nullopt on timeout or end of file.
  std::optional<std::string> read_line(std::chrono::milliseconds limit) {
    std::string line;
    const auto t0 = Clock::now();
    while (Clock::now() - t0 < limit) {
      char c;
      const ssize_t n = ::read(fd_[0], &c, 1);
      if (n == 1) {
        if (c == '\n') return line;
        line += c;
      } else if (n == 0) {
        return std::nullopt;
      } else if (errno == EAGAIN) {
        sleep_ms(1);
      } else if (errno != EINTR) {
        return std::nullopt;
      }
    }
    return std::nullopt;
  }

 private:
  int fd_[2] = {-1, -1};
};

}  // namespace procpool_test
