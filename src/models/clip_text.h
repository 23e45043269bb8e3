// CLIPTextModel (transformers): text_model.{embeddings, encoder.layers.N, final_layer_norm};
// each layer registers self_attn (k_proj, v_proj, q_proj, out_proj), layer_norm1, mlp (fc1,
// fc2), layer_norm2. Keys carry the "text_model." prefix of SD1.5's files (clip_key_alias).
// Causal self-attention, pre-LN, quick_gelu (or gelu). position_ids is
// not a parameter: files that carry it (transformers < 4.31) have it checked and skipped.
// Facts: ../shared/spec/models.md section 5.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/clip_text_config.h"
#include "models/state.h"

namespace lisadiff::models {

struct CLIPTextOutput {
  torch::Tensor last_hidden_state;            // [B, S, H], after final_layer_norm
  torch::Tensor pooled;                       // [B, H]: the EOS position
  std::vector<torch::Tensor> hidden_states;   // embeddings + every layer's output (before the
                                              // final norm), when asked for
};

class CLIPAttentionImpl : public torch::nn::Module {
 public:
  CLIPAttentionImpl(int64_t hidden, int64_t heads);
  // additive_mask: [B, 1, S, S] or undefined (then causal only).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);

  int64_t heads;
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(CLIPAttention);

class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const config::CLIPTextConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);

  std::string act;
  CLIPAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};  // mlp.fc1, mlp.fc2
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

class CLIPTextModelImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelImpl(const config::CLIPTextConfig& config);

  // input_ids [B, S] (S <= max_position_embeddings); attention_mask [B, S] of 0/1 or
  // undefined (SD1.5 passes none).
  CLIPTextOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                         bool output_hidden_states = false);

  void set_gradient_checkpointing(bool on) { gradient_checkpointing = on; }

  config::CLIPTextConfig config;
  bool gradient_checkpointing = false;  // checkpoint each encoder layer while training
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  std::vector<CLIPEncoderLayer> layers;
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(CLIPTextModel);

// The top-level parts in registration order (text_model.embeddings, ...encoder.layers.N, ...).
std::vector<std::string> clip_top_level_blocks(const config::CLIPTextConfig& config);

// True for the keys a CLIP text file may hold besides parameters (position_ids).
bool clip_ignored_key(const std::string& key);
// The module tree (and what lisadiff writes) follows SD1.5's files and transformers 4:
// "text_model.embeddings...". transformers 5 writes the same keys without "text_model.";
// both load (transformers 5 also reads the prefixed form).
std::optional<std::string> clip_key_alias(const std::string& file_key);

// Reads `<dir>/config.json` and `model[.variant].safetensors`. A position_ids tensor in the
// file is skipped with a warning if it does not hold 0..max_position-1.
CLIPTextModel load_clip_text(const std::filesystem::path& dir, const LoadOptions& options = {},
                             const std::string& variant = "");

// transformers' CLIPTextModel initialisation (_init_weights), for init-pipeline. Called right
// after construction under the same seed, it gives transformers' weights bit for bit.
void init_clip_text_weights(CLIPTextModelImpl& model);

}  // namespace lisadiff::models
