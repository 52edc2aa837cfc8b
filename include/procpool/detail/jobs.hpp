// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The job kinds of Pool<F>: how a call's input is encoded into chunks and
// its results decoded and kept. result_job decodes; collect_job keeps a
// vector (map, apply_async, ...), stream_job hands results out one by one
// (imap); input_job feeds either from an input range, encoded_job from one
// already-encoded item (apply_async).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"
#include "../outcome.hpp"
#include "buffer.hpp"
#include "job.hpp"
#include "wire.hpp"

namespace procpool::detail {

/// A job whose results are stored by subclasses through store()/store_error().
template <class R>
class result_job : public job {
 public:
  std::size_t deliver(std::uint64_t base, std::uint64_t count,
                      const std::vector<item_failure>& failed, reader& values) override {
    std::size_t e = 0;
    std::size_t failures = 0;
    const auto store_failure = [&](std::uint64_t index, std::exception_ptr err) {
      ++failures;
      this->store_error(index, std::move(err));
    };
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::uint64_t index = base + i;
      if (e < failed.size() && failed[e].local == i) {
        store_failure(index, std::make_exception_ptr(
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
            store_failure(index, std::current_exception());
            continue;
          }
          store(index, std::move(*v));
        } else {
          // Fails alone too: the next value is found past this one's encoding.
          const reader value_at = values;
          std::optional<R> v;
          try {
            v.emplace(decode<R>(values));
          } catch (...) {
            store_failure(index, std::current_exception());
            values = value_at;
            skip<R>(values);
            continue;
          }
          store(index, std::move(*v));
        }
      } catch (...) {
        // Corrupted bytes (or no memory to store a value): the rest of the
        // chunk cannot be found.
        for (; i < count; ++i) store_failure(base + i, std::current_exception());
        return failures;
      }
    }
    return failures;
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
    if constexpr (!std::is_same_v<kept_type, bool>)  // written as results come
      advise_huge_pages(values_.data(), expected * sizeof(kept_type));
  }

  using kept_type = std::conditional_t<std::default_initializable<R>, R, std::optional<R>>;

  std::size_t deliver(std::uint64_t base, std::uint64_t count,
                      const std::vector<item_failure>& failed, reader& values) override {
    // The common case, one block of fixed-size values: copy it straight into place.
    if (failed.empty()) {
      if (char* dst = place(base, count, values.remaining())) {
        values.read(dst, values.remaining());
        return 0;
      }
    }
    return result_job<R>::deliver(base, count, failed, values);
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
  bool failed() const override { return abort_error_ || !errors_.empty(); }

  /// The values, by index; throws the error of the lowest failing index.
  std::vector<R> take_values() {
    if (abort_error_) std::rethrow_exception(abort_error_);
    if (!errors_.empty()) {
      auto it = std::min_element(errors_.begin(), errors_.end(),
                                 [](auto& a, auto& b) { return a.first < b.first; });
      std::rethrow_exception(it->second);
    }
    if constexpr (std::is_same_v<kept_type, R>) {
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
      else if constexpr (std::is_same_v<kept_type, R>)
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
  std::vector<kept_type> values_;
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
  /// @p msg: a task_message holding the item;
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
    if (task_message::empty(out)) {
      out = std::move(msg_);  // the message as built: headers are sealed on dispatch
    } else {
      out.append(task_message::items(msg_), task_message::items_size(msg_));
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


}  // namespace procpool::detail
