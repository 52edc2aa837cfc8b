#include <procpool/procpool.hpp>
#include <catch2/catch.hpp>
TEST_CASE("test_codec placeholder") {}
