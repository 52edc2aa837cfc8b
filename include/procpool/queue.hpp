// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Queue<T>: Python's multiprocessing.Queue, between any processes forked
// after it is built. Items cross through procpool's codec (any
// transferable T, any size: a big item streams through the bounded ring).
// A producer or a consumer that dies at any instant stops no other: what a
// dying producer was writing is dropped, the rest is intact; a dying consumer
// loses at most the item it was reading (detail/queue_channel.hpp).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "codec.hpp"
#include "detail/buffer.hpp"
#include "detail/posix.hpp"
#include "detail/ring.hpp"
#include "errors.hpp"
#include "detail/queue_channel.hpp"
#include "detail/tuning.hpp"

namespace procpool {

namespace detail {

/// get()'s sink for a vector or string of trivially copyable elements: the
/// elements go from the ring straight into the value, as decode() would
/// leave them.
template <class T>
class contiguous_sink {
  using E = typename T::value_type;

 public:
  void clear() noexcept {
    v_.clear();
    got_ = 0;
  }
  void take(const byte_ring::pieces& sp, std::size_t off, std::size_t n) {
    if (got_ < sizeof count_) {  // the count first
      const std::size_t k = n < sizeof count_ - got_ ? n : sizeof count_ - got_;
      sp.copy(off, reinterpret_cast<char*>(&count_) + got_, k);
      got_ += k;
      off += k;
      n -= k;
      if (got_ < sizeof count_) return;
      if (count_ > (std::uint64_t{1} << 44) / sizeof(E))
        throw decode_error("procpool::Queue: an item claims " + std::to_string(count_) +
                           " elements: its bytes are corrupted");
      v_.resize(static_cast<std::size_t>(count_));
    }
    const std::size_t at = got_ - sizeof count_;
    if (n > v_.size() * sizeof(E) - at)
      throw decode_error("procpool::Queue: an item has more bytes than its count says");
    sp.copy(off, reinterpret_cast<char*>(v_.data()) + at, n);
    got_ += n;
  }
  T finish() {
    if (got_ < sizeof count_ || got_ - sizeof count_ != v_.size() * sizeof(E))
      throw decode_error("procpool::Queue: an item has fewer bytes than its count says");
    return std::move(v_);
  }

 private:
  T v_;
  std::uint64_t count_ = 0;
  std::size_t got_ = 0;  // bytes taken: the count's, then the elements'
};

/// Sends @p v through @p ch as one item (see queue_channel::put).
template <class T, class Alive = decltype(always)>
bool put_item(queue_channel& ch, const T& v, std::int64_t deadline, Alive alive = always) {
  if constexpr (detail::bitwise<T>) {
    return ch.put({reinterpret_cast<const char*>(&v), sizeof v}, {}, deadline, alive);
  } else if constexpr (detail::is_contiguous_bitwise<T>::value) {
    // As encode() writes it, without the copy: the count, then the elements.
    const std::uint64_t count = v.size();
    return ch.put({reinterpret_cast<const char*>(&count), sizeof count},
                  {reinterpret_cast<const char*>(v.data()), count * sizeof(typename T::value_type)},
                  deadline, alive);
  } else {
    alignas(16) char stack[detail::queue_stack_bytes];
    detail::byte_buffer b;
    b.borrow(stack, sizeof stack);  // grows onto the heap for a bigger item
    detail::encode(b, v);
    return ch.put({b.data(), b.size()}, {}, deadline, alive);
  }
}

/// Receives one item of type T from @p ch (see queue_channel::get).
template <class T, class Hooks = no_get_hooks>
std::optional<T> get_item(queue_channel& ch, std::int64_t deadline, Hooks hooks = {}) {
  if constexpr (detail::is_contiguous_bitwise<T>::value) {
    detail::contiguous_sink<T> sink;
    if (!ch.get(sink, deadline, hooks)) return std::nullopt;
    return sink.finish();
  } else {
    alignas(16) char stack[detail::queue_stack_bytes];
    detail::byte_buffer b;
    b.borrow(stack, sizeof stack);
    detail::buffer_sink sink{b};
    if (!ch.get(sink, deadline, hooks)) return std::nullopt;
    detail::reader r(b.data(), b.size());
    return detail::decode<T>(r);
  }
}

}  // namespace detail

/// Sizes of a Queue.
struct queue_options {
  std::size_t maxsize = 0;               ///< most items at once (0: no limit), as Python's
  std::size_t ring_bytes = 1 << 20;      ///< the shared ring; bigger items stream through it
};

/// A first-in first-out queue of T between processes.
/// @code
///   procpool::Queue<std::string> q;
///   procpool::Process producer([&] { q.put("hello"); });
///   producer.start();
///   std::string s = q.get();
/// @endcode
template <class T>
class Queue {
  static_assert((detail::require_transferable<T>(), true));

 public:
  /// A new, empty queue in shared memory. Copies are the same queue.
  explicit Queue(queue_options o = {}) : ch_(o.ring_bytes, o.maxsize, "procpool::Queue") {}

  /// Puts @p v, waiting while the queue is full (maxsize).
  /// @throws usage_error after close().
  void put(const T& v) { static_cast<void>(put_until(v, forever)); }
  /// Puts @p v, waiting at most @p timeout; false when it is still full then.
  template <class Rep, class Period>
  [[nodiscard]] bool put(const T& v, std::chrono::duration<Rep, Period> timeout) {
    return put_until(v, detail::deadline_after(timeout));
  }
  /// Puts @p v if there is room now (Python's put_nowait, which raises Full);
  /// it waits up to 10 ms for another producer that is writing an item.
  [[nodiscard]] bool put_nowait(const T& v) { return put_until(v, -1); }

  /// Takes the oldest item, waiting for one. @throws closed_error when the
  /// queue is closed and empty; decode_error when the bytes do not decode.
  T get() { return *get_until(forever); }
  /// Takes the oldest item, waiting at most @p timeout for one to begin
  /// (one that has begun is read to its end); nullopt when none came.
  template <class Rep, class Period>
  std::optional<T> get(std::chrono::duration<Rep, Period> timeout) {
    return get_until(detail::deadline_after(timeout));
  }
  /// An item if one is there now (Python's get_nowait, which raises Empty).
  std::optional<T> get_nowait() { return get_until(-1); }

  /// Whole items in the queue (approximate while others put and get). A
  /// process that died putting or getting is settled first.
  std::size_t qsize() const noexcept { return settled_qsize(detail::no_get_hooks{}); }
  bool empty() const noexcept { return qsize() == 0; }
  bool full() const noexcept { return ch_.maxsize() && qsize() >= ch_.maxsize(); }
  /// No more puts, in any process; gets take what is left, then throw closed_error.
  void close() noexcept { ch_.close(); }

 protected:
  Queue(queue_options o, const char* who) : ch_(o.ring_bytes, o.maxsize, who) {}
  static constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();
  bool put_until(const T& v, std::int64_t deadline) { return detail::put_item(ch_, v, deadline); }
  std::optional<T> get_until(std::int64_t deadline) { return detail::get_item<T>(ch_, deadline); }
  /// qsize after settling a producer or consumer that died holding its lock
  /// (@p hooks: the consumers' books, as in get).
  template <class Hooks>
  std::size_t settled_qsize(Hooks hooks) const noexcept {
    try {
      ch_.settle_dead_writer();
      ch_.settle_dead_reader(hooks);
    } catch (...) {  // a lock that cannot be taken: the count as it is
    }
    return ch_.qsize();
  }

  mutable detail::queue_channel ch_;  // qsize() settles dead peers' counts
};

/// Python's SimpleQueue: a Queue without a size limit.
template <class T>
using SimpleQueue = Queue<T>;

}  // namespace procpool
