// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file wait.hpp
/// procpool::wait and procpool::as_completed over many async_results
/// (Python's concurrent.futures.wait and as_completed).

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <ranges>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "async_result.hpp"
#include "errors.hpp"

namespace procpool {

/// When wait() returns (Python's FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED).
enum class return_when { first_completed, first_exception, all_completed };

/// What wait() saw: positions in its input of the results that are ready, and of the others.
struct wait_result {
  std::vector<std::size_t> done;
  std::vector<std::size_t> not_done;
};

namespace detail {
/// What wait() and as_completed() read of an async_result.
struct wait_access {
  template <class T>
  static engine* owner(async_result<T>& r) {
    return r.owner();
  }
  template <class T>
  static bool settled(async_result<T>& r) {
    return r.settled_locked();
  }
};
struct ref_access;
}  // namespace detail

/// Any async_result, whatever its value type, for wait() and as_completed()
/// over results of different calls. Refers to it: keep the result alive and in place.
class result_ref {
 public:
  template <class T>
  result_ref(async_result<T>& r) noexcept  // NOLINT: converts implicitly, by design
      : obj_(&r), ops_(&ops_of<T>) {}

 private:
  friend struct detail::ref_access;
  struct ops {
    detail::engine* (*owner)(void*);
    bool (*settled_locked)(void*);
    bool (*ready)(void*);
    bool (*failed)(void*);
  };
  template <class T>
  static constexpr ops ops_of{
      [](void* p) { return detail::wait_access::owner(*static_cast<async_result<T>*>(p)); },
      [](void* p) { return detail::wait_access::settled(*static_cast<async_result<T>*>(p)); },
      [](void* p) { return static_cast<async_result<T>*>(p)->ready(); },
      [](void* p) { return !static_cast<async_result<T>*>(p)->successful(); },
  };
  void* obj_;
  const ops* ops_;
};

/// Waits until @p results (async_results of one type, or result_refs) meet
/// @p when; Python's concurrent.futures.wait.
/// @code
/// auto [done, not_done] = procpool::wait(futures, procpool::return_when::first_completed);
/// @endcode
template <std::ranges::forward_range Range>
wait_result wait(Range&& results, return_when when = return_when::all_completed);
/// Mixed value types: procpool::wait({r1, r2}, procpool::return_when::first_exception).
inline wait_result wait(std::initializer_list<result_ref> results,
                        return_when when = return_when::all_completed);
/// Like wait, giving up after @p timeout: then returns what is done so far (as Python does).
template <std::ranges::forward_range Range, class Rep, class Period>
wait_result wait_for(Range&& results, std::chrono::duration<Rep, Period> timeout,
                     return_when when = return_when::all_completed);
template <class Rep, class Period>
wait_result wait_for(std::initializer_list<result_ref> results,
                     std::chrono::duration<Rep, Period> timeout,
                     return_when when = return_when::all_completed);

/// The positions of @p results in the order they complete, lazily (Python's
/// as_completed, yielding indices). With a timeout, the iteration throws
/// timeout_error when the next result is not there in time (counted from this call).
/// @code
/// for (std::size_t i : procpool::as_completed(futures)) use(futures[i].get());
/// @endcode
class completion_order;
/// The range is read as it goes: pass one that outlives the loop (an lvalue).
template <std::ranges::forward_range Range>
completion_order as_completed(Range& results);
inline completion_order as_completed(std::initializer_list<result_ref> results);
template <std::ranges::forward_range Range, class Rep, class Period>
completion_order as_completed(Range& results, std::chrono::duration<Rep, Period> timeout);

// ---------------------------------------------------------------------------

namespace detail {

struct ref_access {
  static engine* owner(const result_ref& r) { return r.ops_->owner(r.obj_); }
  static bool settled(const result_ref& r) { return r.ops_->settled_locked(r.obj_); }
  static bool ready(const result_ref& r) { return r.ops_->ready(r.obj_); }
  static bool failed(const result_ref& r) { return r.ops_->failed(r.obj_); }
};

/// Many results, watched together: which are ready, found without a round of
/// the engine per result.
class result_set {
 public:
  explicit result_set(std::vector<result_ref> refs)
      : refs_(std::move(refs)), ready_(refs_.size(), false) {}

  std::size_t size() const noexcept { return refs_.size(); }
  bool ready(std::size_t i) const noexcept { return ready_[i]; }
  bool failed(std::size_t i) const { return ref_access::failed(refs_[i]); }
  /// Marks what is ready now; returns the positions newly ready, in input order.
  std::vector<std::size_t> poll();
  /// Drives the engines until a result not marked ready settles, or @p deadline
  /// (monotonic ns); false when the deadline passed first.
  bool block(std::int64_t deadline);

 private:
  std::vector<result_ref> refs_;
  std::vector<bool> ready_;
  bool busy_ = false;  // the last poll saw a result whose callbacks run elsewhere
};

inline std::vector<std::size_t> result_set::poll() {
  std::vector<std::size_t> now;
  busy_ = false;
  for (std::size_t i = 0; i < refs_.size(); ++i) {
    if (ready_[i]) continue;
    engine* e = ref_access::owner(refs_[i]);
    if (e == nullptr)
      throw usage_error("procpool::wait: result " + std::to_string(i) + " is empty (moved from)");
    // A settled result becomes ready once its callbacks ran (ready() runs them if due).
    if (!e->locked([&] { return ref_access::settled(refs_[i]); })) continue;
    if (ref_access::ready(refs_[i])) {
      ready_[i] = true;
      now.push_back(i);
    } else {
      busy_ = true;  // settled, its callbacks still running on another thread
    }
  }
  return now;
}

inline bool result_set::block(std::int64_t deadline) {
  if (busy_) {
    // A settled result waits for its callbacks (on another thread): the engine
    // would report it settled at once, so pause instead of driving.
    if (monotonic_ns() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    return true;
  }
  std::vector<engine*> engines;
  for (std::size_t i = 0; i < refs_.size(); ++i) {
    if (ready_[i]) continue;
    engine* e = ref_access::owner(refs_[i]);
    if (std::find(engines.begin(), engines.end(), e) == engines.end()) engines.push_back(e);
  }
  if (engines.empty()) return true;
  const auto any_settled = [&](engine* e) {
    return [this, e] {
      for (std::size_t i = 0; i < refs_.size(); ++i)
        if (!ready_[i] && ref_access::owner(refs_[i]) == e && ref_access::settled(refs_[i]))
          return true;
      return false;
    };
  };
  if (engines.size() == 1) return engines[0]->run_until(any_settled(engines[0]), deadline);
  // Results of several pools: each pool is driven in turn for a short slice.
  constexpr std::int64_t slice_ns = 1'000'000;
  for (;;) {
    for (engine* e : engines) {
      const std::int64_t until = std::min(deadline, monotonic_ns() + slice_ns);
      if (e->run_until(any_settled(e), until)) return true;
    }
    if (monotonic_ns() >= deadline) return false;
  }
}

template <class Range>
std::vector<result_ref> refs_of(Range& results) {
  std::vector<result_ref> refs;
  for (auto& r : results) refs.emplace_back(r);
  return refs;
}

inline wait_result wait_on(std::vector<result_ref> refs, std::int64_t deadline, return_when when) {
  result_set set(std::move(refs));
  bool failed = false;
  std::size_t ready = 0;
  for (;;) {
    for (std::size_t i : set.poll()) {
      ++ready;
      if (when == return_when::first_exception && set.failed(i)) failed = true;
    }
    const bool met = ready == set.size() ||
                     (when == return_when::first_completed && ready > 0) ||
                     (when == return_when::first_exception && failed);
    if (met || !set.block(deadline)) {
      if (!met) set.poll();  // what settled at the very end counts
      break;
    }
  }
  wait_result r;
  for (std::size_t i = 0; i < set.size(); ++i) (set.ready(i) ? r.done : r.not_done).push_back(i);
  return r;
}

}  // namespace detail

/// The input iterator range of as_completed: yields positions in the input.
class completion_order {
 public:
  class iterator {
   public:
    using value_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    std::size_t operator*() const { return order_->front(); }
    iterator& operator++() {
      order_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.done(); }

   private:
    friend class completion_order;
    explicit iterator(completion_order* o) : order_(o) {}
    bool done() const { return order_->finished(); }
    completion_order* order_ = nullptr;
  };

  completion_order(std::vector<result_ref> refs, std::int64_t deadline)
      : set_(std::move(refs)), deadline_(deadline) {}
  /// Waits for the first result. @throws timeout_error when it is not there in time.
  iterator begin() {
    if (!started_) {
      started_ = true;
      fill();
    }
    return iterator(this);
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class iterator;
  std::size_t front() const { return queue_.front(); }
  bool finished() const noexcept { return queue_.empty() && handed_ == set_.size(); }
  void advance() {
    queue_.pop_front();
    ++handed_;
    fill();
  }
  /// Until a result is queued, or all were handed out.
  void fill() {
    while (queue_.empty() && handed_ + queue_.size() < set_.size()) {
      for (std::size_t i : set_.poll()) queue_.push_back(i);
      if (!queue_.empty()) return;
      if (!set_.block(deadline_)) {
        for (std::size_t i : set_.poll()) queue_.push_back(i);
        if (queue_.empty())
          throw timeout_error("procpool::as_completed: " +
                              std::to_string(set_.size() - handed_) +
                              " results were not ready in time; they go on: wait again");
      }
    }
  }

  detail::result_set set_;
  std::int64_t deadline_;
  std::deque<std::size_t> queue_;  // ready, not yet handed out
  std::size_t handed_ = 0;
  bool started_ = false;
};

template <std::ranges::forward_range Range>
wait_result wait(Range&& results, return_when when) {
  return detail::wait_on(detail::refs_of(results), std::numeric_limits<std::int64_t>::max(), when);
}

inline wait_result wait(std::initializer_list<result_ref> results, return_when when) {
  return detail::wait_on(std::vector<result_ref>(results), std::numeric_limits<std::int64_t>::max(),
                         when);
}

template <std::ranges::forward_range Range, class Rep, class Period>
wait_result wait_for(Range&& results, std::chrono::duration<Rep, Period> timeout,
                     return_when when) {
  return detail::wait_on(detail::refs_of(results), detail::deadline_after(timeout), when);
}

template <class Rep, class Period>
wait_result wait_for(std::initializer_list<result_ref> results,
                     std::chrono::duration<Rep, Period> timeout, return_when when) {
  return detail::wait_on(std::vector<result_ref>(results), detail::deadline_after(timeout), when);
}

template <std::ranges::forward_range Range>
completion_order as_completed(Range& results) {
  return completion_order(detail::refs_of(results), std::numeric_limits<std::int64_t>::max());
}

inline completion_order as_completed(std::initializer_list<result_ref> results) {
  return completion_order(std::vector<result_ref>(results),
                          std::numeric_limits<std::int64_t>::max());
}

template <std::ranges::forward_range Range, class Rep, class Period>
completion_order as_completed(Range& results, std::chrono::duration<Rep, Period> timeout) {
  return completion_order(detail::refs_of(results), detail::deadline_after(timeout));
}

}  // namespace procpool
