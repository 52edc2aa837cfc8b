// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file pool.hpp
/// procpool::mpi::Pool: procpool::Pool over MPI ranks (target procpool::mpi).

#include <algorithm>
#include <csignal>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../detail/call.hpp"
#include "../detail/engine.hpp"
#include "../detail/jobs.hpp"
#include "../detail/runners.hpp"
#include "../detail/tuning.hpp"
#include "../errors.hpp"
#include "../imap_range.hpp"
#include "../options.hpp"
#include "../outcome.hpp"
#include "../pool.hpp"
#include "async_result.hpp"
#include "detail/master.hpp"
#include "detail/server.hpp"
#include "session.hpp"

namespace procpool::mpi {

/// procpool::Pool over MPI ranks: the same calls, options, results and
/// errors. Every rank runs the same program and builds the same pools in the
/// same order (SPMD). On rank 0 the pool is an ordinary pool whose workers are
/// the other ranks; on every other rank the constructor serves: it forks a
/// local procpool::Pool of worker processes, runs the chunks rank 0 sends in
/// it, and returns when rank 0 closes or destroys its pool. A task that
/// crashes fails its item with worker_lost, as on one machine; the rank and
/// the job go on.
///
/// @code
/// int main(int argc, char** argv) {
///   procpool::mpi::session mpi(argc, argv);
///   procpool::mpi::Pool pool([](long x) { return x * x; });  // ranks 1.. serve here
///   if (!pool.is_master()) return 0;
///   std::vector<long> r = pool.map(std::vector<long>{1, 2, 3});  // {1, 4, 9}
/// }
/// @endcode
template <class F>
class Pool {
 public:
  /// @p processes: workers per serving rank (0: this node's CPUs shared among its serving ranks).
  explicit Pool(F f, std::size_t processes = 0)
      : Pool(std::move(f), pool_options{.processes = processes}) {}
  /// @p options as for procpool::Pool; processes, queue_bytes, initializer,
  /// task_timeout, retries, max_tasks_per_child and max_memory_per_child apply
  /// to each serving rank's local pool.
  Pool(F f, const pool_options& options);
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) = delete;
  /// On rank 0, terminates the pool (as procpool::Pool's destructor does),
  /// which also ends the serving ranks' part of it.
  ~Pool() {
    if (m_) m_->terminate();
  }

  /// True on rank 0, where the calls are made; false on a serving rank, whose
  /// constructor has served the whole pool by the time it returns.
  bool is_master() const noexcept { return m_ != nullptr; }

  /// F over @p inputs, in order (Python's Pool.map).
  template <procpool::detail::input_range Range>
  auto map(Range&& inputs, map_options options = {}) {
    return collect_values<procpool::detail::call_style::unary>(std::forward<Range>(inputs), options);
  }
  /// Like map, but each item's value or error.
  template <procpool::detail::input_range Range>
  auto try_map(Range&& inputs, map_options options = {}) {
    auto j = collect<procpool::detail::call_style::unary>(std::forward<Range>(inputs), options);
    wait_done(j);
    return m_->locked([&] { return j->take_outcomes(); });
  }
  /// F(a, b, ...) for every tuple (a, b, ...) of @p inputs, in order.
  template <procpool::detail::input_range Range>
  auto starmap(Range&& inputs, map_options options = {}) {
    return collect_values<procpool::detail::call_style::apply>(std::forward<Range>(inputs), options);
  }
  /// Results in input order, lazily, with a bounded number in flight.
  template <procpool::detail::input_range Range>
  auto imap(Range&& inputs, map_options options = {}) {
    return stream<true>(std::forward<Range>(inputs), options);
  }
  /// Like imap, in the order results complete.
  template <procpool::detail::input_range Range>
  auto imap_unordered(Range&& inputs, map_options options = {}) {
    return stream<false>(std::forward<Range>(inputs), options);
  }
  /// F(args...) on a serving rank, waiting for the value.
  template <class... Args>
  auto apply(Args&&... args) {
    return apply_async(std::forward<Args>(args)...).get();
  }
  /// F(args...) on a serving rank; returns at once.
  template <class... Args>
    requires(!procpool::detail::starts_with_call_options<Args...>)
  auto apply_async(Args&&... args) {
    return apply_with(call_options{}, std::forward<Args>(args)...);
  }
  /// apply_async with @p options (a timeout of its own).
  template <class... Args>
  auto apply_async(const call_options& options, Args&&... args) {
    return apply_with(options, std::forward<Args>(args)...);
  }
  /// map, returning at once.
  template <procpool::detail::input_range Range>
  auto map_async(Range&& inputs, map_options options = {}) {
    return collect_async<procpool::detail::call_style::unary>(std::forward<Range>(inputs), options);
  }
  /// starmap, returning at once.
  template <procpool::detail::input_range Range>
  auto starmap_async(Range&& inputs, map_options options = {}) {
    return collect_async<procpool::detail::call_style::apply>(std::forward<Range>(inputs), options);
  }

  /// No more work will be submitted; join() then finishes what was.
  void close() { master().close(); }
  /// Waits for submitted work to finish and the serving ranks to stop serving it.
  void join() { master().join(); }
  /// Stops now: unfinished work fails with pool_terminated.
  void terminate() { master().terminate(); }

  /// Workers on all serving ranks.
  std::size_t size() const { return master().size(); }
  /// The serving ranks: rank, host, pid, workers.
  std::vector<detail::rank_info> ranks() const { return master().ranks(); }

 private:
  detail::master& master() const {
    if (!m_)
      throw usage_error("procpool::mpi::Pool: calls are made on rank 0; this rank served the "
                        "pool in its constructor (check is_master())");
    return *m_;
  }

  template <procpool::detail::call_style S, class Range>
  static auto check_input() {
    using Arg = std::remove_cvref_t<procpool::detail::range_value_t<Range>>;
    if constexpr (S == procpool::detail::call_style::unary)
      static_assert(std::is_invocable_v<F&, Arg&&>,
                    "procpool::mpi::Pool: the pool's function cannot be called with the input "
                    "range's element type");
    else
      static_assert(requires(F& f, Arg&& a) { std::apply(f, std::move(a)); },
                    "procpool::mpi::Pool::starmap: the pool's function cannot be called with "
                    "the elements of the input's tuples");
    procpool::detail::require_transferable<Arg>();
    using R = procpool::detail::call_result_t<F, Arg, S>;
    if constexpr (!std::is_void_v<R>) procpool::detail::require_transferable<R>();
    return std::type_identity<Arg>{};
  }

  /// Python's rule, capped as procpool::Pool caps it.
  template <class Arg>
  std::size_t auto_chunksize(std::size_t n, std::size_t cap) const {
    if constexpr (procpool::detail::bitwise<Arg>)
      cap = std::min(cap, std::max<std::size_t>(1, m_->queue_capacity() /
                                                       procpool::detail::queue_fraction_per_chunk /
                                                       sizeof(Arg)));
    const std::size_t per = 4 * std::max<std::size_t>(size(), 1);
    return std::clamp<std::size_t>(n / per + (n % per ? 1 : 0), 1, cap);
  }

  template <class Job, procpool::detail::call_style S, class View, class Arg, class... JobArgs>
  std::shared_ptr<Job> start(View&& view, const map_options& options, std::size_t auto_cap,
                             JobArgs&&... job_args) {
    using V = std::remove_cvref_t<View>;
    const std::int64_t timeout_ns = procpool::detail::call_timeout_ns(options.timeout, "map_options");
    const std::size_t n = view.size_hint();
    auto j = std::make_shared<procpool::detail::input_job<Job, V, Arg>>(
        std::forward<View>(view), std::forward<JobArgs>(job_args)...);
    j->runner = reinterpret_cast<std::uint64_t>(&procpool::detail::run_chunk<F, Arg, S>);
    detail::runner_offset(j->runner);  // throws here, for the caller, when it cannot cross
    j->guided = options.chunksize == 0;
    j->total = n;
    j->chunksize = options.chunksize ? options.chunksize : auto_chunksize<Arg>(n, auto_cap);
    j->chunk_bytes = m_->queue_capacity() / 2;
    j->timeout_ns = timeout_ns;
    m_->submit(j);
    return j;
  }

  template <procpool::detail::call_style S, class Range>
  auto collect(Range&& inputs, map_options options) {
    master();
    using Arg = typename decltype(check_input<S, Range>())::type;
    using R = procpool::detail::stored_t<procpool::detail::call_result_t<F, Arg, S>>;
    if (options.buffersize)
      throw usage_error("procpool::mpi::Pool: map_options::buffersize bounds imap and "
                        "imap_unordered only; use imap, or leave it 0");
    auto view = procpool::detail::hold(std::forward<Range>(inputs));
    const std::size_t n = view.size_hint();
    return start<procpool::detail::collect_job<R>, S, decltype(view), Arg>(
        std::move(view), options, procpool::detail::map_chunk_cap, n);
  }

  template <class Job>
  void wait_done(const std::shared_ptr<Job>& j) {
    m_->run_until([&] { return j->complete(); });
  }

  template <procpool::detail::call_style S, class Range>
  auto collect_values(Range&& inputs, map_options options) {
    auto j = collect<S>(std::forward<Range>(inputs), options);
    wait_done(j);
    auto values = m_->locked([&] { return j->take_values(); });
    using Arg = std::remove_cvref_t<procpool::detail::range_value_t<Range>>;
    if constexpr (std::is_void_v<procpool::detail::call_result_t<F, Arg, S>>)
      return;
    else
      return values;
  }

  template <procpool::detail::call_style S, class Range>
  auto collect_async(Range&& inputs, map_options options) {
    using Arg = std::remove_cvref_t<procpool::detail::range_value_t<Range>>;
    using R = procpool::detail::stored_t<procpool::detail::call_result_t<F, Arg, S>>;
    auto j = collect<S>(std::forward<Range>(inputs), options);
    return async_result<std::vector<R>>(m_, j, [j] { return j->take_values(); });
  }

  template <bool Ordered, class Range>
  auto stream(Range&& inputs, map_options options) {
    master();
    using Arg = typename decltype(check_input<procpool::detail::call_style::unary, Range>())::type;
    using R = procpool::detail::stored_t<
        procpool::detail::call_result_t<F, Arg, procpool::detail::call_style::unary>>;
    auto view = procpool::detail::hold(std::forward<Range>(inputs));
    const std::size_t n = view.size_hint();
    const std::size_t workers = std::max<std::size_t>(size(), 1);
    const std::size_t cap = options.buffersize ? std::clamp<std::size_t>(options.buffersize / workers, 1,
                                                                         procpool::detail::imap_chunk_cap)
                                               : procpool::detail::imap_chunk_cap;
    const std::size_t chunk = options.chunksize ? options.chunksize : auto_chunksize<Arg>(n, cap);
    const std::size_t window =
        options.buffersize ? options.buffersize
                           : std::max<std::size_t>(procpool::detail::imap_chunks_per_worker *
                                                       workers * chunk,
                                                   procpool::detail::imap_min_window);
    auto j = start<procpool::detail::stream_job<R, Ordered>, procpool::detail::call_style::unary,
                   decltype(view), Arg>(std::move(view), options, cap, window);
    return imap_range<R, Ordered, detail::master>(m_, std::move(j));
  }

  template <class... Args>
  auto apply_with(const call_options& options, Args&&... args) {
    master();
    using Arg = std::tuple<std::decay_t<Args>...>;
    static_assert(requires(F& f, Arg&& a) { std::apply(f, std::move(a)); },
                  "procpool::mpi::Pool::apply_async: the pool's function cannot be called with "
                  "these arguments");
    using R = procpool::detail::call_result_t<F, Arg, procpool::detail::call_style::apply>;
    if constexpr (!std::is_void_v<R>) procpool::detail::require_transferable<R>();
    procpool::detail::require_transferable<Arg>();
    const std::int64_t timeout_ns = procpool::detail::call_timeout_ns(options.timeout, "apply_async");
    procpool::detail::byte_buffer msg;
    std::exception_ptr failed;
    try {
      procpool::detail::task_message::begin(msg);
      procpool::detail::encode_tuple_of<std::decay_t<Args>...>(msg, args...);
      if (procpool::detail::task_message::items_size(msg) > std::numeric_limits<std::uint32_t>::max())
        throw usage_error("procpool: one item encodes to over 4 GiB; split it");
    } catch (...) {
      failed = std::current_exception();
      msg = procpool::detail::byte_buffer();
    }
    using Job = procpool::detail::encoded_job<procpool::detail::collect_job<procpool::detail::stored_t<R>>>;
    auto j = std::make_shared<Job>(std::move(msg), std::move(failed));
    j->runner = reinterpret_cast<std::uint64_t>(
        &procpool::detail::run_chunk<F, Arg, procpool::detail::call_style::apply>);
    detail::runner_offset(j->runner);
    j->chunksize = 1;
    j->timeout_ns = timeout_ns;
    m_->submit(j);
    return async_result<R>(m_, j, [j]() -> R {
      auto values = j->take_values();
      if constexpr (!std::is_void_v<R>) return std::move(values.front());
    });
  }

  std::unique_ptr<F> fn_;  // on the heap: its address is what the local workers call
  std::shared_ptr<detail::master> m_;  // rank 0 only
};

// ---------------------------------------------------------------------------

namespace detail {

/// Workers per serving rank when the options leave it to the pool: this
/// node's CPUs shared among the serving ranks on it (rank 0 hands out work and
/// takes none).
inline std::size_t default_workers(const session& s) {
  const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
  std::size_t serving = static_cast<std::size_t>(std::max(s.local_size(), 1));
  // With the launcher's default placement, rank 0's node holds ranks 0 .. local_size - 1.
  if (s.rank() < s.local_size() && serving > 1) --serving;
  return std::max<std::size_t>(1, cpus / serving);
}

}  // namespace detail

template <class F>
Pool<F>::Pool(F f, const pool_options& options) : fn_(std::make_unique<F>(std::move(f))) {
  session& s = session::current();
  if (s.is_master() && s.open_pools() > 0)
    throw usage_error("procpool::mpi::Pool: another mpi::Pool is open on rank 0, and the serving "
                      "ranks serve one pool at a time; close() and join() it, or destroy it, "
                      "before building the next");
  const std::uint64_t serial = s.next_serial();
  const std::string fn_name = typeid(F).name();
  if (s.is_master()) {
    m_ = std::make_shared<detail::master>(s, serial, fn_name, options);
    return;
  }
  pool_options local = options;
  if (local.processes == 0) local.processes = detail::default_workers(s);
  // A worker forked once MPI runs inherits its handlers for fatal signals,
  // which print a backtrace for each task that crashes; the local pool
  // reports such a death itself (worker_lost), so the worker dies as by default.
  local.initializer = [user = options.initializer, &s] {
    if (s.mpi_running())
      for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(sig, SIG_DFL);
    if (user) user();
  };
  // The local workers are forked before this rank starts MPI (serve() does,
  // through session::comm()), when this is the first pool.
  const auto eng = std::make_shared<procpool::detail::engine>(local, static_cast<void*>(fn_.get()));
  detail::serve(s, serial, fn_name, *eng, local.processes);
}

}  // namespace procpool::mpi
