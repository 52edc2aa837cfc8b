// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// A serving rank's side of one pool: the handshake with rank 0, then a loop
// that takes chunks from rank 0, runs them in the rank's local pool of forked
// workers (procpool's own engine, so a task that crashes fails its item and
// nothing else), and sends their answers back. The rank holds at most as many
// chunks in its local pool as it has workers; the rest wait here, where rank 0
// can take them back for an idle rank.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../../detail/engine.hpp"
#include "../../detail/posix.hpp"
#include "../session.hpp"
#include "code_address.hpp"
#include "handshake.hpp"
#include "relay_job.hpp"
#include "transport.hpp"

namespace procpool::mpi::detail {

/// Serves pool @p serial of F @p fn_name with @p local until rank 0 closes or
/// terminates it. @throws usage_error when rank 0 opened another pool.
inline void serve(session& s, std::uint64_t serial, const std::string& fn_name,
                  procpool::detail::engine& local, std::size_t workers) {
  transport t(s.comm());
  accept_pool(t, s, serial, fn_name, workers);
  byte_buffer msg;
  int src = 0;
  backoff idle;
  idle.reset();  // rank 0's first chunks are on their way

  std::vector<byte_buffer> outbox;
  // However this ends, the local pool stops here, while the outbox its jobs
  // write to still exists.
  struct stop_local {
    procpool::detail::engine& e;
    ~stop_local() { e.terminate(); }
  } stop{local};
  std::deque<std::shared_ptr<relay_job>> waiting;  // not yet in the local pool
  std::vector<std::shared_ptr<relay_job>> running;  // in the local pool
  bool closing = false;
  std::int64_t last_said = procpool::detail::monotonic_ns();
  const auto reply = [&](kind k, std::uint64_t id) {
    byte_buffer m;
    begin_message(m, k, serial);
    m.append_value(id);
    seal(m);
    t.send(0, std::move(m));
    last_said = procpool::detail::monotonic_ns();
  };
  for (;;) {
    bool busy = false;
    // 1. What rank 0 sent.
    while (t.poll(src, msg, 0)) {
      busy = true;
      reader body(nullptr, 0);
      const message_header h = open_message(msg, body);
      if (h.pool != serial) {
        if (h.kind == static_cast<std::uint32_t>(kind::open)) {
          byte_buffer m;
          begin_message(m, kind::refused, h.pool);
          put_text(m, mismatch(s.rank(), "still serves pool number " + std::to_string(serial) +
                                             "; close() or destroy one pool before building the next"));
          seal(m);
          t.send(0, std::move(m));
        }
        continue;
      }
      switch (static_cast<kind>(h.kind)) {
        case kind::task: {
          const auto id = body.read_value<std::uint64_t>();
          const auto runner = body.read_value<std::int64_t>();
          const auto timeout_ns = body.read_value<std::int64_t>();
          const auto base = body.read_value<std::uint64_t>();
          const auto n = body.read_value<std::uint64_t>();
          const auto stride = body.read_value<std::uint32_t>();
          body.read_value<std::uint32_t>();
          std::vector<std::uint32_t> offsets;
          if (!stride) {
            offsets.resize(static_cast<std::size_t>(n));
            body.read(offsets.data(), offsets.size() * sizeof(std::uint32_t));
          }
          byte_buffer items;
          const std::size_t bytes = body.remaining();
          items.append(body.take(bytes), bytes);
          auto j = std::make_shared<relay_job>(serial, id, base, n, stride, std::move(offsets),
                                               std::move(items), outbox);
          j->runner = runner_at(runner);
          j->timeout_ns = timeout_ns;
          j->chunk_bytes = local.queue_capacity() / 2;
          waiting.push_back(std::move(j));
          break;
        }
        case kind::revoke: {
          const auto id = body.read_value<std::uint64_t>();
          const auto it = std::find_if(waiting.begin(), waiting.end(),
                                       [&](const auto& j) { return j->id() == id; });
          if (it != waiting.end()) {
            waiting.erase(it);
            reply(kind::revoked, id);
          } else {
            reply(kind::kept, id);
          }
          break;
        }
        case kind::close:
          closing = true;
          break;
        case kind::terminate:
          local.terminate();  // what ran fails here; rank 0 no longer listens
          reply(kind::bye, 0);
          t.flush();
          return;
        default:
          break;
      }
    }
    // 2. Into the local pool, one chunk per worker; what has finished leaves.
    std::erase_if(running, [&](const auto& j) { return local.locked([&] { return j->complete(); }); });
    while (running.size() < workers && !waiting.empty()) {
      auto j = std::move(waiting.front());
      waiting.pop_front();
      try {
        local.submit(j);
        running.push_back(std::move(j));
      } catch (...) {
        j->abort(std::current_exception());  // the initializer failed: every item says so
      }
      busy = true;
    }
    // 3. Their answers, to rank 0.
    if (!outbox.empty()) {
      for (auto& m : outbox) t.send(0, std::move(m));
      outbox.clear();
      busy = true;
      last_said = procpool::detail::monotonic_ns();
    }
    if (procpool::detail::monotonic_ns() - last_said >= heartbeat_ns) reply(kind::alive, 0);
    t.progress();
    if (closing && waiting.empty() && running.empty()) {
      reply(kind::bye, 0);
      t.flush();
      return;
    }
    // 4. Drive the local pool until an answer is there, or it is time to look at MPI again.
    if (busy) idle.reset();
    const std::int64_t wait_ns = busy ? 0 : idle.next().count();
    try {
      if (running.empty()) {
        if (wait_ns)
          std::this_thread::sleep_for(std::chrono::nanoseconds(wait_ns));
        else if (!busy)
          std::this_thread::yield();  // spinning: the CPU may be wanted by a local worker
      } else {
        // An answer wakes the local driver at once; rank 0's next message
        // waits at most max_ns, and meanwhile the CPU is the workers'.
        local.run_until([&] { return !outbox.empty(); },
                        procpool::detail::monotonic_ns() + (busy ? 0 : backoff::max_ns));
      }
    } catch (...) {
      // The local pool cannot run anything (its initializer failed): every item says so.
      for (auto& j : running) local.locked([&] { j->abort(std::current_exception()); });
    }
  }
}

}  // namespace procpool::mpi::detail
