// diffusers' shared building blocks (ResnetBlock2D, Downsample2D, Upsample2D, Attention,
// FeedForward/GEGLU, BasicTransformerBlock, Transformer2DModel, TimestepEmbedding), with
// diffusers' child names and registration order, so that `named_parameters()` yields the
// state-dict keys. Facts: ../shared/spec/models.md section 2.
//
// Modules are created in diffusers' construction order (which is not always the
// registration order): default initialisation then draws random numbers in the same
// sequence as diffusers' constructors do.
#pragma once

#include <optional>
#include <vector>

#include <torch/torch.h>

namespace lisadiff::models {

// Sinusoidal timestep embedding (diffusers get_timestep_embedding), float32 [N, dim].
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double downscale_freq_shift, double scale = 1.0, double max_period = 10000.0);

// LCM's guidance-scale embedding w -> [N, dim] (the distillation script's and the LCM
// pipeline's guidance_scale_embedding): sin first, divisor half - 1, w scaled by 1000.
torch::Tensor guidance_scale_embedding(const torch::Tensor& w, int64_t dim,
                                       torch::Dtype dtype = torch::kFloat32);

// Activation by diffusers' name: "silu"/"swish", "gelu", "mish", "relu".
torch::Tensor activation(const std::string& name, const torch::Tensor& x);

// A low-rank adapter on one Linear or Conv2d layer (peft's LoRA):
//   y = base(x) + scale * B(A(dropout(x))).
// Linear: A [rank, in], B [out, rank]. Conv2d: A [rank, in, kh, kw], convolving with the base's
// stride and padding, and B [out, rank, 1, 1]. Its tensors are not children of the module it
// adapts, so the model's key tree (and its safetensors files) stay those of diffusers;
// train/lora.h creates and owns them.
struct LoraAdapter {
  torch::Tensor A;
  torch::Tensor B;
  std::vector<int64_t> stride = {1, 1}, padding = {0, 0};  // Conv2d
  double scale = 1.0;
  double dropout = 0.0;
  bool enabled = true;
  torch::Tensor forward(const torch::Tensor& x, bool training) const;
};
using AdapterSlot = std::shared_ptr<LoraAdapter>;

// `y`, a layer's output for `x`, plus the adapter's term when there is an enabled one.
torch::Tensor with_adapter(const torch::Tensor& y, const AdapterSlot& adapter, const torch::Tensor& x, bool training);

// A Linear or Conv2d layer of a model that can carry an adapter.
struct AdaptableLayer {
  std::string name;                       // module path, e.g. "down_blocks.0.resnets.0.conv1"
  torch::Tensor weight;                   // the layer's weight: [out, in] or [out, in, kh, kw]
  std::vector<int64_t> stride, padding;   // Conv2d
  AdapterSlot* slot = nullptr;            // where its adapter goes (a member of `owner`)
  std::shared_ptr<torch::nn::Module> owner;
};
// Every adaptable layer of `model`, in named_modules() order (peft's order of injection): the
// attention projections (to_q, to_k, to_v, to_out.0), the transformers' proj_in / proj_out,
// the feed-forward layers (ff.net.0.proj, ff.net.2), the resnets' conv1, conv2,
// conv_shortcut and time_emb_proj, and the down- and upsamplers' conv.
std::vector<AdaptableLayer> adaptable_layers(torch::nn::Module& model);

struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;  // 0: no time embedding (the VAE)
  int64_t groups = 32;
  double eps = 1e-6;
  double dropout = 0.0;
  double output_scale_factor = 1.0;
  std::string act = "silu";
};

class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // temb may be undefined when the block has no time embedding.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

  ResnetBlock2DOptions options;
  torch::nn::GroupNorm norm1{nullptr};
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
  torch::nn::GroupNorm norm2{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Conv2d conv2{nullptr};
  torch::nn::Conv2d conv_shortcut{nullptr};
  AdapterSlot lora_conv1, lora_time_emb_proj, lora_conv2, lora_conv_shortcut;  // optional LoRA
};
TORCH_MODULE(ResnetBlock2D);

// Downsample2D with use_conv: one 3x3 stride-2 conv. padding 0 pads right/bottom by one first.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t padding);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t padding;
  torch::nn::Conv2d conv{nullptr};
  AdapterSlot lora_conv;  // optional LoRA
};
TORCH_MODULE(Downsample2D);

// Upsample2D with use_conv: nearest x2 (or to output_size), then a 3x3 conv.
class Upsample2DImpl : public torch::nn::Module {
 public:
  explicit Upsample2DImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& x, std::optional<std::vector<int64_t>> output_size = std::nullopt);

  torch::nn::Conv2d conv{nullptr};
  AdapterSlot lora_conv;  // optional LoRA
};
TORCH_MODULE(Upsample2D);

struct AttentionOptions {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: self-attention
  int64_t heads = 8;
  int64_t dim_head = 64;
  bool bias = false;      // on to_q/to_k/to_v
  bool out_bias = true;   // on to_out.0
  int64_t norm_num_groups = 0;  // >0: a GroupNorm `group_norm` on the input (the VAE)
  double eps = 1e-5;
  bool residual_connection = false;
  double rescale_output_factor = 1.0;
  double dropout = 0.0;
};

// diffusers Attention with AttnProcessor2_0 (scaled_dot_product_attention).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  // x: [B, L, C] or [B, C, H, W]; context: [B, S, Ckv] or undefined (self-attention).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {});

  AttentionOptions options;
  torch::nn::GroupNorm group_norm{nullptr};
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out;  // [Linear, Dropout]
  torch::nn::Linear out_proj{nullptr};
  torch::nn::Dropout out_dropout{nullptr};
  // Optional LoRA adapters on to_q, to_k, to_v, to_out.0 (see train/lora.h).
  AdapterSlot lora_q, lora_k, lora_v, lora_out;
};
TORCH_MODULE(Attention);

// FeedForward(dim, mult 4, "geglu"): net = [GEGLU(proj), Dropout, Linear].
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, double dropout);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList net;
  torch::nn::Linear proj{nullptr};  // net.0.proj
  torch::nn::Dropout drop{nullptr};
  torch::nn::Linear out{nullptr};  // net.2
  AdapterSlot lora_proj, lora_out;  // optional LoRA on net.0.proj and net.2
};
TORCH_MODULE(FeedForward);

struct TransformerOptions {
  int64_t channels = 0;
  int64_t heads = 8;
  int64_t cross_attention_dim = 768;
  int64_t num_layers = 1;
  int64_t norm_num_groups = 32;
  bool use_linear_projection = false;
  double dropout = 0.0;
};

// BasicTransformerBlock, norm_type "layer_norm": self-attention, cross-attention, GEGLU.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head, int64_t cross_attention_dim, double dropout);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

  torch::nn::LayerNorm norm1{nullptr};
  Attention attn1{nullptr};
  torch::nn::LayerNorm norm2{nullptr};
  Attention attn2{nullptr};
  torch::nn::LayerNorm norm3{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// Transformer2DModel, continuous input (the SD path): GroupNorm, proj_in, blocks, proj_out.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const TransformerOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

  TransformerOptions options;
  bool gradient_checkpointing = false;  // checkpoint each transformer block
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::AnyModule proj_in, proj_out;  // Conv2d 1x1 or Linear
  AdapterSlot lora_proj_in, lora_proj_out;  // optional LoRA
  torch::nn::ModuleList transformer_blocks;
  std::vector<BasicTransformerBlock> blocks;
};
TORCH_MODULE(Transformer2DModel);

// TimestepEmbedding: linear_1, optional cond_proj (no bias), SiLU, linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, int64_t cond_proj_dim, std::string act);
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& condition = {});

  std::string act;
  torch::nn::Linear linear_1{nullptr};
  torch::nn::Linear cond_proj{nullptr};
  torch::nn::Linear linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace lisadiff::models
