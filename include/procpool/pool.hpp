// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file pool.hpp
/// procpool::Pool, Python's multiprocessing.Pool with C++ types.

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
#include <iterator>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "codec.hpp"
#include "detail/engine.hpp"
#include "errors.hpp"
#include "options.hpp"

namespace procpool {

/// One item's outcome: its value, or the exception it failed with
/// (task_error, worker_lost, task_timeout, ...). What try_map returns.
template <class T>
class outcome {
 public:
  outcome(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  outcome(std::exception_ptr e) : v_(std::in_place_index<1>, std::move(e)) {}

  /// True when the item produced a value.
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  /// The value; rethrows the item's exception when it failed.
  T& value() & {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(v_);
  }
  const T& value() const& {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(v_);
  }
  T&& value() && { return std::move(value()); }
  /// The exception, or nullptr when ok().
  std::exception_ptr error() const noexcept { return ok() ? nullptr : std::get<1>(v_); }

 private:
  std::variant<T, std::exception_ptr> v_;
};

namespace detail {

// Ranges are taken through std::begin/std::end rather than std::ranges, which
// clang 14 cannot compile with libstdc++ 12; std::views still work with g++.

/// Anything a range-for loop accepts.
template <class R>
concept input_range = requires(R& r) {
  std::begin(r);
  std::end(r);
};

template <class R>
using range_value_t = std::remove_cvref_t<std::iter_value_t<decltype(std::begin(std::declval<R&>()))>>;

/// Holds an input range for the life of a job: a pointer to an lvalue range
/// (which must outlive the call, as for a range-for loop), the object itself
/// for an rvalue.
template <class R>
class range_holder {
 public:
  explicit range_holder(R&& r) : r_(std::move(r)) {}
  auto begin() { return std::begin(r_); }
  auto end() { return std::end(r_); }
  /// The number of items when the range knows it, else 0.
  std::size_t size_hint() {
    if constexpr (requires { std::size(r_); })
      return static_cast<std::size_t>(std::size(r_));
    else
      return 0;
  }

 private:
  R r_;
};

template <class R>
class range_holder<R&> {
 public:
  explicit range_holder(R& r) : r_(&r) {}
  auto begin() { return std::begin(*r_); }
  auto end() { return std::end(*r_); }
  std::size_t size_hint() {
    if constexpr (requires { std::size(*r_); })
      return static_cast<std::size_t>(std::size(*r_));
    else
      return 0;
  }

 private:
  R* r_;
};

template <class R>
range_holder<R> hold(R&& r) {
  return range_holder<R>(std::forward<R>(r));
}

enum class call_style { unary, apply };

template <class F, class Arg, call_style S>
decltype(auto) call(F& f, Arg&& a) {
  if constexpr (S == call_style::unary)
    return std::invoke(f, std::move(a));
  else
    return std::apply(f, std::move(a));
}

template <class F, class Arg, call_style S>
using call_result_t =
    std::remove_cvref_t<decltype(call<F, Arg, S>(std::declval<F&>(), std::declval<Arg&&>()))>;

/// void results travel as std::monostate (one byte, never looked at).
template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// Runs one chunk in a worker: decodes each argument, calls F, encodes the
/// result or records the exception. Instantiated in the parent; its address
/// crosses to the worker, where (being a fork) it is the same function.
template <class F, class Arg, call_style S>
void run_chunk(void* fp, task_context& t) {
  F& f = *static_cast<F*>(fp);
  using R = call_result_t<F, Arg, S>;
  if constexpr (bitwise<Arg> && (std::is_void_v<R> || bitwise<R>)) {
    // Fixed-size arguments and results: read and write the blocks in place.
    const char* src = nullptr;
    try {
      src = t.items.take(static_cast<std::size_t>(t.count) * sizeof(Arg));
    } catch (...) {
      for (std::uint64_t i = 0; i < t.count; ++i) t.fail_current(i);
      return;
    }
    constexpr std::size_t rsize = std::is_void_v<R> ? 0 : sizeof(stored_t<R>);
    const std::size_t at = t.values.size();
    char* dst = t.values.grow(static_cast<std::size_t>(t.count) * rsize);
    std::size_t done = 0;
    t.begin_items();
    for (std::uint64_t i = 0; i < t.count; ++i) {
      t.next_item(i);
      Arg a = load_bitwise<Arg>(src + i * sizeof(Arg));
      try {
        if constexpr (std::is_void_v<R>) {
          call<F, Arg, S>(f, std::move(a));
        } else {
          const R r = call<F, Arg, S>(f, std::move(a));
          std::memcpy(dst + done * rsize, static_cast<const void*>(&r), rsize);
          ++done;
        }
      } catch (const exit_request&) {
        throw;  // procpool::exit(n) in a task ends the worker (its item: worker_lost)
      } catch (...) {
        t.fail_current(i);
      }
    }
    t.end_item();
    t.values.resize(at + done * rsize);
    return;
  } else {
    for (std::uint64_t i = 0; i < t.count; ++i) {
      t.begin_item(i);  // before decoding, so a crash in a user load() is blamed on the item
      std::optional<Arg> arg;
      try {
        arg.emplace(decode<Arg>(t.items));
      } catch (const exit_request&) {
        throw;  // procpool::exit(n) in a load(): as in a task
      } catch (...) {
        // The rest of the chunk cannot be found without this item's length.
        for (; i < t.count; ++i) t.fail_current(i);
        t.end_item();
        return;
      }
      const std::size_t mark = t.values.size();
      try {
        if constexpr (std::is_void_v<R>)
          call<F, Arg, S>(f, std::move(*arg));
        else
          encode<R>(t.values, call<F, Arg, S>(f, std::move(*arg)));
      } catch (const exit_request&) {
        throw;  // procpool::exit(n) in a task ends the worker (its item: worker_lost)
      } catch (...) {
        t.values.resize(mark);
        t.fail_current(i);
      }
      t.end_item();
    }
  }
}

/// apply_async calls that may take the express lane: arguments and result of
/// fixed size that fit in a cell.
template <class R, class... Ts>
inline constexpr bool express_eligible =
    (bitwise<Ts> && ...) && (std::size_t{0} + ... + sizeof(Ts)) <= express_arg_bytes &&
    (std::is_void_v<R> || (bitwise<R> && sizeof(stored_t<R>) <= express_res_bytes));

/// Runs an express cell's call in a worker: decodes the arguments, calls F,
/// and writes the result, or records the exception, in the cell.
template <class F, class Arg>
void run_express(void* fp, express_cell& c) {
  F& f = *static_cast<F*>(fp);
  using R = call_result_t<F, Arg, call_style::apply>;
  try {
    reader r(c.arg, c.arg_size);
    Arg a = decode<Arg>(r);
    if constexpr (std::is_void_v<R>) {
      call<F, Arg, call_style::apply>(f, std::move(a));
      c.res_size = 0;
    } else {
      const R v = call<F, Arg, call_style::apply>(f, std::move(a));
      std::memcpy(c.res, static_cast<const void*>(&v), sizeof(R));
      c.res_size = sizeof(R);
    }
    c.status = status_ok;
  } catch (const exit_request&) {
    throw;  // procpool::exit(n) in a task ends the worker (the call: worker_lost)
  } catch (...) {
    put_cell_error(c);
  }
}

/// An async_result's claim on an express cell: drops it when destroyed unread.
class express_handle {
 public:
  express_handle() = default;
  express_handle(std::shared_ptr<engine> e, engine::express_ticket t)
      : eng_(std::move(e)), t_(t) {}
  express_handle(express_handle&& o) noexcept : eng_(std::move(o.eng_)), t_(o.t_) {}
  express_handle& operator=(express_handle&& o) noexcept {
    if (this != &o) {
      reset();
      eng_ = std::move(o.eng_);
      t_ = o.t_;
    }
    return *this;
  }
  ~express_handle() { reset(); }
  explicit operator bool() const noexcept { return eng_ != nullptr; }

  bool wait(std::int64_t deadline) { return eng_->express_wait(t_, deadline); }
  /// The finished cell's value; throws its error. Frees the cell.
  template <class T>
  T take() {
    const std::shared_ptr<engine> e = std::move(eng_);
    express_cell& c = e->cell(t_);
    if (c.status == status_exception) std::rethrow_exception(e->take_cell_error(t_));
    if (c.status == status_task_error) {
      const char* p = c.res;
      const std::size_t n = c.res_size;
      const std::size_t type_len = ::strnlen(p, n);
      std::string type(p, type_len);
      std::string what = type_len < n ? std::string(p + type_len + 1, n - type_len - 1) : "";
      e->express_release(t_);
      throw task_error(0, type, what);
    }
    if constexpr (std::is_void_v<T>) {
      e->express_release(t_);
    } else {
      T v = load_bitwise<T>(c.res);
      e->express_release(t_);
      return v;
    }
  }

 private:
  void reset() noexcept {
    if (eng_) eng_->express_drop(t_);
    eng_.reset();
  }
  // Its own reference: the cell is dropped whatever order an async_result's
  // members are destroyed or assigned in.
  std::shared_ptr<engine> eng_;
  engine::express_ticket t_;
};

/// A job whose results are stored by subclasses through store()/store_error().
template <class R>
class result_job : public job {
 public:
  void deliver(std::uint64_t base, std::uint64_t count, const std::vector<item_failure>& failed,
               reader& values) override {
    std::size_t e = 0;
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::uint64_t index = base + i;
      if (e < failed.size() && failed[e].local == i) {
        store_error(index, std::make_exception_ptr(
                               task_error(index, failed[e].type, failed[e].message)));
        ++e;
        continue;
      }
      try {
        if constexpr (std::is_same_v<R, std::monostate>) {
          store(index, R{});
        } else if constexpr (uses_cereal<R>) {
          // Length-prefixed: a value whose load() throws fails alone.
          reader sub = take_cereal_frame(values);
          std::optional<R> v;
          try {
            v.emplace(decode_cereal_body<R>(sub));
          } catch (...) {
            store_error(index, std::current_exception());
            continue;
          }
          store(index, std::move(*v));
        } else {
          store(index, decode<R>(values));
        }
      } catch (...) {
        // A decode_error, or a user load() that threw: the rest of the chunk
        // cannot be found without this value's length.
        for (; i < count; ++i) store_error(base + i, std::current_exception());
        return;
      }
    }
  }
  void fail(std::uint64_t index, std::exception_ptr e) override { store_error(index, std::move(e)); }

 protected:
  virtual void store(std::uint64_t index, R&& value) = 0;
  virtual void store_error(std::uint64_t index, std::exception_ptr e) = 0;
};

/// Results gathered into a vector, for map, map_async, starmap, apply_async, try_map.
template <class R>
class collect_job : public result_job<R> {
 public:
  /// @p expected: the number of items when known, to size the results once.
  explicit collect_job(std::size_t expected = 0) {
    values_.reserve(expected);
    if constexpr (!std::is_same_v<slot_type, bool>)  // written as results come
      advise_huge_pages(values_.data(), expected * sizeof(slot_type));
  }

  using slot_type = std::conditional_t<std::default_initializable<R>, R, std::optional<R>>;

  void deliver(std::uint64_t base, std::uint64_t count, const std::vector<item_failure>& failed,
               reader& values) override {
    // The common case, one block of fixed-size values: copy it straight into place.
    if (failed.empty()) {
      if (char* dst = place(base, count, values.remaining())) {
        values.read(dst, values.remaining());
        return;
      }
    }
    result_job<R>::deliver(base, count, failed, values);
  }
  char* place(std::uint64_t base, std::uint64_t count, std::size_t bytes) override {
    if constexpr (bitwise<R> && std::default_initializable<R> && !std::is_same_v<R, bool>) {
      if (bytes == count * sizeof(R)) {
        grow_to(base + count);
        return reinterpret_cast<char*>(values_.data() + base);
      }
    }
    return nullptr;
  }
  void abort(std::exception_ptr e) override {
    if (!this->aborted) abort_error_ = std::move(e);
    this->aborted = true;
  }

  /// The values, by index; throws the error of the lowest failing index.
  std::vector<R> take_values() {
    if (abort_error_) std::rethrow_exception(abort_error_);
    if (!errors_.empty()) {
      auto it = std::min_element(errors_.begin(), errors_.end(),
                                 [](auto& a, auto& b) { return a.first < b.first; });
      std::rethrow_exception(it->second);
    }
    if constexpr (std::is_same_v<slot_type, R>) {
      return std::move(values_);
    } else {
      std::vector<R> out;
      out.reserve(values_.size());
      for (auto& v : values_) out.push_back(std::move(*v));
      return out;
    }
  }
  /// Every item's outcome (try_map).
  std::vector<outcome<R>> take_outcomes() {
    if (abort_error_) std::rethrow_exception(abort_error_);
    std::vector<std::exception_ptr> err(values_.size());
    for (auto& [i, e] : errors_) {
      if (i >= err.size()) err.resize(i + 1);
      err[i] = e;
    }
    std::vector<outcome<R>> out;
    out.reserve(err.size());
    for (std::size_t i = 0; i < err.size(); ++i) {
      if (err[i])
        out.emplace_back(err[i]);
      else if constexpr (std::is_same_v<slot_type, R>)
        out.emplace_back(std::move(values_[i]));
      else
        out.emplace_back(std::move(*values_[i]));
    }
    return out;
  }

 protected:
  void store(std::uint64_t index, R&& value) override {
    grow_to(index + 1);
    values_[index] = std::move(value);
  }
  void store_error(std::uint64_t index, std::exception_ptr e) override {
    grow_to(index + 1);
    errors_.emplace_back(index, std::move(e));
  }

 private:
  void grow_to(std::uint64_t n) {
    if (values_.size() < n) values_.resize(static_cast<std::size_t>(n));
  }
  std::vector<slot_type> values_;
  std::vector<std::pair<std::uint64_t, std::exception_ptr>> errors_;
  std::exception_ptr abort_error_;  // the pool was terminated or broke
};

/// Results handed out one by one as they come (imap) or in order (imap, ordered).
/// At most `window` items are in flight or waiting to be read, so memory stays bounded.
template <class R, bool Ordered>
class stream_job : public result_job<R> {
 public:
  explicit stream_job(std::size_t window) : window_(window) {}

  bool accepting(std::uint64_t next_index) const { return next_index - consumed_ < window_; }
  /// True when next() has something (a value, an error, or the end).
  bool has_next() const {
    if (aborted_error_ && !abort_reported_) return true;
    if constexpr (Ordered) {
      if (!pending_.empty() && pending_.begin()->first == next_) return true;
    } else {
      if (!ready_.empty()) return true;
    }
    // The input failed: its error comes once every item read has come out.
    return input_error_ && !input_error_reported_ && this->complete();
  }
  bool finished() const { return this->complete() && !has_next(); }
  /// Takes the next outcome; call when has_next().
  outcome<R> next() {
    ++consumed_;
    if constexpr (Ordered) {
      if (!pending_.empty() && pending_.begin()->first == next_) {
        auto node = pending_.extract(pending_.begin());
        ++next_;
        return std::move(node.mapped());
      }
    } else {
      if (!ready_.empty()) {
        outcome<R> o = std::move(ready_.front());
        ready_.pop_front();
        return o;
      }
    }
    // Aborted (terminated): report it once, then the range ends.
    if (aborted_error_ && !abort_reported_) {
      abort_reported_ = true;
      return outcome<R>(aborted_error_);
    }
    input_error_reported_ = true;
    return outcome<R>(input_error_);
  }
  void abort(std::exception_ptr e) override {
    if (!this->aborted) aborted_error_ = std::move(e);
    this->aborted = true;
  }
  /// The reader went away: stop handing out input.
  void cancel() { this->aborted = true; }
  /// Items read so far still come out (as in Python); then @p e, once.
  void input_failed(std::exception_ptr e) override { input_error_ = std::move(e); }
  /// join(): every item runs; results wait for the reader however many.
  void lift_window() override { window_ = std::numeric_limits<std::size_t>::max(); }

 protected:
  void store(std::uint64_t index, R&& value) override { put(index, outcome<R>(std::move(value))); }
  void store_error(std::uint64_t index, std::exception_ptr e) override {
    put(index, outcome<R>(std::move(e)));
  }

 private:
  void put(std::uint64_t index, outcome<R>&& o) {
    if constexpr (Ordered)
      pending_.emplace(index, std::move(o));
    else
      ready_.push_back(std::move(o));
  }
  std::size_t window_;
  std::uint64_t consumed_ = 0;
  std::uint64_t next_ = 0;
  std::map<std::uint64_t, outcome<R>> pending_;
  std::deque<outcome<R>> ready_;
  std::exception_ptr aborted_error_;
  bool abort_reported_ = false;
  std::exception_ptr input_error_;  // reading or encoding the input failed
  bool input_error_reported_ = false;
};

/// Feeds a job from an input view, encoding items as chunks are requested.
template <class Base, class View, class Arg>
class input_job final : public Base {
 public:
  template <class... BaseArgs>
  explicit input_job(View view, BaseArgs&&... base_args)
      : Base(std::forward<BaseArgs>(base_args)...),
        view_(std::move(view)),
        it_(std::begin(view_)) {
    done_ = it_ == std::end(view_);
  }

  std::size_t next_items(byte_buffer& out, std::vector<std::uint32_t>& offsets,
                         std::uint32_t& stride, std::size_t max, std::uint64_t& base) override {
    using It = decltype(it_);
    using Sent = decltype(std::end(view_));
    // The input failed after the items of the last chunk were read: now the error.
    if (deferred_) std::rethrow_exception(std::exchange(deferred_, nullptr));
    const std::size_t start = out.size();
    base = next_;
    std::size_t n = 0;
    if constexpr (bitwise<Arg>) {
      stride = sizeof(Arg);
      if constexpr (std::contiguous_iterator<It> && std::sized_sentinel_for<Sent, It> &&
                    std::is_same_v<std::iter_value_t<It>, Arg>) {
        // Contiguous trivially copyable input: the chunk is one block copy.
        n = std::min<std::size_t>(max, static_cast<std::size_t>(std::end(view_) - it_));
        while (n > 1 && !accepting_n(n)) n /= 2;
        if (n == 0 || !accepting_n(n)) return 0;
        out.append(std::to_address(it_), n * sizeof(Arg));
        it_ += static_cast<std::iter_difference_t<It>>(n);
        next_ += n;
        done_ = it_ == std::end(view_);
        return n;
      }
    }
    // A chunk stops growing at chunk_bytes (half a queue, so big items stream
    // one by one while the previous one is worked on), and always under 1 GiB
    // (offsets are 32-bit) unless one item alone is larger.
    const std::size_t max_chunk_bytes =
        std::min<std::size_t>(this->chunk_bytes ? this->chunk_bytes : ~std::size_t{0},
                              std::size_t{1} << 30);
    while (n < max && !done_ && accepting_n(1) && (n == 0 || out.size() - start < max_chunk_bytes)) {
      const std::size_t at = out.size(), marks = offsets.size();
      try {
        if (!stride) offsets.push_back(static_cast<std::uint32_t>(at - start));
        encode<Arg>(out, static_cast<const Arg&>(*it_));
      } catch (...) {
        // The items before this one go out; the error comes at the next call.
        out.resize(at);
        offsets.resize(marks);
        if (n == 0) throw;
        deferred_ = std::current_exception();
        break;
      }
      ++it_;
      ++n;
      ++next_;
      done_ = it_ == std::end(view_);
    }
    if (out.size() - start > std::numeric_limits<std::uint32_t>::max())
      throw usage_error("procpool: one item encodes to over 4 GiB; split it");
    return n;
  }
  bool input_done() const override { return done_; }
  void input_failed(std::exception_ptr e) override {
    done_ = true;
    Base::input_failed(std::move(e));
  }

 private:
  /// Whether @p n more items fit in the job's window (imap's bound on memory).
  bool accepting_n(std::size_t n) const {
    if constexpr (requires(const Base& b) { b.accepting(std::uint64_t{}); })
      return Base::accepting(next_ + n - 1);
    else
      return true;
  }
  View view_;
  decltype(std::begin(std::declval<View&>())) it_;
  std::exception_ptr deferred_;  // the input's error, after a chunk cut short by it
  std::uint64_t next_ = 0;
  bool done_ = false;
};

/// apply_async's one item, encoded when the call was made: the arguments are
/// copied once, into the message itself, not into a tuple first and then into
/// the message (for a 256 MiB argument, a copy and 65,536 page faults fewer).
template <class Base>
class encoded_job final : public Base {
 public:
  /// @p msg: chunk::items_at bytes of room for the headers, then the item;
  /// or @p failed: what encoding it threw, reported as the item's failure.
  encoded_job(byte_buffer msg, std::exception_ptr failed)
      : msg_(std::move(msg)), failed_(std::move(failed)) {}

  std::size_t next_items(byte_buffer& out, std::vector<std::uint32_t>& offsets,
                         std::uint32_t& stride, std::size_t max, std::uint64_t& base) override {
    if (done_ || max == 0) return 0;
    done_ = true;
    if (failed_) std::rethrow_exception(failed_);  // the engine fails the job with it
    base = 0;
    stride = 0;
    offsets.push_back(0);
    if (out.size() == chunk::items_at) {
      out = std::move(msg_);  // the message as built: headers are filled in on dispatch
    } else {
      out.append(msg_.data() + chunk::items_at, msg_.size() - chunk::items_at);
      msg_ = byte_buffer();
    }
    return 1;
  }
  bool input_done() const override { return done_; }

 private:
  byte_buffer msg_;
  std::exception_ptr failed_;
  bool done_ = false;
};

}  // namespace detail

/// The pending result of apply_async or map_async (Python's AsyncResult).
/// The work runs as soon as workers are free; get() or wait() also drive it.
template <class T>
class async_result {
 public:
  /// Waits for the result and returns it; throws the task's error
  /// (for map_async, the error of the lowest failing index). Call once.
  T get();
  /// Waits until the result is ready.
  void wait() { wait_until(std::numeric_limits<std::int64_t>::max()); }
  /// Waits at most @p timeout; true when ready.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::deadline_after(timeout));
  }
  /// True when the result (or error) is there; does not wait.
  bool ready() { return wait_for(std::chrono::nanoseconds(0)); }
  /// True when the call took the express lane (see README, "Express lane"), until get().
  bool express() const noexcept { return static_cast<bool>(cell_); }

 private:
  template <class>
  friend class Pool;
  async_result(std::shared_ptr<detail::engine> eng, std::shared_ptr<detail::job> job,
               std::function<T()> take)
      : eng_(std::move(eng)), job_(std::move(job)), take_(std::move(take)) {}
  async_result(std::shared_ptr<detail::engine> eng, detail::express_handle cell)
      : eng_(std::move(eng)), cell_(std::move(cell)) {}

  bool wait_until(std::int64_t deadline) {
    if (cell_) return cell_.wait(deadline);
    if (!job_) return true;  // an express result already taken
    return eng_->run_until([this] { return job_->complete(); }, deadline);
  }

  std::shared_ptr<detail::engine> eng_;
  std::shared_ptr<detail::job> job_;
  std::function<T()> take_;  // moves the value out of the job; under the engine's lock
  bool taken_ = false;
  detail::express_handle cell_;  // the express lane's cell, until taken (then no job_ either)
};

/// The results of imap / imap_unordered: an input range, read lazily.
/// Dereferencing an iterator at an item that failed throws that item's error;
/// incrementing past it goes on with the next. Destroying the range stops
/// feeding work (what is in flight finishes and is dropped).
template <class R, bool Ordered>
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
    advance();
    return iterator(this);
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  template <class>
  friend class Pool;
  imap_range(std::shared_ptr<detail::engine> eng, std::shared_ptr<job_type> job)
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

  std::shared_ptr<detail::engine> eng_;
  std::shared_ptr<job_type> job_;
  std::optional<outcome<R>> current_;
};

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

  /// F(args...) in a worker; returns at once.
  /// @code
  /// auto r = pool.apply_async(7);
  /// int v = r.get();
  /// @endcode
  template <class... Args>
  auto apply_async(Args&&... args);

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

  /// The number of worker processes.
  std::size_t size() const noexcept { return eng_->size(); }
  /// The pids of the live workers (they change when workers are replaced).
  std::vector<pid_t> pids() const { return eng_->pids(); }

 private:
  template <detail::call_style S, class Range>
  static auto check_input();

  /// Builds and submits the job of a map-like call over @p view. A
  /// @p chunksize of 0 picks one (auto_chunksize) and lets chunks shrink as the
  /// input drains (detail/scheduler.hpp).
  template <class Job, detail::call_style S, class View, class Arg, class... JobArgs>
  std::shared_ptr<Job> start(View&& view, std::size_t chunksize, std::size_t auto_cap,
                             JobArgs&&... job_args);

  /// Python's rule (len / (4 * processes), rounded up), capped at @p cap items;
  /// fixed-size items are also capped at 1/32 of a queue (32 KiB of arguments
  /// with the default queue), so chunks pipeline and stay in cache: for a map
  /// of 1M ints, best of 30 in one process, 8,192-item chunks took 1.22 ms
  /// here and 32,768 (the old 1/8) 1.41 ms.
  template <class Arg>
  std::size_t auto_chunksize(std::size_t n, std::size_t cap) const {
    if constexpr (detail::bitwise<Arg>)
      cap = std::min(cap, std::max<std::size_t>(1, eng_->queue_capacity() / 32 / sizeof(Arg)));
    const std::size_t per = 4 * size();
    const std::size_t c = n / per + (n % per ? 1 : 0);
    return std::clamp<std::size_t>(c, 1, cap);
  }

  template <detail::call_style S, class Range>
  auto collect(Range&& inputs, map_options options);

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

template <class T>
T async_result<T>::get() {
  wait();
  if constexpr (std::is_void_v<T> || detail::bitwise<T>) {
    if (cell_) {
      taken_ = true;
      return cell_.template take<T>();
    }
  }
  if (!job_)
    throw usage_error("procpool::async_result::get: the result was already taken; call get() once");
  return eng_->locked([&]() -> T {
    if (taken_)
      throw usage_error("procpool::async_result::get: the result was already taken; call get() once");
    taken_ = true;
    return take_();
  });
}

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
std::shared_ptr<Job> Pool<F>::start(View&& view, std::size_t chunksize, std::size_t auto_cap,
                                    JobArgs&&... job_args) {
  using V = std::remove_cvref_t<View>;
  const std::size_t n = view.size_hint();
  auto j = std::make_shared<detail::input_job<Job, V, Arg>>(std::forward<View>(view),
                                                            std::forward<JobArgs>(job_args)...);
  j->runner = reinterpret_cast<std::uint64_t>(&detail::run_chunk<F, Arg, S>);
  j->guided = chunksize == 0;
  j->total = n;
  j->chunksize = chunksize ? chunksize : auto_chunksize<Arg>(n, auto_cap);
  j->chunk_bytes = eng_->queue_capacity() / 2;
  eng_->submit(j);
  return j;
}

template <class F>
template <detail::call_style S, class Range>
auto Pool<F>::collect(Range&& inputs, map_options options) {
  using Arg = typename decltype(check_input<S, Range>())::type;
  using R = detail::stored_t<detail::call_result_t<F, Arg, S>>;
  auto view = detail::hold(std::forward<Range>(inputs));
  const std::size_t n = view.size_hint();
  auto j = start<detail::collect_job<R>, S, decltype(view), Arg>(
      std::move(view), options.chunksize, std::size_t{1} << 20, n);
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
  const std::size_t chunk = options.chunksize ? options.chunksize : auto_chunksize<Arg>(n, 256);
  const std::size_t window = std::max<std::size_t>(4 * size() * chunk, 64);
  auto j = start<detail::stream_job<R, Ordered>, detail::call_style::unary, decltype(view), Arg>(
      std::move(view), options.chunksize, 256, window);
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
auto Pool<F>::apply_async(Args&&... args) {
  using Arg = std::tuple<std::decay_t<Args>...>;
  static_assert(requires(F& f, Arg&& a) { std::apply(f, std::move(a)); },
                "procpool::Pool::apply_async: the pool's function cannot be called with these "
                "arguments");
  using R = detail::call_result_t<F, Arg, detail::call_style::apply>;
  if constexpr (!std::is_void_v<R>) detail::require_transferable<R>();
  detail::require_transferable<Arg>();
  // Encoded now, straight from the arguments (Arg's encoding, without building Arg).
  detail::byte_buffer msg;
  std::exception_ptr failed;
  try {
    msg.grow(detail::chunk::items_at);
    detail::encode_tuple_of<std::decay_t<Args>...>(msg, args...);
    if (msg.size() - detail::chunk::items_at > std::numeric_limits<std::uint32_t>::max())
      throw usage_error("procpool: one item encodes to over 4 GiB; split it");
  } catch (...) {
    failed = std::current_exception();
    msg = detail::byte_buffer();
  }
  if constexpr (detail::express_eligible<R, std::decay_t<Args>...>) {
    // The express lane, when a worker polls now on another CPU (see express_cell).
    detail::engine::express_ticket t;
    if (eng_->express_claim(t)) {
      detail::express_cell& c = eng_->cell(t);
      detail::byte_buffer b;
      b.borrow(c.arg, sizeof c.arg);  // fits: express_eligible bounds the size
      detail::encode_tuple_of<std::decay_t<Args>...>(b, args...);
      c.arg_size = static_cast<std::uint32_t>(b.size());
      c.runner = reinterpret_cast<std::uint64_t>(&detail::run_express<F, Arg>);
      c.chunk_runner =
          reinterpret_cast<std::uint64_t>(&detail::run_chunk<F, Arg, detail::call_style::apply>);
      eng_->express_post(t);
      return async_result<R>(eng_, detail::express_handle(eng_, t));
    }
  }
  using Job = detail::encoded_job<detail::collect_job<detail::stored_t<R>>>;
  auto j = std::make_shared<Job>(std::move(msg), std::move(failed));
  j->runner = reinterpret_cast<std::uint64_t>(&detail::run_chunk<F, Arg, detail::call_style::apply>);
  j->chunksize = 1;
  eng_->submit(j);
  return async_result<R>(eng_, j, [j]() -> R {
    auto values = j->take_values();
    if constexpr (!std::is_void_v<R>) return std::move(values.front());
  });
}

template <class F>
template <detail::call_style S, class Range>
auto Pool<F>::collect_async(Range&& inputs, map_options options) {
  using Arg = std::remove_cvref_t<detail::range_value_t<Range>>;
  using R = detail::stored_t<detail::call_result_t<F, Arg, S>>;
  auto j = collect<S>(std::forward<Range>(inputs), options);
  return async_result<std::vector<R>>(eng_, j, [j] { return j->take_values(); });
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
