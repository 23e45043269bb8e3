#include "config/json_fields.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lisadiff::config {

Json read_json_file(const std::filesystem::path& path) {
  const auto text = io::read_file(path);
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw Error(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

std::string describe_json(const Json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  if (value.is_null()) return "null";
  if (value.is_boolean()) return "boolean " + text;
  if (value.is_number_integer()) return "integer " + text;
  if (value.is_number()) return "number " + text;
  if (value.is_string()) return "string " + text;
  if (value.is_array()) return "list " + text;
  return "object " + text;
}

bool decode(const Json& value, bool& out) {
  if (!value.is_boolean()) return false;
  out = value.get<bool>();
  return true;
}

bool decode(const Json& value, int& out) {
  if (!value.is_number_integer()) return false;
  if (value.is_number_unsigned() && value.get<std::uint64_t>() > static_cast<std::uint64_t>(INT32_MAX)) return false;
  const auto v = value.get<std::int64_t>();
  if (v < INT32_MIN || v > INT32_MAX) return false;
  out = static_cast<int>(v);
  return true;
}

bool decode(const Json& value, double& out) {
  if (!value.is_number()) return false;
  out = value.get<double>();
  return std::isfinite(out);
}

bool decode(const Json& value, std::string& out) {
  if (!value.is_string()) return false;
  out = value.get<std::string>();
  return true;
}

FieldReader::FieldReader(const Json& object, std::string source) : object_(object), source_(std::move(source)) {
  if (!object_.is_object()) {
    throw Error(source_, "expected a JSON object at the top level, found " + describe_json(object_));
  }
}

void FieldReader::fixed(const char* key, const Json& supported) {
  claimed_.insert(key);
  const auto it = object_.find(key);
  if (it == object_.end() || *it == supported) return;
  field_error(source_, key,
              fmt::format("lisadiff supports only {} here, found {}", supported.dump(), describe_json(*it)));
}

std::vector<std::string> FieldReader::unclaimed() const {
  std::vector<std::string> keys;
  for (const auto& item : object_.items()) {
    if (!item.key().empty() && item.key()[0] != '_' && claimed_.count(item.key()) == 0) keys.push_back(item.key());
  }
  return keys;
}

void FieldReader::warn_unclaimed() const {
  const auto keys = unclaimed();
  if (!keys.empty()) spdlog::warn("{}: ignoring unknown keys: {}", source_, fmt::join(keys, ", "));
}

void FieldReader::type_error(const char* key, const std::string& what, const Json& found) const {
  field_error(source_, key, "expected " + what + ", found " + describe_json(found));
}

void check_class_name(const FieldReader& reader, const std::vector<std::string>& accepted) {
  const auto it = reader.object().find("_class_name");
  if (it == reader.object().end()) return;
  std::string name;
  if (!decode(*it, name)) field_error(reader.source(), "_class_name", "expected a string, found " + describe_json(*it));
  for (const auto& ok : accepted) {
    if (name == ok) return;
  }
  field_error(reader.source(), "_class_name", fmt::format("expected {}, found \"{}\"", fmt::join(accepted, " or "), name));
}

void field_error(const std::string& source, const std::string& key, const std::string& problem) {
  throw Error(source, field_key(key), problem);
}

}  // namespace lisadiff::config
