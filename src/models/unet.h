// UNet2DConditionModel (diffusers), SD1.x/SD2.x family: CrossAttnDownBlock2D, DownBlock2D,
// UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D; any in_channels; LCM's
// time_cond_proj_dim. named_parameters() = diffusers' state-dict keys in registration order
// (conv_in, time_embedding, down_blocks, up_blocks, mid_block, conv_norm_out, conv_out).
// Facts: ../shared/spec/models.md section 3.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "config/unet_config.h"
#include "models/blocks.h"
#include "models/state.h"

namespace lisadiff::models {

// One down or up block; `attention` selects the CrossAttn variant. Children: attentions
// (cross-attention blocks only), resnets, downsamplers/upsamplers (all but the last block).
class UNetBlockImpl : public torch::nn::Module {
 public:
  bool gradient_checkpointing = false;
  std::vector<ResnetBlock2D> resnet_list;
  std::vector<Transformer2DModel> attention_list;  // empty for DownBlock2D/UpBlock2D
  Downsample2D downsampler{nullptr};
  Upsample2D upsampler{nullptr};

  void set_gradient_checkpointing(bool on);

 protected:
  torch::Tensor run_resnet(std::size_t j, const torch::Tensor& h, const torch::Tensor& temb);
  void register_children(bool attention);
};

class UNetDownBlockImpl : public UNetBlockImpl {
 public:
  UNetDownBlockImpl(const config::UNet2DConditionConfig& c, std::size_t index);
  // Returns the block output; appends every skip connection to `skips`.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips);
};
TORCH_MODULE(UNetDownBlock);

class UNetUpBlockImpl : public UNetBlockImpl {
 public:
  UNetUpBlockImpl(const config::UNet2DConditionConfig& c, std::size_t index);
  // Consumes the last resnets.size() entries of `skips` (removing them).
  torch::Tensor forward(const torch::Tensor& x, std::vector<torch::Tensor>& skips, const torch::Tensor& temb,
                        const torch::Tensor& context, std::optional<std::vector<int64_t>> upsample_size);
};
TORCH_MODULE(UNetUpBlock);

class UNetMidBlockImpl : public UNetBlockImpl {
 public:
  explicit UNetMidBlockImpl(const config::UNet2DConditionConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& context);
};
TORCH_MODULE(UNetMidBlock);

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  // `config` must be validated (UNet2DConditionConfig::validate).
  explicit UNet2DConditionModelImpl(const config::UNet2DConditionConfig& config);

  // sample [B, in_channels, H, W]; timesteps 0-d or [B] (any dtype); encoder_hidden_states
  // [B, S, cross_attention_dim]; timestep_cond [B, time_cond_proj_dim] or undefined.
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timesteps,
                        const torch::Tensor& encoder_hidden_states, const torch::Tensor& timestep_cond = {});

  // Checkpoints every resnet and transformer block (as diffusers does) while training.
  void set_gradient_checkpointing(bool on);


  config::UNet2DConditionConfig config;
  torch::nn::Conv2d conv_in{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  torch::nn::ModuleList down_blocks, up_blocks;
  std::vector<UNetDownBlock> downs;
  std::vector<UNetUpBlock> ups;
  UNetMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(UNet2DConditionModel);

// The top-level parts in registration order ("conv_in", "time_embedding", "down_blocks.0",
// ..., "up_blocks.0", ..., "mid_block", "conv_norm_out", "conv_out"), for reports.
std::vector<std::string> unet_top_level_blocks(const config::UNet2DConditionConfig& config);

// Writes `<dir>/config.json` and `<dir>/diffusion_pytorch_model.safetensors` (float32 as the
// model holds it), as diffusers' save_pretrained does; each file atomically.
void save_unet(const UNet2DConditionModelImpl& unet, const std::filesystem::path& dir);
// The same for a config and weights given apart (e.g. LoRA-merged ones), in their dtypes.
void save_unet(const config::UNet2DConditionConfig& config, const io::NamedTensors& weights,
               const std::filesystem::path& dir);

// Reads `<dir>/config.json` and the weights (variant: "fp16", ... or empty) into a model of
// options.dtype on options.device, in eval mode.
UNet2DConditionModel load_unet(const std::filesystem::path& dir, const LoadOptions& options = {},
                               const std::string& variant = "");

}  // namespace lisadiff::models
