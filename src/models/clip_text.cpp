#include "models/clip_text.h"

#include <cmath>
#include <limits>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "models/checkpoint.h"

namespace lisadiff::models {

namespace nn = torch::nn;
using config::CLIPTextConfig;

namespace {

constexpr double kQuickGeluScale = 1.702;
constexpr const char* kPositionIds = "text_model.embeddings.position_ids";
// transformers >= 5 saves CLIPTextModel without this prefix (and adds it back on load).
constexpr std::string_view kPrefix = "text_model.";

torch::Tensor clip_activation(const std::string& name, const torch::Tensor& x) {
  if (name == "quick_gelu") return x * torch::sigmoid(kQuickGeluScale * x);
  return torch::gelu(x);  // "gelu" (exact erf), the only other value the config accepts
}

}  // namespace

CLIPAttentionImpl::CLIPAttentionImpl(int64_t hidden, int64_t h) : heads(h) {
  k_proj = register_module("k_proj", nn::Linear(hidden, hidden));
  v_proj = register_module("v_proj", nn::Linear(hidden, hidden));
  q_proj = register_module("q_proj", nn::Linear(hidden, hidden));
  out_proj = register_module("out_proj", nn::Linear(hidden, hidden));
}

torch::Tensor CLIPAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  const int64_t B = x.size(0), S = x.size(1), d = x.size(2) / heads;
  auto q = q_proj(x).view({B, S, heads, d}).transpose(1, 2);
  auto k = k_proj(x).view({B, S, heads, d}).transpose(1, 2);
  auto v = v_proj(x).view({B, S, heads, d}).transpose(1, 2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  torch::Tensor o;
  if (additive_mask.defined()) {
    o = at::scaled_dot_product_attention(q, k, v, additive_mask, 0.0, false, scale);
  } else {
    o = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale);
  }
  o = o.transpose(1, 2).reshape({B, S, -1}).contiguous();
  return out_proj(o);
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& c) : act(c.hidden_act) {
  const auto eps = c.layer_norm_eps;
  self_attn = register_module("self_attn", CLIPAttention(c.hidden_size, c.num_attention_heads));
  layer_norm1 = register_module("layer_norm1", nn::LayerNorm(nn::LayerNormOptions({c.hidden_size}).eps(eps)));
  auto mlp = std::make_shared<nn::Module>("CLIPMLP");
  fc1 = mlp->register_module("fc1", nn::Linear(c.hidden_size, c.intermediate_size));
  fc2 = mlp->register_module("fc2", nn::Linear(c.intermediate_size, c.hidden_size));
  register_module("mlp", mlp);
  layer_norm2 = register_module("layer_norm2", nn::LayerNorm(nn::LayerNormOptions({c.hidden_size}).eps(eps)));
}

torch::Tensor CLIPEncoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  auto h = x + self_attn->forward(layer_norm1(x), additive_mask);
  return h + fc2(clip_activation(act, fc1(layer_norm2(h))));
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& c) : config(c) {
  auto text_model = std::make_shared<nn::Module>("CLIPTextTransformer");
  auto embeddings = std::make_shared<nn::Module>("CLIPTextEmbeddings");
  token_embedding = embeddings->register_module("token_embedding", nn::Embedding(c.vocab_size, c.hidden_size));
  position_embedding =
      embeddings->register_module("position_embedding", nn::Embedding(c.max_position_embeddings, c.hidden_size));
  text_model->register_module("embeddings", embeddings);
  auto encoder = std::make_shared<nn::Module>("CLIPEncoder");
  nn::ModuleList list;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    layers.push_back(CLIPEncoderLayer(c));
    list->push_back(layers.back());
  }
  encoder->register_module("layers", list);
  text_model->register_module("encoder", encoder);
  final_layer_norm = text_model->register_module(
      "final_layer_norm", nn::LayerNorm(nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
  register_module("text_model", text_model);
}

CLIPTextOutput CLIPTextModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                          bool output_hidden_states) {
  TORCH_CHECK(input_ids.dim() == 2, "CLIPTextModel: input_ids must be [B, S], got ", input_ids.sizes());
  const int64_t B = input_ids.size(0), S = input_ids.size(1);
  TORCH_CHECK(S <= config.max_position_embeddings, "CLIPTextModel: sequence length ", S,
              " exceeds max_position_embeddings ", config.max_position_embeddings);
  auto ids = input_ids.to(torch::kLong);
  auto positions = torch::arange(S, torch::dtype(torch::kLong).device(ids.device())).unsqueeze(0);
  auto h = token_embedding(ids) + position_embedding(positions);

  torch::Tensor mask;  // additive [B, 1, S, S]; undefined means causal only
  if (attention_mask.defined()) {
    auto keep = torch::ones({S, S}, torch::dtype(torch::kBool).device(h.device())).tril();
    keep = keep.unsqueeze(0).unsqueeze(0) & attention_mask.to(torch::kBool).view({B, 1, 1, S});
    mask = torch::zeros({B, 1, S, S}, h.options())
               .masked_fill(keep.logical_not(), std::numeric_limits<float>::lowest());
  }
  CLIPTextOutput out;
  if (output_hidden_states) out.hidden_states.push_back(h);
  for (auto& layer : layers) {
    if (gradient_checkpointing && is_training()) {
      auto l = layer.ptr();
      h = checkpoint1(*l, [l](const TensorList& in) { return l->forward(in[0], in[1]); }, {h, mask});
    } else {
      h = layer->forward(h, mask);
    }
    if (output_hidden_states) out.hidden_states.push_back(h);
  }
  out.last_hidden_state = final_layer_norm(h);

  // transformers: configs with the stale eos_token_id 2 pool at the largest id (the real EOS
  // of the 49,408 vocabulary); others at the first position holding eos_token_id.
  torch::Tensor index;
  if (config.eos_token_id == 2) {
    index = ids.to(torch::kInt).argmax(-1);
  } else {
    index = (ids.to(torch::kInt) == config.eos_token_id).to(torch::kInt).argmax(-1);
  }
  auto rows = torch::arange(B, torch::dtype(torch::kLong).device(ids.device()));
  out.pooled = out.last_hidden_state.index({rows, index.to(torch::kLong)});
  return out;
}

std::vector<std::string> clip_top_level_blocks(const CLIPTextConfig& c) {
  std::vector<std::string> out = {"text_model.embeddings"};
  for (int i = 0; i < c.num_hidden_layers; ++i) out.push_back("text_model.encoder.layers." + std::to_string(i));
  out.push_back("text_model.final_layer_norm");
  return out;
}

bool clip_ignored_key(const std::string& key) { return key == kPositionIds || key == kPositionIds + kPrefix.size(); }

std::optional<std::string> clip_key_alias(const std::string& key) {
  if (key.compare(0, kPrefix.size(), kPrefix) == 0) return std::nullopt;
  return std::string(kPrefix) + key;
}

CLIPTextModel load_clip_text(const std::filesystem::path& dir, const LoadOptions& options, const std::string& variant) {
  auto cfg = CLIPTextConfig::from_file(dir / "config.json");
  cfg.validate((dir / "config.json").string());
  CLIPTextModel model(cfg);
  const auto files = component_weight_files(dir, variant);
  LoadOptions o = options;
  o.ignore = clip_ignored_key;
  o.alias = clip_key_alias;
  const auto report = load_parameters(*model, files, o);
  if (!report.ignored.empty()) {
    // Old files carry position_ids; merged community checkpoints sometimes hold broken ones.
    for (const auto& f : files) {
      io::SafetensorsReader reader(f);
      const std::string key = reader.contains(kPositionIds) ? kPositionIds : kPositionIds + kPrefix.size();
      if (!reader.contains(key)) continue;
      auto ids = reader.tensor(key).to(torch::kDouble).flatten();
      auto expected = torch::arange(cfg.max_position_embeddings, torch::kDouble);
      if (ids.numel() != expected.numel() || !torch::equal(ids, expected)) {
        spdlog::warn("{}: {} does not hold 0..{}; it is ignored (positions are always 0..{})", f.string(),
                     kPositionIds, cfg.max_position_embeddings - 1, cfg.max_position_embeddings - 1);
      }
    }
  }
  model->eval();
  return model;
}

void init_clip_text_weights(CLIPTextModelImpl& model) {
  // transformers applies _init_weights to every module in post-order (children first): the
  // generic rule (Linear/Embedding weight ~ N(0, initializer_range), bias 0, LayerNorm 1/0),
  // then the CLIP rule of the parent re-draws its children's weights. Drawing in that same
  // sequence after the default construction reproduces transformers' weights bit for bit.
  torch::NoGradGuard no_grad;
  const auto& c = model.config;
  const double f = c.initializer_factor, r = c.initializer_range;
  const double H = c.hidden_size, L = c.num_hidden_layers;
  const double in_std = std::pow(H, -0.5) * std::pow(2 * L, -0.5) * f;
  const double out_std = std::pow(H, -0.5) * f;
  const double fc_std = std::pow(2 * H, -0.5) * f;
  auto& tok = model.token_embedding->weight;
  auto& pos = model.position_embedding->weight;
  tok.normal_(0.0, r);
  pos.normal_(0.0, r);
  tok.normal_(0.0, 0.02 * f);
  pos.normal_(0.0, 0.02 * f);
  for (auto& layer : model.layers) {
    auto& a = *layer->self_attn;
    for (auto* lin : {&a.k_proj, &a.v_proj, &a.q_proj, &a.out_proj}) {
      (*lin)->weight.normal_(0.0, r);
      (*lin)->bias.zero_();
    }
    a.q_proj->weight.normal_(0.0, in_std);
    a.k_proj->weight.normal_(0.0, in_std);
    a.v_proj->weight.normal_(0.0, in_std);
    a.out_proj->weight.normal_(0.0, out_std);
    for (auto* lin : {&layer->fc1, &layer->fc2}) {
      (*lin)->weight.normal_(0.0, r);
      (*lin)->bias.zero_();
    }
    layer->fc1->weight.normal_(0.0, fc_std);
    layer->fc2->weight.normal_(0.0, in_std);
  }
  for (auto& item : model.named_modules()) {
    if (auto* ln = item.value()->as<nn::LayerNorm>()) {
      ln->weight.fill_(1.0);
      ln->bias.zero_();
    }
  }
}

}  // namespace lisadiff::models
