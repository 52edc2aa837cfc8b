// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file pool.hpp
/// procpool::Pool, Python's multiprocessing.Pool with C++ types.

#include <chrono>
#include <concepts>
#include <cstring>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <iterator>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "async_result.hpp"
#include "codec.hpp"
#include "detail/call.hpp"
#include "detail/engine.hpp"
#include "detail/jobs.hpp"
#include "detail/runners.hpp"
#include "detail/tuning.hpp"
#include "detail/wire.hpp"
#include "errors.hpp"
#include "imap_range.hpp"
#include "options.hpp"
#include "outcome.hpp"
#include "stats.hpp"

namespace procpool {

namespace detail {

/// True when the first of @p Args is call_options: apply_async's options, not an argument.
template <class... Args>
inline constexpr bool starts_with_call_options = false;
template <class First, class... Rest>
inline constexpr bool starts_with_call_options<First, Rest...> =
    std::is_same_v<std::remove_cvref_t<First>, call_options>;

/// A call's own timeout in ns (0: the pool's); @throws usage_error when negative.
inline std::int64_t call_timeout_ns(std::chrono::milliseconds timeout, const char* where) {
  if (timeout.count() < 0)
    throw usage_error(std::string("procpool::Pool: ") + where + ".timeout is negative (" +
                      std::to_string(timeout.count()) +
                      " ms); use a positive limit, or 0 for the pool's task_timeout");
  constexpr std::int64_t ns_per_ms = 1'000'000;
  return timeout.count() > std::numeric_limits<std::int64_t>::max() / ns_per_ms
             ? std::numeric_limits<std::int64_t>::max()
             : static_cast<std::int64_t>(timeout.count()) * ns_per_ms;
}

}  // namespace detail

/// A pool of worker processes running F (Python's multiprocessing.Pool).
///
/// The workers are forked when the Pool is built and inherit F through fork:
/// a lambda with any captured state works, nothing is pickled. Arguments and
/// results cross through queues in shared memory (see codec.hpp for the types
/// that can). Every member may be called from any thread.
///
/// @code
/// int square(int x) { return x * x; }
///
/// procpool::Pool pool(square, 4);
/// std::vector<int> r = pool.map(std::vector<int>{1, 2, 3, 4, 5});   // {1, 4, 9, 16, 25}
/// for (int y : pool.imap_unordered(std::views::iota(0, 1000))) use(y);
/// auto fut = pool.apply_async(7);  // fut.get() == 49
/// @endcode
///
/// Destroying a Pool terminates it, as Python's `with Pool() as p:` does: the
/// workers are killed and reaped, and unfinished async results fail with
/// pool_terminated. Call close() and join() first to let submitted work finish.
template <class F>
class Pool {
 public:
  /// Forks @p processes workers (0: cpu_count()).
  explicit Pool(F f, std::size_t processes = 0)
      : Pool(std::move(f), pool_options{.processes = processes}) {}
  /// Forks the workers as @p options says.
  Pool(F f, const pool_options& options)
      : fn_(std::make_unique<F>(std::move(f))),
        eng_(std::make_shared<detail::engine>(options, static_cast<void*>(fn_.get()))) {}

  Pool(Pool&&) noexcept = default;
  /// Terminates this pool first, as destroying it does, then takes @p o's.
  Pool& operator=(Pool&& o) noexcept {
    if (this != &o) {
      // Before the function is freed: a result still pending on the old
      // engine keeps it alive, and it must never fork a worker again.
      if (eng_) eng_->terminate();
      eng_ = std::move(o.eng_);
      fn_ = std::move(o.fn_);
    }
    return *this;
  }
  ~Pool() {
    if (eng_) eng_->terminate();
  }

  /// F applied to every item of @p inputs, in input order (Python's Pool.map).
  /// Takes any input range (vector, list, span, std::views::iota, ...).
  /// @throws the error of the lowest failing index, after every other item ran.
  /// @code
  /// std::vector<double> r = pool.map(inputs, {.chunksize = 256});
  /// @endcode
  template <detail::input_range Range>
  auto map(Range&& inputs, map_options options = {});

  /// Like map, but never throws for an item: each item's value or error.
  template <detail::input_range Range>
  auto try_map(Range&& inputs, map_options options = {});

  /// F(a, b, ...) for every tuple or pair (a, b, ...) of @p inputs, in order.
  template <detail::input_range Range>
  auto starmap(Range&& inputs, map_options options = {});

  /// Results in input order, lazily: at most a few chunks per worker are in
  /// flight or waiting, whatever the input's length.
  /// @code
  /// for (auto&& x : pool.imap(inputs)) std::cout << x << '\n';
  /// @endcode
  template <detail::input_range Range>
  auto imap(Range&& inputs, map_options options = {});

  /// Like imap, but in the order the results complete.
  template <detail::input_range Range>
  auto imap_unordered(Range&& inputs, map_options options = {});

  /// F(args...) in a worker, waiting for the value (Python's Pool.apply).
  /// @throws the task's error.
  template <class... Args>
  auto apply(Args&&... args) {
    return apply_async(std::forward<Args>(args)...).get();
  }

  /// F(args...) in a worker; returns at once.
  /// @code
  /// auto r = pool.apply_async(7);
  /// int v = r.get();
  /// @endcode
  template <class... Args>
    requires(!detail::starts_with_call_options<Args...>)
  auto apply_async(Args&&... args) {
    return apply_with(call_options{}, std::forward<Args>(args)...);
  }
  /// apply_async with @p options (a timeout of its own).
  template <class... Args>
  auto apply_async(const call_options& options, Args&&... args) {
    return apply_with(options, std::forward<Args>(args)...);
  }

  /// map, returning at once; get() gives the vector.
  template <detail::input_range Range>
  auto map_async(Range&& inputs, map_options options = {});

  /// starmap, returning at once.
  template <detail::input_range Range>
  auto starmap_async(Range&& inputs, map_options options = {});

  /// No more work will be submitted; join() then finishes what was.
  void close() { eng_->close(); }
  /// Waits for submitted work to finish and the workers to exit. Call close() first.
  void join() { eng_->join(); }
  /// Kills the workers now; unfinished work fails with pool_terminated.
  void terminate() { eng_->terminate(); }
  /// Python's Executor.shutdown: close(), then join() when @p wait. With
  /// @p cancel_futures, each call none of whose items has gone to a worker yet
  /// is cancelled first (its get() throws cancelled_error); the rest finish.
  void shutdown(bool wait = true, bool cancel_futures = false) {
    eng_->shutdown(cancel_futures);
    if (wait) eng_->join();
  }

  /// The number of worker processes.
  std::size_t size() const noexcept { return eng_->size(); }
  /// The pids of the live workers (they change when workers are replaced).
  std::vector<pid_t> pids() const { return eng_->pids(); }
  /// Counts of items (submitted, queued, running, done, failed) and of
  /// workers started and replaced, now; for progress bars.
  /// @code
  /// auto s = pool.stats();
  /// std::printf("%llu of %zu done\n", (unsigned long long)s.done, n);
  /// @endcode
  pool_stats stats() const { return eng_->stats(); }

 private:
  template <detail::call_style S, class Range>
  static auto check_input();

  /// Builds and submits the job of a map-like call over @p view. A
  /// @p chunksize of 0 picks one (auto_chunksize) and lets chunks shrink as the
  /// input drains (detail/scheduler.hpp).
  template <class Job, detail::call_style S, class View, class Arg, class... JobArgs>
  std::shared_ptr<Job> start(View&& view, const map_options& options, std::size_t auto_cap,
                             JobArgs&&... job_args);

  /// Python's rule (len / (4 * processes), rounded up), capped at @p cap items;
  /// fixed-size items are also capped at a fraction of a queue
  /// (detail::queue_fraction_per_chunk), so chunks pipeline and stay in cache.
  template <class Arg>
  std::size_t auto_chunksize(std::size_t n, std::size_t cap) const {
    if constexpr (detail::bitwise<Arg>)
      cap = std::min(cap, std::max<std::size_t>(1, eng_->queue_capacity() /
                                                       detail::queue_fraction_per_chunk /
                                                       sizeof(Arg)));
    const std::size_t per = 4 * size();
    const std::size_t c = n / per + (n % per ? 1 : 0);
    return std::clamp<std::size_t>(c, 1, cap);
  }

  template <detail::call_style S, class Range>
  auto collect(Range&& inputs, map_options options);

  template <class... Args>
  auto apply_with(const call_options& options, Args&&... args);

  /// Waits until @p j completes; if waiting throws, abandons the job first.
  template <class Job>
  void wait_done(const std::shared_ptr<Job>& j);

  /// collect(), returning an async_result of the values (map_async, starmap_async).
  template <detail::call_style S, class Range>
  auto collect_async(Range&& inputs, map_options options);

  /// collect(), then wait and take the values (map, starmap).
  template <detail::call_style S, class Range>
  auto collect_values(Range&& inputs, map_options options);

  template <bool Ordered, class Range>
  auto stream(Range&& inputs, map_options options);

  std::unique_ptr<F> fn_;  // on the heap: its address is what forked workers call
  std::shared_ptr<detail::engine> eng_;
};

// ---------------------------------------------------------------------------

template <class F>
template <detail::call_style S, class Range>
auto Pool<F>::check_input() {
  using Arg = std::remove_cvref_t<detail::range_value_t<Range>>;
  if constexpr (S == detail::call_style::unary)
    static_assert(std::is_invocable_v<F&, Arg&&>,
                  "procpool::Pool: the pool's function cannot be called with the input range's "
                  "element type");
  else
    static_assert(requires(F& f, Arg&& a) { std::apply(f, std::move(a)); },
                  "procpool::Pool::starmap: the pool's function cannot be called with the "
                  "elements of the input's tuples");
  detail::require_transferable<Arg>();
  using R = detail::call_result_t<F, Arg, S>;
  if constexpr (!std::is_void_v<R>) detail::require_transferable<R>();
  return std::type_identity<Arg>{};
}

template <class F>
template <class Job, detail::call_style S, class View, class Arg, class... JobArgs>
std::shared_ptr<Job> Pool<F>::start(View&& view, const map_options& options,
                                    std::size_t auto_cap, JobArgs&&... job_args) {
  using V = std::remove_cvref_t<View>;
  const std::size_t chunksize = options.chunksize;
  const std::int64_t timeout_ns = detail::call_timeout_ns(options.timeout, "map_options");
  const std::size_t n = view.size_hint();
  auto j = std::make_shared<detail::input_job<Job, V, Arg>>(std::forward<View>(view),
                                                            std::forward<JobArgs>(job_args)...);
  j->runner = reinterpret_cast<std::uint64_t>(&detail::run_chunk<F, Arg, S>);
  j->guided = chunksize == 0;
  j->total = n;
  j->chunksize = chunksize ? chunksize : auto_chunksize<Arg>(n, auto_cap);
  j->chunk_bytes = eng_->queue_capacity() / 2;
  j->timeout_ns = timeout_ns;
  eng_->submit(j);
  return j;
}

template <class F>
template <detail::call_style S, class Range>
auto Pool<F>::collect(Range&& inputs, map_options options) {
  using Arg = typename decltype(check_input<S, Range>())::type;
  using R = detail::stored_t<detail::call_result_t<F, Arg, S>>;
  if (options.buffersize)
    throw usage_error("procpool::Pool: map_options::buffersize bounds imap and imap_unordered "
                      "only (map and starmap keep every result); use imap, or leave it 0");
  auto view = detail::hold(std::forward<Range>(inputs));
  const std::size_t n = view.size_hint();
  auto j = start<detail::collect_job<R>, S, decltype(view), Arg>(
      std::move(view), options, detail::map_chunk_cap, n);
  return j;
}

template <class F>
template <class Job>
void Pool<F>::wait_done(const std::shared_ptr<Job>& j) {
  try {
    eng_->run_until([&] { return j->complete(); });
  } catch (...) {
    // Nobody will read this job now: stop feeding it, so the pool never
    // touches the caller's input range again after this call has left.
    eng_->locked([&] { j->abort(std::current_exception()); });
    throw;
  }
}

template <class F>
template <detail::call_style S, class Range>
auto Pool<F>::collect_values(Range&& inputs, map_options options) {
  auto j = collect<S>(std::forward<Range>(inputs), options);
  wait_done(j);
  auto values = eng_->locked([&] { return j->take_values(); });
  using Arg = std::remove_cvref_t<detail::range_value_t<Range>>;
  if constexpr (std::is_void_v<detail::call_result_t<F, Arg, S>>)
    return;
  else
    return values;
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::map(Range&& inputs, map_options options) {
  return collect_values<detail::call_style::unary>(std::forward<Range>(inputs), options);
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::try_map(Range&& inputs, map_options options) {
  auto j = collect<detail::call_style::unary>(std::forward<Range>(inputs), options);
  wait_done(j);
  return eng_->locked([&] { return j->take_outcomes(); });
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::starmap(Range&& inputs, map_options options) {
  return collect_values<detail::call_style::apply>(std::forward<Range>(inputs), options);
}

template <class F>
template <bool Ordered, class Range>
auto Pool<F>::stream(Range&& inputs, map_options options) {
  using Arg = typename decltype(check_input<detail::call_style::unary, Range>())::type;
  using R = detail::stored_t<detail::call_result_t<F, Arg, detail::call_style::unary>>;
  auto view = detail::hold(std::forward<Range>(inputs));
  const std::size_t n = view.size_hint();
  // A window the caller sets also bounds the chunks chosen, so that every worker gets some.
  const std::size_t cap =
      options.buffersize
          ? std::clamp<std::size_t>(options.buffersize / size(), 1, detail::imap_chunk_cap)
          : detail::imap_chunk_cap;
  const std::size_t chunk = options.chunksize ? options.chunksize : auto_chunksize<Arg>(n, cap);
  const std::size_t window =
      options.buffersize ? options.buffersize
                         : std::max<std::size_t>(detail::imap_chunks_per_worker * size() * chunk,
                                                 detail::imap_min_window);
  auto j = start<detail::stream_job<R, Ordered>, detail::call_style::unary, decltype(view), Arg>(
      std::move(view), options, cap, window);
  return imap_range<R, Ordered>(eng_, std::move(j));
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::imap(Range&& inputs, map_options options) {
  return stream<true>(std::forward<Range>(inputs), options);
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::imap_unordered(Range&& inputs, map_options options) {
  return stream<false>(std::forward<Range>(inputs), options);
}

template <class F>
template <class... Args>
auto Pool<F>::apply_with(const call_options& options, Args&&... args) {
  using Arg = std::tuple<std::decay_t<Args>...>;
  static_assert(requires(F& f, Arg&& a) { std::apply(f, std::move(a)); },
                "procpool::Pool::apply_async: the pool's function cannot be called with these "
                "arguments");
  using R = detail::call_result_t<F, Arg, detail::call_style::apply>;
  if constexpr (!std::is_void_v<R>) detail::require_transferable<R>();
  detail::require_transferable<Arg>();
  const std::int64_t timeout_ns = detail::call_timeout_ns(options.timeout, "apply_async");
  if constexpr (detail::express_eligible<R, std::decay_t<Args>...>) {
    // The express lane, when a worker polls now (detail/express_lane.hpp);
    // a call with a timeout of its own goes through the queues, whose check knows it.
    detail::engine::express_ticket t;
    if (timeout_ns == 0 && eng_->express_claim(t)) {
      detail::express_cell& c = eng_->cell(t);
      detail::byte_buffer b;
      b.borrow(c.arg, sizeof c.arg);  // fits: express_eligible bounds the size
      detail::encode_tuple_of<std::decay_t<Args>...>(b, args...);
      c.arg_size = static_cast<std::uint32_t>(b.size());
      c.runner = reinterpret_cast<std::uint64_t>(&detail::run_express<F, Arg>);
      c.chunk_runner =
          reinterpret_cast<std::uint64_t>(&detail::run_chunk<F, Arg, detail::call_style::apply>);
      eng_->express_post(t);
      return async_result<R>(detail::result_source<R>(eng_, detail::express_handle(eng_, t)));
    }
  }
  // Encoded now, straight from the arguments into the task message (Arg's
  // encoding, without building Arg); a failure is the call's error.
  detail::byte_buffer msg;
  std::exception_ptr failed;
  try {
    detail::task_message::begin(msg);
    detail::encode_tuple_of<std::decay_t<Args>...>(msg, args...);
    if (detail::task_message::items_size(msg) > std::numeric_limits<std::uint32_t>::max())
      throw usage_error("procpool: one item encodes to over 4 GiB; split it");
  } catch (...) {
    failed = std::current_exception();
    msg = detail::byte_buffer();
  }
  using Job = detail::encoded_job<detail::collect_job<detail::stored_t<R>>>;
  auto j = std::make_shared<Job>(std::move(msg), std::move(failed));
  j->runner = reinterpret_cast<std::uint64_t>(&detail::run_chunk<F, Arg, detail::call_style::apply>);
  j->chunksize = 1;
  j->timeout_ns = timeout_ns;
  eng_->submit(j);
  return async_result<R>(detail::result_source<R>(eng_, j, [j]() -> R {
    auto values = j->take_values();
    if constexpr (!std::is_void_v<R>) return std::move(values.front());
  }));
}

template <class F>
template <detail::call_style S, class Range>
auto Pool<F>::collect_async(Range&& inputs, map_options options) {
  using Arg = std::remove_cvref_t<detail::range_value_t<Range>>;
  using R = detail::stored_t<detail::call_result_t<F, Arg, S>>;
  auto j = collect<S>(std::forward<Range>(inputs), options);
  return async_result<std::vector<R>>(
      detail::result_source<std::vector<R>>(eng_, j, [j] { return j->take_values(); }));
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::map_async(Range&& inputs, map_options options) {
  return collect_async<detail::call_style::unary>(std::forward<Range>(inputs), options);
}

template <class F>
template <detail::input_range Range>
auto Pool<F>::starmap_async(Range&& inputs, map_options options) {
  return collect_async<detail::call_style::apply>(std::forward<Range>(inputs), options);
}

}  // namespace procpool

