// The one error type the project throws for bad input or misuse; each tool's main catches it
// once and prints its message on one line.
#pragma once

#include <stdexcept>
#include <string>

namespace engine {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void require(bool ok, const std::string& message) {
  if (!ok) throw Error(message);
}

}  // namespace engine
