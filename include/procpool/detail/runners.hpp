// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The typed runners: the functions a worker calls to run a chunk, or an
// express cell, of one Pool<F>'s calls. Instantiated in the parent; a
// runner's address crosses to the worker, where (being a fork) it is the
// same function.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

#include "../codec.hpp"
#include "../process.hpp"
#include "call.hpp"
#include "express_cell.hpp"
#include "worker_loop.hpp"

namespace procpool::detail {

/// Runs one chunk in a worker: decodes each argument, calls F, encodes the
/// result or records the exception. Instantiated in the parent; its address
/// crosses to the worker, where (being a fork) it is the same function.
template <class F, class Arg, call_style S>
void run_chunk(void* fp, task_context& t) {
  F& f = *static_cast<F*>(fp);
  using R = call_result_t<F, Arg, S>;
  if constexpr (bitwise<Arg> && (std::is_void_v<R> || bitwise<R>)) {
    // Fixed-size arguments and results: read and write the blocks in place.
    const char* src = nullptr;
    try {
      src = t.items.take(static_cast<std::size_t>(t.count) * sizeof(Arg));
    } catch (...) {
      for (std::uint64_t i = 0; i < t.count; ++i) t.fail_current(i);
      return;
    }
    constexpr std::size_t rsize = std::is_void_v<R> ? 0 : sizeof(stored_t<R>);
    const std::size_t at = t.values.size();
    char* dst = t.values.grow(static_cast<std::size_t>(t.count) * rsize);
    std::size_t done = 0;
    t.begin_items();
    for (std::uint64_t i = 0; i < t.count; ++i) {
      t.next_item(i);
      Arg a = load_bitwise<Arg>(src + i * sizeof(Arg));
      try {
        if constexpr (std::is_void_v<R>) {
          call<F, Arg, S>(f, std::move(a));
        } else {
          const R r = call<F, Arg, S>(f, std::move(a));
          std::memcpy(dst + done * rsize, static_cast<const void*>(&r), rsize);
          ++done;
        }
      } catch (const exit_request&) {
        throw;  // procpool::exit(n) in a task ends the worker (its item: worker_lost)
      } catch (...) {
        t.fail_current(i);
      }
    }
    t.end_item();
    t.values.resize(at + done * rsize);
    return;
  } else {
    for (std::uint64_t i = 0; i < t.count; ++i) {
      t.begin_item(i);  // before decoding, so a crash in a user load() is blamed on the item
      std::optional<Arg> arg;
      const reader item_at = t.items;
      try {
        arg.emplace(decode<Arg>(t.items));
      } catch (const exit_request&) {
        throw;  // procpool::exit(n) in a load(): as in a task
      } catch (...) {
        // This item fails alone: the next one is found past its encoding,
        // unless the bytes are corrupted (then the rest of the chunk fails).
        t.fail_current(i);
        try {
          t.items = item_at;
          skip<Arg>(t.items);
        } catch (...) {
          for (++i; i < t.count; ++i) t.fail_current(i);
          t.end_item();
          return;
        }
        t.end_item();
        continue;
      }
      const std::size_t mark = t.values.size();
      try {
        if constexpr (std::is_void_v<R>)
          call<F, Arg, S>(f, std::move(*arg));
        else
          encode<R>(t.values, call<F, Arg, S>(f, std::move(*arg)));
      } catch (const exit_request&) {
        throw;  // procpool::exit(n) in a task ends the worker (its item: worker_lost)
      } catch (...) {
        t.values.resize(mark);
        t.fail_current(i);
      }
      t.end_item();
    }
  }
}

/// apply_async calls that may take the express lane: arguments and result of
/// fixed size that fit in a cell.
template <class R, class... Ts>
inline constexpr bool express_eligible =
    (bitwise<Ts> && ...) && (std::size_t{0} + ... + sizeof(Ts)) <= express_arg_bytes &&
    (std::is_void_v<R> || (bitwise<R> && sizeof(stored_t<R>) <= express_res_bytes));

/// Runs an express cell's call in a worker: decodes the arguments, calls F,
/// and writes the result, or records the exception, in the cell.
template <class F, class Arg>
void run_express(void* fp, express_cell& c) {
  F& f = *static_cast<F*>(fp);
  using R = call_result_t<F, Arg, call_style::apply>;
  try {
    reader r(c.arg, c.arg_size);
    Arg a = decode<Arg>(r);
    if constexpr (std::is_void_v<R>) {
      call<F, Arg, call_style::apply>(f, std::move(a));
      c.res_size = 0;
    } else {
      const R v = call<F, Arg, call_style::apply>(f, std::move(a));
      std::memcpy(c.res, static_cast<const void*>(&v), sizeof(R));
      c.res_size = sizeof(R);
    }
    c.status = status_ok;
  } catch (const exit_request&) {
    throw;  // procpool::exit(n) in a task ends the worker (the call: worker_lost)
  } catch (...) {
    put_cell_error(c);
  }
}

}  // namespace procpool::detail
