// LoRA, the baseline LISA is compared against: low-rank adapters on Linear and Conv2d layers
// of a model (peft's LoraConfig semantics: rank r, lora_alpha, target_modules,
// init_lora_weights, lora_dropout), trained by the same fused optimizer, saved as diffusers'
// `pytorch_lora_weights.safetensors` that `load_lora_weights` accepts.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/blocks.h"

namespace lisadiff::train {

struct LoraOptions {
  int64_t rank = 4;
  double alpha = -1;  // lora_alpha; < 0 means alpha = rank (scale 1), as the diffusers scripts set it
  // The adapted layers, as peft matches target_modules: a layer whose module path equals an
  // entry or ends with "." + entry. Layers that can be adapted: models::adaptable_layers
  // (attention projections to_q, to_k, to_v, to_out.0; proj_in, proj_out; ff.net.0.proj,
  // ff.net.2; the resnets' conv1, conv2, conv_shortcut, time_emb_proj; downsamplers.0.conv,
  // upsamplers.0.conv). Every entry must match at least one of them.
  std::vector<std::string> target_modules = {"to_q", "to_k", "to_v", "to_out.0"};
  // "kaiming": peft's default (A ~ kaiming_uniform(a = sqrt 5)); "gaussian": A ~ N(0, 1/rank)
  // (the Diffusion-DPO script's choice). B = 0 either way, so training starts from the base.
  std::string init = "kaiming";
  double dropout = 0.0;
  // peft's modules_to_save: modules (names in the model, e.g. "conv_in") whose parameters
  // train in full next to the adapters. InstructPix2Pix needs it: its widened conv_in must
  // learn the image channels. They are saved apart from the adapters (kModulesFileName).
  std::vector<std::string> modules_to_save;
};

class Lora {
 public:
  // Attaches adapters to every adaptable layer of `model` that matches a target, in
  // named_modules order, drawing the initial values from the default generator in peft's
  // order (so the same seed gives peft's adapters). The model's own parameters are frozen
  // (requires_grad = false); the adapters are fp32 on the model's device. Throws
  // lisadiff::Error for a target that matches no adaptable layer.
  Lora(torch::nn::Module& model, LoraOptions options);
  ~Lora();  // detaches the adapters
  Lora(const Lora&) = delete;
  Lora& operator=(const Lora&) = delete;

  // peft's state-dict names ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight")
  // and tensors, in order, then the modules_to_save parameters under their model names:
  // what the optimizer trains.
  const std::vector<std::pair<std::string, torch::Tensor>>& parameters() const { return params_; }
  int64_t parameter_count() const;
  double scale() const { return scale_; }

  // The file save() writes and diffusers' load_lora_weights reads.
  static constexpr const char* kFileName = "pytorch_lora_weights.safetensors";
  // The modules_to_save parameters, under their model names, beside the LoRA file.
  static constexpr const char* kModulesFileName = "modules_to_save.safetensors";
  // Writes `<dir>/pytorch_lora_weights.safetensors` with diffusers' key names
  // ("<prefix>.<peft name>", prefix "unet"), atomically; with modules_to_save also
  // `<dir>/modules_to_save.safetensors`.
  void save(const std::filesystem::path& dir, const std::string& prefix = "unet") const;
  // Loads adapter values saved by save() or by diffusers' save_lora_weights, and the
  // modules_to_save file beside `file` when there are such modules.
  void load(const std::filesystem::path& file, const std::string& prefix = "unet");

  // `params` (a model's named parameters) with every adapted projection's weight replaced
  // by the merged W + scale * B A (new tensors; the model is not changed): a plain model's
  // weights that compute what the adapted model computes.
  std::vector<std::pair<std::string, torch::Tensor>> merged(
      const std::vector<std::pair<std::string, torch::Tensor>>& params) const;

  void set_enabled(bool enabled);

 private:
  LoraOptions options_;
  double scale_ = 1.0;
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::size_t adapter_count_ = 0;  // params_[0, adapter_count_) are adapters, the rest modules
  // Each adapter and the layer it is attached to.
  struct Attached {
    models::AdaptableLayer layer;
    models::AdapterSlot adapter;
  };
  std::vector<Attached> attached_;
};

}  // namespace lisadiff::train
