#include "models/unet.h"

#include "core/error.h"
#include "io/atomic_file.h"
#include "models/checkpoint.h"

namespace lisadiff::models {

namespace nn = torch::nn;
using config::UNet2DConditionConfig;

namespace {

constexpr int64_t kTimeEmbedMultiplier = 4;  // time_embed_dim = 4 * block_out_channels[0]

int64_t time_embed_dim(const UNet2DConditionConfig& c) { return kTimeEmbedMultiplier * c.block_out_channels[0]; }

ResnetBlock2D unet_resnet(const UNet2DConditionConfig& c, int64_t in, int64_t out, double scale = 1.0) {
  ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.temb_channels = time_embed_dim(c);
  o.groups = c.norm_num_groups;
  o.eps = c.norm_eps;
  o.dropout = c.dropout;
  o.output_scale_factor = scale;
  o.act = c.act_fn;
  return ResnetBlock2D(o);
}

Transformer2DModel unet_transformer(const UNet2DConditionConfig& c, int64_t channels, int64_t heads, int64_t cross_dim,
                                    int64_t layers) {
  TransformerOptions o;
  o.channels = channels;
  o.heads = heads;
  o.cross_attention_dim = cross_dim;
  o.num_layers = layers;
  o.norm_num_groups = c.norm_num_groups;
  o.use_linear_projection = c.use_linear_projection;
  o.dropout = c.dropout;
  return Transformer2DModel(o);
}

}  // namespace

void UNetBlockImpl::register_children(bool attention) {
  if (attention) {
    nn::ModuleList attentions;
    for (auto& a : attention_list) attentions->push_back(a);
    register_module("attentions", attentions);
  }
  nn::ModuleList resnets;
  for (auto& r : resnet_list) resnets->push_back(r);
  register_module("resnets", resnets);
  if (downsampler) {
    nn::ModuleList list;
    list->push_back(downsampler);
    register_module("downsamplers", list);
  }
  if (upsampler) {
    nn::ModuleList list;
    list->push_back(upsampler);
    register_module("upsamplers", list);
  }
}

void UNetBlockImpl::set_gradient_checkpointing(bool on) {
  gradient_checkpointing = on;
  for (auto& a : attention_list) a->gradient_checkpointing = on;
}

torch::Tensor UNetBlockImpl::run_resnet(std::size_t j, const torch::Tensor& h, const torch::Tensor& temb) {
  auto r = resnet_list[j].ptr();
  if (gradient_checkpointing && is_training()) {
    return checkpoint1(*r, [r](const TensorList& in) { return r->forward(in[0], in[1]); }, {h, temb});
  }
  return r->forward(h, temb);
}

UNetDownBlockImpl::UNetDownBlockImpl(const UNet2DConditionConfig& c, std::size_t i) {
  const bool attention = c.down_block_types[i] == "CrossAttnDownBlock2D";
  const int64_t out = c.block_out_channels[i];
  const int64_t in = i == 0 ? c.block_out_channels[0] : c.block_out_channels[i - 1];
  for (int j = 0; j < c.layers[i]; ++j) {
    resnet_list.push_back(unet_resnet(c, j == 0 ? in : out, out));
    if (attention) {
      attention_list.push_back(unet_transformer(c, out, c.num_heads[i], c.cross_attention_dims[i], c.transformer_layers[i]));
    }
  }
  if (i + 1 < c.block_out_channels.size()) downsampler = Downsample2D(out, c.downsample_padding);
  register_children(attention);
}

torch::Tensor UNetDownBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& context,
                                         std::vector<torch::Tensor>& skips) {
  auto h = x;
  for (std::size_t j = 0; j < resnet_list.size(); ++j) {
    h = run_resnet(j, h, temb);
    if (!attention_list.empty()) h = attention_list[j]->forward(h, context);
    skips.push_back(h);
  }
  if (downsampler) {
    h = downsampler->forward(h);
    skips.push_back(h);
  }
  return h;
}

UNetUpBlockImpl::UNetUpBlockImpl(const UNet2DConditionConfig& c, std::size_t i) {
  const std::size_t n = c.block_out_channels.size();
  const std::size_t r = n - 1 - i;  // index into the per-down-block lists (reversed)
  const bool attention = c.up_block_types[i] == "CrossAttnUpBlock2D";
  const int64_t out = c.block_out_channels[r];
  const int64_t prev = c.block_out_channels[i == 0 ? n - 1 : r + 1];
  const int64_t skip_in = c.block_out_channels[r == 0 ? 0 : r - 1];
  const int layers = c.layers[r] + 1;
  for (int j = 0; j < layers; ++j) {
    const int64_t res_skip = j == layers - 1 ? skip_in : out;
    const int64_t res_in = j == 0 ? prev : out;
    resnet_list.push_back(unet_resnet(c, res_in + res_skip, out));
    if (attention) {
      attention_list.push_back(unet_transformer(c, out, c.num_heads[r], c.cross_attention_dims[r], c.transformer_layers[r]));
    }
  }
  if (i + 1 < n) upsampler = Upsample2D(out);
  register_children(attention);
}

torch::Tensor UNetUpBlockImpl::forward(const torch::Tensor& x, std::vector<torch::Tensor>& skips, const torch::Tensor& temb,
                                       const torch::Tensor& context, std::optional<std::vector<int64_t>> upsample_size) {
  auto h = x;
  for (std::size_t j = 0; j < resnet_list.size(); ++j) {
    auto skip = skips.back();
    skips.pop_back();
    h = torch::cat({h, skip}, 1);
    h = run_resnet(j, h, temb);
    if (!attention_list.empty()) h = attention_list[j]->forward(h, context);
  }
  if (upsampler) h = upsampler->forward(h, std::move(upsample_size));
  return h;
}

UNetMidBlockImpl::UNetMidBlockImpl(const UNet2DConditionConfig& c) {
  const int64_t C = c.block_out_channels.back();
  const double scale = c.mid_block_scale_factor;
  resnet_list.push_back(unet_resnet(c, C, C, scale));
  attention_list.push_back(unet_transformer(c, C, c.num_heads.back(), c.cross_attention_dims.back(),
                                            c.transformer_layers.back()));
  resnet_list.push_back(unet_resnet(c, C, C, scale));
  register_children(true);
}

torch::Tensor UNetMidBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& context) {
  auto h = run_resnet(0, x, temb);
  h = attention_list[0]->forward(h, context);
  return run_resnet(1, h, temb);
}

// ---------------------------------------------------------------------------------------

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& c) : config(c) {
  if (c.num_heads.size() != c.block_out_channels.size()) {
    throw Error("UNet2DConditionModel: the config was not validated (call validate() first)");
  }
  const int64_t c0 = c.block_out_channels[0];
  conv_in = register_module(
      "conv_in", nn::Conv2d(nn::Conv2dOptions(c.in_channels, c0, c.conv_in_kernel).padding((c.conv_in_kernel - 1) / 2)));
  time_embedding = register_module(
      "time_embedding", TimestepEmbedding(c0, time_embed_dim(c), c.time_cond_proj_dim.value_or(0), c.act_fn));
  // diffusers assigns both (empty) lists before it fills them, so up_blocks is registered
  // before mid_block while the blocks are built down, mid, up.
  down_blocks = register_module("down_blocks", nn::ModuleList());
  up_blocks = register_module("up_blocks", nn::ModuleList());
  for (std::size_t i = 0; i < c.down_block_types.size(); ++i) {
    downs.push_back(UNetDownBlock(c, i));
    down_blocks->push_back(downs.back());
  }
  mid_block = register_module("mid_block", UNetMidBlock(c));
  for (std::size_t i = 0; i < c.up_block_types.size(); ++i) {
    ups.push_back(UNetUpBlock(c, i));
    up_blocks->push_back(ups.back());
  }
  conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, c0).eps(c.norm_eps)));
  conv_out = register_module(
      "conv_out", nn::Conv2d(nn::Conv2dOptions(c0, c.out_channels, c.conv_out_kernel).padding((c.conv_out_kernel - 1) / 2)));
}

void UNet2DConditionModelImpl::set_gradient_checkpointing(bool on) {
  for (auto& b : downs) b->set_gradient_checkpointing(on);
  mid_block->set_gradient_checkpointing(on);
  for (auto& b : ups) b->set_gradient_checkpointing(on);
}

std::vector<std::string> unet_top_level_blocks(const UNet2DConditionConfig& c) {
  std::vector<std::string> out = {"conv_in", "time_embedding"};
  for (std::size_t i = 0; i < c.down_block_types.size(); ++i) out.push_back("down_blocks." + std::to_string(i));
  for (std::size_t i = 0; i < c.up_block_types.size(); ++i) out.push_back("up_blocks." + std::to_string(i));
  out.insert(out.end(), {"mid_block", "conv_norm_out", "conv_out"});
  return out;
}

torch::Tensor UNet2DConditionModelImpl::forward(const torch::Tensor& sample, const torch::Tensor& timesteps,
                                                const torch::Tensor& encoder_hidden_states,
                                                const torch::Tensor& timestep_cond) {
  TORCH_CHECK(sample.dim() == 4 && sample.size(1) == config.in_channels, "UNet: sample must be [B, ",
              config.in_channels, ", H, W], got ", sample.sizes());
  const int64_t B = sample.size(0);
  auto t = timesteps.dim() == 0 ? timesteps.unsqueeze(0) : timesteps;
  t = t.to(sample.device()).expand({B});
  auto t_emb = timestep_embedding(t, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift);
  t_emb = t_emb.to(sample.scalar_type());
  auto emb = time_embedding->forward(t_emb, timestep_cond);

  auto h = config.center_input_sample ? 2 * sample - 1.0 : sample;
  h = conv_in(h);
  std::vector<torch::Tensor> skips = {h};
  for (auto& block : downs) h = block->forward(h, emb, encoder_hidden_states, skips);
  h = mid_block->forward(h, emb, encoder_hidden_states);

  const int64_t factor = int64_t{1} << (ups.size() - 1);
  const bool forward_upsample_size = sample.size(-1) % factor != 0 || sample.size(-2) % factor != 0;
  for (std::size_t i = 0; i < ups.size(); ++i) {
    const bool last = i + 1 == ups.size();
    std::optional<std::vector<int64_t>> size;
    const std::size_t consumed = ups[i]->resnet_list.size();
    if (!last && forward_upsample_size) {
      const auto& next = skips[skips.size() - consumed - 1];
      size = std::vector<int64_t>{next.size(2), next.size(3)};
    }
    h = ups[i]->forward(h, skips, emb, encoder_hidden_states, size);
  }
  h = activation(config.act_fn, conv_norm_out(h));
  return conv_out(h);
}

void save_unet(const UNet2DConditionModelImpl& unet, const std::filesystem::path& dir) {
  save_unet(unet.config, parameters_of(unet), dir);
}

void save_unet(const UNet2DConditionConfig& config, const io::NamedTensors& weights, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  auto json = config.to_json();
  json["_diffusers_version"] = kDiffusersFormatVersion;
  io::write_file_atomic(dir / "config.json", json.dump(2) + "\n");
  io::NamedTensors contiguous;
  for (const auto& [name, t] : weights) contiguous.emplace_back(name, t.detach().contiguous());
  io::write_safetensors(dir / "diffusion_pytorch_model.safetensors", contiguous, {{"format", "pt"}});
}

UNet2DConditionModel load_unet(const std::filesystem::path& dir, const LoadOptions& options, const std::string& variant) {
  auto cfg = UNet2DConditionConfig::from_file(dir / "config.json");
  cfg.validate((dir / "config.json").string());
  UNet2DConditionModel model(cfg);
  const auto files = component_weight_files(dir, variant);
  load_parameters(*model, files, options);
  model->eval();
  return model;
}

}  // namespace lisadiff::models
