// Precompiled header for the core library, the apps and the tests (see src/CMakeLists.txt).
// Only headers that are heavy and stable belong here.
#pragma once
#include <torch/torch.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>
