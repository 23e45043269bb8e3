#include "models/blocks.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "models/checkpoint.h"

namespace lisadiff::models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double downscale_freq_shift, double scale, double max_period) {
  TORCH_CHECK(timesteps.dim() == 1, "timesteps must be 1-D, got ", timesteps.sizes());
  const int64_t half = dim / 2;
  // Same operations in the same order as diffusers, for bit parity.
  auto exponent = torch::arange(0, half, torch::dtype(torch::kFloat32).device(timesteps.device())) *
                  (-std::log(max_period));
  exponent = exponent / (static_cast<double>(half) - downscale_freq_shift);
  auto emb = torch::exp(exponent);
  emb = timesteps.unsqueeze(1).to(torch::kFloat32) * emb.unsqueeze(0);
  emb = emb * scale;
  emb = torch::cat({torch::sin(emb), torch::cos(emb)}, -1);
  if (flip_sin_to_cos) emb = torch::cat({emb.slice(1, half), emb.slice(1, 0, half)}, -1);
  if (dim % 2 == 1) emb = F::pad(emb, F::PadFuncOptions({0, 1, 0, 0}));
  return emb;
}

torch::Tensor guidance_scale_embedding(const torch::Tensor& w, int64_t dim, torch::Dtype dtype) {
  TORCH_CHECK(w.dim() == 1, "guidance scales must be 1-D, got ", w.sizes());
  const int64_t half = dim / 2;
  auto ws = w * 1000.0;
  auto c = torch::log(torch::tensor(10000.0, torch::dtype(torch::kFloat32))) / (half - 1);
  auto f = torch::exp(torch::arange(half, torch::dtype(dtype)) * -c).to(w.device());
  auto emb = ws.to(dtype).unsqueeze(1) * f.unsqueeze(0);
  emb = torch::cat({torch::sin(emb), torch::cos(emb)}, 1);
  if (dim % 2 == 1) emb = F::pad(emb, F::PadFuncOptions({0, 1}));
  return emb;
}

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "silu" || name == "swish") return torch::silu(x);
  if (name == "gelu") return torch::gelu(x);
  if (name == "mish") return torch::mish(x);
  if (name == "relu") return torch::relu(x);
  throw Error("unsupported activation function '" + name + "'");
}

namespace {

nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t padding = 0) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(padding));
}

nn::GroupNorm group_norm(int64_t groups, int64_t channels, double eps) {
  return nn::GroupNorm(nn::GroupNormOptions(groups, channels).eps(eps));
}

nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return nn::LayerNorm(nn::LayerNormOptions({dim}).eps(eps));
}

}  // namespace

// ---------------------------------------------------------------------------------------

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options(o) {
  const int64_t in = o.in_channels, out = o.out_channels;
  norm1 = register_module("norm1", group_norm(o.groups, in, o.eps));
  conv1 = register_module("conv1", conv(in, out, 3, 1, 1));
  if (o.temb_channels > 0) time_emb_proj = register_module("time_emb_proj", nn::Linear(o.temb_channels, out));
  norm2 = register_module("norm2", group_norm(o.groups, out, o.eps));
  dropout = register_module("dropout", nn::Dropout(o.dropout));
  conv2 = register_module("conv2", conv(out, out, 3, 1, 1));
  if (in != out) conv_shortcut = register_module("conv_shortcut", conv(in, out, 1));
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  const bool train = is_training();
  auto h = activation(options.act, norm1(x));
  h = with_adapter(conv1(h), lora_conv1, h, train);
  if (time_emb_proj && temb.defined()) {
    const auto act = activation(options.act, temb);
    auto t = with_adapter(time_emb_proj(act), lora_time_emb_proj, act, train);
    h = h + t.unsqueeze(-1).unsqueeze(-1);
  }
  h = activation(options.act, norm2(h));
  h = dropout(h);
  h = with_adapter(conv2(h), lora_conv2, h, train);
  auto shortcut = conv_shortcut ? with_adapter(conv_shortcut(x), lora_conv_shortcut, x, train) : x;
  auto out = shortcut + h;
  if (options.output_scale_factor != 1.0) out = out / options.output_scale_factor;
  return out;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t pad) : padding(pad) {
  conv = register_module("conv", models::conv(channels, channels, 3, 2, pad));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  const auto h = padding == 0 ? F::pad(x, F::PadFuncOptions({0, 1, 0, 1}).mode(torch::kConstant).value(0)) : x;
  return with_adapter(conv(h), lora_conv, h, is_training());
}

Upsample2DImpl::Upsample2DImpl(int64_t channels) {
  conv = register_module("conv", models::conv(channels, channels, 3, 1, 1));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, std::optional<std::vector<int64_t>> output_size) {
  torch::Tensor h;
  if (output_size) {
    h = at::upsample_nearest2d(x, *output_size);
  } else {
    h = at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}, 2.0, 2.0);
  }
  return with_adapter(conv(h), lora_conv, h, is_training());
}

// ---------------------------------------------------------------------------------------

torch::Tensor LoraAdapter::forward(const torch::Tensor& x, bool training) const {
  auto h = x.to(A.scalar_type());
  if (dropout > 0) h = torch::dropout(h, dropout, training);
  // peft: lora_B(lora_A(dropout(x))) * scaling
  if (A.dim() == 4) return torch::conv2d(torch::conv2d(h, A, {}, stride, padding), B) * scale;
  return torch::nn::functional::linear(torch::nn::functional::linear(h, A), B) * scale;
}

torch::Tensor with_adapter(const torch::Tensor& y, const AdapterSlot& adapter, const torch::Tensor& x, bool training) {
  if (!adapter || !adapter->enabled) return y;
  return y + adapter->forward(x, training).to(y.scalar_type());
}

namespace {

AdaptableLayer linear_layer(const std::string& name, const nn::Linear& layer, AdapterSlot& slot,
                            std::shared_ptr<nn::Module> owner) {
  return {name, layer->weight, {}, {}, &slot, std::move(owner)};
}

AdaptableLayer conv_layer(const std::string& name, const nn::Conv2d& layer, AdapterSlot& slot,
                          std::shared_ptr<nn::Module> owner) {
  const auto& o = layer->options;
  const auto& padding = std::get<torch::ExpandingArray<2>>(o.padding());
  return {name, layer->weight, std::vector<int64_t>(o.stride()->begin(), o.stride()->end()),
          std::vector<int64_t>(padding->begin(), padding->end()), &slot, std::move(owner)};
}

// proj_in / proj_out: a Conv2d 1x1 or a Linear behind an AnyModule.
AdaptableLayer any_layer(const std::string& name, const nn::AnyModule& layer, AdapterSlot& slot,
                         std::shared_ptr<nn::Module> owner) {
  if (auto c = std::dynamic_pointer_cast<nn::Conv2dImpl>(layer.ptr())) return conv_layer(name, nn::Conv2d(c), slot, owner);
  return linear_layer(name, nn::Linear(std::dynamic_pointer_cast<nn::LinearImpl>(layer.ptr())), slot, owner);
}

}  // namespace

std::vector<AdaptableLayer> adaptable_layers(nn::Module& model) {
  std::vector<AdaptableLayer> layers;
  std::map<std::string, std::size_t> order;  // module path -> position in named_modules()
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const auto& key = item.key();
    order.emplace(key, order.size());
    const auto at = [&key](const char* child) { return key + "." + child; };
    const auto& m = item.value();
    if (auto a = std::dynamic_pointer_cast<AttentionImpl>(m)) {
      layers.push_back(linear_layer(at("to_q"), a->to_q, a->lora_q, m));
      layers.push_back(linear_layer(at("to_k"), a->to_k, a->lora_k, m));
      layers.push_back(linear_layer(at("to_v"), a->to_v, a->lora_v, m));
      layers.push_back(linear_layer(at("to_out.0"), a->out_proj, a->lora_out, m));
    } else if (auto r = std::dynamic_pointer_cast<ResnetBlock2DImpl>(m)) {
      layers.push_back(conv_layer(at("conv1"), r->conv1, r->lora_conv1, m));
      if (r->time_emb_proj) layers.push_back(linear_layer(at("time_emb_proj"), r->time_emb_proj, r->lora_time_emb_proj, m));
      layers.push_back(conv_layer(at("conv2"), r->conv2, r->lora_conv2, m));
      if (r->conv_shortcut) layers.push_back(conv_layer(at("conv_shortcut"), r->conv_shortcut, r->lora_conv_shortcut, m));
    } else if (auto d = std::dynamic_pointer_cast<Downsample2DImpl>(m)) {
      layers.push_back(conv_layer(at("conv"), d->conv, d->lora_conv, m));
    } else if (auto u = std::dynamic_pointer_cast<Upsample2DImpl>(m)) {
      layers.push_back(conv_layer(at("conv"), u->conv, u->lora_conv, m));
    } else if (auto f = std::dynamic_pointer_cast<FeedForwardImpl>(m)) {
      layers.push_back(linear_layer(at("net.0.proj"), f->proj, f->lora_proj, m));
      layers.push_back(linear_layer(at("net.2"), f->out, f->lora_out, m));
    } else if (auto t = std::dynamic_pointer_cast<Transformer2DModelImpl>(m)) {
      layers.push_back(any_layer(at("proj_in"), t->proj_in, t->lora_proj_in, m));
      layers.push_back(any_layer(at("proj_out"), t->proj_out, t->lora_proj_out, m));
    }
  }
  std::stable_sort(layers.begin(), layers.end(),
                   [&order](const AdaptableLayer& a, const AdaptableLayer& b) { return order.at(a.name) < order.at(b.name); });
  return layers;
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options(o) {
  const int64_t inner = o.heads * o.dim_head;
  const int64_t kv = o.cross_attention_dim > 0 ? o.cross_attention_dim : o.query_dim;
  if (o.norm_num_groups > 0) group_norm = register_module("group_norm", models::group_norm(o.norm_num_groups, o.query_dim, o.eps));
  to_q = register_module("to_q", nn::Linear(nn::LinearOptions(o.query_dim, inner).bias(o.bias)));
  to_k = register_module("to_k", nn::Linear(nn::LinearOptions(kv, inner).bias(o.bias)));
  to_v = register_module("to_v", nn::Linear(nn::LinearOptions(kv, inner).bias(o.bias)));
  out_proj = nn::Linear(nn::LinearOptions(inner, o.query_dim).bias(o.out_bias));
  out_dropout = nn::Dropout(o.dropout);
  to_out->push_back(out_proj);
  to_out->push_back(out_dropout);
  to_out = register_module("to_out", to_out);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  auto h = x;
  const bool spatial = x.dim() == 4;
  int64_t B = x.size(0), C = 0, H = 0, W = 0;
  if (spatial) {
    C = x.size(1), H = x.size(2), W = x.size(3);
    h = x.view({B, C, H * W}).transpose(1, 2);
  }
  if (group_norm) h = group_norm(h.transpose(1, 2)).transpose(1, 2);
  const bool train = is_training();
  auto q = with_adapter(to_q(h), lora_q, h, train);
  const auto& ctx = context.defined() ? context : h;
  auto k = with_adapter(to_k(ctx), lora_k, ctx, train);
  auto v = with_adapter(to_v(ctx), lora_v, ctx, train);
  const int64_t heads = options.heads, d = k.size(-1) / heads;
  q = q.view({B, -1, heads, d}).transpose(1, 2);
  k = k.view({B, -1, heads, d}).transpose(1, 2);
  v = v.view({B, -1, heads, d}).transpose(1, 2);
  auto o = at::scaled_dot_product_attention(q, k, v);
  o = o.transpose(1, 2).reshape({B, -1, heads * d}).to(q.scalar_type());
  o = out_dropout(with_adapter(out_proj(o), lora_out, o, train));
  if (spatial) o = o.transpose(-1, -2).reshape({B, C, H, W});
  if (options.residual_connection) o = o + x;
  if (options.rescale_output_factor != 1.0) o = o / options.rescale_output_factor;
  return o;
}

// ---------------------------------------------------------------------------------------

namespace {

// GEGLU: a module with one child `proj`, so that the key is net.0.proj.*. FeedForward runs
// it: value = first half of proj(x), gate = second half, value * gelu_erf(gate).
class GEGLUImpl : public nn::Module {
 public:
  GEGLUImpl(int64_t dim_in, int64_t dim_out) { proj = register_module("proj", nn::Linear(dim_in, 2 * dim_out)); }
  nn::Linear proj{nullptr};
};
TORCH_MODULE(GEGLU);

}  // namespace

FeedForwardImpl::FeedForwardImpl(int64_t dim, double dropout) {
  const int64_t inner = 4 * dim;
  GEGLU geglu(dim, inner);
  proj = geglu->proj;
  drop = nn::Dropout(dropout);
  out = nn::Linear(inner, dim);
  net->push_back(geglu);
  net->push_back(drop);
  net->push_back(out);
  net = register_module("net", net);
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  const bool train = is_training();
  auto parts = with_adapter(proj(x), lora_proj, x, train).chunk(2, -1);
  const auto h = drop(parts[0] * torch::gelu(parts[1]));
  return with_adapter(out(h), lora_out, h, train);
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head,
                                                     int64_t cross_attention_dim, double dropout) {
  AttentionOptions self{dim, 0, heads, dim_head};
  self.dropout = dropout;
  AttentionOptions cross = self;
  cross.cross_attention_dim = cross_attention_dim;
  norm1 = register_module("norm1", layer_norm(dim, 1e-5));
  attn1 = register_module("attn1", Attention(self));
  norm2 = register_module("norm2", layer_norm(dim, 1e-5));
  attn2 = register_module("attn2", Attention(cross));
  norm3 = register_module("norm3", layer_norm(dim, 1e-5));
  ff = register_module("ff", FeedForward(dim, dropout));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  auto h = attn1(norm1(x)) + x;
  h = attn2(norm2(h), context) + h;
  return ff(norm3(h)) + h;
}

Transformer2DModelImpl::Transformer2DModelImpl(const TransformerOptions& o) : options(o) {
  const int64_t C = o.channels, heads = o.heads, d = C / heads, inner = heads * d;
  norm = register_module("norm", group_norm(o.norm_num_groups, C, 1e-6));
  if (o.use_linear_projection) {
    proj_in = nn::AnyModule(nn::Linear(C, inner));
  } else {
    proj_in = nn::AnyModule(conv(C, inner, 1));
  }
  register_module("proj_in", proj_in.ptr());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    blocks.push_back(BasicTransformerBlock(inner, heads, d, o.cross_attention_dim, o.dropout));
    transformer_blocks->push_back(blocks.back());
  }
  transformer_blocks = register_module("transformer_blocks", transformer_blocks);
  if (o.use_linear_projection) {
    proj_out = nn::AnyModule(nn::Linear(inner, C));
  } else {
    proj_out = nn::AnyModule(conv(inner, C, 1));
  }
  register_module("proj_out", proj_out.ptr());
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  auto h = norm(x);
  int64_t inner = 0;
  const bool train = is_training();
  const auto project_in = [&](const torch::Tensor& in) {
    return with_adapter(proj_in.forward(in), lora_proj_in, in, train);
  };
  if (!options.use_linear_projection) {
    h = project_in(h);
    inner = h.size(1);
    h = h.permute({0, 2, 3, 1}).reshape({B, H * W, inner});
  } else {
    inner = h.size(1);
    h = h.permute({0, 2, 3, 1}).reshape({B, H * W, inner});
    h = project_in(h);
  }
  for (auto& block : blocks) {
    if (gradient_checkpointing && is_training()) {
      auto b = block.ptr();
      h = checkpoint1(*b, [b](const TensorList& in) { return b->forward(in[0], in[1]); }, {h, context});
    } else {
      h = block->forward(h, context);
    }
  }
  if (!options.use_linear_projection) {
    h = h.reshape({B, H, W, inner}).permute({0, 3, 1, 2}).contiguous();
    h = with_adapter(proj_out.forward(h), lora_proj_out, h, train);
  } else {
    h = with_adapter(proj_out.forward(h), lora_proj_out, h, train);
    h = h.reshape({B, H, W, inner}).permute({0, 3, 1, 2}).contiguous();
  }
  return h + x;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, int64_t cond_proj_dim,
                                             std::string act_fn)
    : act(std::move(act_fn)) {
  linear_1 = register_module("linear_1", nn::Linear(in_channels, time_embed_dim));
  if (cond_proj_dim > 0) {
    cond_proj = register_module("cond_proj", nn::Linear(nn::LinearOptions(cond_proj_dim, in_channels).bias(false)));
  }
  linear_2 = register_module("linear_2", nn::Linear(time_embed_dim, time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample, const torch::Tensor& condition) {
  auto s = sample;
  if (condition.defined()) {
    TORCH_CHECK(cond_proj, "a timestep condition was given, but the model has no time_cond_proj_dim");
    s = s + cond_proj(condition);
  }
  s = linear_1(s);
  s = activation(act, s);
  return linear_2(s);
}

}  // namespace lisadiff::models
