// UNet2DConditionModel's config.json (diffusers), the SD1.x/SD2.x family. Field names are
// the JSON keys; defaults are diffusers' constructor defaults (not SD1.5's values).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "config/json_fields.h"

namespace lisadiff::config {

struct UNet2DConditionConfig {
  std::optional<ScalarOrList<int>> sample_size;  // latent size: int or [height, width]
  int in_channels = 4;
  int out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  int freq_shift = 0;
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D"};
  std::vector<int> block_out_channels = {320, 640, 1280, 1280};
  ScalarOrList<int> layers_per_block = 2;
  int downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  double dropout = 0.0;
  std::string act_fn = "silu";
  int norm_num_groups = 32;
  double norm_eps = 1e-5;
  ScalarOrList<int> cross_attention_dim = 1280;
  ScalarOrList<int> transformer_layers_per_block = 1;
  // SD1.x/2.x quirk: this key holds the number of attention heads, not their width.
  ScalarOrList<int> attention_head_dim = 8;
  bool use_linear_projection = false;
  std::optional<bool> upcast_attention = false;  // null means false; no effect with SDPA
  std::optional<int> time_cond_proj_dim;          // LCM's guidance embedding width
  int conv_in_kernel = 3;
  int conv_out_kernel = 3;
  int addition_embed_type_num_heads = 64;  // read by diffusers only with addition_embed_type (rejected)

  // Filled by validate(): one entry per down block, quirk resolved (heads per block).
  std::vector<int> num_heads;
  std::vector<int> layers;
  std::vector<int> cross_attention_dims;
  std::vector<int> transformer_layers;

  // Parses and validates `json`; `source` names the file in messages.
  static UNet2DConditionConfig from_json(const Json& json, const std::string& source);
  static UNet2DConditionConfig from_file(const std::filesystem::path& path);
  // Checks every value and cross-field rule; throws lisadiff::Error with file, field,
  // expected and found. Fills the per-block vectors above.
  void validate(const std::string& source);
  // The complete config.json diffusers would write (with `_class_name`).
  Json to_json() const;
  // One line for `lisadiff inspect`.
  std::string summary() const;
};

}  // namespace lisadiff::config
