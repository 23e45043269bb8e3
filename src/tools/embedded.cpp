#include "tools/embedded.h"

namespace lisadiff::embedded {

std::optional<std::string_view> find(std::string_view path) {
  for (const auto& f : all_files()) {
    if (path == f.path) return f.data;
  }
  return std::nullopt;
}

}  // namespace lisadiff::embedded
