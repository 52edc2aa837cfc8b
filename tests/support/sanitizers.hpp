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
