// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Value<T> and Array<T>: Python's multiprocessing.Value and Array, values in
// shared memory seen by the processes forked after they are built, each with
// an RLock (get_lock()). A holder of the lock that dies does not leave it
// locked (lock.hpp). Where std::atomic_ref<T> is lock-free, atomic() gives
// lock-free access.

#include <atomic>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "detail/shared_block.hpp"
#include "lock.hpp"

namespace procpool {
namespace detail {

template <class T, const char* Who>
constexpr bool shareable_value() {
  static_assert(std::is_trivially_copyable_v<T>,
                "procpool::Value / Array: the element type must be trivially copyable (as "
                "Python's ctypes are): it lives in shared memory, the same bytes in every "
                "process, so it cannot own heap memory (std::string, std::vector, pointers "
                "are meaningless in another process); pass such values as Process or Pool "
                "arguments instead");
  static_assert(alignof(T) <= 64, "procpool::Value / Array: alignment above 64 bytes");
  return true;
}
inline constexpr char value_name[] = "procpool::Value";
inline constexpr char array_name[] = "procpool::Array";

struct alignas(64) array_head {};

}  // namespace detail

/// A T shared by processes, with a lock.
/// @code
///   procpool::Value<long> counter(0);
///   // in each of several processes:
///   { std::lock_guard g(counter.get_lock()); counter.set(counter.get() + 1); }
///   // or, lock-free:
///   counter.atomic().fetch_add(1);
/// @endcode
template <class T>
class Value {
  static_assert(detail::shareable_value<T, detail::value_name>());

 public:
  /// A new shared value, @p v. Copies are the same value.
  explicit Value(const T& v = T{}) : value_(detail::value_name, 0, v) {}

  /// A copy of the value, read under its lock.
  T get() const {
    std::lock_guard g(lock_);
    return *value_;
  }
  /// Stores @p v under its lock.
  void set(const T& v) {
    std::lock_guard g(lock_);
    *value_ = v;
  }
  /// The lock get() and set() take; hold it to read and write as one step.
  RLock& get_lock() const noexcept { return lock_; }
  /// The value itself, for access under get_lock() (Python's get_obj()).
  T& get_obj() const noexcept { return *value_; }
  /// Lock-free atomic access, for types std::atomic_ref makes lock-free.
  std::atomic_ref<T> atomic() const noexcept
    requires std::atomic_ref<T>::is_always_lock_free
  {
    return std::atomic_ref<T>(*value_);
  }

 private:
  detail::shared_block<T> value_;
  mutable RLock lock_;
};

/// @p N (or a number given at run time) Ts shared by processes, with a lock.
/// Element access is not locked: hold get_lock(), or use atomic(i).
/// @code
///   procpool::Array<double> a(1000);      // zeros
///   procpool::Array<int, 3> b{1, 2, 3};
/// @endcode
template <class T, std::size_t N = std::dynamic_extent>
class Array {
  static_assert(detail::shareable_value<T, detail::array_name>());

 public:
  /// @p n copies of @p v (dynamic size only).
  explicit Array(std::size_t n, const T& v = T{})
    requires(N == std::dynamic_extent)
      : Array(sized{}, n) {
    std::uninitialized_fill_n(data(), n, v);
  }
  /// N value-initialized elements (fixed size only).
  Array()
    requires(N != std::dynamic_extent)
      : Array(sized{}, N) {
    std::uninitialized_value_construct_n(data(), N);
  }
  /// The elements @p init; for a fixed size, exactly N of them.
  Array(std::initializer_list<T> init) : Array(sized{}, N == std::dynamic_extent ? init.size() : N) {
    if (N != std::dynamic_extent && init.size() != N)
      throw usage_error(std::string(detail::array_name) + ": " + std::to_string(init.size()) +
                        " initial values for an Array of " + std::to_string(N));
    std::uninitialized_copy(init.begin(), init.end(), data());
  }

  std::size_t size() const noexcept { return n_; }
  T* data() const noexcept { return static_cast<T*>(block_.extra()); }
  T& operator[](std::size_t i) const noexcept { return data()[i]; }
  /// @throws std::out_of_range past the end.
  T& at(std::size_t i) const {
    if (i >= n_)
      throw std::out_of_range(std::string(detail::array_name) + "::at: index " + std::to_string(i) +
                              " of an Array of " + std::to_string(n_));
    return data()[i];
  }
  T* begin() const noexcept { return data(); }
  T* end() const noexcept { return data() + n_; }
  std::span<T, N> span() const noexcept { return std::span<T, N>(data(), n_); }
  /// The lock for reading and writing elements as one step.
  RLock& get_lock() const noexcept { return lock_; }
  /// Lock-free atomic access to element @p i.
  std::atomic_ref<T> atomic(std::size_t i) const noexcept
    requires std::atomic_ref<T>::is_always_lock_free
  {
    return std::atomic_ref<T>(data()[i]);
  }

 private:
  struct sized {};
  Array(sized, std::size_t n) : n_(n), block_(detail::array_name, checked_bytes(n)) {}
  static std::size_t checked_bytes(std::size_t n) {
    if (n > (std::size_t{1} << 46) / sizeof(T))
      throw usage_error(std::string(detail::array_name) + ": " + std::to_string(n) +
                        " elements is more memory than this machine maps");
    return n * sizeof(T);
  }

  std::size_t n_;
  detail::shared_block<detail::array_head> block_;
  mutable RLock lock_;
};

}  // namespace procpool
