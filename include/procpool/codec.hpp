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

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <initializer_list>
#include <forward_list>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <variant>
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
#include "detail/posix.hpp"
#include "errors.hpp"

namespace procpool {
namespace detail {

template <class T>
struct is_view_type : std::false_type {};
template <class C, class Tr>
struct is_view_type<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t N>
struct is_view_type<std::span<T, N>> : std::true_type {};
template <class T>
struct is_view_type<std::reference_wrapper<T>> : std::true_type {};
template <class T>
struct is_view_type<std::initializer_list<T>> : std::true_type {};

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

/// cereal's binary input archive, reading through a bounds-checked reader, plus
/// one check: a size tag (an element count) larger than the bytes left is
/// rejected before cereal resizes a container to it, so corrupted bytes cannot
/// make the parent allocate gigabytes. (Elements of an empty class take no
/// bytes, so a container of them is limited to as many elements as bytes left.)
class bounded_input_archive
    : public cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision> {
 public:
  explicit bounded_input_archive(reader& r)
      : cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision>(this), r_(r) {}
  void loadBinary(void* data, std::streamsize size) { r_.read(data, static_cast<std::size_t>(size)); }
  std::size_t remaining() const noexcept { return r_.remaining(); }

 private:
  reader& r_;
};

template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                                                                    T& t) {
  if constexpr (std::is_same_v<T, bool>) {
    unsigned char b;
    ar.loadBinary(&b, 1);
    if (b > 1) throw decode_error("procpool: corrupted data: a bool byte holds " + std::to_string(b));
    t = b != 0;
  } else {
    ar.loadBinary(std::addressof(t), sizeof(t));
  }
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(bounded_input_archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(bounded_input_archive& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
  if (static_cast<std::uint64_t>(t.size) > ar.remaining())
    throw decode_error("procpool: corrupted data: a container claims " + std::to_string(t.size) +
                       " elements but only " + std::to_string(ar.remaining()) +
                       " bytes are left");
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::streamsize>(bd.size));
}

}  // namespace detail
}  // namespace procpool

// Half of CEREAL_SETUP_ARCHIVE_TRAITS: BinaryOutputArchive already names its
// own input archive, so only this direction is declared.
namespace cereal::traits::detail {
template <>
struct get_output_from_input<procpool::detail::bounded_input_archive> {
  using type = cereal::BinaryOutputArchive;
};
}  // namespace cereal::traits::detail

namespace procpool {
namespace detail {

template <class T>
concept cereal_serializable =
    !is_view_type<T>::value && !std::is_pointer_v<T> && std::is_default_constructible_v<T> &&
    cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value &&
    cereal::traits::is_input_serializable<T, bounded_input_archive>::value;

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

// Containers qualify when what they hold does (cereal would accept vector<int*>;
// std::optional<int*> and std::array<int*, 2> are even trivially copyable).
template <class... Ts>
struct all_transferable : std::bool_constant<(transferable<Ts> && ...)> {};
template <class T, bool Ok>
struct container_transferable
    : std::bool_constant<Ok && (bitwise<T> || is_contiguous_bitwise<T>::value ||
                                cereal_serializable<T>)> {};
template <class T, class A>
struct transferable_impl<std::vector<T, A>>
    : container_transferable<std::vector<T, A>, transferable<T>> {};
template <class T, class A>
struct transferable_impl<std::deque<T, A>>
    : container_transferable<std::deque<T, A>, transferable<T>> {};
template <class T, class A>
struct transferable_impl<std::list<T, A>>
    : container_transferable<std::list<T, A>, transferable<T>> {};
template <class T, class A>
struct transferable_impl<std::forward_list<T, A>>
    : container_transferable<std::forward_list<T, A>, transferable<T>> {};
template <class T, std::size_t N>
struct transferable_impl<std::array<T, N>>
    : container_transferable<std::array<T, N>, transferable<T>> {};
template <class T>
struct transferable_impl<std::optional<T>>
    : container_transferable<std::optional<T>, transferable<T>> {};
template <class... Ts>
struct transferable_impl<std::variant<Ts...>>
    : container_transferable<std::variant<Ts...>, all_transferable<Ts...>::value> {};
template <class K, class C, class A>
struct transferable_impl<std::set<K, C, A>>
    : container_transferable<std::set<K, C, A>, transferable<K>> {};
template <class K, class C, class A>
struct transferable_impl<std::multiset<K, C, A>>
    : container_transferable<std::multiset<K, C, A>, transferable<K>> {};
template <class K, class H, class E, class A>
struct transferable_impl<std::unordered_set<K, H, E, A>>
    : container_transferable<std::unordered_set<K, H, E, A>, transferable<K>> {};
template <class K, class V, class C, class A>
struct transferable_impl<std::map<K, V, C, A>>
    : container_transferable<std::map<K, V, C, A>, transferable<K> && transferable<V>> {};
template <class K, class V, class C, class A>
struct transferable_impl<std::multimap<K, V, C, A>>
    : container_transferable<std::multimap<K, V, C, A>, transferable<K> && transferable<V>> {};
template <class K, class V, class H, class E, class A>
struct transferable_impl<std::unordered_map<K, V, H, E, A>>
    : container_transferable<std::unordered_map<K, V, H, E, A>,
                             transferable<K> && transferable<V>> {};

/// Fails to compile, naming T, when T cannot cross the process boundary.
template <class T>
constexpr void require_transferable() {
  static_assert(!std::is_pointer_v<T>,
                "procpool: a raw pointer cannot cross a process boundary (it points into the "
                "sender's memory); send the value it points to");
  static_assert(!is_view_type<T>::value,
                "procpool: std::string_view, std::span, std::reference_wrapper and "
                "std::initializer_list cannot cross a process boundary (they refer to the "
                "sender's memory); send values: std::string, std::vector, the object itself");
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

/// A T from sizeof(T) bytes; T need not be default constructible.
template <class T>
T load_bitwise(const char* p) noexcept {
  std::array<char, sizeof(T)> bytes;
  std::memcpy(bytes.data(), p, sizeof(T));
  return std::bit_cast<T>(bytes);
}

template <class T>
void encode(byte_buffer& out, const T& v);
template <class T>
T decode(reader& in);
inline reader take_cereal_frame(reader& in);
template <class T>
T decode_cereal_body(reader& sub);

/// Values of T travel through cereal (not memcpy, not element-wise).
template <class T>
concept uses_cereal = !bitwise<T> && !is_contiguous_bitwise<T>::value && !is_tuple_like<T>::value;

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

/// Appends exactly what encode<std::tuple<Ts...>> would for a tuple of
/// @p args, without building the tuple (apply_async's arguments, copied once).
template <class... Ts>
void encode_tuple_of(byte_buffer& out, const Ts&... args) {
  using T = std::tuple<Ts...>;
  if constexpr (bitwise<T>)
    encode<T>(out, T(args...));  // std::tuple<> is trivially copyable: one byte
  else
    (encode<Ts>(out, args), ...);  // element by element, as encode_elements does
}

/// The count and the block of a contiguous container of E, consumed: sets
/// @p n and returns where the n elements' bytes start.
template <class E>
const char* take_elements(reader& in, std::uint64_t& n) {
  n = in.read_value<std::uint64_t>();
  if (n > in.remaining() / sizeof(E))
    throw decode_error("procpool: a message claims " + std::to_string(n) +
                       " elements but holds fewer (truncated or corrupted data)");
  return in.take(static_cast<std::size_t>(n) * sizeof(E));
}

template <class T, std::size_t... I>
T decode_elements(reader& in, std::index_sequence<I...>) {
  // Braced initialization evaluates left to right, matching encode's order.
  return T{decode<std::tuple_element_t<I, T>>(in)...};
}

template <class T>
T decode(reader& in) {
  if constexpr (std::is_same_v<T, bool>) {
    const auto b = static_cast<unsigned char>(*in.take(1));
    if (b > 1) throw decode_error("procpool: corrupted data: a bool byte holds " + std::to_string(b));
    return b != 0;
  } else if constexpr (bitwise<T>) {
    return load_bitwise<T>(in.take(sizeof(T)));
  } else if constexpr (is_contiguous_bitwise<T>::value) {
    using E = typename T::value_type;
    std::uint64_t n = 0;
    const char* p = take_elements<E>(in, n);
    const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(E);
    T v;
    v.reserve(static_cast<std::size_t>(n));
    // Only memory from std::allocator: a user's allocator keeps its own policy.
    if constexpr (std::is_same_v<typename T::allocator_type, std::allocator<E>>)
      advise_huge_pages(v.data(), bytes);
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(E) == 0) {
      // Copied straight from the bytes: no zero-fill first.
      const E* first = reinterpret_cast<const E*>(p);
      v.assign(first, first + n);
      return v;
    }
    v.resize(static_cast<std::size_t>(n));
    if (n) std::memcpy(static_cast<void*>(v.data()), p, bytes);
    return v;
  } else if constexpr (is_tuple_like<T>::value) {
    return decode_elements<T>(in, std::make_index_sequence<std::tuple_size_v<T>>{});
  } else {
    require_transferable<T>();
    reader sub = take_cereal_frame(in);
    return decode_cereal_body<T>(sub);
  }
}

template <class T>
void skip(reader& in);

template <class T, std::size_t... I>
void skip_elements(reader& in, std::index_sequence<I...>) {
  (skip<std::tuple_element_t<I, T>>(in), ...);
}

/// Moves @p in past one encoded T without decoding it. Every encoding is
/// self-delimiting (fixed size, a count, or a length prefix), so after one
/// value fails to decode (a user load() that threw) the next is found; only
/// corrupted bytes make this throw (decode_error).
template <class T>
void skip(reader& in) {
  if constexpr (bitwise<T>) {
    in.take(sizeof(T));
  } else if constexpr (is_contiguous_bitwise<T>::value) {
    std::uint64_t n = 0;
    take_elements<typename T::value_type>(in, n);
  } else if constexpr (is_tuple_like<T>::value) {
    skip_elements<T>(in, std::make_index_sequence<std::tuple_size_v<T>>{});
  } else {
    take_cereal_frame(in);
  }
}

/// The bytes of one cereal-encoded value (its length prefix consumed).
inline reader take_cereal_frame(reader& in) {
  const auto n = in.read_value<std::uint64_t>();
  if (n > in.remaining())
    throw decode_error("procpool: a message claims " + std::to_string(n) +
                       " bytes but holds fewer (truncated or corrupted data)");
  return reader(in.take(static_cast<std::size_t>(n)), static_cast<std::size_t>(n));
}

/// Decodes a value from the bytes take_cereal_frame() gave. Whatever it throws,
/// the outer reader is already past this value.
template <class T>
T decode_cereal_body(reader& sub) {
  T v;
  try {
    bounded_input_archive ar(sub);
    ar(v);
  } catch (const decode_error&) {
    throw;
  } catch (const std::exception& e) {
    // cereal's own errors, std::length_error from a resize, a user load() that threw.
    throw decode_error("procpool: could not decode a " + demangle(typeid(T).name()) + ": " +
                       e.what());
  }
  return v;
}

}  // namespace detail
}  // namespace procpool
