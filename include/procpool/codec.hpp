// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file codec.hpp
/// How values cross the process boundary.
///
/// - Trivially copyable types: one memcpy.
/// - std::vector and std::basic_string of trivially copyable elements: the size,
///   then the elements as one block; no per-element work.
/// - std::pair and std::tuple: element by element, each by these rules.
/// - Everything else that cereal can serialize: the standard containers and
///   vocabulary types (nested), and your own types with a cereal serialize()
///   (or save()/load()) function, through cereal's binary archive.
/// - Anything else, raw pointers, std::string_view and std::span included, is a
///   compile-time error naming the type: a pointer means nothing in another
///   process. procpool::transferable<T> tells which types qualify.

#include <cstddef>
#include <cstdint>
#include <istream>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/interprocess/streams/bufferstream.hpp>
#include <cereal/archives/binary.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/forward_list.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include "detail/buffer.hpp"
#include "errors.hpp"

namespace procpool {
namespace detail {

template <class T>
struct is_view_type : std::false_type {};
template <class C, class Tr>
struct is_view_type<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t N>
struct is_view_type<std::span<T, N>> : std::true_type {};

/// Trivially copyable and meaningful in another process.
template <class T>
concept bitwise = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                  !std::is_member_pointer_v<T> && !is_view_type<T>::value;

template <class T>
struct is_contiguous_bitwise : std::false_type {};
template <class T, class A>
  requires(bitwise<T> && !std::is_same_v<T, bool>)
struct is_contiguous_bitwise<std::vector<T, A>> : std::true_type {};
template <class C, class Tr, class A>
struct is_contiguous_bitwise<std::basic_string<C, Tr, A>> : std::true_type {};

template <class T>
struct is_tuple_like : std::false_type {};
template <class A, class B>
struct is_tuple_like<std::pair<A, B>> : std::true_type {};
template <class... Ts>
struct is_tuple_like<std::tuple<Ts...>> : std::true_type {};

template <class T>
concept cereal_serializable =
    !is_view_type<T>::value && !std::is_pointer_v<T> && std::is_default_constructible_v<T> &&
    cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value &&
    cereal::traits::is_input_serializable<T, cereal::BinaryInputArchive>::value;

template <class T>
struct transferable_impl;

}  // namespace detail

/// True when values of T can cross the process boundary (see codec.hpp).
template <class T>
concept transferable = detail::transferable_impl<std::remove_cvref_t<T>>::value;

namespace detail {

template <class T>
struct transferable_impl
    : std::bool_constant<bitwise<T> || is_contiguous_bitwise<T>::value || cereal_serializable<T>> {
};
template <class A, class B>
struct transferable_impl<std::pair<A, B>>
    : std::bool_constant<transferable<A> && transferable<B>> {};
template <class... Ts>
struct transferable_impl<std::tuple<Ts...>> : std::bool_constant<(transferable<Ts> && ...)> {};

/// Fails to compile, naming T, when T cannot cross the process boundary.
template <class T>
constexpr void require_transferable() {
  static_assert(!std::is_pointer_v<T>,
                "procpool: a raw pointer cannot cross a process boundary (it points into the "
                "sender's memory); send the value it points to");
  static_assert(!is_view_type<T>::value,
                "procpool: std::string_view and std::span cannot cross a process boundary (they "
                "refer to the sender's memory); use std::string or std::vector");
  static_assert(transferable<T>,
                "procpool: this type cannot cross a process boundary. Make it trivially "
                "copyable, or give it a cereal serialize() function and a default constructor "
                "(see 'What crosses the boundary' in README.md). The type is named in the "
                "'required from' lines below.");
}

/// A streambuf that appends to a byte_buffer, for cereal's output archive.
class buffer_streambuf : public std::streambuf {
 public:
  explicit buffer_streambuf(byte_buffer& b) : b_(b) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    b_.append(s, static_cast<std::size_t>(n));
    return n;
  }
  int_type overflow(int_type c) override {
    if (c != traits_type::eof()) {
      const char ch = traits_type::to_char_type(c);
      b_.append(&ch, 1);
    }
    return traits_type::not_eof(c);
  }

 private:
  byte_buffer& b_;
};

template <class T>
void encode(byte_buffer& out, const T& v);
template <class T>
T decode(reader& in);

template <class Tuple, std::size_t... I>
void encode_elements(byte_buffer& out, const Tuple& t, std::index_sequence<I...>) {
  (encode(out, std::get<I>(t)), ...);
}

template <class T>
void encode(byte_buffer& out, const T& v) {
  if constexpr (bitwise<T>) {
    out.append(&v, sizeof(T));
  } else if constexpr (is_contiguous_bitwise<T>::value) {
    const std::uint64_t n = v.size();
    out.append_value(n);
    out.append(v.data(), n * sizeof(typename T::value_type));
  } else if constexpr (is_tuple_like<T>::value) {
    encode_elements(out, v, std::make_index_sequence<std::tuple_size_v<T>>{});
  } else {
    require_transferable<T>();
    // A length prefix bounds what cereal may read back.
    const std::size_t at = out.size();
    out.grow(sizeof(std::uint64_t));
    {
      buffer_streambuf sb(out);
      std::ostream os(&sb);
      cereal::BinaryOutputArchive ar(os);
      ar(v);
    }
    const std::uint64_t n = out.size() - at - sizeof(std::uint64_t);
    std::memcpy(out.data() + at, &n, sizeof n);
  }
}

template <class T, std::size_t... I>
T decode_elements(reader& in, std::index_sequence<I...>) {
  // Braced initialization evaluates left to right, matching encode's order.
  return T{decode<std::tuple_element_t<I, T>>(in)...};
}

template <class T>
T decode(reader& in) {
  if constexpr (bitwise<T>) {
    T v;
    in.read(&v, sizeof(T));
    return v;
  } else if constexpr (is_contiguous_bitwise<T>::value) {
    using E = typename T::value_type;
    const auto n = in.read_value<std::uint64_t>();
    if (n > in.remaining() / sizeof(E))
      throw decode_error("procpool: a message claims " + std::to_string(n) +
                         " elements but holds fewer (truncated or corrupted data)");
    T v;
    v.resize(static_cast<std::size_t>(n));
    in.read(v.data(), static_cast<std::size_t>(n) * sizeof(E));
    return v;
  } else if constexpr (is_tuple_like<T>::value) {
    return decode_elements<T>(in, std::make_index_sequence<std::tuple_size_v<T>>{});
  } else {
    require_transferable<T>();
    const auto n = in.read_value<std::uint64_t>();
    if (n > in.remaining())
      throw decode_error("procpool: a message claims " + std::to_string(n) +
                         " bytes but holds fewer (truncated or corrupted data)");
    const char* p = in.take(static_cast<std::size_t>(n));
    boost::interprocess::ibufferstream is(p, static_cast<std::size_t>(n));
    T v;
    try {
      cereal::BinaryInputArchive ar(is);
      ar(v);
    } catch (const cereal::Exception& e) {
      throw decode_error(std::string("procpool: corrupted data crossed the process boundary: ") +
                         e.what());
    }
    return v;
  }
}

}  // namespace detail
}  // namespace procpool
