#include "tools/train_vae.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/error.h"
#include "core/usage_error.h"
#include "data/loader.h"
#include "io/atomic_file.h"
#include "io/pipeline_folder.h"
#include "models/state.h"
#include "models/vae.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kScalingImages = 512;  // images whose latents set scaling_factor

void check_options(const TrainVaeOptions& o) {
  if (o.pipeline.empty() || !fs::is_directory(o.pipeline / "vae")) {
    throw Error(o.pipeline.string(), "not a pipeline folder with a vae/ (make one with lisadiff init-pipeline)");
  }
  if (o.train_data_dir.empty() == o.train_shards.empty()) {
    throw UsageError("--train_data_dir / --train_shards: give exactly one");
  }
  if (o.resolution < 0 || o.resolution % 8 != 0) {
    throw UsageError("--resolution: expected a positive multiple of 8, got " + std::to_string(o.resolution));
  }
  if (o.batch_size < 1) throw UsageError("--train_batch_size: expected at least 1");
  if (o.max_train_steps < 1) throw UsageError("--max_train_steps: expected at least 1");
  if (!(o.learning_rate > 0)) throw UsageError("--learning_rate: expected a positive number");
  if (!(o.kl_weight >= 0)) throw UsageError("--kl_weight: expected a number >= 0");
  if (o.log_every < 1) throw UsageError("--log_every: expected at least 1");
  if (o.out.empty()) throw UsageError("--out: an output folder is required");
  if (fs::exists(o.out) && !o.overwrite) throw Error(o.out.string(), "exists already (pass --overwrite to replace it)");
  if (fs::exists(o.out) && fs::equivalent(o.out, o.pipeline)) {
    throw Error(o.out.string(), "is the input pipeline; write the trained one elsewhere");
  }
}

// 1 / std of the latent means of up to kScalingImages images from `loader`.
double latent_scaling(models::AutoencoderKL& vae, data::DataLoader& loader) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> means;
  std::int64_t n = 0;
  while (n < kScalingImages) {
    auto batch = loader.next();
    means.push_back(vae->encode(batch.images.at(0)).mean.to(torch::kFloat64));
    n += batch.size();
  }
  const double std = torch::cat(means).std().item<double>();
  if (!(std > 0) || !std::isfinite(std)) throw Error("train-vae: the latents have no spread (std " + std::to_string(std) + ")");
  return 1.0 / std;
}

}  // namespace

TrainVaeSummary train_vae(const TrainVaeOptions& o) {
  check_options(o);
  const auto start = std::chrono::steady_clock::now();
  torch::manual_seed(o.seed);
  auto vae = models::load_vae(o.pipeline / "vae");
  vae->train();

  auto data_options = data::DataOptions::for_text_to_image();
  data_options.train_data_dir = o.train_data_dir;
  data_options.train_shards = o.train_shards;
  data_options.transform.resolution = o.resolution > 0 ? o.resolution : vae->config.sample_size.at(0);
  data_options.batch_size = o.batch_size;
  data_options.seed = o.seed;
  data_options.drop_last = true;
  data_options.validate("train-vae");
  data::DataLoader loader(data_options);
  spdlog::info("train-vae: {} ({} parameters), {} steps of batch {} at {} px", o.pipeline.string(),
               [&] {
                 std::int64_t n = 0;
                 for (const auto& p : vae->parameters()) n += p.numel();
                 return n;
               }(),
               o.max_train_steps, o.batch_size, data_options.transform.resolution);

  torch::optim::AdamW optimizer(vae->parameters(), torch::optim::AdamWOptions(o.learning_rate).weight_decay(0.0));
  auto generator = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  TrainVaeSummary summary;
  double window = 0;
  int in_window = 0;
  for (std::int64_t step = 1; step <= o.max_train_steps; ++step) {
    auto batch = loader.next();
    const auto& x = batch.images.at(0);
    auto posterior = vae->encode(x);
    auto reconstruction = vae->decode(posterior.sample(generator));
    auto mse = torch::mse_loss(reconstruction, x);
    auto loss = mse + o.kl_weight * posterior.kl().mean();
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    const double value = mse.item<double>();
    if (!std::isfinite(value)) throw Error("train-vae: the loss is " + std::to_string(value) + " at step " + std::to_string(step) + "; try a lower --learning_rate");
    if (step == 1) summary.first_loss = value;
    summary.last_loss = value;
    window += value, ++in_window;
    if (step % o.log_every == 0 || step == o.max_train_steps) {
      spdlog::info("train-vae: step {}/{}  reconstruction mse {:.5f}", step, o.max_train_steps, window / in_window);
      window = 0, in_window = 0;
    }
  }
  vae->eval();
  summary.scaling_factor = latent_scaling(vae, loader);
  vae->config.scaling_factor = summary.scaling_factor;

  const fs::path out = fs::absolute(o.out);
  const fs::path tmp = out.parent_path() / ("." + out.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    for (const auto& entry : fs::directory_iterator(o.pipeline)) {
      if (entry.path().filename() == "vae") continue;
      fs::copy(entry.path(), tmp / entry.path().filename(), fs::copy_options::recursive);
    }
    fs::create_directories(tmp / "vae");
    auto config = vae->config.to_json();
    config["_class_name"] = "AutoencoderKL";
    config["_diffusers_version"] = models::kDiffusersFormatVersion;
    io::write_file_atomic(tmp / "vae" / "config.json", config.dump(2) + "\n");
    models::save_parameters(*vae, tmp / "vae" / "diffusion_pytorch_model.safetensors");
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(tmp, out);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error(out.string(), std::string("cannot write: ") + e.code().message());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace lisadiff::tools
