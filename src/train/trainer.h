// The training loop that lcm_distill, instruct_pix2pix and diffusion_dpo share: one trained
// model (the UNet), one of three methods over it, and everything around the optimizer step.
//
//   method lisa   Lisa (train/lisa.h): the always-on units and n drawn ones train, AdamW
//                 inside the backward pass, a re-draw every lisa.interval optimizer steps
//   method full   every parameter trains; "classic" step (the diffusers scripts: all
//                 gradients, one global-norm clip, then AdamW) or "fused" (in the backward)
//   method lora   the model is frozen; peft-style adapters (train/lora.h) train, classic or fused
//
// Per optimizer step the loop runs gradient_accumulation_steps micro-batches. Each one calls
// the recipe's MicroStep under autocast (mixed_precision fp16/bf16) and back-propagates
// loss / A (times the loss scale under fp16), as accelerate does; the last micro-batch of a
// window (or one the recipe marks as the end of its epoch) is the sync one, on which the
// fused hooks step. Then: EMA, the recipe's after_step, a metrics line
// (output_dir/metrics.jsonl), the progress line, and every checkpointing_steps a checkpoint,
// all of them with the LISA set that trained in the step. The LISA re-draw comes at the start
// of the next step (before its forward pass), so the last step never draws.
//
// The model contract: build the Trainer after every change to the model's parameters (e.g.
// InstructPix2Pix's wider conv_in); train() and every save refuse a model whose parameters
// are no longer the tensors the Trainer hooked. Every other model in the recipe's forward
// pass (a teacher, a target, a reference UNet) must be frozen (models::LoadOptions::frozen,
// or run under torch::NoGradGuard): a micro-batch whose loss reaches a tensor that requires
// grad and that the Trainer does not train is refused before its backward pass.
//
// A checkpoint (output_dir/checkpoint-<step>/, written atomically by CheckpointManager):
//   <model>/config.json + diffusion_pytorch_model.safetensors   full, lisa: float32 weights
//   pytorch_lora_weights.safetensors                              lora: the adapters
//   <model>_ema/                                                  use_ema (EMAModel layout)
//   optimizer.safetensors, random_states.safetensors
//   training_state.json     global step, lr schedule step, micro-batch count, method,
//                           mixed precision, accumulation, LISA state, recipe parts
//   whatever the recipe's StateParts write
// Resuming (resume_from_checkpoint "latest" or a name) restores all of it, so the resumed run
// equals the uninterrupted one bit for bit on CPU (tests/train/test_trainer.cpp). A checkpoint
// is resumed only by a run with the same method, mixed precision, gradient accumulation and
// LISA unit, count, interval, sampling, always-on patterns and keep_state; otherwise the
// error names the setting and both values.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "config/json_fields.h"
#include "io/safetensors.h"
#include "models/unet.h"
#include "train/distributed.h"
#include "train/ema.h"
#include "train/fused_optimizer.h"
#include "train/lisa.h"
#include "train/lora.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"

namespace lisadiff::train {

enum class TrainMethod { kLisa, kFull, kLora };
enum class MixedPrecision { kNo, kFp16, kBf16 };

std::string method_name(TrainMethod method);
TrainMethod method_from_name(const std::string& name);  // "lisa", "full", "lora"
std::string precision_name(MixedPrecision precision);
MixedPrecision precision_from_name(const std::string& name);  // "no", "fp16", "bf16"

struct TrainerOptions {
  TrainMethod method = TrainMethod::kLisa;  // "method"
  // "learning_rate", "lr_scheduler", "lr_warmup_steps", "lr_num_cycles", "lr_power";
  // total_steps is max_train_steps.
  LrSchedule schedule;
  // "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon" (adamw.lr is unused:
  // the schedule gives the lr).
  AdamWOptions adamw;
  double max_grad_norm = 1.0;  // "max_grad_norm": per tensor (fused), global (classic)
  bool use_8bit_adam = false;  // "use_8bit_adam"
  // "optimizer_step": "classic" (default for full and lora: the originals' global clip and
  // memory) or "fused". LISA always steps fused.
  bool fused_step = false;
  int64_t max_train_steps = 0;          // "max_train_steps", required
  int gradient_accumulation_steps = 1;  // "gradient_accumulation_steps"
  MixedPrecision mixed_precision = MixedPrecision::kNo;  // "mixed_precision"
  // "frozen_dtype": "fp32" (default), "fp16" or "bf16": store frozen weights in half
  // precision (LISA's precision switch; LoRA's frozen base). Needs mixed precision.
  std::optional<torch::ScalarType> frozen_dtype;
  bool gradient_checkpointing = false;  // "gradient_checkpointing"
  int64_t checkpointing_steps = 500;    // "checkpointing_steps"
  std::optional<int> checkpoints_total_limit;  // "checkpoints_total_limit"
  std::string resume_from_checkpoint;          // "resume_from_checkpoint": "", "latest" or a name
  std::filesystem::path output_dir;            // "output_dir", required
  bool use_ema = false;                        // "use_ema"
  EMAOptions ema;                              // "ema_decay", "ema_min_decay", "ema_update_after_step", ...
  // "lisa_unit", "lisa_n_active", "lisa_rate", "lisa_interval", "lisa_sampling", "lisa_seed",
  // "lisa_keep_state", "lisa_always_on".
  LisaOptions lisa;
  // "lora_rank" (alias "rank"), "lora_alpha", "lora_target_modules", "lora_init",
  // "lora_modules_to_save".
  LoraOptions lora;
  // "report_to": where metrics go besides output_dir/metrics.jsonl, as the diffusers
  // scripts' flag (default "tensorboard"): "tensorboard" writes TensorBoard event files
  // (MetricsWriter::mirror_to_tensorboard) into output_dir/logging_dir[/tracker_project_name];
  // "wandb", "comet_ml" and "all" need a network service that lisadiff does not talk to: the
  // trainer logs one warning and writes the TensorBoard files instead; "none" writes none.
  std::string report_to = "tensorboard";
  // "logging_dir": the event files' folder, relative to output_dir (an absolute path stays
  // as it is), as the scripts' Path(output_dir, logging_dir). Default "logs".
  std::filesystem::path logging_dir = "logs";
  // "tracker_project_name" (alias "tracker_name", the DPO script's): a subfolder of
  // logging_dir for the event files, as accelerate's tracker makes; empty: none.
  std::string tracker_project_name;
  bool main_process = true;  // rank 0 writes checkpoints, metrics and progress
  // Data parallel (train/distributed.h), set by the recipe, not a config key: with a group of
  // more than one process every gradient is averaged across the ranks before it is clipped
  // and stepped (FusedOptimizerOptions::grad_sync), rank 0's trained weights are broadcast
  // when the Trainer is built, LISA sets and reduced tensors are compared every step, logged
  // losses are the ranks' mean, main_process is rank 0, and checkpoints hold every rank's RNG
  // states and recipe state.
  std::shared_ptr<ProcessGroup> group;
  int64_t bucket_bytes = 25ll << 20;  // gradient all-reduce buckets (DDP's 25 MB)
  std::string label;         // printed first in progress lines
  // The recipe that trains ("text_to_image", ...): saved in training_state.json, and a resume
  // by another recipe is refused (its checkpoint may fit the same UNet, not the same run).
  std::string recipe;

  // Reads the keys above from a reader shared with the recipe's own keys (the recipe
  // reports unclaimed ones), then validates. Errors name the source and the key.
  static TrainerOptions read(config::FieldReader& reader);
  // Throws lisadiff::Error "<source>: field '<key>': <problem>" for a missing output_dir or
  // max_train_steps, accumulation < 1, checkpointing_steps < 1, a total limit < 1,
  // frozen_dtype without mixed precision or with method full, a report_to that is not one of
  // tensorboard, wandb, comet_ml, all, none, and what the parts' own validation finds.
  void validate(const std::string& source = "trainer options") const;
  config::Json to_json() const;
  // The folder TensorBoard event files go to: output_dir / logging_dir [/ tracker_project_name].
  std::filesystem::path tensorboard_dir() const;
};

// The model a run trains, as the loop needs it.
struct TrainedModel {
  std::string name = "unet";  // the folder name in checkpoints and output_dir
  std::shared_ptr<torch::nn::Module> module;
  // The model's config as it is when called (written as <name>/config.json with
  // _diffusers_version added, at every save).
  std::function<config::Json()> config;
  std::function<void(bool)> set_gradient_checkpointing;
};
TrainedModel trained_unet(const models::UNet2DConditionModel& unet);

// One micro-batch as the recipe sees it.
struct MicroBatch {
  int64_t step = 0;      // optimizer steps done before this one (0-based)
  int index = 0;         // position in the accumulation window
  int64_t count = 0;     // micro-batches run since the first step of the run (resumes included)
};

struct MicroResult {
  torch::Tensor loss;  // scalar; the loop back-propagates loss / A
  // Extra values for the metrics line (averaged over the window when numbers), e.g. DPO's
  // implicit accuracy.
  nlohmann::ordered_json logs = nlohmann::ordered_json::object();
  // The loader reached the end of an epoch: this micro-batch closes the window early, as
  // accelerate does at the end of a prepared dataloader.
  bool end_of_epoch = false;
};

using MicroStep = std::function<MicroResult(const MicroBatch&)>;

// A piece of recipe state that checkpoints carry: JSON inside training_state.json (a data
// loader's position) and/or files in the checkpoint folder (LCM's target network).
struct StatePart {
  std::string name;
  std::function<nlohmann::json()> save_json;
  std::function<void(const nlohmann::json&)> load_json;
  std::function<void(const std::filesystem::path& checkpoint_dir)> save_files;
  std::function<void(const std::filesystem::path& checkpoint_dir)> load_files;
};

// A generator's state as a part of training_state.json (hex bytes): rank-local state that
// every process of a data-parallel run keeps its own of (a recipe's dropout generator).
StatePart generator_state_part(std::string name, at::Generator& generator);

class Trainer {
 public:
  // Sets the model up for the method: freezes, attaches adapters, installs the optimizer
  // hooks, converts frozen weights (frozen_dtype), gradient checkpointing, train mode, EMA.
  Trainer(TrainedModel model, TrainerOptions options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  void add_state(StatePart part);

  // Applies resume_from_checkpoint (call after add_state): restores a checkpoint, or says
  // that none was found and starts fresh (diffusers' behaviour). Returns the step the run
  // continues from.
  int64_t resume();
  // Restores one checkpoint folder. Errors name the folder and the file.
  void load_checkpoint(const std::filesystem::path& dir);

  // Runs optimizer steps until max_train_steps (or `stop_after` more steps, if given).
  // after_step(step) runs after each optimizer step and EMA update, before logging, with
  // the LISA set that trained in the step still active.
  void train(const MicroStep& micro_step, const std::function<void(int64_t step)>& after_step = {},
             std::optional<int64_t> stop_after = std::nullopt);

  // Writes checkpoint-<global step> now; returns its path (empty on ranks other than 0).
  std::filesystem::path save_checkpoint();
  // The end of a run: with EMA the averaged weights replace the trained ones (as the
  // diffusers scripts do before saving); writes output_dir/<name>/ (full, lisa) or
  // output_dir/pytorch_lora_weights.safetensors (lora) and, for LISA,
  // output_dir/lisa_activations.json.
  void save_final();

  int64_t global_step() const;
  int64_t micro_batches() const { return micro_count_; }
  double current_lr() const;
  const TrainerOptions& options() const { return options_; }
  FusedOptimizer& optimizer();
  const FusedOptimizer& optimizer() const;
  Lisa* lisa() { return lisa_.get(); }
  Lora* lora() { return lora_.get(); }
  EMA* ema() { return ema_.get(); }
  MetricsWriter& metrics() { return metrics_; }
  // The tensors the method trains (all model parameters for lisa/full, adapters for lora).
  const std::vector<std::pair<std::string, torch::Tensor>>& trainable() const { return trainable_; }
  int64_t active_parameters() const;  // elements that train at the current step

 private:
  void write_model(const std::filesystem::path& dir) const;
  void read_model(const std::filesystem::path& dir);
  void write_lisa_activations(const std::filesystem::path& file) const;
  nlohmann::json training_state() const;
  nlohmann::json parts_state() const;  // the recipe's parts (save_json) on this rank
  bool distributed() const { return options_.group && options_.group->size() > 1; }
  // Stops when the ranks' LISA sets differ (a rank with another seed or settings).
  void check_lisa_set(const char* when) const;
  // Throws lisadiff::Error when the model's parameters are no longer the hooked tensors.
  void check_model_unchanged(const char* when) const;
  // Throws lisadiff::Error when `loss` depends on a tensor that requires grad and that this
  // Trainer does not train (its gradient would be accumulated and never freed or used).
  void check_graph(const torch::Tensor& loss, int64_t step, int index) const;

  TrainedModel model_;
  TrainerOptions options_;
  std::vector<std::pair<std::string, torch::Tensor>> trainable_;
  std::unique_ptr<Lora> lora_;
  std::unique_ptr<Lisa> lisa_;
  std::unique_ptr<FusedOptimizer> optimizer_;  // full and lora
  std::unique_ptr<EMA> ema_;
  std::vector<StatePart> parts_;
  // The model's parameters when the Trainer was built (kept alive, so identity stays
  // meaningful), and the tensors it trains, by TensorImpl.
  std::vector<std::pair<std::string, torch::Tensor>> model_params_;
  std::unordered_set<const void*> owned_;
  MetricsWriter metrics_;
  torch::Device device_{torch::kCPU};
  int64_t micro_count_ = 0;
};

// Autocast for a region, as torch.autocast: enables autocast for `device`'s type at `dtype`
// and restores the previous state on exit, clearing the cast cache when autocast ends
// (weights change in place right after). A no-op for float32.
class AutocastScope {
 public:
  AutocastScope(torch::Device device, torch::ScalarType dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  at::DeviceType type_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_;
};

}  // namespace lisadiff::train
