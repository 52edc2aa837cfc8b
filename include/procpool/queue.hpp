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

#include "codec.hpp"
#include "detail/buffer.hpp"
#include "detail/posix.hpp"
#include "detail/queue_channel.hpp"
#include "detail/tuning.hpp"

namespace procpool {

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
  /// Puts @p v if there is room now (Python's put_nowait, which raises Full).
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

  /// Whole items in the queue (approximate while others put and get).
  std::size_t qsize() const noexcept { return ch_.qsize(); }
  bool empty() const noexcept { return qsize() == 0; }
  bool full() const noexcept { return ch_.maxsize() && qsize() >= ch_.maxsize(); }
  /// No more puts, in any process; gets take what is left, then throw closed_error.
  void close() noexcept { ch_.close(); }

 private:
  static constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();
  bool put_until(const T& v, std::int64_t deadline) {
    if constexpr (detail::bitwise<T>) {
      return ch_.put(reinterpret_cast<const char*>(&v), sizeof v, deadline);
    } else {
      alignas(16) char stack[detail::queue_stack_bytes];
      detail::byte_buffer b;
      b.borrow(stack, sizeof stack);  // grows onto the heap for a bigger item
      detail::encode(b, v);
      return ch_.put(b.data(), b.size(), deadline);
    }
  }
  std::optional<T> get_until(std::int64_t deadline) {
    alignas(16) char stack[detail::queue_stack_bytes];
    detail::byte_buffer b;
    b.borrow(stack, sizeof stack);
    if (!ch_.get(b, deadline)) return std::nullopt;
    detail::reader r(b.data(), b.size());
    return detail::decode<T>(r);
  }

  detail::queue_channel ch_;
};

/// Python's SimpleQueue: a Queue without a size limit.
template <class T>
using SimpleQueue = Queue<T>;

}  // namespace procpool
