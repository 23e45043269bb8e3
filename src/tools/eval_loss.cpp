#include "tools/eval_loss.h"

#include <chrono>

#include <torch/torch.h>

#include "core/error.h"
#include "core/usage_error.h"
#include "data/loader.h"
#include "pipelines/components.h"
#include "schedulers/ddpm.h"

namespace lisadiff::tools {

namespace fs = std::filesystem;

EvalLossSummary eval_loss(const EvalLossOptions& o) {
  if (o.train_data_dir.empty()) throw UsageError("--train_data_dir: a held-out image folder is required");
  if (o.batch_size < 1) throw UsageError("--batch_size: expected at least 1");
  if (o.repeats < 1) throw UsageError("--repeats: expected at least 1");
  if (o.max_samples == 0 || o.max_samples < -1) throw UsageError("--max_samples: expected a positive count (or -1: all)");
  if (o.resolution < 0 || o.resolution % 8 != 0) {
    throw UsageError("--resolution: expected a positive multiple of 8, got " + std::to_string(o.resolution));
  }
  const auto start = std::chrono::steady_clock::now();
  pipelines::PipelineLoadOptions lo;
  lo.unet = o.unet;
  lo.lora = o.lora;
  auto parts = pipelines::load_components(o.pipeline, lo);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(o.pipeline / "scheduler");

  auto data_options = data::DataOptions::for_text_to_image();
  data_options.train_data_dir = o.train_data_dir;
  const auto& sample_size = parts.unet->config.sample_size;
  if (o.resolution == 0 && !sample_size) throw Error("--resolution: the UNet's config has no sample_size; give one");
  data_options.transform.resolution = o.resolution > 0 ? o.resolution : sample_size->at(0) * parts.vae_scale_factor();
  data_options.transform.crop = data::ImageTransform::Crop::kCenter;
  data_options.transform.random_flip = false;
  data_options.shuffle = false;
  data_options.batch_size = o.batch_size;
  data_options.max_bad_share = 0;
  data_options.validate("eval-loss");
  data::DataLoader loader(data_options);
  const std::int64_t per_epoch = loader.batches_per_epoch();

  torch::NoGradGuard no_grad;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const int64_t steps = schedule.num_train_timesteps();
  double total = 0;
  EvalLossSummary summary;
  for (std::int64_t b = 0; b < per_epoch; ++b) {
    auto batch = loader.next();
    std::int64_t n = batch.size();
    if (o.max_samples > 0) n = std::min(n, o.max_samples - summary.images);
    if (n <= 0) break;
    const auto pixels = batch.images.at(0).slice(0, 0, n);
    const std::vector<std::string> texts(batch.texts.begin(), batch.texts.begin() + n);
    const auto latents = parts.vae->encode(pixels).mean * parts.vae->config.scaling_factor;
    const auto text = pipelines::encode_prompts(parts, texts, 1);
    for (int r = 0; r < o.repeats; ++r) {
      // One image at a time draws its timestep and noise: the stream does not depend on the batch.
      std::vector<torch::Tensor> ts, noises;
      for (std::int64_t i = 0; i < n; ++i) {
        ts.push_back(torch::randint(0, steps, {1}, generator, torch::kLong));
        noises.push_back(torch::randn(latents.sizes().slice(1), generator, torch::kFloat32).unsqueeze(0));
      }
      const auto t = torch::cat(ts), noise = torch::cat(noises);
      const auto noisy = schedule.add_noise(latents, noise, t);
      const auto prediction = parts.unet->forward(noisy, t, text);
      const auto target = schedule.training_target(latents, noise, t);
      total += torch::mse_loss(prediction, target, at::Reduction::Sum).item<double>() /
               static_cast<double>(prediction[0].numel());
      summary.draws += n;
    }
    summary.images += n;
  }
  if (summary.images == 0) throw Error(o.train_data_dir, "holds no image to evaluate");
  summary.loss = total / static_cast<double>(summary.draws);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace lisadiff::tools
