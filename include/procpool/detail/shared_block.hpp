// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The shared state of one synchronization primitive or shared value: a T
// constructed in an anonymous MAP_SHARED mapping of its own, so that every
// process forked after it is built sees the same T. Copies in one process
// share the mapping (and unmap it with the last one); a fork inherits it.

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/mapped_region.hpp>

#include "../errors.hpp"

namespace procpool::detail {

/// Maps @p bytes of anonymous shared memory, zeroed. @throws procpool::error
/// saying what @p who needed when the system has no room.
inline std::shared_ptr<boost::interprocess::mapped_region> map_shared(std::size_t bytes,
                                                                      const char* who) {
  try {
    return std::make_shared<boost::interprocess::mapped_region>(
        boost::interprocess::anonymous_shared_memory(bytes ? bytes : 1));
  } catch (const std::exception& e) {
    throw error(std::string(who) + ": could not map " + std::to_string(bytes) +
                " bytes of shared memory (" + e.what() + "); free memory or ask for less");
  }
}

/// A T in shared memory, followed by room for @p extra bytes (an Array's elements).
template <class T>
class shared_block {
  static_assert(std::is_nothrow_destructible_v<T>);

 public:
  /// Constructs T from @p args in a new mapping; @p who names the primitive in errors.
  template <class... Args>
  explicit shared_block(const char* who, std::size_t extra, Args&&... args)
      : region_(map_shared(sizeof(T) + extra, who)) {
    ::new (region_->get_address()) T(std::forward<Args>(args)...);
  }

  T& operator*() const noexcept { return *get(); }
  T* operator->() const noexcept { return get(); }
  T* get() const noexcept { return static_cast<T*>(region_->get_address()); }
  /// The @p extra bytes after the T.
  void* extra() const noexcept { return static_cast<char*>(region_->get_address()) + sizeof(T); }

 private:
  // T is never destroyed: another process may still use it when this one
  // unmaps it. The primitives keep only trivially destructible state there.
  static_assert(std::is_trivially_destructible_v<T>, "shared state is never destroyed");
  std::shared_ptr<boost::interprocess::mapped_region> region_;
};

}  // namespace procpool::detail
