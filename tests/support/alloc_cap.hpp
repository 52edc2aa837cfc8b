// Test support: PROCPOOL_TEST_CAP_ALLOCATIONS(bytes), used once per binary at
// namespace scope, replaces the global operator new/delete so that any single
// allocation above `bytes` throws std::bad_alloc, with or without
// AddressSanitizer (whose own operator new aborts instead). A decoder that
// believed a corrupted size then fails visibly and quickly instead of
// allocating tens of GiB. It also counts big allocations, for tests that a
// path reuses its memory. Under ThreadSanitizer, which defines operator new
// itself, the macro expands to nothing; valgrind replaces what it defines.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#include "sanitizers.hpp"

namespace procpool_test {

/// The largest allocation refused so far (0: none).
inline std::atomic<std::size_t> largest_refused{0};
/// Allocations of big_from bytes or more so far, in this process.
inline constexpr std::size_t big_from = std::size_t{512} << 10;
inline std::atomic<std::size_t> big_allocations{0};

inline void* capped_alloc(std::size_t n, std::size_t cap) {
  if (n > cap) {
    largest_refused = n;
    throw std::bad_alloc();
  }
  if (n >= big_from) big_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}

inline void* capped_alloc_nothrow(std::size_t n, std::size_t cap) noexcept {
  try {
    return capped_alloc(n, cap);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace procpool_test

// Out of line, so that valgrind, which replaces operator new and delete, sees
// every call: an operator delete inlined into free() pairs new with free().
#define PROCPOOL_TEST_NOINLINE __attribute__((noinline))

#ifdef PROCPOOL_TEST_TSAN
#define PROCPOOL_TEST_CAP_ALLOCATIONS(cap)
#else
#define PROCPOOL_TEST_CAP_ALLOCATIONS(cap)                                                                 \
  PROCPOOL_TEST_NOINLINE void* operator new(std::size_t n) {                                               \
    return procpool_test::capped_alloc(n, cap);                                                            \
  }                                                                                                        \
  PROCPOOL_TEST_NOINLINE void* operator new[](std::size_t n) {                                             \
    return procpool_test::capped_alloc(n, cap);                                                            \
  }                                                                                                        \
  PROCPOOL_TEST_NOINLINE void* operator new(std::size_t n, const std::nothrow_t&) noexcept {               \
    return procpool_test::capped_alloc_nothrow(n, cap);                                                    \
  }                                                                                                        \
  PROCPOOL_TEST_NOINLINE void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {             \
    return procpool_test::capped_alloc_nothrow(n, cap);                                                    \
  }                                                                                                        \
  PROCPOOL_TEST_NOINLINE void operator delete(void* p) noexcept { std::free(p); }                          \
  PROCPOOL_TEST_NOINLINE void operator delete[](void* p) noexcept { std::free(p); }                        \
  PROCPOOL_TEST_NOINLINE void operator delete(void* p, std::size_t) noexcept { std::free(p); }             \
  PROCPOOL_TEST_NOINLINE void operator delete[](void* p, std::size_t) noexcept { std::free(p); }           \
  PROCPOOL_TEST_NOINLINE void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }   \
  PROCPOOL_TEST_NOINLINE void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#endif
