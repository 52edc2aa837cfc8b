// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// How Pool<F> calls F: on what kind of input range, with which call style
// (one argument, or a tuple's elements), giving what result type.

#include <cstddef>
#include <functional>
#include <iterator>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

namespace procpool::detail {

// Ranges are taken through std::begin/std::end rather than std::ranges, which
// clang 14 cannot compile with libstdc++ 12; std::views still work with g++.

/// Anything a range-for loop accepts.
template <class R>
concept input_range = requires(R& r) {
  std::begin(r);
  std::end(r);
};

template <class R>
using range_value_t = std::remove_cvref_t<std::iter_value_t<decltype(std::begin(std::declval<R&>()))>>;

/// Holds an input range for the life of a job: a pointer to an lvalue range
/// (which must outlive the call, as for a range-for loop), the object itself
/// for an rvalue.
template <class R>
class range_holder {
 public:
  explicit range_holder(R&& r) : r_(std::move(r)) {}
  auto begin() { return std::begin(r_); }
  auto end() { return std::end(r_); }
  /// The number of items when the range knows it, else 0.
  std::size_t size_hint() {
    if constexpr (requires { std::size(r_); })
      return static_cast<std::size_t>(std::size(r_));
    else
      return 0;
  }

 private:
  R r_;
};

template <class R>
class range_holder<R&> {
 public:
  explicit range_holder(R& r) : r_(&r) {}
  auto begin() { return std::begin(*r_); }
  auto end() { return std::end(*r_); }
  std::size_t size_hint() {
    if constexpr (requires { std::size(*r_); })
      return static_cast<std::size_t>(std::size(*r_));
    else
      return 0;
  }

 private:
  R* r_;
};

template <class R>
range_holder<R> hold(R&& r) {
  return range_holder<R>(std::forward<R>(r));
}

enum class call_style { unary, apply };

template <class F, class Arg, call_style S>
decltype(auto) call(F& f, Arg&& a) {
  if constexpr (S == call_style::unary)
    return std::invoke(f, std::move(a));
  else
    return std::apply(f, std::move(a));
}

template <class F, class Arg, call_style S>
using call_result_t =
    std::remove_cvref_t<decltype(call<F, Arg, S>(std::declval<F&>(), std::declval<Arg&&>()))>;

/// void results travel as std::monostate (one byte, never looked at).
template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

}  // namespace procpool::detail
