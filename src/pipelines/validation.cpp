#include "pipelines/validation.h"

#include <chrono>
#include <random>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "config/scheduler_config.h"
#include "core/error.h"
#include "io/image_grid.h"
#include "io/png.h"
#include "pipelines/generation.h"

namespace lisadiff::pipelines {

namespace fs = std::filesystem;

namespace {

std::string number(double v) { return fmt::format("{:g}", v); }

// Puts a UNet into eval mode for generation and gives every submodule its own mode back.
class EvalScope {
 public:
  explicit EvalScope(torch::nn::Module& module) {
    for (const auto& m : module.modules(/*include_self=*/true)) modes_.emplace_back(m.get(), m->is_training());
    module.eval();
  }
  ~EvalScope() {
    for (auto& [m, training] : modes_) m->train(training);
  }
  EvalScope(const EvalScope&) = delete;
  EvalScope& operator=(const EvalScope&) = delete;

 private:
  std::vector<std::pair<torch::nn::Module*, bool>> modes_;
};

// The EMA weights in place of the trained ones for the scope (diffusers' store / copy_to /
// restore), the trained ones back after, also when generation throws.
class EmaScope {
 public:
  EmaScope(train::EMA* ema, const io::NamedTensors& params) : ema_(ema), params_(params) {
    if (!ema_) return;
    ema_->store(params_);
    ema_->copy_to(params_);
  }
  ~EmaScope() {
    if (ema_) ema_->restore(params_);
  }
  EmaScope(const EmaScope&) = delete;
  EmaScope& operator=(const EmaScope&) = delete;

 private:
  train::EMA* ema_;
  const io::NamedTensors& params_;
};

// The UNet in the components for the scope only (the Validator keeps no reference to it).
class UnetScope {
 public:
  UnetScope(Components& c, models::UNet2DConditionModel unet) : c_(c) { c_.unet = std::move(unet); }
  ~UnetScope() { c_.unet = models::UNet2DConditionModel{nullptr}; }
  UnetScope(const UnetScope&) = delete;
  UnetScope& operator=(const UnetScope&) = delete;

 private:
  Components& c_;
};

void check_spec(const ValidationSpec& spec, const models::UNet2DConditionModel& unet, int latent_channels,
                train::Trainer& trainer) {
  const std::string what = spec.name.empty() ? "validation" : "validation '" + spec.name + "'";
  if (spec.prompts.empty()) throw Error(what + ": no prompts");
  if (spec.images_per_prompt < 1) throw Error(what + ": images_per_prompt must be at least 1");
  if (spec.num_inference_steps < 1) throw Error(what + ": num_inference_steps must be at least 1");
  if (spec.use_ema && !trainer.ema()) {
    throw Error(what + ": validation with the EMA weights needs use_ema");
  }
  const bool edit = spec.source_image.defined();
  const int64_t channels = unet->config.in_channels;
  if (edit && channels != 2 * latent_channels) {
    throw Error(fmt::format("{}: a source image needs an InstructPix2Pix UNet ({} input channels); this one takes {}",
                            what, 2 * latent_channels, channels));
  }
  if (!edit && channels != latent_channels) {
    throw Error(fmt::format("{}: the UNet takes {} input channels (InstructPix2Pix): give a source image", what,
                            channels));
  }
  (void)negative_prompts_for(spec.prompts, spec.negative_prompts);
}

}  // namespace

std::string validation_file_name(int64_t step, const std::string& name) {
  return name.empty() ? fmt::format("step-{}.png", step) : fmt::format("step-{}-{}.png", step, name);
}

Components components_for_validation(const fs::path& folder, const models::CLIPTokenizer& tokenizer,
                                     models::CLIPTextModel text_encoder, models::AutoencoderKL vae) {
  Components c;
  c.folder = folder;
  c.tokenizer = std::make_unique<models::CLIPTokenizer>(tokenizer);
  const auto first = text_encoder->parameters().at(0);
  c.dtype = first.scalar_type();
  c.device = first.device();
  c.text_encoder = std::move(text_encoder);
  c.vae = std::move(vae);
  c.scheduler_source = folder / "scheduler" / "scheduler_config.json";
  c.scheduler_config = config::read_scheduler_json_file(c.scheduler_source);
  return c;
}

Validator::Validator(Components base, train::Trainer& trainer, int64_t validation_steps)
    : base_(std::move(base)), trainer_(trainer), every_(validation_steps),
      folder_(trainer.options().output_dir / "validation") {
  if (validation_steps < 0) throw Error(fmt::format("validation_steps must be positive, got {}", validation_steps));
  (void)base_.sampler();  // the folder's scheduler is checked now, not at the first validation
}

bool Validator::due(int64_t step) const {
  return every_ > 0 && step > 0 && step % every_ == 0 && trainer_.options().main_process;
}

ValidationResult Validator::run(int64_t step, models::UNet2DConditionModel unet, const ValidationSpec& spec) {
  ValidationResult result;
  if (!trainer_.options().main_process) return result;
  check_spec(spec, unet, static_cast<int>(base_.vae->config.latent_channels), trainer_);
  auto sampler = base_.sampler(spec.scheduler);
  const auto start = std::chrono::steady_clock::now();
  result.seed = spec.seed ? *spec.seed : (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
  auto generator = at::make_generator<at::CPUGeneratorImpl>(result.seed);
  const bool edit = spec.source_image.defined();
  spdlog::info("[validation] step {}{}: running ({} prompts x {} images, {} steps)", step,
               spec.name.empty() ? "" : " " + spec.name, spec.prompts.size(), spec.images_per_prompt,
               spec.num_inference_steps);
  const auto negatives = negative_prompts_for(spec.prompts, spec.negative_prompts);

  std::vector<torch::Tensor> images;
  {
    torch::NoGradGuard no_grad;
    UnetScope with_unet(base_, unet);
    EvalScope eval(*unet);
    EmaScope ema(spec.use_ema ? trainer_.ema() : nullptr, trainer_.trainable());
    const auto precision = trainer_.options().mixed_precision;
    std::optional<train::AutocastScope> autocast;
    if (precision != train::MixedPrecision::kNo) {
      autocast.emplace(unet->parameters().at(0).device(),
                       precision == train::MixedPrecision::kFp16 ? torch::kFloat16 : torch::kBFloat16);
    }
    for (std::size_t p = 0; p < spec.prompts.size(); ++p) {
      const int calls = spec.one_call_per_prompt ? 1 : spec.images_per_prompt;
      const int per_call = spec.one_call_per_prompt ? spec.images_per_prompt : 1;
      for (int i = 0; i < calls; ++i) {
        GenerationCall call;
        call.prompt = spec.prompts[p];
        call.negative_prompt = negatives[p];
        call.image = spec.source_image;
        call.guidance_scale = spec.guidance_scale;
        call.image_guidance_scale = spec.image_guidance_scale;
        call.num_images = per_call;
        call.num_inference_steps = spec.num_inference_steps;
        call.height = spec.height;
        call.width = spec.width;
        call.generator = generator;
        const auto out = generate(base_, *sampler, call);
        for (int64_t k = 0; k < out.pixels.size(0); ++k) images.push_back(out.pixels[k].contiguous());
      }
    }
  }
  result.images = torch::stack(images);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // The grid: an edit's source first, then every image under its prompt.
  std::vector<io::RgbView> views;
  std::vector<std::string> captions;
  torch::Tensor source;
  if (edit) {
    source = spec.source_image.contiguous();
    views.push_back(io::rgb_view(source));
    captions.emplace_back("source image");
  }
  for (std::size_t i = 0; i < images.size(); ++i) {
    views.push_back(io::rgb_view(images[i]));
    captions.push_back(spec.prompts[i / static_cast<std::size_t>(spec.images_per_prompt)]);
  }
  io::GridOptions grid;
  grid.header = fmt::format("step {}{}: {} steps, {}, guidance {}{}{}", step, spec.name.empty() ? "" : " " + spec.name,
                            spec.num_inference_steps, sampler->class_name(), number(spec.guidance_scale),
                            edit ? ", image guidance " + number(spec.image_guidance_scale) : "",
                            spec.use_ema ? ", EMA weights" : "");
  const int count = static_cast<int>(views.size());
  const int columns = spec.images_per_prompt > 1 ? spec.images_per_prompt + (edit ? 1 : 0) : std::min(count, 4);
  const auto picture = io::captioned_grid(views, captions, columns, grid);
  const auto pixels = torch::from_blob(const_cast<std::uint8_t*>(picture.pixels.data()),
                                       {picture.height, picture.width, 3}, torch::kUInt8);
  fs::create_directories(folder_);
  const std::string file = validation_file_name(step, spec.name);
  result.grid = folder_ / file;
  io::write_png_with_text(result.grid, pixels,
                          {{"step", std::to_string(step)},
                           {"prompts", nlohmann::json(spec.prompts).dump()},
                           {"seed", std::to_string(result.seed)},
                           {"steps", std::to_string(spec.num_inference_steps)},
                           {"scheduler", sampler->class_name()},
                           {"guidance_scale", number(spec.guidance_scale)}});

  nlohmann::ordered_json event;
  if (!spec.name.empty()) event["name"] = spec.name;
  event["file"] = (fs::path("validation") / file).string();
  // Nested, so that `lisadiff plot` and the TensorBoard mirror (which take an event line's
  // numbers as metrics) do not plot seeds and image counts.
  nlohmann::ordered_json generation;
  generation["images"] = static_cast<int64_t>(images.size());
  generation["seed"] = result.seed;
  generation["seconds"] = result.seconds;
  generation["steps"] = spec.num_inference_steps;
  generation["scheduler"] = sampler->class_name();
  generation["weights"] = spec.use_ema ? "ema" : "live";
  event["generation"] = generation;
  trainer_.metrics().event(step, "validation", event);
  trainer_.metrics().add_image(spec.name.empty() ? "validation" : "validation/" + spec.name, pixels, step);
  spdlog::info("[validation] step {}{}: {} images in {:.1f} s -> {}", step, spec.name.empty() ? "" : " " + spec.name,
               images.size(), result.seconds, result.grid.string());
  return result;
}

}  // namespace lisadiff::pipelines
