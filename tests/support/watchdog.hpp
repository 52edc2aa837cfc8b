// procpool tests: the one way a test bounds a hang of its own (besides ctest's
// TIMEOUT): a watchdog that ends the process with a message.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

namespace procpool_test {

/// Ends the whole test process with exit code 124 and a message if it is
/// still alive @p limit after construction; the workers follow through their
/// death signal. Declare it first in a test, so that it also bounds the
/// destructors of everything after it.
class watchdog {
 public:
  explicit watchdog(std::chrono::seconds limit, const char* what = "test")
      : err_(::fcntl(2, F_DUPFD_CLOEXEC, 3)),  // stderr as it is now, even if redirected later
        t_([this, limit, what] {
          std::unique_lock lk(m_);
          started_ = true;
          cv_.notify_all();
          if (!cv_.wait_for(lk, limit, [this] { return done_; })) {
            char msg[160];
            const int n = std::snprintf(msg, sizeof msg,
                                        "\nWATCHDOG: %s did not finish within %llds; aborting\n",
                                        what, static_cast<long long>(limit.count()));
            if (n > 0) (void)!::write(err_, msg, static_cast<std::size_t>(n));
            std::_Exit(124);
          }
        }) {
    // Returns once the thread sleeps in wait_for: under clang 14's ASan a
    // thread still starting can hold an allocator lock, and a child forked
    // then blocks in its first free().
    std::unique_lock lk(m_);
    cv_.wait(lk, [this] { return started_; });
  }
  ~watchdog() {
    {
      std::lock_guard lk(m_);
      done_ = true;
    }
    cv_.notify_all();
    t_.join();
    ::close(err_);
  }
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

 private:
  int err_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  bool started_ = false;
  std::thread t_;  // last: started after the members it uses
};

}  // namespace procpool_test
