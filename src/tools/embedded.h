// Files compiled into the core library (cmake/LisadiffEmbed.cmake): the pipeline presets of
// configs/presets/, so that `lisadiff init-pipeline` needs no data files at run time.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lisadiff::embedded {

struct File {
  const char* path;  // relative to configs/presets, e.g. "tiny/unet/config.json"
  std::string_view data;
};

const std::vector<File>& all_files();

// The contents of `path`, or nullopt.
std::optional<std::string_view> find(std::string_view path);

}  // namespace lisadiff::embedded
