// AutoencoderKL (diffusers): Encoder to a diagonal Gaussian, Decoder, quant_conv and
// post_quant_conv. named_parameters() = diffusers' keys in registration order (the decoder
// registers up_blocks before mid_block). Legacy VAE attention names (query/key/value/
// proj_attn) are mapped at load time by vae_key_alias(). Facts: ../shared/spec/models.md §4.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/vae_config.h"
#include "models/blocks.h"
#include "models/state.h"

namespace lisadiff::models {

// DiagonalGaussianDistribution over latents: moments [B, 2*lat, h, w] split into mean and
// logvar (clamped to [-30, 20]).
struct DiagonalGaussian {
  explicit DiagonalGaussian(const torch::Tensor& moments);
  torch::Tensor sample(std::optional<at::Generator> generator = std::nullopt) const;
  // mean + std * noise, with the noise given (for parity with a reference's random stream).
  torch::Tensor sample_with(const torch::Tensor& noise) const;
  torch::Tensor mode() const { return mean; }
  torch::Tensor kl() const;  // against N(0, 1), summed over [1, 2, 3]

  torch::Tensor mean, logvar, std, var;
};

// UNetMidBlock2D without time embedding: resnet, single-head attention, resnet.
class VAEMidBlockImpl : public torch::nn::Module {
 public:
  VAEMidBlockImpl(int64_t channels, int64_t groups, const std::string& act, bool add_attention);
  torch::Tensor forward(const torch::Tensor& x);

  std::vector<ResnetBlock2D> resnet_list;
  Attention attention{nullptr};
};
TORCH_MODULE(VAEMidBlock);

// DownEncoderBlock2D / UpDecoderBlock2D: resnets, then downsamplers/upsamplers.
class VAEBlockImpl : public torch::nn::Module {
 public:
  VAEBlockImpl(int64_t in, int64_t out, int layers, int64_t groups, const std::string& act, bool down, bool resample);
  torch::Tensor forward(const torch::Tensor& x);

  std::vector<ResnetBlock2D> resnet_list;
  Downsample2D downsampler{nullptr};
  Upsample2D upsampler{nullptr};
};
TORCH_MODULE(VAEBlock);

class VAEEncoderImpl : public torch::nn::Module {
 public:
  explicit VAEEncoderImpl(const config::AutoencoderKLConfig& c);
  torch::Tensor forward(const torch::Tensor& x);

  bool gradient_checkpointing = false;  // checkpoint whole down/mid blocks while training
  std::string act;
  torch::nn::Conv2d conv_in{nullptr};
  std::vector<VAEBlock> downs;
  VAEMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(VAEEncoder);

class VAEDecoderImpl : public torch::nn::Module {
 public:
  explicit VAEDecoderImpl(const config::AutoencoderKLConfig& c);
  torch::Tensor forward(const torch::Tensor& z);

  bool gradient_checkpointing = false;
  std::string act;
  torch::nn::Conv2d conv_in{nullptr};
  std::vector<VAEBlock> ups;
  VAEMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(VAEDecoder);

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const config::AutoencoderKLConfig& config);

  // x [B, in_channels, H, W] in [-1, 1] -> the latent distribution (unscaled).
  DiagonalGaussian encode(const torch::Tensor& x);
  // z [B, latent_channels, h, w] (unscaled) -> image [B, out_channels, 8h, 8w].
  torch::Tensor decode(const torch::Tensor& z);
  // decode(encode(x).mode()).
  torch::Tensor forward(const torch::Tensor& x);

  void set_gradient_checkpointing(bool on);

  config::AutoencoderKLConfig config;
  VAEEncoder encoder{nullptr};
  VAEDecoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr};
  torch::nn::Conv2d post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

// The top-level parts in registration order (encoder.conv_in, encoder.down_blocks.0, ...).
std::vector<std::string> vae_top_level_blocks(const config::AutoencoderKLConfig& config);

// Legacy VAE attention names -> current ones (one table; ../shared/spec/models.md §4.4).
std::optional<std::string> vae_key_alias(const std::string& file_key);

AutoencoderKL load_vae(const std::filesystem::path& dir, const LoadOptions& options = {}, const std::string& variant = "");

}  // namespace lisadiff::models
