#include "recipes/shared_flags.h"

#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace lisadiff::recipes {

namespace {

using config::Json;

constexpr const char* kTraining = "Training";
constexpr const char* kOptimizer = "Optimizer and schedule";
constexpr const char* kPrecision = "Precision and memory";
constexpr const char* kCheckpoints = "Checkpoints";
constexpr const char* kLogging = "Logging";
constexpr const char* kMethod = "Method (lisadiff: lisa, full or lora)";
constexpr const char* kPython = "Python/Hub flags (accepted so that the original commands run)";

FlagSpec& with_choices(FlagSpec& spec, std::vector<std::string> choices) {
  spec.choices = std::move(choices);
  return spec;
}

}  // namespace

void add_model_flags(FlagTable& t) {
  t.add(flag_group::kModel, "pretrained_model_name_or_path", FlagType::kString, nullptr,
        "the base Stable Diffusion pipeline folder (a local path; a Hub id must be downloaded first)")
      .required = true;
  t.add(flag_group::kModel, "variant", FlagType::kString, nullptr,
        "weight file variant, e.g. fp16: reads *.fp16.safetensors (docs/recipes/<recipe>.md says of which models)");
  t.add(flag_group::kModel, "revision", FlagType::kString, nullptr, "Hub revision");
  t.set_handling("revision", Handling::kNote, "no effect: lisadiff reads the local folder as it is");
  t.add(flag_group::kModel, "cache_dir", FlagType::kString, nullptr, "Hub/datasets cache");
  t.set_handling("cache_dir", Handling::kNote, "no effect: lisadiff keeps no download cache");
}

void add_folder_dataset_flags(FlagTable& t) {
  t.add(flag_group::kModel, "non_ema_revision", FlagType::kString, nullptr, "Hub revision of the non-EMA UNet");
  t.set_handling("non_ema_revision", Handling::kNote, "no effect: the UNet is read from the local folder's unet/");
  t.add("Data", "dataset_name", FlagType::kString, nullptr,
        "a local image folder (metadata.jsonl) or webdataset shards (a folder of .tar files or a brace spec)");
  t.add("Data", "dataset_config_name", FlagType::kString, nullptr, "datasets config name");
  t.set_handling("dataset_config_name", Handling::kNote, "no effect: lisadiff reads local datasets");
  t.add("Data", "train_data_dir", FlagType::kString, nullptr, "a local image folder with metadata.jsonl");
  t.add("Data", "max_train_samples", FlagType::kInt, nullptr, "a seeded subset of this many samples (image folders)");
}

void add_training_flags(FlagTable& t) {
  t.add(kTraining, "output_dir", FlagType::kString, "output", "where checkpoints, metrics and the result go");
  t.add(kTraining, "seed", FlagType::kInt, nullptr,
        "seed of the data order, noise, dropout and LISA draws (None: a random one, logged)");
  t.add(kTraining, "train_batch_size", FlagType::kInt, 16, "batch size per process");
  t.add(kTraining, "num_train_epochs", FlagType::kInt, 100, "epochs (when --max_train_steps is not given)");
  t.add(kTraining, "max_train_steps", FlagType::kInt, nullptr, "total optimizer steps; overrides --num_train_epochs");
  t.add(kTraining, "gradient_accumulation_steps", FlagType::kInt, 1, "micro-batches per optimizer step");
  t.add(kTraining, "dataloader_num_workers", FlagType::kInt, 0, "loader threads (0: decode in the training thread)");

  t.add(kOptimizer, "learning_rate", FlagType::kFloat, 1e-4, "base learning rate");
  t.add(kOptimizer, "scale_lr", FlagType::kSwitch, false,
        "multiply the learning rate by accumulation x batch x processes");
  with_choices(t.add(kOptimizer, "lr_scheduler", FlagType::kString, "constant", "learning-rate schedule"),
               {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"});
  t.add(kOptimizer, "lr_warmup_steps", FlagType::kInt, 500, "warmup steps (constant ignores them, as diffusers)");
  t.add(kOptimizer, "adam_beta1", FlagType::kFloat, 0.9, "AdamW beta1");
  t.add(kOptimizer, "adam_beta2", FlagType::kFloat, 0.999, "AdamW beta2");
  t.add(kOptimizer, "adam_weight_decay", FlagType::kFloat, 1e-2, "AdamW weight decay");
  t.add(kOptimizer, "adam_epsilon", FlagType::kFloat, 1e-8, "AdamW epsilon");
  t.add(kOptimizer, "max_grad_norm", FlagType::kFloat, 1.0,
        "gradient clipping: the global norm (classic step) or per tensor (fused step, LISA)");
  t.add(kOptimizer, "use_8bit_adam", FlagType::kSwitch, false,
        "8-bit AdamW moments (block-wise, bitsandbytes' scheme, native: no bitsandbytes needed)");

  with_choices(t.add(kPrecision, "mixed_precision", FlagType::kString, nullptr,
                     "autocast dtype for the trained model; None and no: float32"),
               {"no", "fp16", "bf16"});
  t.add(kPrecision, "gradient_checkpointing", FlagType::kSwitch, false, "recompute UNet activations per block");
  t.add(kPrecision, "allow_tf32", FlagType::kSwitch, false, "TF32 matmuls on Ampere and newer GPUs");
  t.add(kPrecision, "enable_xformers_memory_efficient_attention", FlagType::kSwitch, false, "xformers attention");
  t.set_handling("enable_xformers_memory_efficient_attention", Handling::kNote,
                 "no effect: attention always runs through torch's scaled_dot_product_attention (flash or "
                 "memory-efficient kernels on GPUs)");

  t.add(kCheckpoints, "checkpointing_steps", FlagType::kInt, 500, "write checkpoint-<step> every this many steps");
  t.add(kCheckpoints, "checkpoints_total_limit", FlagType::kInt, nullptr, "keep at most this many checkpoints");
  t.add(kCheckpoints, "resume_from_checkpoint", FlagType::kString, nullptr,
        "\"latest\" or a checkpoint folder name in output_dir");

  t.add(kLogging, "logging_dir", FlagType::kString, "logs", "TensorBoard folder, relative to output_dir");
  with_choices(t.add(kLogging, "report_to", FlagType::kString, "tensorboard",
                     "tracker: TensorBoard event files; wandb/comet_ml need a service (warn, write TensorBoard "
                     "files); none"),
               {"tensorboard", "wandb", "comet_ml", "all", "none"});

  t.add(kPython, "push_to_hub", FlagType::kSwitch, false, "upload to the Hub");
  t.set_handling("push_to_hub", Handling::kRefuse, "lisadiff does not upload; copy output_dir to the Hub yourself");
  t.add(kPython, "hub_token", FlagType::kString, nullptr, "Hub token");
  t.set_handling("hub_token", Handling::kRefuse, "lisadiff does not talk to the Hub");
  t.add(kPython, "hub_model_id", FlagType::kString, nullptr, "Hub repository");
  t.set_handling("hub_model_id", Handling::kRefuse, "lisadiff does not talk to the Hub");
  t.add(kPython, "local_rank", FlagType::kInt, -1, "torch.distributed rank");
  t.set_handling("local_rank", Handling::kNote,
                 "no effect: the rank comes from the launcher's RANK/LOCAL_RANK environment (lisadiff launch, "
                 "torchrun)");
}

void add_method_flags(FlagTable& t, const std::string& default_method) {
  with_choices(t.add(kMethod, "method", FlagType::kString, default_method,
                     "lisa: a few drawn layers train at a time; full: every parameter; lora: adapters"),
               {"lisa", "full", "lora"});
  t.add(kMethod, "lisa_n_active", FlagType::kInt, -1,
        "LISA: units drawn besides the always-on ones (-1: from --lisa_rate)");
  t.add(kMethod, "lisa_rate", FlagType::kFloat, -1.0,
        "LISA: share of the units drawn (-1 with --lisa_n_active -1: 8 / units, the original's default)");
  t.add(kMethod, "lisa_interval", FlagType::kInt, 20, "LISA: re-draw every this many optimizer steps");
  with_choices(t.add(kMethod, "lisa_unit", FlagType::kString, "tensor",
                     "LISA: a unit is one tensor (the original) or one block (resnet, attention, ...)"),
               {"tensor", "block"});
  with_choices(t.add(kMethod, "lisa_sampling", FlagType::kString, "uniform", "LISA: how units are drawn"),
               {"uniform", "weighted"});
  t.add(kMethod, "lisa_always_on", FlagType::kList, Json::array(),
        "LISA: regular expressions of parameters always trained (empty: the first and the last tensor)");
  t.add(kMethod, "lisa_keep_state", FlagType::kSwitch, false, "LISA: keep a deactivated tensor's AdamW moments");
  t.add(kMethod, "lisa_seed", FlagType::kInt, nullptr, "LISA: seed of the draws (None: --seed)");
  with_choices(t.add(kMethod, "frozen_dtype", FlagType::kString, "fp32",
                     "lisa/lora: store frozen weights in this dtype (fp16/bf16 need --mixed_precision)"),
               {"fp32", "fp16", "bf16"});
  with_choices(t.add(kMethod, "optimizer_step", FlagType::kString, "classic",
                     "full/lora: classic (all gradients, global clip, then AdamW) or fused (AdamW inside the "
                     "backward pass); LISA always steps fused"),
               {"classic", "fused"});
  t.add(kMethod, "lora_rank", FlagType::kInt, 4, "LoRA: rank");
  t.add(kMethod, "lora_alpha", FlagType::kFloat, -1.0, "LoRA: alpha (-1: the rank, scale 1)");
  t.add(kMethod, "lora_target_modules", FlagType::kList, Json::array({"to_q", "to_k", "to_v", "to_out.0"}),
        "LoRA: adapted attention projections");
  t.add(kMethod, "lora_modules_to_save", FlagType::kList, Json::array(),
        "LoRA: modules trained in full next to the adapters (peft's modules_to_save)");
  with_choices(t.add(kMethod, "lora_init", FlagType::kString, "kaiming",
                     "LoRA: initialisation of A (kaiming: peft's default; gaussian)"),
               {"kaiming", "gaussian"});
}

void add_rank_alias_flag(FlagTable& t) {
  t.add(kMethod, "rank", FlagType::kInt, 4, "LoRA rank (the diffusers LoRA scripts' name for --lora_rank)");
}

// --rank is the script's name of --lora_rank: one value for both, and a conflict is an error.
void merge_rank_alias(const ParsedArgs& parsed, config::Json& values) {
  const bool rank = parsed.values.contains("rank"), lora_rank = parsed.values.contains("lora_rank");
  if (rank && lora_rank && parsed.values.at("rank") != parsed.values.at("lora_rank")) {
    throw UsageError(fmt::format("--rank {} and --lora_rank {}: the same setting given twice with different values",
                                 parsed.values.at("rank").dump(), parsed.values.at("lora_rank").dump()));
  }
  if (rank) values["lora_rank"] = values.at("rank");
  values["rank"] = values.at("lora_rank");
}

config::Json recipe_values(const FlagTable& table, const ParsedArgs& parsed) {
  auto values = table.defaults_json();
  for (auto it = parsed.values.begin(); it != parsed.values.end(); ++it) values[it.key()] = it.value();
  // The scripts draw unseeded without --seed: a random seed, logged, so that the run can be
  // repeated (and resumed: a checkpoint's data order needs the same seed).
  if (values.contains("seed") && values.at("seed").is_null()) {
    std::random_device rd;
    const auto seed = static_cast<int64_t>((static_cast<uint64_t>(rd()) << 16 ^ rd()) & 0x7fffffff);
    spdlog::info("no --seed given: this run uses --seed {} (pass it to repeat or resume the run)", seed);
    values["seed"] = seed;
  }
  // None mixed precision is "no"; LISA's draws follow --seed unless --lisa_seed is given.
  if (values.contains("mixed_precision") && values.at("mixed_precision").is_null()) values["mixed_precision"] = "no";
  if (values.contains("lisa_seed") && values.at("lisa_seed").is_null() && values.contains("seed")) {
    values["lisa_seed"] = values.at("seed");
  }
  return values;
}

void finish_reading(const FlagTable& table, config::FieldReader& reader) {
  for (const auto& f : table.flags()) {
    if (f.handling != Handling::kNormal) reader.ignored(f.name.c_str());
  }
  const auto unclaimed = reader.unclaimed();
  if (!unclaimed.empty()) {
    std::string keys;
    for (const auto& k : unclaimed) keys += (keys.empty() ? "" : ", ") + k;
    throw Error(fmt::format("{}: flags that no part of the recipe reads: {}", table.program(), keys));
  }
}

}  // namespace lisadiff::recipes
