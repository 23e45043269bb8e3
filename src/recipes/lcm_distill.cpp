#include "recipes/lcm_distill.h"

#include <fstream>

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "data/dataset.h"
#include "data/loader.h"
#include "models/state.h"
#include "pipelines/validation.h"
#include "recipes/common.h"
#include "recipes/shared_flags.h"
#include "train/ema.h"

namespace lisadiff::recipes {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLcm = "Latent consistency distillation";

}  // namespace

FlagTable lcm_distill_flags() {
  FlagTable t("lcm_distill",
              "Latent consistency distillation of a Stable Diffusion teacher (diffusers' "
              "train_lcm_distill_sd_wds.py), trained by LISA (default), full fine-tuning or LoRA");
  t.add(flag_group::kModel, "pretrained_teacher_model", FlagType::kString, nullptr,
        "the teacher Stable Diffusion pipeline folder (a local path; a Hub id must be downloaded first)")
      .required = true;
  t.add(flag_group::kModel, "pretrained_vae_model_name_or_path", FlagType::kString, nullptr, "a VAE the script never loads");
  t.set_handling("pretrained_vae_model_name_or_path", Handling::kNote,
                 "no effect: the script reads the VAE from the teacher folder whatever this says, and so does lisadiff");
  t.add(flag_group::kModel, "teacher_revision", FlagType::kString, nullptr, "Hub revision of the teacher");
  t.set_handling("teacher_revision", Handling::kNote, "no effect: lisadiff reads the local folder as it is");
  t.add(flag_group::kModel, "revision", FlagType::kString, nullptr, "Hub revision (the validation pipeline's)");
  t.set_handling("revision", Handling::kNote, "no effect: lisadiff reads the local folder as it is");
  t.add(flag_group::kModel, "cache_dir", FlagType::kString, nullptr, "Hub/datasets cache");
  t.set_handling("cache_dir", Handling::kNote, "no effect: lisadiff keeps no download cache");

  t.add(flag_group::kData, "train_shards_path_or_url", FlagType::kString, nullptr,
        "webdataset shards: a brace spec of local .tar files, or pipe: commands");
  t.add(flag_group::kData, "resolution", FlagType::kInt, 512, "shorter side resized to this, then a random square crop");
  t.add(flag_group::kData, "interpolation_type", FlagType::kString, "bilinear", "the resize filter").choices = {
      "bilinear", "bicubic", "box", "nearest", "nearest_exact", "hamming", "lanczos"};
  t.add(flag_group::kData, "center_crop", FlagType::kSwitch, false, "unused by the script (the crop is always random)");
  t.set_handling("center_crop", Handling::kNote, "no effect: the script defines it and always crops at random");
  t.add(flag_group::kData, "random_flip", FlagType::kSwitch, false, "unused by the script (no flip)");
  t.set_handling("random_flip", Handling::kNote, "no effect: the script defines it and never flips");
  t.add(flag_group::kData, "max_train_samples", FlagType::kInt, nullptr,
        "the nominal number of samples per epoch (the script divides by it)");
  t.add(flag_group::kData, "proportion_empty_prompts", FlagType::kFloat, 0, "share of captions replaced by the empty prompt");

  t.add(kLcm, "w_min", FlagType::kFloat, 5.0, "smallest guidance scale w drawn for the teacher");
  t.add(kLcm, "w_max", FlagType::kFloat, 15.0, "largest guidance scale w drawn for the teacher");
  t.add(kLcm, "num_ddim_timesteps", FlagType::kInt, 50, "steps of the DDIM solver's grid");
  t.add(kLcm, "loss_type", FlagType::kString, "l2", "distillation loss: l2 or huber").choices = {"l2", "huber"};
  t.add(kLcm, "huber_c", FlagType::kFloat, 0.001, "huber loss: c");
  t.add(kLcm, "unet_time_cond_proj_dim", FlagType::kInt, 256,
        "the w embedding's size, for a teacher UNet without time_cond_proj_dim");
  t.add(kLcm, "vae_encode_batch_size", FlagType::kInt, 32, "images per VAE encode call");
  t.add(kLcm, "timestep_scaling_factor", FlagType::kFloat, 10.0, "the boundary conditions' timestep scaling");
  t.add(kLcm, "ema_decay", FlagType::kFloat, 0.95, "the target UNet's EMA decay");
  t.add(kLcm, "cast_teacher_unet", FlagType::kSwitch, false, "store the teacher UNet in the weight dtype");

  t.add(kLcm, "teacher_autocast", FlagType::kString, "auto",
        "the teacher's autocast dtype (auto: the script's torch.autocast(device) default, fp16 on CUDA and bf16 on a "
        "CPU; no: the teacher runs in its weights' dtype)")
      .choices = {"auto", "no", "fp16", "bf16"};

  t.add(flag_group::kValidation, "validation_steps", FlagType::kInt, 200, "validate every this many optimizer steps");
  t.add(flag_group::kValidation, "validation_prompts_file", FlagType::kString, nullptr,
        "a text file with one validation prompt per line (default: the script's four prompts)");

  add_training_flags(t);
  t.set_default("output_dir", "lcm-xl-distilled");
  t.set_handling("scale_lr", Handling::kNote, "no effect: the script defines it and never reads it");
  t.add("Logging", "tracker_project_name", FlagType::kString, "text2image-fine-tune",
        "TensorBoard subfolder of logging_dir (the script's tracker project)");
  add_method_flags(t, "lisa");
  // --method lora follows diffusers' LCM-LoRA script (train_lcm_distill_lora_sd_wds.py).
  t.set_default("lora_rank", 64);
  t.set_default("lora_alpha", 64.0);
  t.set_default("lora_target_modules", config::Json(lcm_lora_target_modules()));
  t.add("Method (lisadiff: lisa, full or lora)", "lora_dropout", FlagType::kFloat, 0.0,
        "LoRA: dropout before each adapter (the LCM-LoRA script's)");
  return t;
}

const std::vector<std::string>& lcm_lora_target_modules() {
  static const std::vector<std::string> targets = {
      "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
      "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"};
  return targets;
}

LcmLossType lcm_loss_type(const std::string& name) {
  if (name == "l2") return LcmLossType::kL2;
  if (name == "huber") return LcmLossType::kHuber;
  throw UsageError("--loss_type: '" + name + "' is not one of l2, huber");
}

torch::Tensor lcm_loss(const torch::Tensor& prediction, const torch::Tensor& target, LcmLossType type, double huber_c) {
  const auto p = prediction.to(torch::kFloat32), t = target.to(torch::kFloat32);
  if (type == LcmLossType::kL2) return torch::mse_loss(p, t);
  return torch::mean(torch::sqrt((p - t).pow(2) + huber_c * huber_c) - huber_c);
}

namespace {

// Switches autocast off for a scope (the teacher without --teacher_autocast inside a
// mixed-precision micro-batch), restoring the previous state.
class AutocastOff {
 public:
  explicit AutocastOff(torch::Device device) : type_(device.type()), was_(at::autocast::is_autocast_enabled(type_)) {
    at::autocast::set_autocast_enabled(type_, false);
  }
  ~AutocastOff() { at::autocast::set_autocast_enabled(type_, was_); }
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  at::DeviceType type_;
  bool was_;
};

torch::Tensor per_sample(const torch::Tensor& values, int64_t dims) {
  std::vector<int64_t> shape(static_cast<std::size_t>(dims), 1);
  shape[0] = values.size(0);
  return values.reshape(shape);
}

}  // namespace

train::MicroResult lcm_distill_step(LcmDistillModels& m, const data::Batch& batch, const LcmDistillDraws& draws) {
  if (batch.images.size() != 1) throw Error("lcm_distill: a batch needs one image per sample");
  const int64_t bsz = batch.size();
  const auto& ptype = m.schedule->config().prediction_type;
  const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(m.device);
  torch::Tensor noisy, index, start_t, end_t, w, w_emb, embeds;
  {
    torch::NoGradGuard no_grad;
    // 1. Latents: the VAE's sample() in chunks, scaled, in the weight dtype.
    const auto pixels = batch.images[0].to(m.device, m.weight_dtype);
    std::vector<torch::Tensor> parts;
    const int64_t chunk = std::max<int64_t>(1, m.vae_encode_batch_size);
    for (int64_t i = 0; i < bsz; i += chunk) {
      const int64_t end = std::min(bsz, i + chunk);
      const auto dist = m.vae->encode(pixels.slice(0, i, end));
      parts.push_back(draws.latent_noise.defined()
                          ? dist.sample_with(draws.latent_noise.slice(0, i, end).to(dist.mean.options()))
                          : dist.sample());
    }
    const auto latents = (torch::cat(parts) * m.vae->config.scaling_factor).to(m.weight_dtype);
    // 2. A grid index per sample: t_start on the DDIM grid, t_end one grid step before.
    index = draws.index.defined() ? draws.index.to(long_options)
                                  : torch::randint(0, m.solver->num_ddim_timesteps(), {bsz}, long_options);
    start_t = m.solver->ddim_timesteps().index({index});
    const int64_t topk = m.schedule->num_train_timesteps() / m.solver->num_ddim_timesteps();
    end_t = (start_t - topk).clamp_min(0);
    // 3. Forward noise (drawn in NCHW order, as randn_like for the script's contiguous latents).
    const auto noise = draws.noise.defined() ? draws.noise.to(latents.options())
                                             : torch::randn(latents.sizes(), latents.options());
    noisy = m.schedule->add_noise(latents, noise, start_t);
    // 4. Guidance scale w ~ U[w_min, w_max] from the CPU generator, and its embedding.
    const auto w_cpu = draws.w.defined() ? draws.w.to(torch::kCPU, torch::kFloat32)
                                         : torch::rand({bsz}) * (m.w_max - m.w_min) + m.w_min;
    if (m.w_embedding_dim > 0) {
      w_emb = schedulers::guidance_scale_embedding(w_cpu, m.w_embedding_dim).to(m.device, latents.scalar_type());
    }
    w = w_cpu.reshape({bsz, 1, 1, 1}).to(m.device, latents.scalar_type());
    embeds = m.text_encoder->forward(m.tokenizer->tokenize(batch.texts).input_ids.to(m.device)).last_hidden_state;
  }
  const auto start = schedulers::lcm_boundary_scalings(start_t, m.timestep_scaling);
  const auto end = schedulers::lcm_boundary_scalings(end_t, m.timestep_scaling);
  const int64_t dims = noisy.dim();

  // 5. The online student's consistency prediction at t_start.
  const auto student_out = m.unet->forward(noisy, start_t, embeds.to(torch::kFloat32), w_emb);
  const auto student_x0 = schedulers::lcm_predicted_original_sample(student_out, start_t, noisy, ptype, m.schedules);
  const auto model_pred = per_sample(start.c_skip, dims) * noisy + per_sample(start.c_out, dims) * student_x0;

  torch::Tensor target;
  {
    torch::NoGradGuard no_grad;
    // 6. The teacher with and without the prompt, combined in the LCM form, one DDIM step.
    torch::Tensor x_prev;
    {
      std::optional<train::AutocastScope> cast;
      std::optional<AutocastOff> off;
      if (m.teacher_autocast) {
        cast.emplace(m.device, *m.teacher_autocast);
      } else {
        off.emplace(m.device);
      }
      // The script feeds the teacher in the weight dtype under autocast; without autocast it
      // gets its own weights' dtype.
      const auto teacher_dtype =
          m.teacher_autocast ? m.weight_dtype : m.teacher->parameters().front().scalar_type();
      const auto teacher_in = noisy.to(teacher_dtype);
      const auto uncond = m.uncond_embeds.slice(0, 0, bsz).to(teacher_dtype);
      const auto cond_out = m.teacher->forward(teacher_in, start_t, embeds.to(teacher_dtype));
      const auto cond_x0 = schedulers::lcm_predicted_original_sample(cond_out, start_t, noisy, ptype, m.schedules);
      const auto cond_eps = schedulers::lcm_predicted_noise(cond_out, start_t, noisy, ptype, m.schedules);
      const auto uncond_out = m.teacher->forward(teacher_in, start_t, uncond);
      const auto uncond_x0 = schedulers::lcm_predicted_original_sample(uncond_out, start_t, noisy, ptype, m.schedules);
      const auto uncond_eps = schedulers::lcm_predicted_noise(uncond_out, start_t, noisy, ptype, m.schedules);
      const auto x0 = cond_x0 + w * (cond_x0 - uncond_x0);
      const auto eps = cond_eps + w * (cond_eps - uncond_eps);
      x_prev = m.solver->ddim_step(x0, eps, index);
    }
    // 7. The target's prediction at t_end on x_prev (LCM-LoRA: the student itself).
    auto& target_unet = m.target ? m.target : m.unet;
    const auto target_out = target_unet->forward(x_prev.to(torch::kFloat32), end_t, embeds.to(torch::kFloat32), w_emb);
    const auto target_x0 = schedulers::lcm_predicted_original_sample(target_out, end_t, x_prev, ptype, m.schedules);
    target = per_sample(end.c_skip, dims) * x_prev + per_sample(end.c_out, dims) * target_x0;
  }
  // 8. The distillation loss.
  train::MicroResult result;
  result.loss = lcm_loss(model_pred, target, m.loss_type, m.huber_c);
  return result;
}

models::UNet2DConditionModel load_lcm_student(const fs::path& teacher_dir, int64_t cond_dim, torch::Device device,
                                              const std::string& variant) {
  const auto config_file = teacher_dir / "config.json";
  auto cfg = config::UNet2DConditionConfig::from_file(config_file);
  if (!cfg.time_cond_proj_dim) cfg.time_cond_proj_dim = static_cast<int>(cond_dim);
  cfg.validate(config_file.string());
  models::UNet2DConditionModel unet(cfg);  // default initialisation, as diffusers' constructor
  models::LoadOptions o;
  o.device = device;
  o.allow_missing = true;
  const auto report = models::load_parameters(*unet, models::component_weight_files(teacher_dir, variant), o);
  for (const auto& key : report.kept) {
    if (key != "time_embedding.cond_proj.weight") {
      throw Error(teacher_dir.string(), tensor_key(key), "missing from the teacher's weights");
    }
  }
  return unet;
}

models::UNet2DConditionModel copy_unet(const models::UNet2DConditionModel& unet) {
  // from_config + load_state_dict, as the script builds its target (the constructor's default
  // initialisation draws from the global generator there too).
  models::UNet2DConditionModel copy(unet->config);
  torch::NoGradGuard no_grad;
  copy->to(unet->parameters().front().device());
  const auto from = unet->named_parameters();
  for (auto& item : copy->named_parameters()) {
    item.value().copy_(from[item.key()]);
    item.value().set_requires_grad(false);
  }
  copy->eval();
  return copy;
}

namespace {

// The run's own settings, read from the values (the rest go to TrainerOptions and DataOptions).
struct LcmSettings : CommonSettings {
  double w_min = 5.0, w_max = 15.0;
  int num_ddim_timesteps = 50;
  LcmLossType loss_type = LcmLossType::kL2;
  double huber_c = 0.001;
  int unet_time_cond_proj_dim = 256;
  int vae_encode_batch_size = 32;
  double timestep_scaling_factor = 10.0;
  double ema_decay = 0.95;
  bool cast_teacher_unet = false;
  std::string teacher_autocast = "auto";
  int validation_steps = 200;
  std::optional<std::string> validation_prompts_file;
  double lora_dropout = 0.0;
};

LcmSettings read_lcm_settings(config::FieldReader& r) {
  LcmSettings s;
  static_cast<CommonSettings&>(s) = read_common_settings(r, "pretrained_teacher_model");
  r("w_min", s.w_min);
  r("w_max", s.w_max);
  r("num_ddim_timesteps", s.num_ddim_timesteps);
  std::string loss = "l2";
  r("loss_type", loss);
  s.loss_type = lcm_loss_type(loss);
  r("huber_c", s.huber_c);
  r("unet_time_cond_proj_dim", s.unet_time_cond_proj_dim);
  r("vae_encode_batch_size", s.vae_encode_batch_size);
  r("timestep_scaling_factor", s.timestep_scaling_factor);
  r("ema_decay", s.ema_decay);
  r("cast_teacher_unet", s.cast_teacher_unet);
  r("teacher_autocast", s.teacher_autocast);
  r("validation_steps", s.validation_steps);
  r("validation_prompts_file", s.validation_prompts_file);
  r("lora_dropout", s.lora_dropout);
  double empty_share = 0;
  r("proportion_empty_prompts", empty_share);
  if (!(empty_share >= 0 && empty_share <= 1)) {
    throw UsageError(fmt::format("--proportion_empty_prompts must be in [0, 1], got {}", empty_share));
  }
  if (empty_share > 0) {
    spdlog::warn("--proportion_empty_prompts {}: no effect (the script checks its range and then trains on every "
                 "caption; lisadiff does the same)", empty_share);
  }
  if (!(s.w_min <= s.w_max)) {
    throw UsageError(fmt::format("--w_min {} is above --w_max {}: w is drawn from [w_min, w_max]", s.w_min, s.w_max));
  }
  if (s.num_ddim_timesteps < 1) throw UsageError("--num_ddim_timesteps must be at least 1");
  if (!(s.huber_c > 0)) throw UsageError(fmt::format("--huber_c must be positive, got {}", s.huber_c));
  if (s.unet_time_cond_proj_dim < 4) {
    throw UsageError(fmt::format("--unet_time_cond_proj_dim must be at least 4, got {}", s.unet_time_cond_proj_dim));
  }
  if (s.vae_encode_batch_size < 1) throw UsageError("--vae_encode_batch_size must be at least 1");
  if (!(s.timestep_scaling_factor > 0)) {
    throw UsageError(fmt::format("--timestep_scaling_factor must be positive, got {}", s.timestep_scaling_factor));
  }
  if (!(s.ema_decay >= 0 && s.ema_decay <= 1)) {
    throw UsageError(fmt::format("--ema_decay must be in [0, 1], got {}", s.ema_decay));
  }
  if (s.validation_steps < 1) throw UsageError("--validation_steps must be at least 1");
  if (!(s.lora_dropout >= 0 && s.lora_dropout < 1)) {
    throw UsageError(fmt::format("--lora_dropout must be in [0, 1), got {}", s.lora_dropout));
  }
  return s;
}

// The script's teacher autocast: the device's default autocast dtype (torch.autocast(device)):
// float16 on CUDA, bfloat16 on a CPU.
std::optional<torch::ScalarType> teacher_autocast_of(const std::string& name, torch::Device device) {
  if (name == "no") return std::nullopt;
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  return device.is_cuda() ? torch::kFloat16 : torch::kBFloat16;
}

// The validation prompts: one per non-empty line of the file, or the script's four.
std::vector<std::string> read_validation_prompts(const std::optional<std::string>& file) {
  if (!file) return lcm_validation_prompts();
  std::ifstream in(*file);
  if (!in) throw UsageError("--validation_prompts_file: cannot read " + *file);
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty()) throw UsageError("--validation_prompts_file: " + *file + " holds no prompt");
  return prompts;
}

// The script's epoch: max_train_samples split over processes and loader workers
// (ceil(max_train_samples / (B N W)) batches per worker); -1 without max_train_samples.
int64_t nominal_batches_per_epoch(const config::Json& values, int world_size) {
  if (values.at("max_train_samples").is_null()) return -1;
  const int64_t samples = values.at("max_train_samples").get<int64_t>();
  const int64_t batch = values.at("train_batch_size").get<int64_t>();
  const int64_t workers = std::max<int64_t>(1, values.at("dataloader_num_workers").get<int64_t>());
  if (samples < 1 || batch < 1) return -1;  // DataOptions reports these
  const int64_t per_worker_batch = batch * world_size * workers;
  return (samples + per_worker_batch - 1) / per_worker_batch * workers;
}

}  // namespace

void run_lcm_distill(const ParsedArgs& parsed) {
  const auto table = lcm_distill_flags();
  auto run = start_run(table, parsed, "pretrained_teacher_model");
  auto& values = run.values;
  const auto& source = run.source;
  values["scale_lr"] = false;  // the script defines --scale_lr and never reads it (a note says so)
  config::FieldReader reader(values, source);
  const auto settings = reading_values([&] { return read_lcm_settings(reader); });
  check_resolution(values);
  if (!values.at("train_shards_path_or_url").is_string()) {
    throw UsageError("--train_shards_path_or_url is required: the webdataset shards to distil on");
  }
  auto data_options = data::DataOptions::for_recipe(data::ExampleKind::kT2i);
  reading_values([&] { data_options.read(reader); });  // validates too
  const torch::Device device = training_device(settings.allow_tf32);
  const auto dist = join_process_group(data_options, device);
  data::DataLoader loader(data_options);
  if (values.at("max_train_steps").is_null() && values.at("max_train_samples").is_null()) {
    throw UsageError("--max_train_steps or --max_train_samples is required: the script's epoch is max_train_samples "
                     "samples of the endless shard stream");
  }
  const int64_t nominal = nominal_batches_per_epoch(values, data_options.world_size);
  derive_step_count(values, reader, nominal >= 0 ? nominal : loader.batches_per_epoch(), data_options.world_size);
  auto options = reading_values([&] { return train::TrainerOptions::read(reader); });
  options.recipe = "lcm_distill";
  options.group = dist.group;
  options.main_process = dist.env.rank == 0;
  finish_reading(table, reader);
  options.lora.dropout = settings.lora_dropout;
  const bool lora = options.method == train::TrainMethod::kLora;
  if (lora && parsed.values.contains("ema_decay")) {
    spdlog::info("--ema_decay: no effect with --method lora (as the LCM-LoRA script: the target is the adapted "
                 "student itself, no EMA)");
  }

  // Models: the text encoder and VAE frozen in the weight dtype; the teacher frozen in float32
  // (the weight dtype with --cast_teacher_unet); the student and target in float32.
  const auto weight_dtype = weight_dtype_of(options.mixed_precision);
  const auto frozen = frozen_load_options(weight_dtype, device);
  const auto teacher_dir = run.base / "unet";
  auto tokenizer = models::CLIPTokenizer::from_folder(run.base / "tokenizer");
  auto text_encoder = models::load_clip_text(run.base / "text_encoder", frozen, settings.variant);
  auto vae = models::load_vae(run.base / "vae", frozen, settings.variant);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(run.base / "scheduler");
  if (settings.num_ddim_timesteps > schedule.num_train_timesteps()) {
    throw UsageError(fmt::format("--num_ddim_timesteps {} is above the teacher's num_train_timesteps {}",
                                 settings.num_ddim_timesteps, schedule.num_train_timesteps()));
  }
  const auto solver = schedulers::LcmDdimSolver(schedule.alphas_cumprod(), settings.num_ddim_timesteps).to(device);
  auto teacher_options = frozen;
  teacher_options.dtype = settings.cast_teacher_unet ? weight_dtype : torch::kFloat32;
  auto teacher = models::load_unet(teacher_dir, teacher_options, settings.variant);
  teacher->eval();
  text_encoder->eval();
  vae->eval();

  // The script seeds everything first; lisadiff seeds right before the models whose
  // initialisation draws: the student's new cond_proj (and the target's constructor), or the
  // LoRA adapters.
  models::UNet2DConditionModel unet{nullptr}, target{nullptr};
  if (lora) {
    models::LoadOptions trained;
    trained.device = device;
    trained.map_file = device.is_cpu();  // the base weights stay frozen: views of the file
    unet = models::load_unet(teacher_dir, trained, settings.variant);
    torch::manual_seed(static_cast<uint64_t>(settings.seed));  // the Trainer attaches the adapters
  } else {
    torch::manual_seed(static_cast<uint64_t>(settings.seed));
    unet = load_lcm_student(teacher_dir, settings.unet_time_cond_proj_dim, device, settings.variant);
    target = copy_unet(unet);
  }
  train::Trainer trainer(train::trained_unet(unet), options);
  trainer.add_state(loader_state_part(loader));
  if (target) {
    train::StatePart part;
    part.name = "unet_target";
    part.save_files = [&](const fs::path& dir) { models::save_unet(*target, dir / "unet_target"); };
    part.load_files = [&](const fs::path& dir) {
      models::LoadOptions o;
      o.convert_module = false;
      models::load_parameters(*target, models::component_weight_files(dir / "unet_target", ""), o);
    };
    trainer.add_state(part);
  }

  LcmDistillModels m;
  m.tokenizer = &tokenizer;
  m.text_encoder = text_encoder;
  m.vae = vae;
  m.teacher = teacher;
  m.unet = unet;
  m.target = target;
  m.schedule = &schedule;
  m.solver = &solver;
  const auto schedules = schedulers::alpha_sigma_schedules(schedule.alphas_cumprod());
  m.schedules = {schedules.alphas.to(device), schedules.sigmas.to(device)};
  {
    torch::NoGradGuard no_grad;
    const std::vector<std::string> empty(static_cast<std::size_t>(data_options.batch_size), "");
    m.uncond_embeds = text_encoder->forward(tokenizer.tokenize(empty).input_ids.to(device)).last_hidden_state;
  }
  m.w_min = settings.w_min;
  m.w_max = settings.w_max;
  m.loss_type = settings.loss_type;
  m.huber_c = settings.huber_c;
  m.timestep_scaling = settings.timestep_scaling_factor;
  m.vae_encode_batch_size = settings.vae_encode_batch_size;
  m.w_embedding_dim = lora ? 0 : unet->config.time_cond_proj_dim.value_or(0);
  m.teacher_autocast = teacher_autocast_of(settings.teacher_autocast, device);
  m.device = device;
  m.weight_dtype = weight_dtype;

  // Validation: the LCM scheduler in 4 steps, 4 images per prompt from one call; the target,
  // then the online student (LCM-LoRA: the adapted student at guidance 1).
  pipelines::Validator validator(pipelines::components_for_validation(run.base, tokenizer, text_encoder, vae), trainer,
                                 settings.validation_steps);
  pipelines::ValidationSpec spec;
  spec.prompts = read_validation_prompts(settings.validation_prompts_file);
  spec.images_per_prompt = 4;
  spec.one_call_per_prompt = true;
  spec.num_inference_steps = 4;
  spec.guidance_scale = lora ? 1.0 : 7.5;
  spec.scheduler = "LCMScheduler";
  spec.seed = static_cast<uint64_t>(settings.seed);
  const auto validate = [&](int64_t step) {
    if (target) {
      auto t = spec;
      t.name = "target";
      validator.run(step, target, t);
    }
    auto online = spec;
    online.name = "online";
    validator.run(step, unet, online);
  };
  trainer.resume();

  const io::NamedTensors target_pairs = target ? target->named_parameters().pairs() : io::NamedTensors{};
  const io::NamedTensors student_pairs = unet->named_parameters().pairs();
  trainer.train([&](const train::MicroBatch&) { return lcm_distill_step(m, loader.next()); },
                [&](int64_t step) {
                  // The target follows the student after every optimizer step (no warmup).
                  if (target) train::ema_update_(target_pairs, student_pairs, settings.ema_decay);
                  if (validator.due(step)) validate(step);
                });
  trainer.save_final();
  if (!options.main_process) return;
  if (lora) {
    // The LCM-LoRA script's output: output_dir/unet_lora/pytorch_lora_weights.safetensors.
    trainer.lora()->save(options.output_dir / "unet_lora");
    spdlog::info("wrote the LCM-LoRA weights to {}", (options.output_dir / "unet_lora" / train::Lora::kFileName).string());
    return;
  }
  models::save_unet(*target, options.output_dir / "unet_target");
  spdlog::info("wrote the online student to {} and the target to {}", (options.output_dir / "unet").string(),
               (options.output_dir / "unet_target").string());
}

}  // namespace lisadiff::recipes
