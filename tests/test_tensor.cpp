#include <doctest/doctest.h>

#include "engine/tensor.hpp"

TEST_CASE("row-major strides") {
  CHECK(engine::row_major_strides({2, 3, 4}) == engine::Dims{12, 4, 1});
}
