// Typed reading and writing of diffusers/transformers config.json files.
//
// Each config struct lists its fields once, in a member template `fields(Visitor&)` that
// calls `v("json_key", member)` for every key. FieldReader visits them to parse a file,
// FieldWriter to produce the JSON diffusers would write. A reader error names the file, the
// field, what was expected and what was found; keys that no field claims are reported in a
// single warning per file (keys starting with '_' are diffusers' bookkeeping and ignored).
#pragma once

#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lisadiff::config {

using Json = nlohmann::ordered_json;

// diffusers accepts an int or a per-block list for several UNet keys.
template <class T>
struct ScalarOrList {
  std::vector<T> values;
  bool is_list = false;

  ScalarOrList() = default;
  ScalarOrList(T value) : values{value} {}  // NOLINT: implicit like the Python default
  ScalarOrList(std::vector<T> list) : values(std::move(list)), is_list(true) {}
  // The value for block i: the scalar, or the i-th list entry.
  const T& at(std::size_t i) const { return is_list ? values.at(i) : values.at(0); }
  bool operator==(const ScalarOrList& other) const { return values == other.values && is_list == other.is_list; }
};

// Reads a JSON file. Throws lisadiff::Error naming the file for I/O and syntax errors.
Json read_json_file(const std::filesystem::path& path);

// One line: `string "abc"`, `integer 3`, `list [1, 2]` (long values are shortened).
std::string describe_json(const Json& value);

// Decoders: return false when `value` does not have the C++ type's shape.
bool decode(const Json& value, bool& out);
bool decode(const Json& value, int& out);
bool decode(const Json& value, double& out);
bool decode(const Json& value, std::string& out);
template <class T>
bool decode(const Json& value, std::vector<T>& out) {
  if (!value.is_array()) return false;
  std::vector<T> result(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (!decode(value[i], result[i])) return false;
  }
  out = std::move(result);
  return true;
}
template <class T>
bool decode(const Json& value, std::optional<T>& out) {
  if (value.is_null()) {
    out.reset();
    return true;
  }
  T inner{};
  if (!decode(value, inner)) return false;
  out = std::move(inner);
  return true;
}
template <class T>
bool decode(const Json& value, ScalarOrList<T>& out) {
  if (value.is_array()) {
    std::vector<T> list;
    if (!decode(value, list)) return false;
    out = ScalarOrList<T>(std::move(list));
    return true;
  }
  T scalar{};
  if (!decode(value, scalar)) return false;
  out = ScalarOrList<T>(scalar);
  return true;
}

// What a field expects, for messages: "an integer", "null or a list of strings", ...
inline std::string expected(const bool*) { return "a boolean"; }
inline std::string expected(const int*) { return "an integer"; }
inline std::string expected(const double*) { return "a number"; }
inline std::string expected(const std::string*) { return "a string"; }
// "an integer" -> "integers"
inline std::string plural(const std::string& one) { return one.substr(one.find(' ') + 1) + "s"; }
template <class T>
std::string expected(const std::vector<T>*) {
  return "a list of " + plural(expected(static_cast<const T*>(nullptr)));
}
template <class T>
std::string expected(const std::optional<T>*) {
  return "null or " + expected(static_cast<const T*>(nullptr));
}
template <class T>
std::string expected(const ScalarOrList<T>*) {
  const auto one = expected(static_cast<const T*>(nullptr));
  return one + " or a list of " + plural(one);
}

inline Json encode(const bool& v) { return v; }
inline Json encode(const int& v) { return v; }
inline Json encode(const double& v) { return v; }
inline Json encode(const std::string& v) { return v; }
template <class T>
Json encode(const std::vector<T>& v) {
  Json out = Json::array();
  for (const auto& item : v) out.push_back(encode(item));
  return out;
}
template <class T>
Json encode(const std::optional<T>& v) {
  return v ? encode(*v) : Json(nullptr);
}
template <class T>
Json encode(const ScalarOrList<T>& v) {
  return v.is_list ? encode(v.values) : encode(v.values.at(0));
}

class FieldReader {
 public:
  // Throws lisadiff::Error when `object` is not a JSON object.
  FieldReader(const Json& object, std::string source);

  template <class T>
  void operator()(const char* key, T& field) {
    const auto it = object_.find(key);
    if (it == object_.end()) return;
    claimed_.insert(key);
    if (!decode(*it, field)) type_error(key, expected(static_cast<const T*>(nullptr)), *it);
  }
  // A key whose only supported value is `supported` (a diffusers feature lisadiff does not
  // implement): any other value is an error, never silently ignored.
  void fixed(const char* key, const Json& supported);
  // A key that is accepted and has no effect in lisadiff (documented at the call).
  void ignored(const char* key) { claimed_.insert(key); }

  // Keys no field claimed (not counting '_'-prefixed ones), in file order.
  std::vector<std::string> unclaimed() const;
  // One warning that lists unclaimed(), if there are any.
  void warn_unclaimed() const;

  const std::string& source() const { return source_; }
  const Json& object() const { return object_; }

 private:
  [[noreturn]] void type_error(const char* key, const std::string& what, const Json& found) const;
  const Json& object_;
  std::string source_;
  std::set<std::string> claimed_;
};

class FieldWriter {
 public:
  explicit FieldWriter(Json header = Json::object()) : json_(std::move(header)) {}
  template <class T>
  void operator()(const char* key, const T& field) {
    json_[key] = encode(field);
  }
  void fixed(const char* key, const Json& supported) { json_[key] = supported; }
  Json& json() { return json_; }

 private:
  Json json_;
};

// The shared path of every config's from_json: visit the fields, warn once about keys no
// field claimed, validate. `config` holds the defaults; `visit(config, visitor)` lists the keys.
template <class Config, class Visit>
Config read_fields(Config config, FieldReader& reader, const Visit& visit) {
  visit(config, reader);
  reader.warn_unclaimed();
  config.validate(reader.source());
  return config;
}

// The shared path of every config's to_json: the `header` keys (e.g. _class_name), then the fields.
template <class Config, class Visit>
Json write_fields(const Config& config, Json header, const Visit& visit) {
  FieldWriter writer(std::move(header));
  visit(config, writer);
  return writer.json();
}

// from_file for any config type with a static from_json(json, source).
template <class Config>
Config read_config_file(const std::filesystem::path& path) {
  return Config::from_json(read_json_file(path), path.string());
}

// Shared by the component configs: the expected `_class_name` (when the file names one).
void check_class_name(const FieldReader& reader, const std::vector<std::string>& accepted);

// A validation error: "<source>: field '<key>': <problem>".
[[noreturn]] void field_error(const std::string& source, const std::string& key, const std::string& problem);

}  // namespace lisadiff::config
