#include "config/unet_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "config/config_checks.h"

namespace lisadiff::config {
namespace {

const std::vector<std::string> kDownBlocks = {"CrossAttnDownBlock2D", "DownBlock2D"};
const std::vector<std::string> kMidBlocks = {"UNetMidBlock2DCrossAttn"};
const std::vector<std::string> kUpBlocks = {"CrossAttnUpBlock2D", "UpBlock2D"};

// Resolves an int-or-list key to one value per entry (per down block unless `what` says
// otherwise), checking the list length.
std::vector<int> per_block(const ScalarOrList<int>& value, std::size_t blocks, const std::string& source,
                           const char* key, const char* what = "one per down block") {
  if (value.is_list && value.values.size() != blocks) {
    field_error(source, key, fmt::format("expected {} entries ({}), found {}", blocks, what, value.values.size()));
  }
  std::vector<int> out;
  for (std::size_t i = 0; i < blocks; ++i) {
    const int v = value.at(i);
    if (v <= 0) field_error(source, key, fmt::format("expected positive values, found {}", v));
    out.push_back(v);
  }
  return out;
}

// Every config.json key, in diffusers' constructor order. Self is const for writing.
template <class Self, class Visitor>
void visit_unet_fields(Self& c, Visitor& v) {
  v("sample_size", c.sample_size);
  v("in_channels", c.in_channels);
  v("out_channels", c.out_channels);
  v("center_input_sample", c.center_input_sample);
  v("flip_sin_to_cos", c.flip_sin_to_cos);
  v("freq_shift", c.freq_shift);
  v("down_block_types", c.down_block_types);
  v("mid_block_type", c.mid_block_type);
  v("up_block_types", c.up_block_types);
  v.fixed("only_cross_attention", false);
  v("block_out_channels", c.block_out_channels);
  v("layers_per_block", c.layers_per_block);
  v("downsample_padding", c.downsample_padding);
  v("mid_block_scale_factor", c.mid_block_scale_factor);
  v("dropout", c.dropout);
  v("act_fn", c.act_fn);
  v("norm_num_groups", c.norm_num_groups);
  v("norm_eps", c.norm_eps);
  v("cross_attention_dim", c.cross_attention_dim);
  v("transformer_layers_per_block", c.transformer_layers_per_block);
  v.fixed("reverse_transformer_layers_per_block", nullptr);
  v.fixed("encoder_hid_dim", nullptr);
  v.fixed("encoder_hid_dim_type", nullptr);
  v("attention_head_dim", c.attention_head_dim);
  // diffusers itself rejects a non-null value for the SD UNet (see the head quirk).
  v.fixed("num_attention_heads", nullptr);
  v.fixed("dual_cross_attention", false);
  v("use_linear_projection", c.use_linear_projection);
  v.fixed("class_embed_type", nullptr);
  v.fixed("addition_embed_type", nullptr);
  v.fixed("addition_time_embed_dim", nullptr);
  v.fixed("num_class_embeds", nullptr);
  v("upcast_attention", c.upcast_attention);
  v.fixed("resnet_time_scale_shift", "default");
  v.fixed("resnet_skip_time_act", false);
  v.fixed("resnet_out_scale_factor", 1.0);
  v.fixed("time_embedding_type", "positional");
  v.fixed("time_embedding_dim", nullptr);
  v.fixed("time_embedding_act_fn", nullptr);
  v.fixed("timestep_post_act", nullptr);
  v("time_cond_proj_dim", c.time_cond_proj_dim);
  v("conv_in_kernel", c.conv_in_kernel);
  v("conv_out_kernel", c.conv_out_kernel);
  v.fixed("projection_class_embeddings_input_dim", nullptr);
  v.fixed("attention_type", "default");
  v.fixed("class_embeddings_concat", false);
  v.fixed("mid_block_only_cross_attention", nullptr);
  v.fixed("cross_attention_norm", nullptr);
  v("addition_embed_type_num_heads", c.addition_embed_type_num_heads);
}

const auto kVisitUnet = [](auto& config, auto& visitor) { visit_unet_fields(config, visitor); };

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const Json& json, const std::string& source) {
  FieldReader reader(json, source);
  check_class_name(reader, {"UNet2DConditionModel"});
  return read_fields(UNet2DConditionConfig{}, reader, kVisitUnet);
}

UNet2DConditionConfig UNet2DConditionConfig::from_file(const std::filesystem::path& path) {
  return read_config_file<UNet2DConditionConfig>(path);
}

void UNet2DConditionConfig::validate(const std::string& source) {
  const std::size_t blocks = down_block_types.size();
  require_positive(source, "in_channels", in_channels);
  require_positive(source, "out_channels", out_channels);
  require_positive(source, "norm_num_groups", norm_num_groups);
  require_positive(source, "norm_eps", norm_eps);
  require_one_of(source, "act_fn", act_fn, {"silu", "swish"});
  require_odd_kernel(source, "conv_in_kernel", conv_in_kernel);
  require_odd_kernel(source, "conv_out_kernel", conv_out_kernel);
  if (blocks == 0) field_error(source, "down_block_types", "expected at least one block, found an empty list");
  require_block_types(source, "down_block_types", down_block_types, kDownBlocks);
  require_block_types(source, "up_block_types", up_block_types, kUpBlocks);
  require_one_of(source, "mid_block_type", mid_block_type, kMidBlocks);
  require_length(source, "up_block_types", up_block_types.size(), blocks, "down_block_types");
  require_length(source, "block_out_channels", block_out_channels.size(), blocks, "down_block_types");
  require_divisible_channels(source, block_out_channels, norm_num_groups);
  if (dropout < 0.0 || dropout >= 1.0) field_error(source, "dropout", fmt::format("expected [0, 1), found {}", dropout));
  if (time_cond_proj_dim) require_positive(source, "time_cond_proj_dim", *time_cond_proj_dim);
  if (sample_size) per_block(*sample_size, sample_size->is_list ? 2 : 1, source, "sample_size", "height, width");

  num_heads = per_block(attention_head_dim, blocks, source, "attention_head_dim");
  layers = per_block(layers_per_block, blocks, source, "layers_per_block");
  cross_attention_dims = per_block(cross_attention_dim, blocks, source, "cross_attention_dim");
  transformer_layers = per_block(transformer_layers_per_block, blocks, source, "transformer_layers_per_block");
  // diffusers gives each attention block heads x (C / heads) channels (integer division), so
  // a block with fewer channels than heads would have zero-width heads. Up blocks take the
  // per-block lists reversed; the mid block takes the last entry.
  const auto check_heads = [&](const std::string& block, int channels, int heads) {
    if (channels < heads) {
      field_error(source, "attention_head_dim",
                  fmt::format("{} has {} channels but {} heads, leaving heads of width 0 (in SD1.x configs this "
                              "key holds the number of heads)", block, channels, heads));
    }
  };
  for (std::size_t i = 0; i < blocks; ++i) {
    if (down_block_types[i] == "CrossAttnDownBlock2D") {
      check_heads(fmt::format("down block {}", i), block_out_channels[i], num_heads[i]);
    }
  }
  for (std::size_t i = 0; i < blocks; ++i) {
    const std::size_t r = blocks - 1 - i;
    if (up_block_types[i] == "CrossAttnUpBlock2D") {
      check_heads(fmt::format("up block {}", i), block_out_channels[r], num_heads[r]);
    }
  }
  check_heads("the mid block", block_out_channels.back(), num_heads.back());
}

Json UNet2DConditionConfig::to_json() const {
  return write_fields(*this, {{"_class_name", "UNet2DConditionModel"}}, kVisitUnet);
}

std::string UNet2DConditionConfig::summary() const {
  return fmt::format("in {}, out {}, channels [{}], layers per block {}, heads [{}], cross-attention {}, "
                     "time_cond_proj_dim {}, {} projection",
                     in_channels, out_channels, fmt::join(block_out_channels, ", "), fmt::join(layers, "/"),
                     fmt::join(num_heads, ", "), fmt::join(cross_attention_dims, "/"),
                     time_cond_proj_dim ? std::to_string(*time_cond_proj_dim) : "none",
                     use_linear_projection ? "linear" : "conv");
}

}  // namespace lisadiff::config
