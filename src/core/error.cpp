#include "core/error.h"

#include <utility>

namespace lisadiff {
namespace {

std::string compose(const std::string& file, const std::string& key, const std::string& problem) {
  std::string out;
  if (!file.empty()) out += file + ": ";
  if (!key.empty()) out += key + ": ";
  return out + problem;
}

}  // namespace

Error::Error(const std::string& problem) : std::runtime_error(problem), problem_(problem) {}

Error::Error(std::string file, const std::string& problem)
    : std::runtime_error(compose(file, "", problem)), file_(std::move(file)), problem_(problem) {}

Error::Error(std::string file, std::string key, const std::string& problem)
    : std::runtime_error(compose(file, key, problem)),
      file_(std::move(file)),
      key_(std::move(key)),
      problem_(problem) {}

std::string tensor_key(const std::string& name) { return "tensor '" + name + "'"; }
std::string field_key(const std::string& name) { return "field '" + name + "'"; }

}  // namespace lisadiff
