// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// What a dead worker's chunks become, carried out: each goes back to the
// dispatcher's queues, whole or in part, or fails, as judge_chunk
// (death_verdict.hpp) decides. The engine's on_death calls it once per death.

#include <cstdint>
#include <deque>

#include "death_verdict.hpp"
#include "dispatcher.hpp"
#include "job.hpp"

namespace procpool::detail {

/// How a worker died, for salvage_chunks.
struct death_facts {
  death_blame blame;         // what it was running
  bool cancel_kill = false;  // killed to stop a cancelled call: nothing it held is to blame
  unsigned retries = 0;      // pool_options::retries
};

/// Settles the chunks @p held of a dead worker, in answer order: requeued at
/// the front of @p disp in that order (so that imap's order suffers least), or
/// failed with @p blamed(index) for the item it died running and @p
/// lost(index, orphaned) for chunks whose workers died too often. A chunk of a
/// call that was cancelled is dropped. Returns the number of items failed.
template <class Blamed, class Lost>
std::uint64_t salvage_chunks(std::deque<chunk>& held, const death_facts& how, dispatcher& disp,
                             Blamed blamed, Lost lost) {
  std::uint64_t failed = 0;
  for (auto it = held.rbegin(); it != held.rend(); ++it) {
    chunk& c = *it;
    if (!c.revoked && c.owner->aborted) {
      // Its call was cancelled (or its imap range dropped): nothing of it runs again.
      c.owner->outstanding -= c.count();
      failed += c.count();
      continue;
    }
    if (how.cancel_kill) {
      if (!c.revoked) disp.requeue(c, 0, c.count());
      continue;
    }
    const chunk_verdict v = judge_chunk(how.blame, c.seq, c.count(), c.revoked, c.attempts,
                                        c.orphaned, how.retries);
    c.orphaned = v.orphaned;
    switch (v.fate) {
      case chunk_fate::elsewhere:
        break;
      case chunk_fate::requeued:
        disp.requeue(c, 0, c.count());
        break;
      case chunk_fate::lost:
        for (std::uint64_t i = 0; i < c.count(); ++i) c.owner->fail(c.base + i, lost(c.base + i, c.orphaned));
        c.owner->outstanding -= c.count();
        failed += c.count();
        break;
      case chunk_fate::blamed:
        disp.requeue(c, v.item + 1, c.count());
        if (v.retry) {
          disp.retry(c.slice(v.item, v.item + 1, c.attempts + 1));
        } else {
          c.owner->fail(c.base + v.item, blamed(c.base + v.item));
          --c.owner->outstanding;
          ++failed;
        }
        disp.requeue(c, 0, v.item);
        break;
    }
  }
  held.clear();
  return failed;
}

}  // namespace procpool::detail
