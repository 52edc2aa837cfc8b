// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The one place the version is kept: CMakeLists.txt reads these three lines.
#define PROCPOOL_VERSION_MAJOR 0
#define PROCPOOL_VERSION_MINOR 1
#define PROCPOOL_VERSION_PATCH 0

#define PROCPOOL_VERSION \
  (PROCPOOL_VERSION_MAJOR * 10000 + PROCPOOL_VERSION_MINOR * 100 + PROCPOOL_VERSION_PATCH)
