#include "fuzz_util.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <typeinfo>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/error.h"
#include "data/image.h"

namespace lisadiff::fuzz {

namespace fs = std::filesystem;

namespace {
struct Scratch {
  fs::path dir;
  Scratch() {
    // LISADIFF_FUZZ_SCRATCH names a fixed folder (scripts/fuzz.sh --ci): the paths, which
    // error messages hold and the code compares, are then the same on every run.
    if (const char* fixed = std::getenv("LISADIFF_FUZZ_SCRATCH"); fixed && *fixed) {
      dir = fixed;
      std::error_code ec;
      fs::remove_all(dir, ec);
    } else {
      const char* tmp = std::getenv("TMPDIR");
      const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::path(tmp ? tmp : "/tmp");
      dir = base / ("lisadiff-fuzz-" + std::to_string(::getpid()));
    }
    fs::create_directories(dir);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};
}  // namespace

const fs::path& scratch_dir() {
  static Scratch scratch;
  return scratch.dir;
}

fs::path write_scratch(const std::string& name, std::string_view bytes) {
  const fs::path path = scratch_dir() / name;
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

void expect_clean(const char* what, const std::function<void()>& body) {
  try {
    body();
  } catch (const lisadiff::Error&) {
    // The contract: bad input is a lisadiff::Error naming the file and the problem.
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING (%s): an exception other than lisadiff::Error escaped: %s: %s\n", what,
                 typeid(e).name(), e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "FINDING (%s): a non-std exception escaped\n", what);
    std::abort();
  }
}

std::vector<std::string_view> split_parts(std::string_view data, std::size_t max_parts) {
  constexpr std::string_view kSep = "\n--8<--\n";
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const auto at = data.find(kSep);
    if (at == std::string_view::npos) break;
    parts.push_back(data.substr(0, at));
    data.remove_prefix(at + kSep.size());
  }
  parts.push_back(data);
  return parts;
}

void init_quietly() {
  static const bool done = [] {
    spdlog::set_level(spdlog::level::off);
    torch::set_num_threads(1);
    // A tiny file may claim an image of up to PIL's 179 Mpixel limit, which is then allocated
    // and decoded (seconds under ASan): the limit is lowered to 4 Mpixel here, so that such
    // inputs are refused at once (the decoding code is the same at any size).
    data::set_max_image_pixels(std::int64_t{1} << 22);
    return true;
  }();
  (void)done;
}

}  // namespace lisadiff::fuzz
