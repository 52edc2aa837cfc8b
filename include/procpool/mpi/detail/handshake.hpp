// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Opening a pool on every rank, both sides: rank 0 sends open (the pool's
// serial number, the program's fingerprint, F's type name) to every serving
// rank; each answers opened (its workers, pid, host) or refused (why). A
// refusal, or a rank silent past the timeout, is a usage_error on rank 0, and
// the ranks that did open are told to stop serving (terminate).

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "../../detail/posix.hpp"
#include "../../errors.hpp"
#include "../session.hpp"
#include "code_address.hpp"
#include "transport.hpp"

namespace procpool::mpi::detail {

/// A serving rank as rank 0 sees it.
struct rank_info {
  int rank = 0;
  std::string host;
  pid_t pid = 0;            // the serving process on that host
  std::size_t workers = 0;  // its local pool's workers
};

/// Why a serving rank refuses a pool; rank 0 throws it as usage_error. Built here only.
inline std::string mismatch(int rank, const std::string& what) {
  return "procpool::mpi::Pool: rank " + std::to_string(rank) + " " + what +
         "; build the same mpi::Pools, with the same function, in the same order on every rank";
}

/// Sends @p k for pool @p serial to every rank in [1, @p size) and waits (up to 1 s) until sent.
inline void tell_all(transport& t, int size, kind k, std::uint64_t serial) {
  for (int r = 1; r < size; ++r) {
    byte_buffer m;
    begin_message(m, k, serial);
    seal(m);
    t.send(r, std::move(m));
  }
  t.flush(procpool::detail::deadline_after(std::chrono::seconds(1)));
}

/// Rank 0: opens pool @p serial of F @p fn_name on every serving rank.
/// @throws usage_error when a rank refuses, or does not answer within @p timeout.
inline std::vector<rank_info> open_pool(transport& t, const session& s, std::uint64_t serial,
                                        const std::string& fn_name,
                                        std::chrono::milliseconds timeout) {
  std::vector<rank_info> ranks;
  for (int r = 1; r < s.size(); ++r) {
    byte_buffer m;
    begin_message(m, kind::open, serial);
    put_text(m, program_fingerprint());
    put_text(m, fn_name);
    seal(m);
    t.send(r, std::move(m));
    ranks.push_back(rank_info{r, {}, 0, 0});
  }
  const std::int64_t deadline = procpool::detail::deadline_after(timeout);
  std::size_t answered = 0;
  std::string refusal;
  backoff idle;
  byte_buffer msg;
  while (answered < ranks.size()) {
    int src = 0;
    t.progress();
    if (!t.poll(src, msg)) {
      if (procpool::detail::monotonic_ns() > deadline) {
        std::string silent;
        for (const auto& r : ranks)
          if (r.pid == 0) silent += (silent.empty() ? "" : ", ") + std::to_string(r.rank);
        // Every rank, one that opens late too, stops serving this pool.
        tell_all(t, s.size(), kind::terminate, serial);
        throw usage_error("procpool::mpi::Pool: rank(s) " + silent + " did not build pool number " +
                          std::to_string(serial) + " within " + std::to_string(timeout.count()) +
                          " ms; build the same mpi::Pools in the same order on every rank");
      }
      std::this_thread::sleep_for(idle.next());
      continue;
    }
    reader body(nullptr, 0);
    const message_header h = open_message(msg, body);
    if (h.pool != serial || src < 1 || src >= s.size()) continue;
    rank_info& r = ranks[static_cast<std::size_t>(src - 1)];
    ++answered;
    if (h.kind == static_cast<std::uint32_t>(kind::refused)) {
      if (refusal.empty()) refusal = get_text(body);
      r.pid = -1;
      continue;
    }
    r.workers = static_cast<std::size_t>(body.read_value<std::uint64_t>());
    r.pid = static_cast<pid_t>(body.read_value<std::int64_t>());
    r.host = get_text(body);
  }
  t.flush();
  if (!refusal.empty()) {
    // The ranks that did open this pool stop serving it, as after terminate().
    tell_all(t, s.size(), kind::terminate, serial);
    throw usage_error(refusal);
  }
  return ranks;
}

/// A serving rank: waits for rank 0's open of pool @p serial and answers it.
/// @throws usage_error when rank 0 opened another pool, runs another build or
/// F, or ended its session without building this one.
inline void accept_pool(transport& t, const session& s, std::uint64_t serial,
                        const std::string& fn_name, std::size_t workers) {
  byte_buffer msg;
  int src = 0;
  backoff idle;
  for (;;) {
    if (!t.poll(src, msg, 0)) {
      std::this_thread::sleep_for(idle.next());
      continue;
    }
    reader body(nullptr, 0);
    const message_header h = open_message(msg, body);
    if (h.kind == static_cast<std::uint32_t>(kind::ended))
      throw usage_error(mismatch(s.rank(), "built pool number " + std::to_string(serial) +
                                               ", which rank 0 never built (its session ended)"));
    if (h.pool < serial) continue;  // the end of a pool served before
    std::string refusal;
    if (h.kind != static_cast<std::uint32_t>(kind::open) || h.pool != serial) {
      refusal = mismatch(s.rank(), "built its pool number " + std::to_string(serial) +
                                       " while rank 0 built its number " + std::to_string(h.pool));
    } else {
      const std::string fingerprint = get_text(body);
      const std::string name = get_text(body);
      if (const std::string mine = program_fingerprint(); fingerprint != mine)
        refusal = mismatch(s.rank(), "runs another build of the program than rank 0 (" + mine +
                                         "; rank 0's: " + fingerprint + ")");
      else if (name != fn_name)
        refusal = mismatch(s.rank(), "built a pool of " + fn_name + " where rank 0 built one of " + name);
    }
    byte_buffer m;
    begin_message(m, refusal.empty() ? kind::opened : kind::refused, h.pool);
    if (refusal.empty()) {
      m.append_value(std::uint64_t{workers});
      m.append_value(std::int64_t{::getpid()});
      put_text(m, s.host());
    } else {
      put_text(m, refusal);
    }
    seal(m);
    t.send(0, std::move(m));
    t.flush();
    if (!refusal.empty()) throw usage_error(refusal);
    return;
  }
}

}  // namespace procpool::mpi::detail
