#include "tools/cli.hpp"

namespace cli {

std::vector<float> parse_floats(const std::string& text, const std::string& flag) {
  std::vector<float> values;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string item =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    try {
      size_t used = 0;
      values.push_back(std::stof(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError("--" + flag + ": '" + text + "' is not a comma-separated list of numbers");
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return values;
}

}  // namespace cli
