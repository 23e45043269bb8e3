#include "recipes/diffusion_dpo.h"

#include <spdlog/spdlog.h>

#include "data/dataset.h"
#include "data/loader.h"
#include "io/safetensors.h"
#include "models/state.h"
#include "pipelines/validation.h"
#include "recipes/common.h"
#include "recipes/shared_flags.h"
#include "train/ema.h"

namespace lisadiff::recipes {

namespace fs = std::filesystem;
using config::Json;

namespace {

constexpr const char* kDpo = "Diffusion-DPO";

}  // namespace

FlagTable diffusion_dpo_flags() {
  FlagTable t("diffusion_dpo",
              "Diffusion-DPO preference tuning of a Stable Diffusion UNet (diffusers' train_diffusion_dpo.py), "
              "trained by LoRA (default, the script's), LISA or full fine-tuning. docs/recipes/diffusion_dpo.md");
  add_model_flags(t);

  t.add(flag_group::kData, "dataset_name", FlagType::kString, nullptr,
        "preference pairs (jpg_0, jpg_1, label_0, caption): a local image folder (metadata.jsonl), a folder of "
        "split folders, or webdataset shards");
  t.add(flag_group::kData, "dataset_split_name", FlagType::kString, "validation",
        "the split folder of --dataset_name to train on, when it has split folders");
  t.add(flag_group::kData, "max_train_samples", FlagType::kInt, nullptr, "a seeded subset of this many pairs (image folders)");
  t.add(flag_group::kData, "resolution", FlagType::kInt, 512, "shorter side resized to this, then cropped square");
  t.add(flag_group::kData, "random_crop", FlagType::kSwitch, false, "random instead of center crop (drawn per image)");
  t.add(flag_group::kData, "no_hflip", FlagType::kSwitch, false,
        "no random horizontal flip (each image is otherwise flipped with probability 0.5, drawn per image)");
  t.add(flag_group::kData, "vae_encode_batch_size", FlagType::kInt, 8, "images per VAE encode call");

  t.add(flag_group::kValidation, "run_validation", FlagType::kSwitch, false,
        "generate the 4 validation prompts (DPM-Solver++, 25 steps) every --validation_steps and at the end");
  t.add(flag_group::kValidation, "validation_steps", FlagType::kInt, 200, "validate every this many optimizer steps");

  add_training_flags(t);
  t.set_default("output_dir", "diffusion-dpo-lora");
  t.set_default("train_batch_size", 4);
  t.set_default("num_train_epochs", 1);
  t.set_default("learning_rate", 5e-4);
  t.add("Optimizer and schedule", "lr_num_cycles", FlagType::kInt, 1, "cosine_with_restarts: hard restarts");
  t.add("Optimizer and schedule", "lr_power", FlagType::kFloat, 1.0, "polynomial: power");
  t.add("Logging", "tracker_name", FlagType::kString, "diffusion-dpo-lora",
        "TensorBoard subfolder of logging_dir (the script's tracker project)");
  t.add("Precision and memory", "prior_generation_precision", FlagType::kString, nullptr, "unused by the script");
  t.set_handling("prior_generation_precision", Handling::kNote, "no effect: the script defines it and never reads it");

  t.add(kDpo, "beta_dpo", FlagType::kInt, 2500, "DPO beta: the strength of the preference (an integer, as the script)");
  t.add(kDpo, "loss_type", FlagType::kString, "sigmoid", "DPO loss: sigmoid, hinge or ipo").choices = {
      "sigmoid", "hinge", "ipo"};
  t.add(kDpo, "reference_dtype", FlagType::kString, "auto",
        "lisa/full: the frozen reference UNet's dtype (auto: the weight dtype of --mixed_precision; on a CPU in "
        "float32 it is read from the memory-mapped weight file, no copy; fp16: the LISA fork's choice)")
      .choices = {"auto", "fp32", "fp16", "bf16"};
  t.add(kDpo, "ref_update_rate", FlagType::kFloat, 0.0,
        "lisa/full: after every optimizer step reference <- (1 - rate) reference + rate policy (the LISA fork: "
        "1e-4; 0: a fixed reference, as the DPO paper and the script)");

  add_method_flags(t, "lora");
  add_rank_alias_flag(t);
  t.set_default("lora_init", "gaussian");  // the script's init_lora_weights="gaussian"
  return t;
}

DpoLossType dpo_loss_type(const std::string& name) {
  if (name == "sigmoid") return DpoLossType::kSigmoid;
  if (name == "hinge") return DpoLossType::kHinge;
  if (name == "ipo") return DpoLossType::kIpo;
  throw UsageError("--loss_type: '" + name + "' is not one of sigmoid, hinge, ipo");
}

DpoTerms dpo_loss(const torch::Tensor& model_mse, const torch::Tensor& ref_mse, DpoLossType type, double beta) {
  const auto model = model_mse.chunk(2);
  const auto ref = ref_mse.chunk(2);
  DpoTerms out;
  out.logits = (ref[0] - ref[1]) - (model[0] - model[1]);
  switch (type) {
    case DpoLossType::kSigmoid:
      out.loss = -torch::log_sigmoid(beta * out.logits).mean();
      break;
    case DpoLossType::kHinge:
      out.loss = torch::relu(1 - beta * out.logits).mean();
      break;
    case DpoLossType::kIpo:
      out.loss = (out.logits - 1 / (2 * beta)).pow(2).mean();
      break;
  }
  const auto n = static_cast<double>(out.logits.size(0));
  const auto logits = out.logits.detach();
  out.implicit_acc = (logits > 0).sum().to(torch::kFloat32) / n + 0.5 * (logits == 0).sum().to(torch::kFloat32) / n;
  return out;
}

train::MicroResult diffusion_dpo_step(DiffusionDpoModels& m, const data::Batch& batch, const DiffusionDpoDraws& draws) {
  if (batch.images.size() != 2) throw Error("diffusion_dpo: a batch needs the preferred and the rejected images");
  const int64_t bsz = batch.images[0].size(0);
  // [B,6,H,W] split on channels and stacked on the batch axis: all preferred, then all rejected.
  const auto pixels = torch::cat({batch.images[0], batch.images[1]}).to(m.device, m.weight_dtype);
  torch::Tensor latents, noise, timesteps, noisy, embeds;
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    const int64_t chunk = std::max<int64_t>(1, m.vae_encode_batch_size);
    for (int64_t i = 0; i < 2 * bsz; i += chunk) {
      const int64_t end = std::min(2 * bsz, i + chunk);
      const auto dist = m.vae->encode(pixels.slice(0, i, end));
      parts.push_back(draws.latent_noise.defined()
                          ? dist.sample_with(draws.latent_noise.slice(0, i, end).to(dist.mean.options()))
                          : dist.sample());
    }
    latents = torch::cat(parts) * m.vae->config.scaling_factor;
    // Noise for all 2B latents, the first B kept and repeated: a pair's images share noise.
    // Drawn in NCHW order as torch.randn_like draws for the script's contiguous latents (the
    // VAE's output here may be channels_last, whose randn_like would fill another order).
    noise = draws.noise.defined() ? draws.noise.to(latents.options()).repeat({2, 1, 1, 1})
                                  : torch::randn(latents.sizes(), latents.options()).chunk(2)[0].repeat({2, 1, 1, 1});
    timesteps = (draws.timesteps.defined()
                     ? draws.timesteps.to(m.device, torch::kLong)
                     : torch::randint(0, m.schedule->num_train_timesteps(), {bsz},
                                      torch::TensorOptions().dtype(torch::kLong).device(m.device)))
                    .repeat({2});
    noisy = m.schedule->add_noise(latents, noise, timesteps);
    embeds = m.text_encoder->forward(m.tokenizer->tokenize(batch.texts).input_ids.to(m.device))
                 .last_hidden_state.repeat({2, 1, 1});
  }
  const auto& prediction_type = m.schedule->config().prediction_type;
  torch::Tensor target;
  if (prediction_type == "epsilon") {
    target = noise;
  } else if (prediction_type == "v_prediction") {
    target = m.schedule->get_velocity(latents, noise, timesteps);
  } else {
    throw Error(fmt::format("diffusion_dpo: prediction_type '{}' is not epsilon or v_prediction", prediction_type));
  }
  target = target.to(torch::kFloat32);
  const auto per_sample = [](const torch::Tensor& pred, const torch::Tensor& target) {
    return torch::mse_loss(pred.to(torch::kFloat32), target, at::Reduction::None).mean({1, 2, 3});
  };
  const auto model_mse = per_sample(m.unet->forward(noisy, timesteps, embeds), target);
  torch::Tensor ref_mse;
  {
    torch::NoGradGuard no_grad;
    ref_mse = per_sample(m.reference(noisy, timesteps, embeds), target);
  }
  auto terms = dpo_loss(model_mse, ref_mse, m.loss_type, m.beta);
  train::MicroResult result;
  result.loss = terms.loss;
  const auto halves = model_mse.detach().chunk(2);
  result.logs["raw_model_loss"] = (0.5 * (halves[0].mean() + halves[1].mean())).item<double>();
  result.logs["ref_loss"] = ref_mse.mean().item<double>();
  result.logs["implicit_acc"] = terms.implicit_acc.item<double>();
  result.end_of_epoch = batch.end_of_epoch;
  return result;
}

namespace {

// The run's own settings, read from the values (the rest go to TrainerOptions and DataOptions).
struct DpoSettings : CommonSettings {
  bool run_validation = false;
  int validation_steps = 200;
  int vae_encode_batch_size = 8;
  int beta_dpo = 2500;
  DpoLossType loss_type = DpoLossType::kSigmoid;
  std::string reference_dtype = "auto";
  double ref_update_rate = 0;
};

DpoSettings read_dpo_settings(config::FieldReader& r) {
  DpoSettings s;
  static_cast<CommonSettings&>(s) = read_common_settings(r);
  r("run_validation", s.run_validation);
  r("validation_steps", s.validation_steps);
  r("vae_encode_batch_size", s.vae_encode_batch_size);
  r("beta_dpo", s.beta_dpo);
  std::string loss = "sigmoid";
  r("loss_type", loss);
  s.loss_type = dpo_loss_type(loss);
  r("reference_dtype", s.reference_dtype);
  r("ref_update_rate", s.ref_update_rate);
  if (s.validation_steps < 1) throw UsageError("--validation_steps must be at least 1");
  if (s.vae_encode_batch_size < 1) throw UsageError("--vae_encode_batch_size must be at least 1");
  if (s.beta_dpo <= 0) {
    throw UsageError(fmt::format("--beta_dpo must be positive (the loss scales the logits by it), got {}", s.beta_dpo));
  }
  if (!(s.ref_update_rate >= 0 && s.ref_update_rate <= 1)) {
    throw UsageError(fmt::format("--ref_update_rate must be in [0, 1], got {}", s.ref_update_rate));
  }
  return s;
}

// The script names its outputs after LoRA; --method lisa and full default to the LISA fork's
// spelling of the same names ("diffusion-dpo-lisa", "diffusion-dpo-full") unless given.
void method_defaults(const ParsedArgs& parsed, Json& values) {
  const auto method = values.at("method").get<std::string>();
  if (method == "lora") return;
  for (const char* key : {"output_dir", "tracker_name"}) {
    if (!parsed.values.contains(key)) values[key] = "diffusion-dpo-" + method;
  }
}

torch::ScalarType reference_dtype_of(const std::string& name, torch::ScalarType weight_dtype) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  return weight_dtype;
}

// Switches a LoRA's adapters off for a scope (the script's disable_adapters / enable_adapters).
class AdaptersOff {
 public:
  explicit AdaptersOff(train::Lora& lora) : lora_(lora) { lora_.set_enabled(false); }
  ~AdaptersOff() { lora_.set_enabled(true); }
  AdaptersOff(const AdaptersOff&) = delete;
  AdaptersOff& operator=(const AdaptersOff&) = delete;

 private:
  train::Lora& lora_;
};

}  // namespace

void run_diffusion_dpo(const ParsedArgs& parsed) {
  const auto table = diffusion_dpo_flags();
  auto run = start_run(table, parsed);
  auto& values = run.values;
  const auto& source = run.source;
  merge_rank_alias(parsed, values);
  method_defaults(parsed, values);
  config::FieldReader reader(values, source);
  const auto settings = reading_values([&] { return read_dpo_settings(reader); });
  check_resolution(values);
  auto data_options = data::DataOptions::for_recipe(data::ExampleKind::kDpo);
  reading_values([&] { data_options.read(reader); });  // validates too
  const torch::Device device = training_device(settings.allow_tf32);
  const auto dist = join_process_group(data_options, device);
  data::DataLoader loader(data_options);
  derive_step_count(values, reader, loader.batches_per_epoch(), data_options.world_size);
  auto options = reading_values([&] { return train::TrainerOptions::read(reader); });
  options.recipe = "diffusion_dpo";
  options.group = dist.group;
  options.main_process = dist.env.rank == 0;
  finish_reading(table, reader);
  const bool lora = options.method == train::TrainMethod::kLora;
  if (lora && settings.ref_update_rate > 0) {
    throw UsageError("--ref_update_rate: with --method lora the reference is the UNet with its adapters off, which "
                     "does not move; the rate applies to lisa and full");
  }
  if (lora && parsed.values.contains("reference_dtype")) {
    spdlog::info("--reference_dtype: no effect with --method lora (the reference is the UNet with its adapters off)");
  }

  // Models: VAE and text encoder frozen in the weight dtype, the policy UNet in float32.
  const auto weight_dtype = weight_dtype_of(options.mixed_precision);
  const auto frozen = frozen_load_options(weight_dtype, device);
  auto tokenizer = models::CLIPTokenizer::from_folder(run.base / "tokenizer");
  auto text_encoder = models::load_clip_text(run.base / "text_encoder", frozen, settings.variant);
  auto vae = models::load_vae(run.base / "vae", frozen, settings.variant);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(run.base / "scheduler");
  // lisa, full: the reference is the pretrained UNet, frozen, in the reference dtype; on a
  // CPU in the file's dtype it is a view of the mapped weight file. Loaded before the policy,
  // so that building it (before its weights become the file's pages) is not on top of it.
  models::UNet2DConditionModel reference{nullptr};
  torch::ScalarType ref_dtype = torch::kFloat32;
  if (!lora) {
    models::LoadOptions ref_options = frozen;
    ref_dtype = reference_dtype_of(settings.reference_dtype, weight_dtype);
    ref_options.dtype = ref_dtype;
    reference = models::load_unet(run.base / "unet", ref_options, settings.variant);
    reference->eval();
  }
  models::LoadOptions trained;
  trained.device = device;
  // lora: the UNet's own weights stay frozen (only the adapters train), so they map too.
  trained.map_file = lora && device.is_cpu();
  auto unet = models::load_unet(run.base / "unet", trained, settings.variant);
  text_encoder->eval();
  vae->eval();

  // The script seeds everything first; lisadiff's model construction draws from the global
  // generator, so the seed comes right before the LoRA adapters' gaussian init.
  torch::manual_seed(static_cast<uint64_t>(settings.seed));
  train::Trainer trainer(train::trained_unet(unet), options);
  trainer.add_state(loader_state_part(loader));
  if (settings.ref_update_rate > 0) {
    // A reference that moves is part of the run's state.
    train::StatePart part;
    part.name = "reference_unet";
    part.save_files = [&](const fs::path& dir) {
      io::write_safetensors(dir / "reference_unet.safetensors", models::parameters_of(*reference), {{"format", "pt"}});
    };
    part.load_files = [&](const fs::path& dir) {
      models::LoadOptions o;
      o.convert_module = false;
      models::load_parameters(*reference, {dir / "reference_unet.safetensors"}, o);
    };
    trainer.add_state(part);
  }

  DiffusionDpoModels m;
  m.tokenizer = &tokenizer;
  m.text_encoder = text_encoder;
  m.vae = vae;
  m.unet = unet;
  m.schedule = &schedule;
  m.loss_type = settings.loss_type;
  m.beta = settings.beta_dpo;
  m.vae_encode_batch_size = settings.vae_encode_batch_size;
  m.device = device;
  m.weight_dtype = weight_dtype;
  if (lora) {
    m.reference = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) {
      AdaptersOff off(*trainer.lora());
      return unet->forward(x, t, c).to(torch::kFloat32);
    };
  } else {
    // As the LISA fork: the inputs in the reference's dtype, the prediction back in float32.
    m.reference = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) {
      return reference->forward(x.to(ref_dtype), t, c.to(ref_dtype)).to(torch::kFloat32);
    };
  }

  std::optional<pipelines::Validator> validator;
  pipelines::ValidationSpec spec;
  if (settings.run_validation) {
    validator.emplace(pipelines::components_for_validation(run.base, tokenizer, text_encoder, vae), trainer,
                      settings.validation_steps);
    spec.prompts = lcm_validation_prompts();
    spec.scheduler = "DPMSolverMultistepScheduler";
    spec.num_inference_steps = 25;
    spec.guidance_scale = 7.5;
    spec.seed = static_cast<uint64_t>(settings.seed);
  }
  trainer.resume();

  const io::NamedTensors ref_pairs = reference ? reference->named_parameters().pairs() : io::NamedTensors{};
  const io::NamedTensors policy_pairs = unet->named_parameters().pairs();
  trainer.train(
      [&](const train::MicroBatch&) { return diffusion_dpo_step(m, loader.next()); },
      [&](int64_t step) {
        if (settings.ref_update_rate > 0) {
          // The LISA fork's slow reference: ref <- (1 - r) ref + r policy, every tensor (the
          // fixed-rate EMA that LCM's target network uses too).
          train::ema_update_(ref_pairs, policy_pairs, 1 - settings.ref_update_rate);
        }
        if (validator && validator->due(step)) validator->run(step, unet, spec);
      });
  trainer.save_final();
  if (validator) {
    // The script's final comparison: the trained weights ("test"), then the model without
    // them ("test_without_lora": adapters off; lisa/full: the reference UNet).
    const int64_t step = trainer.global_step();
    auto test = spec;
    test.name = "test";
    validator->run(step, unet, test);
    auto without = spec;
    if (lora) {
      without.name = "test_without_lora";
      AdaptersOff off(*trainer.lora());
      validator->run(step, unet, without);
    } else if (ref_dtype == weight_dtype) {
      without.name = "test_reference";
      validator->run(step, reference, without);
    } else {
      spdlog::info("no test_reference images: the reference UNet's dtype differs from the pipeline's (--reference_dtype)");
    }
  }
  if (!options.main_process) return;
  if (lora) {
    spdlog::info("wrote the LoRA weights to {}", (options.output_dir / train::Lora::kFileName).string());
    return;
  }
  complete_pipeline_folder(run.base, options.output_dir, {"unet"}, "StableDiffusionPipeline");
  spdlog::info("wrote the DPO-tuned pipeline to {}", options.output_dir.string());
}

}  // namespace lisadiff::recipes
