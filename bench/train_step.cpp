// bench_train_step: time and memory of one UNet training step, in four regimes, for
// comparison with the Python reference (scripts/bench_train_step.py, same inputs, same JSON):
//
//   full-classic  torch::optim::AdamW over every parameter; ordinary backward, then step()
//                 and zero_grad() (gradients set to none)
//   full-fused    FusedOptimizer over every parameter (each AdamW step inside the backward)
//   lora          Lora adapters (peft semantics) + FusedOptimizer over the adapters
//   lisa          Lisa, tensor units (first and last tensor always on + n drawn)
//
// Loss: plain denoising MSE, mse(unet(latents + noise, t, context), noise), on seeded random
// inputs: latents and noise [B, 4, H, H], t in [0, 1000), context [B, 77, cross_attention_dim].
// The random stream is torch's default CPU generator, seeded after loading, so the Python
// reference draws the same inputs (and the same LoRA initialisation) and its first loss must
// equal ours.
//
// Time: wall clock per step (forward, backward, optimizer), and the process's CPU time
// (user + system, all threads) per step, which other processes on the machine disturb less.
// Memory: RSS (VmRSS) at start, after loading the UNet, and before the first training step
// (with RssAnon / RssFile: diffusers leaves the weights in a copy-on-write mapping of the
// file, so on the Python side they are file pages until written); the peak over the training
// steps (VmHWM, reset through /proc/self/clear_refs before the first step) and over the whole
// process (getrusage ru_maxrss).
//
//   bench_train_step --pipeline DIR --regime lisa [--steps 5 --warmup 2 --batch 1 --latent 32]
//                    [--bf16-frozen | --fp16] [--json OUT]
// --fp16 (fused regimes) runs the forward under float16 autocast and the optimizer's dynamic
// loss scaling (each hook unscales and checks its own gradient): it measures that overhead.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <malloc.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/error.h"
#include "core/exit_codes.h"
#include "core/logging.h"
#include "io/atomic_file.h"
#include "models/unet.h"
#include "train/fused_optimizer.h"
#include "train/lisa.h"
#include "train/lora.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace {

using Clock = std::chrono::steady_clock;
using lisadiff::train::proc_status_bytes;

// Resets VmHWM to the current RSS (Linux >= 4.0). Returns whether it worked.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// User + system CPU time of the whole process (all threads), seconds.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

int64_t ru_maxrss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;  // kilobytes on Linux
}

// The 1-minute load average (other processes on the machine slow the steps down).
double load_average() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int64_t classic_state_bytes(torch::optim::AdamW& opt) {
  int64_t bytes = 0;
  for (const auto& [key, state] : opt.state()) {
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*state);
    for (const auto& t : {s.exp_avg(), s.exp_avg_sq(), s.max_exp_avg_sq()}) {
      if (t.defined()) bytes += static_cast<int64_t>(t.nbytes());
    }
  }
  return bytes;
}

struct Args {
  std::string pipeline, regime = "lisa", json_out, log_level = "warn";
  int steps = 5, warmup = 2, batch = 1, latent = 32, lora_rank = 4, threads = 0;
  int64_t lisa_n = -1, lisa_interval = 20;
  bool gradient_checkpointing = false, use_8bit_adam = false, bf16_frozen = false, fp16 = false;
  uint64_t seed = 0;
};

int run(const Args& a) {
  using namespace lisadiff;
  if (a.threads > 0) at::set_num_threads(a.threads);
  if (a.bf16_frozen && (a.regime == "full-classic" || a.regime == "full-fused")) {
    throw Error("--bf16-frozen needs a regime with frozen weights (lora, lisa)");
  }
  if (a.fp16 && a.regime == "full-classic") {
    throw Error("--fp16 needs a fused regime (full-fused, lora, lisa): their loss scaling is measured");
  }
  if (a.fp16 && a.bf16_frozen) throw Error("--fp16 and --bf16-frozen exclude each other");
  if (a.use_8bit_adam && a.regime == "full-classic") {
    throw Error("--use-8bit-adam needs a fused regime (full-fused, lora, lisa); full-classic is torch::optim::AdamW");
  }
  nlohmann::json r;
  r["side"] = "cpp";
  r["regime"] = a.regime;
  r["pipeline"] = a.pipeline;
  r["steps"] = a.steps;
  r["warmup"] = a.warmup;
  r["batch"] = a.batch;
  r["latent"] = a.latent;
  r["gradient_checkpointing"] = a.gradient_checkpointing;
  r["use_8bit_adam"] = a.use_8bit_adam;
  r["fp16"] = a.fp16;
  r["seed"] = a.seed;
  r["threads"] = at::get_num_threads();
  r["interop_threads"] = at::get_num_interop_threads();
  r["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                       std::to_string(TORCH_VERSION_PATCH);
  r["rss_start_bytes"] = proc_status_bytes("VmRSS");

  const auto t_load = Clock::now();
  auto unet = models::load_unet(std::filesystem::path(a.pipeline) / "unet");
  r["load_s"] = std::chrono::duration<double>(Clock::now() - t_load).count();
  unet->train();
  unet->set_gradient_checkpointing(a.gradient_checkpointing);
  malloc_trim(0);  // both sides do this: the loader's freed buffers are not the model's memory
  r["rss_loaded_bytes"] = proc_status_bytes("VmRSS");

  int64_t total = 0;
  for (const auto& p : unet->parameters()) total += p.numel();
  r["total_params"] = total;
  r["param_tensors"] = unet->parameters().size();

  torch::manual_seed(a.seed);
  train::FusedOptimizerOptions fo;
  fo.adamw = {1e-4, 0.9, 0.999, 1e-8, 1e-2};
  fo.use_8bit_adam = a.use_8bit_adam;
  fo.loss_scaling.enabled = a.fp16;  // GradScaler's dynamic scale, checked per tensor in the hooks
  std::unique_ptr<torch::optim::AdamW> classic;
  std::unique_ptr<train::FusedOptimizer> fused;
  std::unique_ptr<train::Lora> lora;
  std::unique_ptr<train::Lisa> lisa;
  if (a.regime == "full-classic") {
    classic = std::make_unique<torch::optim::AdamW>(
        unet->parameters(), torch::optim::AdamWOptions(1e-4).betas({0.9, 0.999}).eps(1e-8).weight_decay(1e-2));
  } else if (a.regime == "full-fused") {
    // The parameters themselves (models::parameters_of detaches).
    fused = std::make_unique<train::FusedOptimizer>(train::named_parameters(*unet), fo);
  } else if (a.regime == "lora") {
    train::LoraOptions lo;
    lo.rank = a.lora_rank;
    lora = std::make_unique<train::Lora>(*unet, lo);
    fused = std::make_unique<train::FusedOptimizer>(lora->parameters(), fo);
    if (a.bf16_frozen) train::store_frozen_weights(train::named_parameters(*unet), torch::kBFloat16);  // as the Trainer
  } else {
    train::LisaOptions lo;
    lo.n_active = a.lisa_n;
    lo.interval = a.lisa_interval;
    lo.seed = a.seed;
    if (a.bf16_frozen) lo.frozen_dtype = torch::kBFloat16;  // the precision switch
    lisa = std::make_unique<train::Lisa>(*unet, lo, fo);
    r["active_names"] = lisa->active_names();
  }

  // Inputs, drawn in this order for every step (the Python side does the same).
  const auto& cfg = unet->config;
  const int64_t ctx_dim = cfg.cross_attention_dims.front();
  struct Batch {
    torch::Tensor latents, noise, timesteps, context;
  };
  std::vector<Batch> batches;
  for (int k = 0; k < a.warmup + a.steps; ++k) {
    Batch b;
    b.latents = torch::randn({a.batch, cfg.in_channels, a.latent, a.latent});
    b.noise = torch::randn({a.batch, cfg.out_channels, a.latent, a.latent});
    b.timesteps = torch::randint(0, 1000, {a.batch}, torch::kLong);
    b.context = torch::randn({a.batch, 77, ctx_dim});
    batches.push_back(b);
  }

  int64_t trainable = 0, stored_bytes = 0;
  for (const auto& p : unet->parameters()) trainable += p.requires_grad() ? p.numel() : 0;
  for (const auto& p : unet->parameters()) stored_bytes += static_cast<int64_t>(p.nbytes());
  r["param_bytes"] = stored_bytes;  // as stored for training (--bf16-frozen halves the frozen ones)
  r["bf16_frozen"] = a.bf16_frozen;
  if (lora) trainable = lora->parameter_count();
  r["trainable_params"] = trainable;

  malloc_trim(0);
  r["rss_before_train_bytes"] = proc_status_bytes("VmRSS");
  r["rss_anon_before_train_bytes"] = proc_status_bytes("RssAnon");
  r["rss_file_before_train_bytes"] = proc_status_bytes("RssFile");
  const bool reset = reset_peak_rss();
  r["loadavg_start"] = load_average();
  std::vector<double> times, cpu_times, losses;
  for (int k = 0; k < a.warmup + a.steps; ++k) {
    const auto& b = batches[static_cast<std::size_t>(k)];
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    torch::Tensor pred;
    {
      train::AutocastScope autocast(torch::kCPU, a.bf16_frozen ? torch::kBFloat16
                                                 : a.fp16      ? torch::kHalf
                                                               : torch::kFloat32);
      pred = unet->forward(b.latents + b.noise, b.timesteps, b.context);
    }
    auto loss = torch::mse_loss(pred.to(torch::kFloat32), b.noise);
    const double scale = classic ? 1.0 : (lisa ? lisa->optimizer() : *fused).loss_scale();
    (scale == 1.0 ? loss : loss * scale).backward();
    if (classic) {
      classic->step();
      classic->zero_grad(true);
    } else if (lisa) {
      lisa->step();
    } else {
      fused->finish_step();
    }
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const double dc = cpu_seconds() - c0;
    losses.push_back(loss.item<double>());
    if (k >= a.warmup) {
      times.push_back(dt);
      cpu_times.push_back(dc);
    }
    std::fprintf(stderr, "[bench_train_step] %s step %d/%d%s: %.3f s, loss %.6f\n", a.regime.c_str(), k + 1,
                 a.warmup + a.steps, k < a.warmup ? " (warmup)" : "", dt, losses.back());
  }
  r["train_peak_rss_bytes"] = reset ? nlohmann::json(proc_status_bytes("VmHWM")) : nlohmann::json(nullptr);
  r["peak_rss_bytes"] = ru_maxrss_bytes();
  r["rss_anon_end_bytes"] = proc_status_bytes("RssAnon");
  r["rss_file_end_bytes"] = proc_status_bytes("RssFile");
  r["loadavg_end"] = load_average();
  r["optimizer_state_bytes"] = classic ? classic_state_bytes(*classic) : (lisa ? lisa->optimizer() : *fused).state_bytes();
  r["step_times_s"] = times;
  r["losses"] = losses;
  r["step_mean_s"] = times.empty() ? 0.0 : std::accumulate(times.begin(), times.end(), 0.0) / times.size();
  r["step_median_s"] = median(times);
  r["step_min_s"] = times.empty() ? 0.0 : *std::min_element(times.begin(), times.end());
  r["step_cpu_times_s"] = cpu_times;
  r["step_cpu_median_s"] = median(cpu_times);

  std::printf("%s\n", r.dump(2).c_str());
  if (!a.json_out.empty()) io::write_file_atomic(a.json_out, r.dump(2) + "\n");
  return exit_code::kOk;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lisadiff;
  Args a;
  CLI::App app{"Time and memory of UNet training steps (compare with scripts/bench_train_step.py)",
               "bench_train_step"};
  app.add_option("--pipeline", a.pipeline, "Pipeline folder (its unet/ is loaded)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--regime", a.regime, "full-classic, full-fused, lora or lisa")
      ->check(CLI::IsMember({"full-classic", "full-fused", "lora", "lisa"}))
      ->capture_default_str();
  app.add_option("--steps", a.steps, "Timed steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--warmup", a.warmup, "Untimed steps before them")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--batch", a.batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--latent", a.latent, "Latent height and width")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lisa-n", a.lisa_n, "LISA: tensors drawn besides the first and last (default: rate 8 / tensors)");
  app.add_option("--lisa-interval", a.lisa_interval, "LISA: re-draw every this many steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--lora-rank", a.lora_rank, "LoRA rank")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_flag("--gradient-checkpointing", a.gradient_checkpointing, "Checkpoint every resnet and transformer block");
  app.add_flag("--bf16-frozen", a.bf16_frozen,
               "bfloat16 autocast, frozen weights stored in bfloat16 (LISA's precision switch; LoRA's base)");
  app.add_flag("--fp16", a.fp16, "float16 autocast with dynamic loss scaling (fused regimes)");
  app.add_flag("--use-8bit-adam", a.use_8bit_adam, "8-bit block-wise AdamW moments (fused regimes)");
  app.add_option("--seed", a.seed, "Seed of the inputs, the LoRA init and the LISA draw")->capture_default_str();
  app.add_option("--threads", a.threads, "Intra-op threads (default: LibTorch's)")->check(CLI::NonNegativeNumber);
  app.add_option("--json", a.json_out, "Write the result to this file");
  app.add_option("--log-level", a.log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_code::kOk : exit_code::kUsage;
  }
  try {
    init_logging(a.log_level);
    return run(a);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kError;
  }
}
