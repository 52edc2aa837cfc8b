// procpool benchmarks: a deliberately plain std::thread pool, the in-process
// BASELINE that procpool is compared with. One mutex-guarded FIFO of
// std::function tasks, one condition variable, std::packaged_task futures.
// It shares memory with its caller, so nothing is copied or serialized: it is
// the upper bound a process pool can approach, not a competitor.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace bench {

class thread_pool {
 public:
  explicit thread_pool(std::size_t threads) {
    threads_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~thread_pool() {
    {
      std::lock_guard lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  std::size_t size() const noexcept { return threads_.size(); }

  /// Runs fn() on a pool thread; the future holds its result.
  template <class Fn>
  auto submit(Fn fn) -> std::future<std::invoke_result_t<Fn&>> {
    using R = std::invoke_result_t<Fn&>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(fn));
    auto fut = task->get_future();
    {
      std::lock_guard lk(m_);
      q_.emplace_back([task] { (*task)(); });
    }
    cv_.notify_one();
    return fut;
  }

  /// f over every item, in order, in chunks of @p chunksize items (0: Python's
  /// rule, len / (4 * threads) rounded up, the same rule procpool uses).
  template <class F, class T>
  auto map(F f, const std::vector<T>& in, std::size_t chunksize = 0) {
    using R = std::invoke_result_t<F&, const T&>;
    std::vector<R> out(in.size());
    if (chunksize == 0) {
      const std::size_t per = 4 * size();
      chunksize = std::max<std::size_t>(1, (in.size() + per - 1) / per);
    }
    std::vector<std::future<void>> futs;
    for (std::size_t b = 0; b < in.size(); b += chunksize) {
      const std::size_t e = std::min(in.size(), b + chunksize);
      futs.push_back(submit([&, b, e] {
        for (std::size_t i = b; i < e; ++i) out[i] = f(in[i]);
      }));
    }
    for (auto& fu : futs) fu.get();
    return out;
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lk(m_);
        cv_.wait(lk, [this] { return stop_ || !q_.empty(); });
        if (q_.empty()) return;  // stop_ and nothing left
        job = std::move(q_.front());
        q_.pop_front();
      }
      job();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace bench
