// procpool tests: reading the outcomes try_map returns.
#pragma once

#include <exception>
#include <optional>

#include <catch2/catch.hpp>

#include "common.hpp"

namespace procpool_test {

/// A copy of the error of @p o as an E; nullopt, and the test marked failed,
/// when @p o holds a value or an error of another type.
template <class E, class Outcome>
std::optional<E> error_as(const Outcome& o) {
  if (o.ok()) {
    FAIL_CHECK("the outcome holds a value, not an error");
    return std::nullopt;
  }
  try {
    std::rethrow_exception(o.error());
  } catch (const E& e) {
    return e;
  } catch (const std::exception& e) {
    FAIL_CHECK("not " << procpool::detail::demangle(typeid(E).name()) << " but " << type_and_what(e));
  } catch (...) {
    FAIL_CHECK("not " << procpool::detail::demangle(typeid(E).name()) << " but a non-std exception");
  }
  return std::nullopt;
}

/// try_map's outcomes @p out where only item @p bad fails: out[bad] holds an
/// E, which @p check looks at; every other out[i] holds want(i).
template <class E, class Outcomes, class Want, class Check>
void check_only_failed(const Outcomes& out, std::size_t bad, Want want, Check check) {
  for (std::size_t i = 0; i < out.size(); ++i) {
    INFO("item " << i);
    if (i != bad) {
      REQUIRE(out[i].ok());
      CHECK(out[i].value() == want(static_cast<int>(i)));
      continue;
    }
    const auto e = error_as<E>(out[i]);
    REQUIRE(e);
    check(*e);
  }
}

}  // namespace procpool_test
