// Image preprocessing of the diffusers scripts, on tensors. Each function is the op that
// torchvision's tensor path runs (transforms.functional on a uint8 CHW tensor), so for the
// same uint8 input the output is the same to the bit (tests/data/test_transforms.cpp
// against torchvision 0.26). The scripts resize PIL images instead; PIL's antialiased
// resampler differs from torch's by at most a few uint8 levels at edges (measured in
// docs/data.md), the one stated tolerance of the pipeline.
//
// Random draws (crop offsets, flip) come from a TransformDraws the caller supplies, so that
// the loader can make them a pure function of (seed, sample index) and share them between
// the two images of an InstructPix2Pix pair.
#pragma once

#include <cstdint>
#include <random>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "data/pil_resample.h"

namespace lisadiff::data {

// torchvision's InterpolationMode values that work on tensors. box, hamming and lanczos are
// PIL-only and refused (`source` names the option in the error).
enum class Interpolation { kBilinear, kBicubic, kNearest, kNearestExact };
Interpolation parse_interpolation(const std::string& name, const std::string& source);
const char* interpolation_name(Interpolation mode);

// {height, width} after resizing the shorter side to `size` (torchvision's
// _compute_resized_output_size with one size): the long side is int(size * long / short).
std::pair<std::int64_t, std::int64_t> shorter_side_size(std::int64_t height, std::int64_t width, std::int64_t size);

// uint8 [C, H, W] -> uint8 [C, height, width]: float32 interpolate (antialias for bilinear
// and bicubic, align_corners false), bicubic clamped to [0, 255], rounded to nearest even.
torch::Tensor resize(const torch::Tensor& chw_uint8, std::int64_t height, std::int64_t width, Interpolation mode);
torch::Tensor resize_shorter_side(const torch::Tensor& chw_uint8, std::int64_t size, Interpolation mode);

// Crops [.., top:top+height, left:left+width]; the region must lie inside the image.
torch::Tensor crop(const torch::Tensor& chw, std::int64_t top, std::int64_t left, std::int64_t height,
                   std::int64_t width);
// torchvision's CenterCrop: offsets int(round((H - h) / 2)) with Python's half-to-even
// rounding; an image smaller than the crop is first zero-padded as torchvision does.
torch::Tensor center_crop(const torch::Tensor& chw, std::int64_t height, std::int64_t width);
torch::Tensor hflip(const torch::Tensor& chw);

// ToTensor + Normalize(0.5, 0.5): (x / 255 - 0.5) / 0.5 in float32 (DPO, LCM).
torch::Tensor to_signed_unit(const torch::Tensor& uint8);
// InstructPix2Pix's 2 * (x / 255) - 1 in float32 (the same values up to one rounding).
torch::Tensor to_signed_unit_ip2p(const torch::Tensor& uint8);

// A deterministic random source for one sample: a 64-bit seed expanded by mt19937_64, with
// draws that are the same on every platform (no std::uniform_int_distribution).
class TransformDraws {
 public:
  explicit TransformDraws(std::uint64_t seed) : rng_(seed) {}
  // Uniform integer in [0, n] (inclusive), n >= 0.
  std::int64_t uniform_int(std::int64_t n);
  // True with probability 1/2.
  bool coin();
  std::uint64_t raw() { return rng_(); }

 private:
  std::mt19937_64 rng_;
};

// splitmix64 mix of (seed, index): the per-sample seeds of the loader.
std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t index);

// One recipe's pipeline.
struct ImageTransform {
  enum class Resize { kShorterSide, kExact };
  enum class Crop { kCenter, kRandom };
  enum class Normalize { kMeanStd, kIp2p };
  std::int64_t resolution = 512;
  Resize resize = Resize::kShorterSide;
  Interpolation interpolation = Interpolation::kBilinear;
  // Resize with Pillow's resampler and this filter instead of torchvision's tensor op (the
  // scripts whose Resize sees PIL images: text_to_image's --image_interpolation_mode).
  std::optional<PilFilter> pil_filter;
  Crop crop = Crop::kCenter;
  bool random_flip = false;
  Normalize normalize = Normalize::kMeanStd;

  // uint8 [H, W, 3] (decode_image's output) -> float32 [3, resolution, resolution] in
  // [-1, 1]. Draws, in this order: the random crop's top and left, then the flip coin.
  torch::Tensor operator()(const torch::Tensor& hwc_uint8, TransformDraws& draws) const;
  std::string summary() const;
};

}  // namespace lisadiff::data
