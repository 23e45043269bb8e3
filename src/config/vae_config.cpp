#include "config/vae_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "config/config_checks.h"

namespace lisadiff::config {
namespace {

template <class Self, class Visitor>
void visit_vae_fields(Self& c, Visitor& v) {
  v("in_channels", c.in_channels);
  v("out_channels", c.out_channels);
  v("down_block_types", c.down_block_types);
  v("up_block_types", c.up_block_types);
  v("block_out_channels", c.block_out_channels);
  v("layers_per_block", c.layers_per_block);
  v("act_fn", c.act_fn);
  v("latent_channels", c.latent_channels);
  v("norm_num_groups", c.norm_num_groups);
  v("sample_size", c.sample_size);
  v("scaling_factor", c.scaling_factor);
  v("shift_factor", c.shift_factor);
  v("latents_mean", c.latents_mean);
  v("latents_std", c.latents_std);
  v("force_upcast", c.force_upcast);
  v("use_quant_conv", c.use_quant_conv);
  v("use_post_quant_conv", c.use_post_quant_conv);
  v("mid_block_add_attention", c.mid_block_add_attention);
}

const auto kVisitVae = [](auto& config, auto& visitor) { visit_vae_fields(config, visitor); };

}  // namespace

AutoencoderKLConfig AutoencoderKLConfig::from_json(const Json& json, const std::string& source) {
  FieldReader reader(json, source);
  check_class_name(reader, {"AutoencoderKL"});
  return read_fields(AutoencoderKLConfig{}, reader, kVisitVae);
}

AutoencoderKLConfig AutoencoderKLConfig::from_file(const std::filesystem::path& path) {
  return read_config_file<AutoencoderKLConfig>(path);
}

void AutoencoderKLConfig::validate(const std::string& source) const {
  require_positive(source, "in_channels", in_channels);
  require_positive(source, "out_channels", out_channels);
  require_positive(source, "latent_channels", latent_channels);
  require_positive(source, "layers_per_block", layers_per_block);
  require_positive(source, "norm_num_groups", norm_num_groups);
  require_positive(source, "scaling_factor", scaling_factor);
  require_one_of(source, "act_fn", act_fn, {"silu", "swish"});
  if (block_out_channels.empty()) field_error(source, "block_out_channels", "expected at least one entry, found none");
  require_block_types(source, "down_block_types", down_block_types, {"DownEncoderBlock2D"});
  require_block_types(source, "up_block_types", up_block_types, {"UpDecoderBlock2D"});
  require_length(source, "down_block_types", down_block_types.size(), block_out_channels.size(), "block_out_channels");
  require_length(source, "up_block_types", up_block_types.size(), block_out_channels.size(), "block_out_channels");
  require_divisible_channels(source, block_out_channels, norm_num_groups);
  if (latents_mean && latents_mean->size() != static_cast<std::size_t>(latent_channels)) {
    require_length(source, "latents_mean", latents_mean->size(), latent_channels, "latent_channels");
  }
  if (latents_std && latents_std->size() != static_cast<std::size_t>(latent_channels)) {
    require_length(source, "latents_std", latents_std->size(), latent_channels, "latent_channels");
  }
}

Json AutoencoderKLConfig::to_json() const {
  return write_fields(*this, {{"_class_name", "AutoencoderKL"}}, kVisitVae);
}

std::string AutoencoderKLConfig::summary() const {
  return fmt::format("in {}, out {}, latent channels {}, channels [{}], layers per block {}, scaling_factor {}",
                     in_channels, out_channels, latent_channels, fmt::join(block_out_channels, ", "),
                     layers_per_block, scaling_factor);
}

}  // namespace lisadiff::config
