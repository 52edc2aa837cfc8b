// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file imap_range.hpp
/// procpool::imap_range, the lazily read results of imap and imap_unordered.

#include <chrono>
#include <cstddef>
#include <string>
#include <iterator>
#include <memory>
#include <optional>
#include <utility>

#include "async_result.hpp"
#include "detail/engine.hpp"
#include "detail/jobs.hpp"
#include "outcome.hpp"

namespace procpool {

template <class F>
class Pool;
namespace mpi {
template <class F>
class Pool;
}

/// The results of imap / imap_unordered: an input range, read lazily.
/// Dereferencing an iterator at an item that failed throws that item's error;
/// incrementing past it goes on with the next. Destroying the range stops
/// feeding work (what is in flight finishes and is dropped). @p Engine is
/// what drives the pool: detail::engine, or procpool::mpi's master.
template <class R, bool Ordered, class Engine = detail::engine>
class imap_range {
  using job_type = detail::stream_job<R, Ordered>;

 public:
  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    /// The item's value; throws its error if it failed.
    R& operator*() const { return range_->value(); }
    R* operator->() const { return &**this; }
    iterator& operator++() {
      range_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return range_->at_end(); }

   private:
    friend class imap_range;
    explicit iterator(imap_range* r) : range_(r) {}
    imap_range* range_ = nullptr;
  };

  imap_range(imap_range&&) noexcept = default;
  imap_range& operator=(imap_range&&) noexcept = default;
  ~imap_range() {
    if (job_ && eng_->owned_here()) eng_->locked([&] { job_->cancel(); });
  }

  /// Waits for the first result. Call once.
  iterator begin() {
    check_not_pulled("begin");
    iterating_ = true;
    advance();
    return iterator(this);
  }
  /// The next result, waiting at most @p timeout (Python's next(timeout));
  /// nullopt once all were handed out. Throws the item's error if it failed,
  /// timeout_error when it is not there in time (then call again). Use either
  /// this or a loop over the range, not both.
  template <class Rep, class Period>
  std::optional<R> next_for(std::chrono::duration<Rep, Period> timeout);
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  template <class>
  friend class Pool;
  template <class>
  friend class mpi::Pool;
  imap_range(std::shared_ptr<Engine> eng, std::shared_ptr<job_type> job)
      : eng_(std::move(eng)), job_(std::move(job)) {}

  bool at_end() const noexcept { return !current_; }
  R& value() { return current_->value(); }
  void advance() {
    current_.reset();
    eng_->run_until([this] { return job_->has_next() || job_->finished(); });
    eng_->locked([this] {
      if (job_->has_next()) current_.emplace(job_->next());
    });
  }

  void check_not_pulled(const char* fn) const {
    if (iterating_ || pulled_)
      throw usage_error(std::string("procpool::imap_range::") + fn +
                        (pulled_ ? ": the range is read with next_for(); use one or the other"
                                 : ": the range is already iterated; begin() once, and do not "
                                   "mix a loop with next_for()"));
  }

  std::shared_ptr<Engine> eng_;
  std::shared_ptr<job_type> job_;
  std::optional<outcome<R>> current_;
  bool iterating_ = false;  // begin() was called
  bool pulled_ = false;     // next_for() was called
};

template <class R, bool Ordered, class Engine>
template <class Rep, class Period>
std::optional<R> imap_range<R, Ordered, Engine>::next_for(std::chrono::duration<Rep, Period> timeout) {
  if (iterating_) check_not_pulled("next_for");
  pulled_ = true;
  if (!eng_->run_until([this] { return job_->has_next() || job_->finished(); },
                       detail::deadline_after(timeout)))
    throw detail::timed_out("procpool::imap_range::next_for", timeout);
  std::optional<outcome<R>> o;
  eng_->locked([&] {
    if (job_->has_next()) o.emplace(job_->next());
  });
  if (!o) return std::nullopt;
  return std::move(o->value());
}

}  // namespace procpool
