// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file procpool.hpp
/// The umbrella header: include this one.

#include "version.hpp"
#include "errors.hpp"
#include "process.hpp"
#include "options.hpp"
#include "stats.hpp"
#include "codec.hpp"
#include "outcome.hpp"
#include "async_result.hpp"
#include "imap_range.hpp"
#include "pool.hpp"
#include "wait.hpp"
#include "lock.hpp"
#include "event.hpp"
#include "shared_value.hpp"
#include "shared_memory.hpp"
#include "queue.hpp"
#include "joinable_queue.hpp"
#include "pipe.hpp"
#include "barrier.hpp"
#include "condition.hpp"
#include "semaphore.hpp"
