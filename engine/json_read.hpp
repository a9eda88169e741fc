// Strict reads of numbers from JSON that came from a file: nlohmann's get<int64_t>() and
// get<float>() convert with static_cast, which is undefined for out-of-range values (our
// fuzzer found 3e38 as an img_size). These check the kind and the range and name the key.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/error.hpp"

namespace engine {

inline int64_t json_int(const nlohmann::json& v, const std::string& key) {
  if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(INT64_MAX)) return v.get<int64_t>();
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
  throw Error("'" + key + "' must be an integer of at most 64 bits, not " + v.dump());
}

inline double json_double(const nlohmann::json& v, const std::string& key) {
  if (v.is_number() && std::isfinite(v.get<double>())) return v.get<double>();
  throw Error("'" + key + "' must be a finite number, not " + v.dump());
}

inline float json_float(const nlohmann::json& v, const std::string& key) {
  const double d = json_double(v, key);
  if (std::fabs(d) > double(std::numeric_limits<float>::max()))
    throw Error("'" + key + "' is out of the range of a float: " + v.dump());
  return static_cast<float>(d);
}

// The field `key` of object j (which must exist).
inline const nlohmann::json& json_field(const nlohmann::json& j, const std::string& key) {
  if (!j.is_object()) throw Error("expected a JSON object with '" + key + "', not " + j.dump());
  auto it = j.find(key);
  if (it == j.end()) throw Error("'" + key + "' is missing");
  return *it;
}

// Required fields of object j, read strictly.
inline int64_t field_int(const nlohmann::json& j, const std::string& key) {
  return json_int(json_field(j, key), key);
}
inline double field_double(const nlohmann::json& j, const std::string& key) {
  return json_double(json_field(j, key), key);
}

inline int64_t json_int(const nlohmann::json& j, const std::string& key, int64_t fallback) {
  return j.contains(key) ? json_int(j[key], key) : fallback;
}
inline double json_double(const nlohmann::json& j, const std::string& key, double fallback) {
  return j.contains(key) ? json_double(j[key], key) : fallback;
}

inline bool json_bool(const nlohmann::json& j, const std::string& key, bool fallback) {
  if (!j.contains(key)) return fallback;
  if (!j[key].is_boolean())
    throw Error("'" + key + "' must be true or false, not " + j[key].dump());
  return j[key].get<bool>();
}
inline std::string json_string(const nlohmann::json& j, const std::string& key,
                               const std::string& fallback) {
  if (!j.contains(key)) return fallback;
  if (!j[key].is_string()) throw Error("'" + key + "' must be a string, not " + j[key].dump());
  return j[key].get<std::string>();
}

inline std::vector<int64_t> json_ints(const nlohmann::json& v, const std::string& key) {
  if (!v.is_array()) throw Error("'" + key + "' must be a list of integers, not " + v.dump());
  std::vector<int64_t> out;
  for (const nlohmann::json& x : v) out.push_back(json_int(x, key));
  return out;
}

inline std::vector<float> json_floats(const nlohmann::json& v, const std::string& key) {
  if (!v.is_array()) throw Error("'" + key + "' must be a list of numbers, not " + v.dump());
  std::vector<float> out;
  for (const nlohmann::json& x : v) out.push_back(json_float(x, key));
  return out;
}

}  // namespace engine
