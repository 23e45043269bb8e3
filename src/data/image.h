// Image bytes <-> RGB pixels for the data pipeline. Decoding goes by the bytes' signature,
// never the file name, and always yields 8-bit RGB, as PIL's `Image.open(...).convert("RGB")`
// does in the diffusers scripts:
//   - JPEG with libjpeg-turbo at PIL's settings (islow IDCT, fancy upsampling), so the
//     pixels equal PIL's; grayscale is replicated to RGB; CMYK/YCCK JPEGs are refused.
//   - WebP with libwebp (alpha dropped, as convert("RGB")).
//   - PNG, BMP, GIF (first frame), TGA, PNM with stb_image (alpha dropped, grayscale
//     replicated, 16-bit PNG reduced to 8 bits).
// Anything else, and any truncated or corrupt file, is an Error naming `what` (the file or
// the shard and sample key) and what is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <torch/torch.h>

namespace lisadiff::data {

enum class ImageFormat { kUnknown, kJpeg, kPng, kWebp, kBmp, kGif };

// The format the leading bytes announce (kUnknown when none).
ImageFormat sniff_image_format(std::string_view bytes);
const char* format_name(ImageFormat format);

// uint8 [H, W, 3] on the CPU. Throws lisadiff::Error "<what>: <problem>".
torch::Tensor decode_image(std::string_view bytes, const std::string& what);
// Only the size, {width, height}, read from the header (no pixels are decoded).
std::pair<int, int> image_size(std::string_view bytes, const std::string& what);

// Images with more pixels than this are refused before any pixel memory is allocated.
// Default: PIL's decompression-bomb limit, 178,956,970 (2 * Image.MAX_IMAGE_PIXELS). The fuzz
// targets lower it, so that a tiny file claiming a huge image costs them no time.
constexpr std::int64_t kDefaultMaxImagePixels = 178'956'970;
void set_max_image_pixels(std::int64_t pixels);
std::int64_t max_image_pixels();

// Encoders for make-dataset and figures; `rgb` is row-major [H, W, 3] uint8 (a contiguous
// CPU tensor or a raw buffer). Both are deterministic: the same pixels give the same bytes.
std::string encode_png(const std::uint8_t* rgb, int width, int height);
std::string encode_jpeg(const std::uint8_t* rgb, int width, int height, int quality = 95);
std::string encode_png(const torch::Tensor& hwc_uint8);
std::string encode_jpeg(const torch::Tensor& hwc_uint8, int quality = 95);

}  // namespace lisadiff::data
