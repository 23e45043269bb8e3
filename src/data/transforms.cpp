#include "data/transforms.h"

#include <cmath>
#include <tuple>

#include "core/error.h"

namespace lisadiff::data {
namespace {

void check_chw(const torch::Tensor& image, const char* what) {
  if (image.dim() != 3) {
    throw Error(std::string(what) + ": expected a [C, H, W] image tensor, got " + std::to_string(image.dim()) +
                " dimensions");
  }
}

}  // namespace

Interpolation parse_interpolation(const std::string& name, const std::string& source) {
  if (name == "bilinear") return Interpolation::kBilinear;
  if (name == "bicubic") return Interpolation::kBicubic;
  if (name == "nearest") return Interpolation::kNearest;
  if (name == "nearest_exact" || name == "nearest-exact") return Interpolation::kNearestExact;
  if (name == "box" || name == "hamming" || name == "lanczos") {
    throw Error(source + ": interpolation '" + name +
                "' exists only in PIL's resampler; lisadiff resizes tensors as torchvision does and supports "
                "bilinear, bicubic, nearest and nearest_exact");
  }
  throw Error(source + ": unknown interpolation '" + name + "' (bilinear, bicubic, nearest or nearest_exact)");
}

const char* interpolation_name(Interpolation mode) {
  switch (mode) {
    case Interpolation::kBilinear: return "bilinear";
    case Interpolation::kBicubic: return "bicubic";
    case Interpolation::kNearest: return "nearest";
    case Interpolation::kNearestExact: return "nearest_exact";
  }
  return "?";
}

std::pair<std::int64_t, std::int64_t> shorter_side_size(std::int64_t height, std::int64_t width, std::int64_t size) {
  if (height <= 0 || width <= 0 || size <= 0) throw Error("resize: sizes must be positive");
  const bool portrait = width <= height;
  const std::int64_t short_side = portrait ? width : height, long_side = portrait ? height : width;
  // Python's int(size * long / short): an exact integer product, one correctly rounded
  // division, truncation.
  const auto new_long =
      static_cast<std::int64_t>(static_cast<double>(size * long_side) / static_cast<double>(short_side));
  return portrait ? std::pair{new_long, size} : std::pair{size, new_long};
}

torch::Tensor resize(const torch::Tensor& chw_uint8, std::int64_t height, std::int64_t width, Interpolation mode) {
  check_chw(chw_uint8, "resize");
  if (height <= 0 || width <= 0) throw Error("resize: target size must be positive");
  if (chw_uint8.size(1) == height && chw_uint8.size(2) == width) return chw_uint8;
  const bool integer = !torch::isFloatingType(chw_uint8.scalar_type());
  auto x = (integer ? chw_uint8.to(torch::kFloat32) : chw_uint8).unsqueeze(0);
  const std::vector<std::int64_t> size{height, width};
  switch (mode) {
    case Interpolation::kBilinear: x = at::_upsample_bilinear2d_aa(x, size, /*align_corners=*/false); break;
    case Interpolation::kBicubic: x = at::_upsample_bicubic2d_aa(x, size, /*align_corners=*/false); break;
    case Interpolation::kNearest: x = at::upsample_nearest2d(x, size); break;
    case Interpolation::kNearestExact: x = at::_upsample_nearest_exact2d(x, size); break;
  }
  x = x.squeeze(0);
  if (!integer) return x;
  if (mode == Interpolation::kBicubic) x = x.clamp(0, 255);
  return x.round().to(chw_uint8.scalar_type());
}

torch::Tensor resize_shorter_side(const torch::Tensor& chw_uint8, std::int64_t size, Interpolation mode) {
  check_chw(chw_uint8, "resize");
  const auto [height, width] = shorter_side_size(chw_uint8.size(1), chw_uint8.size(2), size);
  return resize(chw_uint8, height, width, mode);
}

torch::Tensor crop(const torch::Tensor& chw, std::int64_t top, std::int64_t left, std::int64_t height,
                   std::int64_t width) {
  check_chw(chw, "crop");
  if (top < 0 || left < 0 || height <= 0 || width <= 0 || top + height > chw.size(1) || left + width > chw.size(2)) {
    throw Error("crop: region (top " + std::to_string(top) + ", left " + std::to_string(left) + ", " +
                std::to_string(height) + "x" + std::to_string(width) + ") outside a " + std::to_string(chw.size(1)) +
                "x" + std::to_string(chw.size(2)) + " image");
  }
  return chw.narrow(1, top, height).narrow(2, left, width);
}

torch::Tensor center_crop(const torch::Tensor& chw, std::int64_t height, std::int64_t width) {
  check_chw(chw, "center_crop");
  auto image = chw;
  if (width > image.size(2) || height > image.size(1)) {
    const auto dw = std::max<std::int64_t>(width - image.size(2), 0), dh = std::max<std::int64_t>(height - image.size(1), 0);
    image = torch::constant_pad_nd(image, {dw / 2, (dw + 1) / 2, dh / 2, (dh + 1) / 2}, 0);
  }
  // Python's round() on k / 2 rounds halves to even, as nearbyint does by default.
  const auto top = static_cast<std::int64_t>(std::nearbyint(static_cast<double>(image.size(1) - height) / 2.0));
  const auto left = static_cast<std::int64_t>(std::nearbyint(static_cast<double>(image.size(2) - width) / 2.0));
  return crop(image, top, left, height, width);
}

torch::Tensor hflip(const torch::Tensor& chw) { return chw.flip({-1}); }

torch::Tensor to_signed_unit(const torch::Tensor& uint8) {
  return uint8.to(torch::kFloat32).div(255).sub(0.5).div(0.5);
}

torch::Tensor to_signed_unit_ip2p(const torch::Tensor& uint8) {
  return uint8.to(torch::kFloat32).div(255).mul(2).sub(1);
}

std::int64_t TransformDraws::uniform_int(std::int64_t n) {
  if (n <= 0) return 0;
  // Rejection sampling on the top of the 64-bit range: unbiased and platform-independent.
  const std::uint64_t range = static_cast<std::uint64_t>(n) + 1;
  const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % range;
  std::uint64_t v = rng_();
  while (v >= limit) v = rng_();
  return static_cast<std::int64_t>(v % range);
}

bool TransformDraws::coin() { return (rng_() >> 63) != 0; }

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t index) {
  auto split = [](std::uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  return split(split(seed) ^ index);
}

torch::Tensor ImageTransform::operator()(const torch::Tensor& hwc_uint8, TransformDraws& draws) const {
  if (hwc_uint8.dim() != 3 || hwc_uint8.size(2) != 3) throw Error("image transform: expected an [H, W, 3] image");
  auto [h, w] = std::pair{resolution, resolution};
  if (resize == Resize::kShorterSide) {
    std::tie(h, w) = shorter_side_size(hwc_uint8.size(0), hwc_uint8.size(1), resolution);
    // A very long, thin image would resize to a huge one (1 x 20000 -> 512 x 10,240,000).
    if (h * w > 64 * resolution * resolution) {
      throw Error("image transform: a " + std::to_string(hwc_uint8.size(1)) + "x" + std::to_string(hwc_uint8.size(0)) +
                  " image has too extreme an aspect ratio (its resize would hold " + std::to_string(h * w) +
                  " pixels, more than 64 x resolution^2)");
    }
  }
  auto x = pil_filter ? pil_resize(hwc_uint8.permute({2, 0, 1}), h, w, *pil_filter)
                      : data::resize(hwc_uint8.permute({2, 0, 1}), h, w, interpolation);
  if (crop == Crop::kRandom) {
    const auto top = draws.uniform_int(x.size(1) - resolution);
    const auto left = draws.uniform_int(x.size(2) - resolution);
    x = data::crop(x, top, left, resolution, resolution);
  } else {
    x = center_crop(x, resolution, resolution);
  }
  if (random_flip && draws.coin()) x = hflip(x);
  return (normalize == Normalize::kIp2p ? to_signed_unit_ip2p(x) : to_signed_unit(x)).contiguous();
}

std::string ImageTransform::summary() const {
  return std::string(resize == Resize::kExact ? "resize to " : "resize shorter side to ") + std::to_string(resolution) +
         " (" + (pil_filter ? std::string("PIL ") + pil_filter_name(*pil_filter) : std::string(interpolation_name(interpolation))) +
         "), " + (crop == Crop::kRandom ? "random" : "center") + " crop" +
         (random_flip ? ", random flip" : "");
}

}  // namespace lisadiff::data
