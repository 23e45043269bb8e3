// Fuzz target: the image decoders (src/data/image.h: PNG, JPEG, WebP, and whatever stb reads;
// src/io/png.h: the text chunks of generated PNGs). Any bytes as an image file.
#include <cstdint>
#include <string>
#include <string_view>

#include <torch/torch.h>

#include "data/image.h"
#include "fuzz_util.h"
#include "io/png.h"

using namespace lisadiff;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::init_quietly();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean("image size", [&] {
    const auto [w, h] = data::image_size(bytes, "input");
    if (w <= 0 || h <= 0) std::abort();
  });
  fuzz::expect_clean("image decode", [&] {
    const torch::Tensor img = data::decode_image(bytes, "input");
    if (img.dim() != 3 || img.size(2) != 3 || img.scalar_type() != torch::kUInt8) std::abort();
    const auto [w, h] = data::image_size(bytes, "input");
    if (img.size(0) != h || img.size(1) != w) std::abort();  // the header and the pixels agree
  });
  fuzz::expect_clean("png text", [&] {
    for (const auto& [key, text] : io::read_png_text(bytes, "input")) {
      if (key.empty()) std::abort();
      (void)text;
    }
  });
  return 0;
}
