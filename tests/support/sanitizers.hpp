// procpool tests: which sanitizer this test binary is built with.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// g++ defines __SANITIZE_*__; clang answers __has_feature instead.
#if defined(__SANITIZE_ADDRESS__)
#define PROCPOOL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCPOOL_TEST_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define PROCPOOL_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PROCPOOL_TEST_TSAN 1
#endif
#endif

namespace procpool_test {

#ifdef PROCPOOL_TEST_ASAN
inline constexpr bool under_asan = true;
#else
inline constexpr bool under_asan = false;
#endif
#ifdef PROCPOOL_TEST_TSAN
inline constexpr bool under_tsan = true;
#else
inline constexpr bool under_tsan = false;
#endif
/// ASan and TSan replace malloc with the sanitizer runtime's allocator.
inline constexpr bool sanitizer_malloc = under_asan || under_tsan;

}  // namespace procpool_test
