#include "models/vae.h"

#include <array>
#include <regex>

#include "core/error.h"
#include "models/checkpoint.h"

namespace lisadiff::models {

namespace nn = torch::nn;
using config::AutoencoderKLConfig;

namespace {

constexpr double kVaeEps = 1e-6;  // every VAE norm (diffusers hard-codes it)

nn::Conv2d conv3(int64_t in, int64_t out) { return nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1)); }

ResnetBlock2D vae_resnet(int64_t in, int64_t out, int64_t groups, const std::string& act) {
  ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.groups = groups;
  o.eps = kVaeEps;
  o.act = act;
  return ResnetBlock2D(o);
}

void register_list(nn::Module& m, const std::string& name, const std::vector<ResnetBlock2D>& items) {
  nn::ModuleList list;
  for (const auto& r : items) list->push_back(r);
  m.register_module(name, list);
}

template <typename Block>
torch::Tensor run(bool checkpointed, Block& block, const torch::Tensor& x) {
  if (checkpointed) {
    auto b = block.ptr();
    return checkpoint1(*b, [b](const TensorList& in) { return b->forward(in[0]); }, {x});
  }
  return block->forward(x);
}

}  // namespace

DiagonalGaussian::DiagonalGaussian(const torch::Tensor& moments) {
  auto parts = torch::chunk(moments, 2, 1);
  mean = parts[0];
  logvar = torch::clamp(parts[1], -30.0, 20.0);
  std = torch::exp(0.5 * logvar);
  var = torch::exp(logvar);
}

torch::Tensor DiagonalGaussian::sample(std::optional<at::Generator> generator) const {
  return sample_with(at::randn(mean.sizes(), generator, mean.options()));
}

torch::Tensor DiagonalGaussian::sample_with(const torch::Tensor& noise) const { return mean + std * noise; }

torch::Tensor DiagonalGaussian::kl() const {
  return 0.5 * torch::sum(torch::pow(mean, 2) + var - 1.0 - logvar, {1, 2, 3});
}

VAEMidBlockImpl::VAEMidBlockImpl(int64_t C, int64_t groups, const std::string& act, bool add_attention) {
  resnet_list.push_back(vae_resnet(C, C, groups, act));
  if (add_attention) {
    AttentionOptions o;
    o.query_dim = C;
    o.heads = 1;
    o.dim_head = C;
    o.bias = true;
    o.norm_num_groups = groups;
    o.eps = kVaeEps;
    o.residual_connection = true;
    attention = Attention(o);
    nn::ModuleList attentions;
    attentions->push_back(attention);
    resnet_list.push_back(vae_resnet(C, C, groups, act));
    register_module("attentions", attentions);
  } else {
    resnet_list.push_back(vae_resnet(C, C, groups, act));
  }
  register_list(*this, "resnets", resnet_list);
}

torch::Tensor VAEMidBlockImpl::forward(const torch::Tensor& x) {
  auto h = resnet_list[0]->forward(x);
  if (attention) h = attention->forward(h);
  return resnet_list[1]->forward(h);
}

VAEBlockImpl::VAEBlockImpl(int64_t in, int64_t out, int layers, int64_t groups, const std::string& act, bool down,
                           bool resample) {
  for (int j = 0; j < layers; ++j) resnet_list.push_back(vae_resnet(j == 0 ? in : out, out, groups, act));
  register_list(*this, "resnets", resnet_list);
  if (resample) {
    nn::ModuleList list;
    if (down) {
      downsampler = Downsample2D(out, /*padding=*/0);
      list->push_back(downsampler);
      register_module("downsamplers", list);
    } else {
      upsampler = Upsample2D(out);
      list->push_back(upsampler);
      register_module("upsamplers", list);
    }
  }
}

torch::Tensor VAEBlockImpl::forward(const torch::Tensor& x) {
  auto h = x;
  for (auto& r : resnet_list) h = r->forward(h);
  if (downsampler) h = downsampler->forward(h);
  if (upsampler) h = upsampler->forward(h);
  return h;
}

VAEEncoderImpl::VAEEncoderImpl(const AutoencoderKLConfig& c) : act(c.act_fn) {
  const auto& boc = c.block_out_channels;
  conv_in = register_module("conv_in", conv3(c.in_channels, boc[0]));
  nn::ModuleList down_blocks;
  for (std::size_t i = 0; i < boc.size(); ++i) {
    const int64_t in = i == 0 ? boc[0] : boc[i - 1];
    downs.push_back(VAEBlock(in, boc[i], c.layers_per_block, c.norm_num_groups, act, true, i + 1 < boc.size()));
    down_blocks->push_back(downs.back());
  }
  register_module("down_blocks", down_blocks);
  mid_block = register_module("mid_block", VAEMidBlock(boc.back(), c.norm_num_groups, act, c.mid_block_add_attention));
  conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, boc.back()).eps(kVaeEps)));
  conv_out = register_module("conv_out", conv3(boc.back(), 2 * c.latent_channels));
}

torch::Tensor VAEEncoderImpl::forward(const torch::Tensor& x) {
  const bool ckpt = gradient_checkpointing && is_training();
  auto h = conv_in(x);
  for (auto& b : downs) h = run(ckpt, b, h);
  h = run(ckpt, mid_block, h);
  h = activation(act, conv_norm_out(h));
  return conv_out(h);
}

VAEDecoderImpl::VAEDecoderImpl(const AutoencoderKLConfig& c) : act(c.act_fn) {
  const auto& boc = c.block_out_channels;
  const std::size_t n = boc.size();
  conv_in = register_module("conv_in", conv3(c.latent_channels, boc.back()));
  auto up_blocks = register_module("up_blocks", nn::ModuleList());  // registered before mid_block
  mid_block = register_module("mid_block", VAEMidBlock(boc.back(), c.norm_num_groups, act, c.mid_block_add_attention));
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t prev = boc[i == 0 ? n - 1 : n - i];
    const int64_t out = boc[n - 1 - i];
    ups.push_back(VAEBlock(prev, out, c.layers_per_block + 1, c.norm_num_groups, act, false, i + 1 < n));
    up_blocks->push_back(ups.back());
  }
  conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, boc[0]).eps(kVaeEps)));
  conv_out = register_module("conv_out", conv3(boc[0], c.out_channels));
}

torch::Tensor VAEDecoderImpl::forward(const torch::Tensor& z) {
  const bool ckpt = gradient_checkpointing && is_training();
  auto h = conv_in(z);
  h = run(ckpt, mid_block, h);
  for (auto& b : ups) h = run(ckpt, b, h);
  h = activation(act, conv_norm_out(h));
  return conv_out(h);
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& c) : config(c) {
  encoder = register_module("encoder", VAEEncoder(c));
  decoder = register_module("decoder", VAEDecoder(c));
  const int64_t lat = c.latent_channels;
  if (c.use_quant_conv) quant_conv = register_module("quant_conv", nn::Conv2d(nn::Conv2dOptions(2 * lat, 2 * lat, 1)));
  if (c.use_post_quant_conv) {
    post_quant_conv = register_module("post_quant_conv", nn::Conv2d(nn::Conv2dOptions(lat, lat, 1)));
  }
}

DiagonalGaussian AutoencoderKLImpl::encode(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == config.in_channels, "VAE encode: expected [B, ", config.in_channels,
              ", H, W], got ", x.sizes());
  auto h = encoder->forward(x);
  if (quant_conv) h = quant_conv(h);
  return DiagonalGaussian(h);
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& z) {
  TORCH_CHECK(z.dim() == 4 && z.size(1) == config.latent_channels, "VAE decode: expected [B, ",
              config.latent_channels, ", h, w], got ", z.sizes());
  auto h = post_quant_conv ? post_quant_conv(z) : z;
  return decoder->forward(h);
}

torch::Tensor AutoencoderKLImpl::forward(const torch::Tensor& x) { return decode(encode(x).mode()); }

void AutoencoderKLImpl::set_gradient_checkpointing(bool on) {
  encoder->gradient_checkpointing = on;
  decoder->gradient_checkpointing = on;
}

std::vector<std::string> vae_top_level_blocks(const AutoencoderKLConfig& c) {
  const std::size_t n = c.block_out_channels.size();
  std::vector<std::string> out = {"encoder.conv_in"};
  for (std::size_t i = 0; i < n; ++i) out.push_back("encoder.down_blocks." + std::to_string(i));
  out.insert(out.end(), {"encoder.mid_block", "encoder.conv_norm_out", "encoder.conv_out", "decoder.conv_in"});
  for (std::size_t i = 0; i < n; ++i) out.push_back("decoder.up_blocks." + std::to_string(i));
  out.insert(out.end(), {"decoder.mid_block", "decoder.conv_norm_out", "decoder.conv_out"});
  if (c.use_quant_conv) out.push_back("quant_conv");
  if (c.use_post_quant_conv) out.push_back("post_quant_conv");
  return out;
}

std::optional<std::string> vae_key_alias(const std::string& key) {
  // <encoder|decoder>.mid_block.attentions.0.<legacy>.<weight|bias>
  static const std::regex pattern(R"(^((?:encoder|decoder)\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$)");
  static const std::array<std::pair<const char*, const char*>, 4> table = {
      {{"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}}};
  std::smatch m;
  if (!std::regex_match(key, m, pattern)) return std::nullopt;
  for (const auto& [legacy, current] : table) {
    if (m[2] == legacy) return m[1].str() + "." + current + "." + m[3].str();
  }
  return std::nullopt;
}

AutoencoderKL load_vae(const std::filesystem::path& dir, const LoadOptions& options, const std::string& variant) {
  auto cfg = AutoencoderKLConfig::from_file(dir / "config.json");
  cfg.validate((dir / "config.json").string());
  AutoencoderKL model(cfg);
  const auto files = component_weight_files(dir, variant);
  LoadOptions o = options;
  o.alias = vae_key_alias;
  load_parameters(*model, files, o);
  model->eval();
  return model;
}

}  // namespace lisadiff::models
