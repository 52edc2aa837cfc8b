// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Rank 0's books of one pool over MPI, and its scheduling policy: which rank
// gets the next chunk, what that chunk is, which chunk to take back, and what
// becomes of a lost rank's chunks. master.hpp encodes and sends what this
// decides; nothing here makes an MPI call.
//
// The policy keeps the single-machine rule: no rank sits idle while another
// holds a chunk none of whose items has started.
// - A rank is sent one chunk per local worker plus one waiting (to hide the
//   network's latency), the rank with the most room first.
// - Chunks are cut from the oldest job with input left; their size shrinks as
//   a sized input drains (scheduler.hpp's guided rule, over all ranks' workers).
// - A rank with an idle worker (fewer chunks than workers, and none left to
//   send) has rank 0 ask the busiest rank holding more chunks than workers
//   for its newest waiting chunk back (revoke); at most one revoke per idle
//   worker is in flight. A chunk given back is sent first.
// - A lost rank's unanswered items run again elsewhere while their chunk's
//   attempts are within retries, else fail with worker_lost.

#include <algorithm>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "../../detail/job.hpp"
#include "../../detail/scheduler.hpp"
#include "handshake.hpp"
#include "remote_error.hpp"

namespace procpool::mpi::detail {

using procpool::detail::chunk;
using procpool::detail::job;
using procpool::detail::task_message;

/// A chunk sent to a rank, and which of its items that rank has answered.
struct sent_chunk {
  chunk c;
  std::uint64_t left = 0;      // items without an answer
  std::vector<bool> answered;  // by item of the chunk
  bool revoking = false;       // asked back, no answer yet
};

/// A serving rank, as rank 0 sees it.
struct serving_rank {
  rank_info info;
  std::map<std::uint64_t, sent_chunk> in_flight;  // by chunk id, in the order sent
  std::int64_t last_heard_ns = 0;
  bool bye = false;
  bool lost = false;    // silent past its limit: sent nothing more, heard no more
  bool broken = false;  // its local pool cannot run (initializer_error): sent nothing more
  /// May be sent chunks.
  bool usable() const noexcept { return !lost && !broken && !bye; }
};

class rank_scheduler {
 public:
  /// @p retries: pool_options::retries, for a lost rank's items.
  explicit rank_scheduler(unsigned retries) noexcept : retries_(retries) {}

  /// A serving rank that opened the pool, last heard at @p now.
  void add_rank(rank_info info, std::int64_t now);
  std::vector<serving_rank>& ranks() noexcept { return ranks_; }
  const std::vector<serving_rank>& ranks() const noexcept { return ranks_; }
  /// Workers on the usable ranks.
  std::size_t workers() const noexcept { return workers_; }

  /// Queues @p j for chunks.
  void submit(const std::shared_ptr<job>& j);
  /// The jobs not complete yet.
  const std::vector<std::shared_ptr<job>>& live() const noexcept { return live_; }
  /// True when every job submitted is complete.
  bool all_done() const;

  /// The usable rank with the most room for another chunk; null when none has room.
  serving_rank* rank_with_room();
  /// The next chunk to send: one given back, else one cut from the oldest job
  /// with input left. False when there is none.
  bool next_chunk(chunk& c);
  /// Books chunk @p c as sent to @p r, under a new id (set in c.seq before
  /// @p encode(c) is called to build its message).
  template <class Encode>
  void send(serving_rank& r, chunk&& c, Encode encode);

  /// The chunk to ask back, and from which rank, if an idle worker calls for one (rebalance).
  std::optional<std::pair<serving_rank*, std::uint64_t>> next_revoke();
  /// The chunk @p id booked to @p r; null when it is not (a terminated pool's late answer).
  sent_chunk* find(serving_rank& r, std::uint64_t id);
  /// Items [base, base + count) of chunk @p id of @p r are answered (delivered or failed).
  void answered(serving_rank& r, std::uint64_t id, std::uint64_t base, std::uint64_t count);
  /// @p r gave chunk @p id back unstarted: it is sent first, to whoever has room.
  void given_back(serving_rank& r, std::uint64_t id);
  /// @p r kept chunk @p id (it had started).
  void kept(serving_rank& r, std::uint64_t id);

  /// @p r can run nothing (its initializer failed). False when no usable rank is left.
  bool break_rank(serving_rank& r);
  /// @p r is given up on: its unanswered items run again elsewhere within
  /// retries, else fail with worker_lost. False when no usable rank is left.
  bool lose(serving_rank& r);
  /// Fails every job not complete with @p e and forgets every chunk.
  void abort_all(const std::exception_ptr& e);

 private:
  void forget_if_complete(const job& j) {
    if (j.complete()) std::erase_if(live_, [&](const auto& p) { return p.get() == &j; });
  }
  bool any_usable() const {
    for (const auto& q : ranks_)
      if (q.usable()) return true;
    return false;
  }

  std::vector<serving_rank> ranks_;
  std::size_t workers_ = 0;
  unsigned retries_;
  std::deque<std::shared_ptr<job>> jobs_;   // still handing out input
  std::vector<std::shared_ptr<job>> live_;  // not complete (for join and terminate)
  std::deque<chunk> requeued_;              // taken back from a rank: sent first
  std::uint64_t next_id_ = 0;
  std::size_t revoking_ = 0;  // revokes sent and not yet answered
};

// ---------------------------------------------------------------------------

inline void rank_scheduler::add_rank(rank_info info, std::int64_t now) {
  workers_ += info.workers;
  ranks_.push_back(serving_rank{std::move(info), {}, now, false, false, false});
}

inline void rank_scheduler::submit(const std::shared_ptr<job>& j) {
  jobs_.push_back(j);
  if (!j->complete()) live_.push_back(j);  // an empty input is complete already
}

inline bool rank_scheduler::all_done() const {
  for (const auto& j : live_)
    if (!j->complete()) return false;
  return true;
}

inline serving_rank* rank_scheduler::rank_with_room() {
  serving_rank* best = nullptr;
  std::size_t best_room = 0;
  for (auto& r : ranks_) {
    if (!r.usable()) continue;
    const std::size_t cap = r.info.workers + 1;  // one waiting per rank
    const std::size_t room = cap > r.in_flight.size() ? cap - r.in_flight.size() : 0;
    if (room > best_room) best = &r, best_room = room;
  }
  return best;
}

inline bool rank_scheduler::next_chunk(chunk& c) {
  while (!requeued_.empty()) {
    c = std::move(requeued_.front());
    requeued_.pop_front();
    if (!c.owner->aborted) return true;
    c.owner->outstanding -= c.count();
  }
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    const std::shared_ptr<job> keep = *it;  // jobs_.erase may drop its last owner here
    job& j = *keep;
    if (j.aborted || j.input_done()) {
      forget_if_complete(j);
      it = jobs_.erase(it);
      continue;
    }
    std::size_t n = 0;
    try {
      n = procpool::detail::cut_chunk(keep, c, [&](std::uint64_t left) {
        return procpool::detail::chunk_items(j.chunksize, j.guided, left, workers_);
      });
    } catch (...) {
      j.input_failed(std::current_exception());
      it = jobs_.erase(it);
      forget_if_complete(j);
      continue;
    }
    if (n == 0) {
      ++it;
      continue;
    }
    return true;
  }
  return false;
}

template <class Encode>
void rank_scheduler::send(serving_rank& r, chunk&& c, Encode encode) {
  c.seq = ++next_id_;
  encode(c);
  const std::uint64_t n = c.n;
  r.in_flight.emplace(c.seq, sent_chunk{std::move(c), n, std::vector<bool>(static_cast<std::size_t>(n)), false});
}

inline std::optional<std::pair<serving_rank*, std::uint64_t>> rank_scheduler::next_revoke() {
  std::size_t idle = 0;
  for (const auto& r : ranks_)
    if (r.usable() && r.in_flight.size() < r.info.workers) idle += r.info.workers - r.in_flight.size();
  if (revoking_ >= idle) return std::nullopt;
  serving_rank* busiest = nullptr;
  sent_chunk* pick = nullptr;
  std::uint64_t pick_id = 0;
  for (auto& r : ranks_) {
    if (r.lost || r.in_flight.size() <= r.info.workers) continue;
    if (busiest && r.in_flight.size() <= busiest->in_flight.size()) continue;
    // Its newest chunks beyond one per worker wait there; the newest not asked for yet.
    std::size_t beyond = r.in_flight.size() - r.info.workers;
    for (auto it = r.in_flight.rbegin(); it != r.in_flight.rend() && beyond > 0; ++it, --beyond)
      if (!it->second.revoking) {
        busiest = &r, pick = &it->second, pick_id = it->first;
        break;
      }
  }
  if (!pick) return std::nullopt;
  pick->revoking = true;
  ++revoking_;
  return std::pair{busiest, pick_id};
}

inline sent_chunk* rank_scheduler::find(serving_rank& r, std::uint64_t id) {
  const auto it = r.in_flight.find(id);
  return it == r.in_flight.end() ? nullptr : &it->second;
}

inline void rank_scheduler::answered(serving_rank& r, std::uint64_t id, std::uint64_t base,
                                     std::uint64_t count) {
  const auto it = r.in_flight.find(id);
  if (it == r.in_flight.end()) return;  // forgotten by abort_all
  sent_chunk& s = it->second;
  const std::shared_ptr<job> keep = s.c.owner;  // the chunk may be its last owner
  for (std::uint64_t i = 0; i < count; ++i) s.answered[static_cast<std::size_t>(base - s.c.base + i)] = true;
  keep->outstanding -= count;
  s.left -= count;
  if (s.left == 0) r.in_flight.erase(it);
  forget_if_complete(*keep);
}

inline void rank_scheduler::given_back(serving_rank& r, std::uint64_t id) {
  const auto it = r.in_flight.find(id);
  --revoking_;
  requeued_.push_front(std::move(it->second.c));
  r.in_flight.erase(it);
}

inline void rank_scheduler::kept(serving_rank& r, std::uint64_t id) {
  --revoking_;
  r.in_flight.find(id)->second.revoking = false;
}

inline bool rank_scheduler::break_rank(serving_rank& r) {
  r.broken = true;
  workers_ -= std::min(workers_, r.info.workers);
  return any_usable();
}

inline bool rank_scheduler::lose(serving_rank& r) {
  r.lost = true;
  for (auto& [id, st] : r.in_flight) {
    chunk& c = st.c;
    const std::shared_ptr<job> keep = c.owner;
    job& j = *keep;
    for (std::uint64_t i = 0; i < c.n;) {
      if (st.answered[static_cast<std::size_t>(i)]) {
        ++i;
        continue;
      }
      std::uint64_t k = i;
      while (k < c.n && !st.answered[static_cast<std::size_t>(k)]) ++k;
      if (c.attempts < retries_ && !j.aborted) {
        requeued_.push_back(c.slice(i, k, c.attempts + 1));
      } else {
        for (std::uint64_t q = i; q < k; ++q) {
          j.fail(c.base + q, rank_lost(c.base + q, r.info.rank, r.info.host, r.info.pid));
          --j.outstanding;
        }
      }
      i = k;
    }
    forget_if_complete(j);
  }
  for (auto& [id, st] : r.in_flight)
    if (st.revoking) --revoking_;
  r.in_flight.clear();
  if (!r.broken) workers_ -= std::min(workers_, r.info.workers);
  return any_usable();
}

inline void rank_scheduler::abort_all(const std::exception_ptr& e) {
  for (auto& j : live_) j->abort(e);
  live_.clear();
  jobs_.clear();
  requeued_.clear();
  for (auto& r : ranks_) r.in_flight.clear();
  revoking_ = 0;
}

}  // namespace procpool::mpi::detail
