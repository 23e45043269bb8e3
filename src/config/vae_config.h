// AutoencoderKL's config.json (diffusers). Defaults are diffusers' constructor defaults.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "config/json_fields.h"

namespace lisadiff::config {

struct AutoencoderKLConfig {
  int in_channels = 3;
  int out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int> block_out_channels = {64};
  int layers_per_block = 1;
  std::string act_fn = "silu";
  int latent_channels = 4;
  int norm_num_groups = 32;
  ScalarOrList<int> sample_size = 32;  // image size: int or [height, width]
  double scaling_factor = 0.18215;     // latents = sample * scaling_factor
  std::optional<double> shift_factor;  // latents = (sample - shift_factor) * scaling_factor
  std::optional<std::vector<double>> latents_mean;  // stored for later recipes; unused by SD1.5
  std::optional<std::vector<double>> latents_std;
  bool force_upcast = true;  // run the VAE in float32 when the pipeline runs in fp16
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  static AutoencoderKLConfig from_json(const Json& json, const std::string& source);
  static AutoencoderKLConfig from_file(const std::filesystem::path& path);
  void validate(const std::string& source) const;
  Json to_json() const;
  std::string summary() const;
};

}  // namespace lisadiff::config
