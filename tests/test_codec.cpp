// Tests of procpool's codec (codec.hpp): what crosses the process boundary and
// how. Every value goes through procpool::detail::encode into a byte_buffer and
// back through procpool::detail::decode from a bounds-checked reader.
//
// The truncation tests copy every prefix into a heap block of exactly that size,
// so a decoder that reads one byte too far is caught by AddressSanitizer in the
// sanitizer build (and must throw procpool::decode_error in every build).
// Random and corrupted bytes decode to a value or throw decode_error, nothing
// else.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "support/common.hpp"

namespace codec_test {

using procpool::decode_error;
using procpool::detail::byte_buffer;
using procpool::detail::decode;
using procpool::detail::encode;
using procpool::detail::reader;

/// Trivially copyable: crosses as one memcpy.
struct Pod {
  int a;
  double b;
  char c[5];
  std::uint16_t d;
};
static_assert(std::is_trivially_copyable_v<Pod>);

/// A user type with a cereal serialize() member.
struct WithSerialize {
  int id = 0;
  std::string name;
  std::vector<double> values;
  std::map<std::string, int> tags;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, name, values, tags);
  }
  bool operator==(const WithSerialize&) const = default;
};

/// A user type with free save() / load() functions (found by ADL).
struct WithSaveLoad {
  std::string label;
  std::vector<std::string> words;
  std::optional<int> extra;
  bool operator==(const WithSaveLoad&) const = default;
};

template <class Archive>
void save(Archive& ar, const WithSaveLoad& v) {
  ar(v.label, v.words, v.extra);
}

template <class Archive>
void load(Archive& ar, WithSaveLoad& v) {
  ar(v.label, v.words, v.extra);
}

/// Holds a std::string and has no serialization function: cannot cross.
struct NoSerialize {
  std::string s;
};

/// Encodes @p v, decodes it from a heap block of exactly the encoding's size,
/// and checks that decode consumed every byte.
template <class T>
T round_trip(const T& v) {
  byte_buffer b;
  encode(b, v);
  auto copy = std::make_unique<char[]>(b.size());
  if (b.size()) std::memcpy(copy.get(), b.data(), b.size());
  reader r(copy.get(), b.size());
  T out = decode<T>(r);
  CHECK(r.remaining() == 0);
  return out;
}

template <class T>
std::vector<char> encoded(const T& v) {
  byte_buffer b;
  encode(b, v);
  return std::vector<char>(b.data(), b.data() + b.size());
}

/// Decodes a T from a heap block holding exactly @p bytes (no slack after it).
template <class T>
T decode_exact(const std::vector<char>& bytes, std::size_t n) {
  auto copy = std::make_unique<char[]>(n);
  if (n) std::memcpy(copy.get(), bytes.data(), n);
  reader r(copy.get(), n);
  return decode<T>(r);
}

/// Every proper prefix of a valid encoding of @p v fails with decode_error.
template <class T>
void check_every_prefix_throws(const T& v) {
  const std::vector<char> bytes = encoded(v);
  REQUIRE(!bytes.empty());
  CHECK(round_trip(v) == v);  // the whole encoding decodes, to its last byte
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    INFO("prefix of " << n << " of " << bytes.size() << " bytes");
    CHECK_THROWS_AS(decode_exact<T>(bytes, n), decode_error);
  }
}

/// For the cereal path (u64 byte length, then cereal's bytes): every truncation of
/// cereal's bytes, with the length prefix rewritten to match, fails with
/// decode_error (cereal runs out of input inside a correctly framed message).
template <class T>
void check_every_cereal_truncation_throws(const T& v) {
  const std::vector<char> bytes = encoded(v);
  REQUIRE(bytes.size() > sizeof(std::uint64_t));
  std::uint64_t len = 0;
  std::memcpy(&len, bytes.data(), sizeof len);
  REQUIRE(len == bytes.size() - sizeof len);
  for (std::uint64_t k = 0; k < len; ++k) {
    std::vector<char> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(sizeof len + k));
    std::memcpy(cut.data(), &k, sizeof k);
    INFO("cereal payload cut to " << k << " of " << len << " bytes");
    CHECK_THROWS_AS(decode_exact<T>(cut, cut.size()), decode_error);
  }
}

/// decode<T> of exactly @p bytes: "ok", "decode_error", or "OTHER" and what
/// else was thrown.
template <class T>
std::string decode_verdict(const std::vector<char>& bytes) {
  try {
    (void)decode_exact<T>(bytes, bytes.size());
    return "ok";
  } catch (const decode_error&) {
    return "decode_error";
  } catch (const std::exception& e) {
    return "OTHER " + procpool_test::type_and_what(e);
  } catch (...) {
    return "OTHER non-std exception";
  }
}

using map_t = std::map<std::string, std::vector<int>>;

inline void set_u64(std::vector<char>& bytes, std::size_t at, std::uint64_t v) {
  REQUIRE(bytes.size() >= at + sizeof v);
  std::memcpy(bytes.data() + at, &v, sizeof v);
}

}  // namespace codec_test

using namespace codec_test;

// ---------------------------------------------------------------- round trips

TEST_CASE("codec: int and double round-trip", "[codec]") {
  for (int v : {0, 1, -1, 42, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()})
    CHECK(round_trip(v) == v);
  CHECK(encoded(17).size() == sizeof(int));  // bitwise: one memcpy, no header
  for (double v : {0.0, -0.5, 3.141592653589793, 1e300, -1e-300,
                   std::numeric_limits<double>::infinity()})
    CHECK(round_trip(v) == v);
  CHECK(encoded(2.5).size() == sizeof(double));
}

TEST_CASE("codec: trivially copyable struct round-trips bitwise", "[codec]") {
  const Pod p{-7, 2.75, {'a', 'b', 'c', 'd', '\0'}, 65535};
  CHECK(encoded(p).size() == sizeof(Pod));
  const Pod q = round_trip(p);
  CHECK(q.a == -7);
  CHECK(q.b == 2.75);
  CHECK(std::string(q.c) == "abcd");
  CHECK(q.d == 65535);
}

TEST_CASE("codec: std::string, empty and 1 MB", "[codec]") {
  CHECK(round_trip(std::string()) == "");
  CHECK(encoded(std::string()).size() == sizeof(std::uint64_t));
  CHECK(round_trip(std::string("hello, world")) == "hello, world");
  const std::string with_nuls("a\0b\0\0c", 6);
  CHECK(round_trip(with_nuls) == with_nuls);

  std::string big(1 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131 + (i >> 9)) & 0xff);
  const std::string back = round_trip(big);
  REQUIRE(back.size() == big.size());
  CHECK(back == big);
  CHECK(encoded(big).size() == sizeof(std::uint64_t) + big.size());  // size, then one block
}

TEST_CASE("codec: std::vector<double> and std::vector<std::string>", "[codec]") {
  CHECK(round_trip(std::vector<double>{}).empty());
  std::vector<double> d(10000);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<double>(i) * 0.5 - 17.25;
  CHECK(round_trip(d) == d);
  CHECK(encoded(d).size() == sizeof(std::uint64_t) + d.size() * sizeof(double));

  const std::vector<std::string> s{"", "one", std::string(1000, 'x'), "four", ""};
  CHECK(round_trip(s) == s);
  CHECK(round_trip(std::vector<std::string>{}).empty());
}

// After a char, a vector<double> sits at an address not aligned for double:
// decode copies instead of constructing from the bytes, and an empty one must
// not memcpy into a null data() (undefined; UBSan and the fuzzer catch it).
TEST_CASE("codec: vectors at unaligned offsets, empty and not", "[codec]") {
  using T = std::tuple<char, std::vector<double>>;
  CHECK(round_trip(T{'x', {}}) == T{'x', {}});
  CHECK(round_trip(T{'y', {1.5, -2.25, 1e300}}) == T{'y', {1.5, -2.25, 1e300}});
  using U = std::tuple<char, std::u32string>;
  CHECK(round_trip(U{'z', U"\u00e9t\u00e9"}) == U{'z', U"\u00e9t\u00e9"});
}

// From 4 MiB up, decode asks for huge pages for the memory it decodes into
// (advise_huge_pages): odd sizes, so that the advised range is a part of it.
TEST_CASE("codec: vectors and strings of tens of MiB, aligned and not", "[codec]") {
  std::vector<std::uint64_t> v((std::size_t{33} << 17) + 3);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = i * 0x9e3779b97f4a7c15ULL;
  CHECK(round_trip(v) == v);
  using T = std::tuple<char, std::vector<std::uint64_t>>;
  CHECK(round_trip(T{'q', v}) == T{'q', v});
  std::string s((std::size_t{65} << 19) + 5, '\0');
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>((i * 7 + (i >> 13)) & 0xff);
  CHECK(round_trip(s) == s);
}

TEST_CASE("codec: std::array, std::pair, std::tuple", "[codec]") {
  const std::array<int, 3> a{1, -2, 3};
  CHECK(round_trip(a) == a);
  CHECK(encoded(a).size() == sizeof a);

  const std::pair<int, std::string> p{7, "seven"};
  CHECK(round_trip(p) == p);
  const std::pair<int, std::string> pe{-1, ""};
  CHECK(round_trip(pe) == pe);

  const std::tuple<int, double, std::string> t{3, 0.125, "three"};
  CHECK(round_trip(t) == t);
  const std::tuple<int, double, std::string> te{};
  CHECK(round_trip(te) == te);
}

TEST_CASE("codec: std::optional in both states and std::variant in both alternatives", "[codec]") {
  const std::optional<std::string> none;
  const std::optional<std::string> some{"present"};
  CHECK_FALSE(round_trip(none).has_value());
  const auto back = round_trip(some);
  REQUIRE(back.has_value());
  CHECK(*back == "present");
  CHECK(round_trip(std::optional<std::string>{""}) == std::optional<std::string>{""});

  const std::variant<int, std::string> vi{42};
  const std::variant<int, std::string> vs{std::string("forty-two")};
  const auto bi = round_trip(vi);
  REQUIRE(bi.index() == 0);
  CHECK(std::get<0>(bi) == 42);
  const auto bs = round_trip(vs);
  REQUIRE(bs.index() == 1);
  CHECK(std::get<1>(bs) == "forty-two");
}

TEST_CASE("codec: associative containers", "[codec]") {
  const std::map<std::string, std::vector<int>> m{
      {"", {}}, {"a", {1}}, {"bcd", {1, 2, 3, -4}}, {std::string(300, 'z'), std::vector<int>(500, 9)}};
  CHECK(round_trip(m) == m);
  CHECK(round_trip(std::map<std::string, std::vector<int>>{}).empty());

  std::unordered_map<int, std::string> u;
  for (int i = -50; i < 50; ++i) u[i * 7] = std::string(static_cast<std::size_t>(i + 50), 'q');
  CHECK(round_trip(u) == u);

  const std::set<int> s{5, -3, 100, 0, 7};
  CHECK(round_trip(s) == s);
}

TEST_CASE("codec: nested vector<vector<map<int,string>>>", "[codec]") {
  std::vector<std::vector<std::map<int, std::string>>> v(3);
  v[0] = {};
  v[1] = {{}, {{1, "one"}}};
  for (int i = 0; i < 5; ++i) {
    std::map<int, std::string> m;
    for (int k = 0; k < i; ++k) m[k * i] = std::string(static_cast<std::size_t>(k), 'a' + static_cast<char>(i));
    v[2].push_back(std::move(m));
  }
  CHECK(round_trip(v) == v);
}

TEST_CASE("codec: user types with cereal serialize() and with free save/load", "[codec]") {
  const WithSerialize a{12, "twelve", {1.5, -2.5, 1e9}, {{"x", 1}, {"y", -2}}};
  CHECK(round_trip(a) == a);
  CHECK(round_trip(WithSerialize{}) == WithSerialize{});

  const WithSaveLoad b{"label", {"w1", "", "w3"}, 99};
  CHECK(round_trip(b) == b);
  const WithSaveLoad c{"", {}, std::nullopt};
  CHECK(round_trip(c) == c);
}

TEST_CASE("codec: several values back to back decode in order", "[codec]") {
  byte_buffer b;
  encode(b, 5);
  encode(b, std::string("mid"));
  encode(b, std::vector<double>{1.0, 2.0});
  encode(b, std::map<std::string, std::vector<int>>{{"k", {7, 8}}});
  encode(b, std::tuple<int, std::string>{9, "end"});
  reader r(b.data(), b.size());
  CHECK(decode<int>(r) == 5);
  CHECK(decode<std::string>(r) == "mid");
  CHECK(decode<std::vector<double>>(r) == std::vector<double>{1.0, 2.0});
  CHECK(decode<std::map<std::string, std::vector<int>>>(r) ==
        std::map<std::string, std::vector<int>>{{"k", {7, 8}}});
  CHECK(decode<std::tuple<int, std::string>>(r) == std::tuple<int, std::string>{9, "end"});
  CHECK(r.remaining() == 0);
  CHECK_THROWS_AS(decode<int>(r), decode_error);  // nothing left
}

// ---------------------------------------------------------------- transferable

TEST_CASE("codec: procpool::transferable accepts what can cross", "[codec][static]") {
  STATIC_REQUIRE(procpool::transferable<int>);
  STATIC_REQUIRE(procpool::transferable<double>);
  STATIC_REQUIRE(procpool::transferable<Pod>);
  STATIC_REQUIRE(procpool::transferable<std::string>);
  STATIC_REQUIRE(procpool::transferable<const std::string&>);
  STATIC_REQUIRE(procpool::transferable<std::vector<double>>);
  STATIC_REQUIRE(procpool::transferable<std::vector<std::string>>);
  STATIC_REQUIRE(procpool::transferable<std::array<int, 3>>);
  STATIC_REQUIRE(procpool::transferable<std::pair<int, std::string>>);
  STATIC_REQUIRE(procpool::transferable<std::tuple<int, double, std::string>>);
  STATIC_REQUIRE(procpool::transferable<std::optional<std::string>>);
  STATIC_REQUIRE(procpool::transferable<std::variant<int, std::string>>);
  STATIC_REQUIRE(procpool::transferable<std::map<std::string, std::vector<int>>>);
  STATIC_REQUIRE(procpool::transferable<std::unordered_map<int, std::string>>);
  STATIC_REQUIRE(procpool::transferable<std::set<int>>);
  STATIC_REQUIRE(procpool::transferable<std::vector<std::vector<std::map<int, std::string>>>>);
  STATIC_REQUIRE(procpool::transferable<WithSerialize>);
  STATIC_REQUIRE(procpool::transferable<WithSaveLoad>);
}

TEST_CASE("codec: procpool::transferable rejects pointers, views and unserializable types",
          "[codec][static]") {
  STATIC_REQUIRE_FALSE(procpool::transferable<int*>);
  STATIC_REQUIRE_FALSE(procpool::transferable<const char*>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::string_view>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::span<int>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::span<const double, 4>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<NoSerialize>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::pair<int, int*>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::tuple<std::string, std::string_view>>);
}

// transferable<> must look inside containers: cereal's traits accept
// std::vector<T>/std::optional<T>/std::map<K, V> for any T, and
// std::optional<int*> is even trivially copyable.
TEST_CASE("codec: transferable rejects containers of untransferable types", "[codec]") {
  STATIC_REQUIRE_FALSE(procpool::transferable<std::vector<int*>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::vector<std::string_view>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::vector<std::span<int>>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::vector<NoSerialize>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::map<int, std::string_view>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::optional<int*>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::array<int*, 2>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::reference_wrapper<int>>);
  STATIC_REQUIRE_FALSE(procpool::transferable<std::initializer_list<int>>);
  STATIC_REQUIRE(procpool::transferable<std::array<int, 2>>);
  STATIC_REQUIRE(procpool::transferable<std::optional<std::vector<std::string>>>);
}

// ---------------------------------------------------------------- truncated input

TEST_CASE("codec: every proper prefix of a bitwise encoding throws decode_error", "[codec][truncated]") {
  check_every_prefix_throws(123456789);
  check_every_prefix_throws(2.718281828);
  check_every_prefix_throws(std::array<int, 3>{4, 5, 6});
  const Pod p{1, 2.0, {'x', 'y', 'z', 'w', '\0'}, 3};
  const std::vector<char> bytes = encoded(p);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    CHECK_THROWS_AS(decode_exact<Pod>(bytes, n), decode_error);
}

TEST_CASE("codec: every proper prefix of a contiguous encoding throws decode_error",
          "[codec][truncated]") {
  check_every_prefix_throws(std::string());
  check_every_prefix_throws(std::string("truncate me, please"));
  check_every_prefix_throws(std::vector<double>{});
  check_every_prefix_throws(std::vector<double>{1.0, -2.0, 3.5, 1e10});
  check_every_prefix_throws(std::vector<std::uint8_t>{1, 2, 3});
}

TEST_CASE("codec: every proper prefix of a pair/tuple encoding throws decode_error",
          "[codec][truncated]") {
  check_every_prefix_throws(std::pair<int, std::string>{7, "seven"});
  check_every_prefix_throws(std::tuple<int, double, std::string>{1, 2.0, "three"});
  check_every_prefix_throws(std::tuple<std::string, std::vector<std::string>>{"a", {"b", "c"}});
  check_every_prefix_throws(std::tuple<int, std::string>{42, "forty-two"});
}

TEST_CASE("codec: every proper prefix of a cereal encoding throws decode_error", "[codec][truncated]") {
  check_every_prefix_throws(std::vector<std::string>{"alpha", "", "gamma"});
  check_every_prefix_throws(std::optional<std::string>{"x"});
  check_every_prefix_throws(std::optional<std::string>{});
  check_every_prefix_throws(std::variant<int, std::string>{std::string("var")});
  check_every_prefix_throws(std::map<std::string, std::vector<int>>{{"a", {1, 2}}, {"b", {}}});
  check_every_prefix_throws(std::unordered_map<int, std::string>{{1, "one"}, {2, "two"}});
  check_every_prefix_throws(std::set<int>{3, 1, 2});
  check_every_prefix_throws(std::vector<std::vector<std::map<int, std::string>>>{{{{1, "a"}}}, {}});
  check_every_prefix_throws(WithSerialize{1, "n", {2.0}, {{"t", 3}}});
  check_every_prefix_throws(
      std::vector<WithSerialize>{WithSerialize{1, "x", {}, {}}, WithSerialize{2, "y", {3.0}, {{"z", 3}}}});
  check_every_prefix_throws(WithSaveLoad{"l", {"w"}, 4});
}

TEST_CASE("codec: a cereal payload cut short inside a consistent frame throws decode_error",
          "[codec][truncated]") {
  check_every_cereal_truncation_throws(std::vector<std::string>{"alpha", "", "gamma"});
  check_every_cereal_truncation_throws(std::map<std::string, std::vector<int>>{{"a", {1, 2}}, {"b", {}}});
  check_every_cereal_truncation_throws(std::unordered_map<int, std::string>{{1, "one"}, {2, "two"}});
  check_every_cereal_truncation_throws(std::variant<int, std::string>{std::string("var")});
  check_every_cereal_truncation_throws(std::optional<std::string>{"x"});
  check_every_cereal_truncation_throws(WithSerialize{1, "n", {2.0}, {{"t", 3}}});
  check_every_cereal_truncation_throws(WithSaveLoad{"l", {"w"}, 4});
}

// ---------------------------------------------------------------- corrupted lengths

TEST_CASE("codec: a huge element count for vector<double> throws decode_error", "[codec][corrupt]") {
  std::vector<char> bytes = encoded(std::vector<double>{1.0, 2.0, 3.0});
  for (std::uint64_t n : {std::uint64_t{4}, std::uint64_t{1} << 40, std::uint64_t{1} << 61,
                          (std::uint64_t{1} << 61) + 1,  // n * 8 wraps around to 8
                          std::numeric_limits<std::uint64_t>::max()}) {
    INFO("claimed count " << n);
    set_u64(bytes, 0, n);
    CHECK_THROWS_AS(decode_exact<std::vector<double>>(bytes, bytes.size()), decode_error);
  }
}

TEST_CASE("codec: a huge byte length for std::string throws decode_error", "[codec][corrupt]") {
  std::vector<char> bytes = encoded(std::string("abc"));
  for (std::uint64_t n : {std::uint64_t{4}, std::uint64_t{1} << 40,
                          std::numeric_limits<std::uint64_t>::max()}) {
    INFO("claimed length " << n);
    set_u64(bytes, 0, n);
    CHECK_THROWS_AS(decode_exact<std::string>(bytes, bytes.size()), decode_error);
  }
}

TEST_CASE("codec: a huge byte length on the cereal path throws decode_error", "[codec][corrupt]") {
  std::vector<char> bytes = encoded(std::vector<std::string>{"a", "b"});
  const std::uint64_t real = bytes.size() - sizeof(std::uint64_t);
  for (std::uint64_t n : {real + 1, std::uint64_t{1} << 40, std::uint64_t{1} << 63,
                          std::numeric_limits<std::uint64_t>::max()}) {
    INFO("claimed length " << n);
    set_u64(bytes, 0, n);
    CHECK_THROWS_AS(decode_exact<std::vector<std::string>>(bytes, bytes.size()), decode_error);
  }
  std::vector<char> ws = encoded(WithSerialize{1, "n", {2.0}, {}});
  set_u64(ws, 0, std::numeric_limits<std::uint64_t>::max() - 3);
  CHECK_THROWS_AS(decode_exact<WithSerialize>(ws, ws.size()), decode_error);
}

TEST_CASE("codec: a corrupted variant index throws decode_error", "[codec][corrupt]") {
  std::vector<char> bytes = encoded(std::variant<int, std::string>{5});
  // cereal writes the index as a 32-bit int right after procpool's length prefix.
  REQUIRE(bytes.size() >= sizeof(std::uint64_t) + sizeof(std::int32_t));
  const std::int32_t bad = 7;
  std::memcpy(bytes.data() + sizeof(std::uint64_t), &bad, sizeof bad);
  CHECK_THROWS_AS((decode_exact<std::variant<int, std::string>>(bytes, bytes.size())), decode_error);
}

// A corrupted element count inside cereal's bytes (of a vector, of a vector
// nested in a map, of a string) is rejected before cereal resizes the
// container (std::length_error / bad_alloc otherwise).
TEST_CASE("codec: a huge element count inside cereal's bytes throws decode_error",
          "[codec][corrupt]") {
  constexpr std::uint64_t huge = std::uint64_t{1} << 62;
  std::vector<char> bytes = encoded(std::vector<std::string>{"a", "b"});
  // procpool's u64 byte length, then cereal's u64 element count.
  set_u64(bytes, sizeof(std::uint64_t), huge);
  CHECK_THROWS_AS(decode_exact<std::vector<std::string>>(bytes, bytes.size()), decode_error);

  std::vector<char> nested = encoded(map_t{{"k", {1, 2}}});
  // [u64 byte length][u64 map size][u64 key length]["k"][u64 vector size][ints]
  set_u64(nested, 8 + 8 + 8 + 1, huge);
  CHECK_THROWS_AS(decode_exact<map_t>(nested, nested.size()), decode_error);

  std::vector<char> label = encoded(WithSaveLoad{"abc", {}, {}});
  set_u64(label, 8, huge);  // the label's length, cereal's first field
  CHECK_THROWS_AS(decode_exact<WithSaveLoad>(label, label.size()), decode_error);
}

// ---------------------------------------------------------------- arbitrary and corrupted bytes

// Types whose sizes procpool checks itself: every seed's verdict is "ok" or "decode_error".
TEST_CASE("codec: decode of random bytes gives a value or decode_error", "[codec][corrupt]") {
  for (unsigned seed = 1; seed <= 2000; ++seed) {
    std::mt19937 rng(seed);
    std::vector<char> buf(rng() % 64);
    for (auto& c : buf) c = static_cast<char>(rng());
    // Small plausible lengths now and then, so decoding gets past the first field.
    if (buf.size() >= 8 && seed % 3 == 0) {
      const std::uint64_t n = rng() % 16;
      std::memcpy(buf.data(), &n, 8);
    }
    INFO("seed " << seed);
    for (const std::string& v :
         {decode_verdict<std::vector<double>>(buf), decode_verdict<std::string>(buf),
          decode_verdict<std::tuple<int, std::string>>(buf),
          decode_verdict<std::pair<std::uint64_t, std::vector<int>>>(buf)}) {
      CHECK((v == "ok" || v == "decode_error"));
    }
  }
}

// Bit flips and byte overwrites of valid cereal encodings (the outer length
// prefix kept, so cereal reads them) decode to a value or throw decode_error.
// A corrupted count must not reach cereal's resize(): std::length_error, or
// std::bad_alloc through this binary's allocation cap.
TEST_CASE("codec: decode of corrupted cereal data gives a value or decode_error", "[codec][corrupt]") {
  std::map<std::string, int> verdicts;
  std::string first_other;
  auto mutate_and_check = [&](auto value, unsigned seed) {
    using T = decltype(value);
    std::vector<char> buf = encoded(value);
    std::mt19937 rng(seed);
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = 8 + rng() % (buf.size() - 8);  // keep the outer length prefix
      switch (rng() % 3) {
        case 0: buf[at] = static_cast<char>(buf[at] ^ (1 << (rng() % 8))); break;
        case 1: buf[at] = static_cast<char>(rng()); break;
        default: buf[at] = static_cast<char>(rng() % 3); break;
      }
    }
    const std::string v = decode_verdict<T>(buf);
    ++verdicts[v.substr(0, 48)];
    if (v != "ok" && v != "decode_error" && first_other.empty())
      first_other = "seed " + std::to_string(seed) + ", " +
                    procpool::detail::demangle(typeid(T).name()) + ": " + v;
  };
  for (unsigned seed = 1; seed <= 300; ++seed) {
    mutate_and_check(map_t{{"alpha", {1, 2, 3}}, {"b", {}}, {"gamma", {9, 9}}}, seed);
    mutate_and_check(WithSerialize{5, "name", {1.0, 2.0, 3.0}, {{"t", 1}}}, seed);
  }
  int others = 0;
  for (auto& [v, n] : verdicts) {
    std::fprintf(stderr, "[decode] %5d x %s\n", n, v.c_str());
    if (v != "ok" && v != "decode_error") others += n;
  }
  INFO(others << " of 600 corrupted inputs threw something else; first: " << first_other);
  CHECK(others == 0);
}
