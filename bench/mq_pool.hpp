// procpool benchmarks: a process pool built the textbook way on
// boost::interprocess::message_queue, as a peer for procpool.
//
// - Two named queues in /dev/shm, "procpool_bench_mq_<pid>_<n>_{tasks,results}":
//   every worker receives from the one task queue and sends to the one result
//   queue. The names are unique per process and pool, any stale ones are
//   removed first, and both are removed when the pool is destroyed.
// - Workers are fork()ed after the queues exist and before any thread is
//   started, and run a handler (any callable, inherited through fork).
// - A message is a header {id, op} followed by the payload; one message per
//   task, so a queue's message size is the largest task (or result) it carries.
// - In the parent, one collector thread receives results and completes the
//   caller's std::promise, as Python's Pool does with its result-handler thread.
//   Callers on any thread may submit; send() blocks while the task queue is full.
#pragma once

#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/interprocess/ipc/message_queue.hpp>

namespace bench {

class mq_pool {
 public:
  struct header {
    std::uint64_t id;  // 0: control message (stop / bye)
    std::uint32_t op;  // what the handler should do; 0 with id 0: stop
    std::uint32_t pad;
  };
  /// Runs in a worker: reads @p n payload bytes at @p in, appends its answer
  /// to @p out (which already holds the reply header).
  using handler_fn =
      std::function<void(std::uint32_t op, const char* in, std::size_t n, std::vector<char>& out)>;
  /// Runs on the collector thread with the result payload.
  using sink_fn = std::function<void(const char* p, std::size_t n)>;

  mq_pool(std::size_t workers, std::size_t max_task_payload, std::size_t max_result_payload,
          std::size_t depth, handler_fn handler)
      : handler_(std::move(handler)) {
    static std::atomic<unsigned> counter{0};
    const std::string base = "procpool_bench_mq_" + std::to_string(::getpid()) + "_" +
                             std::to_string(counter.fetch_add(1));
    tasks_name_ = base + "_tasks";
    results_name_ = base + "_results";
    namespace bip = boost::interprocess;
    bip::message_queue::remove(tasks_name_.c_str());
    bip::message_queue::remove(results_name_.c_str());
    task_max_ = sizeof(header) + max_task_payload;
    result_max_ = sizeof(header) + max_result_payload;
    tasks_ = std::make_unique<bip::message_queue>(bip::create_only, tasks_name_.c_str(), depth,
                                                  task_max_);
    results_ = std::make_unique<bip::message_queue>(bip::create_only, results_name_.c_str(),
                                                    depth, result_max_);
    for (std::size_t i = 0; i < workers; ++i) {
      const pid_t pid = ::fork();
      if (pid == -1) throw std::runtime_error("mq_pool: fork failed");
      if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a parent that crashed
        worker_main();                       // never returns
      }
      pids_.push_back(pid);
    }
    collector_ = std::thread([this] { collect(); });
  }

  ~mq_pool() {
    const header stop{0, 0, 0};
    for (std::size_t i = 0; i < pids_.size(); ++i) tasks_->send(&stop, sizeof stop, 0);
    collector_.join();  // returns after every worker said bye
    for (pid_t p : pids_) {
      int st = 0;
      ::waitpid(p, &st, 0);
    }
    tasks_.reset();
    results_.reset();
    boost::interprocess::message_queue::remove(tasks_name_.c_str());
    boost::interprocess::message_queue::remove(results_name_.c_str());
  }
  mq_pool(const mq_pool&) = delete;
  mq_pool& operator=(const mq_pool&) = delete;

  std::size_t size() const noexcept { return pids_.size(); }
  const std::string& name() const noexcept { return tasks_name_; }

  /// Queues one task; @p sink sees its result payload, then the future is ready.
  std::future<void> submit(std::uint32_t op, const void* payload, std::size_t n, sink_fn sink) {
    thread_local std::vector<char> msg;
    std::promise<void> pr;
    auto fut = pr.get_future();
    std::uint64_t id;
    {
      std::lock_guard lk(m_);
      id = next_id_++;
      pending_.emplace(id, entry{std::move(sink), std::move(pr)});
    }
    const header h{id, op, 0};
    msg.resize(sizeof h + n);
    std::memcpy(msg.data(), &h, sizeof h);
    if (n) std::memcpy(msg.data() + sizeof h, payload, n);
    tasks_->send(msg.data(), msg.size(), 0);
    return fut;
  }

 private:
  struct entry {
    sink_fn sink;
    std::promise<void> done;
  };

  [[noreturn]] void worker_main() {
    std::unique_ptr<char[]> in(new char[task_max_]);
    std::vector<char> out;
    for (;;) {
      std::size_t got = 0;
      unsigned prio = 0;
      tasks_->receive(in.get(), task_max_, got, prio);
      header h;
      std::memcpy(&h, in.get(), sizeof h);
      if (h.id == 0) {  // stop: say bye and leave
        results_->send(&h, sizeof h, 0);
        ::_exit(0);
      }
      out.resize(sizeof h);
      std::memcpy(out.data(), &h, sizeof h);
      handler_(h.op, in.get() + sizeof h, got - sizeof h, out);
      results_->send(out.data(), out.size(), 0);
    }
  }

  void collect() {
    std::unique_ptr<char[]> buf(new char[result_max_]);
    std::size_t byes = 0;
    while (byes < pids_.size()) {
      std::size_t got = 0;
      unsigned prio = 0;
      results_->receive(buf.get(), result_max_, got, prio);
      header h;
      std::memcpy(&h, buf.get(), sizeof h);
      if (h.id == 0) {
        ++byes;
        continue;
      }
      entry e;
      {
        std::lock_guard lk(m_);
        auto it = pending_.find(h.id);
        e = std::move(it->second);
        pending_.erase(it);
      }
      if (e.sink) e.sink(buf.get() + sizeof h, got - sizeof h);
      e.done.set_value();
    }
  }

  handler_fn handler_;
  std::string tasks_name_, results_name_;
  std::size_t task_max_ = 0, result_max_ = 0;
  std::unique_ptr<boost::interprocess::message_queue> tasks_, results_;
  std::vector<pid_t> pids_;
  std::thread collector_;
  std::mutex m_;
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, entry> pending_;
};

}  // namespace bench
