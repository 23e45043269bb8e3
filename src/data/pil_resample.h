// PIL's Image.resize for 8-bit images, pixel for pixel: what the diffusers scripts get when
// torchvision's Resize is applied to PIL images (train_text_to_image.py's
// --image_interpolation_mode, lanczos by default, which torchvision's tensor ops do not have).
//
// The algorithm of Pillow's Resample.c: separable convolution, horizontal pass first, then
// vertical, each output pixel a weighted sum over the input pixels under the filter's support
// (scaled by the reduction factor when shrinking, so that it antialiases), weights normalised
// to sum to 1 and turned into 22-bit fixed point, sums rounded and clipped to uint8 after each
// pass. Nearest samples the input pixel under each output pixel's centre.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace lisadiff::data {

enum class PilFilter { kNearest, kBox, kBilinear, kHamming, kBicubic, kLanczos };

// "nearest", "nearest_exact" (torchvision passes PIL NEAREST for both), "box", "bilinear",
// "hamming", "bicubic", "lanczos" (torchvision's InterpolationMode names); anything else
// throws lisadiff::Error naming `source`.
PilFilter parse_pil_filter(const std::string& name, const std::string& source);
const char* pil_filter_name(PilFilter filter);

// uint8 [C, H, W] -> uint8 [C, height, width], as PIL resizes an image of C 8-bit bands.
torch::Tensor pil_resize(const torch::Tensor& chw_uint8, std::int64_t height, std::int64_t width, PilFilter filter);

}  // namespace lisadiff::data
