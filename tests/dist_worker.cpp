// A training run of one recipe's step on the micro pipeline with stored random draws, for the
// data-parallel tests (tests/train/test_distributed.cpp): started as one process with the
// global batch, or by `lisadiff launch` as N processes, each of which takes its rank's slice
// of every global batch (rank r: samples [r B, (r + 1) B), B = global / N). The draws do not
// depend on the number of processes, so the two runs see the same samples and noise and must
// end with the same weights.
//
//   dist_worker --recipe lcm|ip2p|dpo --method lisa|full|lora --out DIR
//               [--global_batch 4] [--accumulation 1] [--steps 10] [--lisa_seed_per_rank]
//               [--checkpointing_steps N] [--resume latest] [--stop_after N] [--fused]
//
// Rank 0 writes DIR/metrics.jsonl (the Trainer's) and DIR/result.safetensors: the trained
// tensors ("trained.<name>") and, for lcm lisa/full, the target ("target.<name>").
#include <cstdlib>
#include <iostream>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/error.h"
#include "data/loader.h"
#include "io/safetensors.h"
#include "recipes/diffusion_dpo.h"
#include "recipes/instruct_pix2pix.h"
#include "recipes/lcm_distill.h"
#include "train/distributed.h"
#include "train/ema.h"
#include "train/trainer.h"

namespace {

using namespace lisadiff;
namespace fs = std::filesystem;

struct Args {
  std::string recipe = "lcm", method = "lisa", resume;
  fs::path out, pipeline;
  int global_batch = 4, accumulation = 1, steps = 10, checkpointing_steps = 1000;
  int64_t stop_after = -1;
  bool lisa_seed_per_rank = false, fused = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("dist_worker: " + k + " needs a value");
      return argv[++i];
    };
    if (k == "--recipe") a.recipe = value();
    else if (k == "--method") a.method = value();
    else if (k == "--out") a.out = value();
    else if (k == "--pipeline") a.pipeline = value();
    else if (k == "--global_batch") a.global_batch = std::stoi(value());
    else if (k == "--accumulation") a.accumulation = std::stoi(value());
    else if (k == "--steps") a.steps = std::stoi(value());
    else if (k == "--checkpointing_steps") a.checkpointing_steps = std::stoi(value());
    else if (k == "--resume") a.resume = value();
    else if (k == "--stop_after") a.stop_after = std::stoll(value());
    else if (k == "--lisa_seed_per_rank") a.lisa_seed_per_rank = true;
    else if (k == "--fused") a.fused = true;
    else throw Error("dist_worker: unknown argument " + k);
  }
  if (a.out.empty() || a.pipeline.empty()) throw Error("dist_worker: --out and --pipeline are required");
  return a;
}

// Rows [r B, (r + 1) B) of a tensor whose first dimension is the global batch.
torch::Tensor share(const torch::Tensor& t, int rank, int64_t b) { return t.slice(0, rank * b, (rank + 1) * b); }

int run(const Args& a) {
  const auto env = train::DistEnv::from_environment();
  std::shared_ptr<train::ProcessGroup> group;
  if (env.distributed()) group = train::ProcessGroup::create(env, torch::kCPU);
  if (a.global_batch % env.world_size != 0) throw Error("dist_worker: the global batch must divide by the processes");
  const int64_t B = a.global_batch / env.world_size, G = a.global_batch;
  const int rank = env.rank;
  const int resolution = 32, seed = 7, micro = a.steps * a.accumulation;
  const int64_t latent = resolution / 2;
  const std::vector<std::string> prompts = {"a red circle", "a blue square on a green background", "a cat", "",
                                            "make it blue"};
  const auto base = a.pipeline;

  models::LoadOptions frozen;
  frozen.frozen = true;
  auto tokenizer = models::CLIPTokenizer::from_folder(base / "tokenizer");
  auto text_encoder = models::load_clip_text(base / "text_encoder", frozen);
  auto vae = models::load_vae(base / "vae", frozen);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(base / "scheduler");

  train::TrainerOptions o;
  o.method = train::method_from_name(a.method);
  o.fused_step = a.fused;
  o.lisa.n_active = 6;
  o.lisa.interval = 3;
  o.lisa.seed = 11 + (a.lisa_seed_per_rank ? rank : 0);
  o.lora.rank = 4;
  o.lora.alpha = 4;
  o.output_dir = a.out;
  o.max_train_steps = a.steps;
  o.gradient_accumulation_steps = a.accumulation;
  o.schedule.type = train::LrScheduleType::kCosine;
  o.schedule.base_lr = o.method == train::TrainMethod::kLora ? 5e-3 : 1e-3;
  o.schedule.warmup_steps = 2;
  o.max_grad_norm = 0.05;
  o.checkpointing_steps = a.checkpointing_steps;
  o.resume_from_checkpoint = a.resume;
  o.report_to = "none";
  o.group = group;
  o.main_process = rank == 0;
  // Small buckets: many all-reduces per step, several in flight while the backward pass goes
  // on, tensors stepped as their bucket completes.
  o.bucket_bytes = 4096;

  auto gen = at::make_generator<at::CPUGeneratorImpl>(4321);
  std::vector<data::Batch> batches(static_cast<std::size_t>(micro));
  auto texts_of = [&](int i) {
    std::vector<std::string> t;
    for (int64_t k = rank * B; k < (rank + 1) * B; ++k) {
      t.push_back(prompts[(i * G + k) % prompts.size()]);
      batches[static_cast<std::size_t>(i)].keys.push_back(std::to_string(i * G + k));
    }
    return t;
  };
  models::UNet2DConditionModel unet{nullptr}, target{nullptr}, reference{nullptr};
  std::function<train::MicroResult(int64_t)> step;
  std::unique_ptr<train::Trainer> trainer;
  io::NamedTensors target_pairs, student_pairs;

  if (a.recipe == "lcm") {
    const int num_ddim = 50;
    std::vector<recipes::LcmDistillDraws> draws;
    for (int i = 0; i < micro; ++i) {
      batches[i].images = {share(at::rand({G, 3, resolution, resolution}, gen) * 2 - 1, rank, B)};
      batches[i].texts = texts_of(i);
      recipes::LcmDistillDraws d;
      d.latent_noise = share(at::randn({G, 4, latent, latent}, gen), rank, B);
      d.index = share(at::randint(0, num_ddim, {G}, gen), rank, B);
      d.noise = share(at::randn({G, 4, latent, latent}, gen), rank, B);
      d.w = share(at::rand({G}, gen) * 4 + 2, rank, B);
      draws.push_back(d);
    }
    static const schedulers::LcmDdimSolver solver(schedule.alphas_cumprod(), num_ddim);
    const bool lora = o.method == train::TrainMethod::kLora;
    o.lora.target_modules = recipes::lcm_lora_target_modules();
    if (lora) {
      unet = models::load_unet(base / "unet");
      torch::manual_seed(seed);
    } else {
      torch::manual_seed(seed);
      unet = recipes::load_lcm_student(base / "unet", 16, torch::kCPU);
    }
    trainer = std::make_unique<train::Trainer>(train::trained_unet(unet), o);
    if (!lora) {
      target = recipes::copy_unet(unet);  // after the Trainer: rank 0's student on every rank
      target_pairs = target->named_parameters().pairs();
      student_pairs = unet->named_parameters().pairs();
    }
    auto m = std::make_shared<recipes::LcmDistillModels>();
    m->tokenizer = &tokenizer;
    m->text_encoder = text_encoder;
    m->vae = vae;
    m->teacher = models::load_unet(base / "unet", frozen);
    m->unet = unet;
    m->target = target;
    m->schedule = &schedule;
    m->solver = &solver;
    m->schedules = schedulers::alpha_sigma_schedules(schedule.alphas_cumprod());
    m->w_embedding_dim = lora ? 0 : 16;
    m->loss_type = recipes::LcmLossType::kHuber;
    m->huber_c = 0.01;
    {
      torch::NoGradGuard no_grad;
      m->uncond_embeds = text_encoder->forward(tokenizer.tokenize(std::vector<std::string>(B, "")).input_ids)
                             .last_hidden_state;
    }
    step = [m, draws, &batches](int64_t count) {
      return recipes::lcm_distill_step(*m, batches.at(count), draws.at(count));
    };
  } else if (a.recipe == "ip2p") {
    std::vector<recipes::InstructPix2PixDraws> draws;
    for (int i = 0; i < micro; ++i) {
      batches[i].images = {share(at::rand({G, 3, resolution, resolution}, gen) * 2 - 1, rank, B),
                           share(at::rand({G, 3, resolution, resolution}, gen) * 2 - 1, rank, B)};
      batches[i].texts = texts_of(i);
      recipes::InstructPix2PixDraws d;
      d.latent_noise = share(at::randn({G, 4, latent, latent}, gen), rank, B);
      d.noise = share(at::randn({G, 4, latent, latent}, gen), rank, B);
      d.timesteps = share(at::randint(0, 1000, {G}, gen), rank, B);
      d.dropout_r = share(at::rand({G}, gen) * 0.9, rank, B);
      draws.push_back(d);
    }
    unet = models::load_unet(base / "unet");
    torch::manual_seed(seed);
    recipes::widen_conv_in(unet, 8, false);
    o.lora.target_modules = {"to_q", "to_k", "to_v", "to_out.0"};
    o.lora.modules_to_save = {"conv_in"};
    trainer = std::make_unique<train::Trainer>(train::trained_unet(unet), o);
    auto m = std::make_shared<recipes::InstructPix2PixModels>();
    m->tokenizer = &tokenizer;
    m->text_encoder = text_encoder;
    m->vae = vae;
    m->unet = unet;
    m->schedule = &schedule;
    m->dropout_prob = 0.25;
    {
      torch::NoGradGuard no_grad;
      m->null_embedding = text_encoder->forward(tokenizer.tokenize({""}).input_ids).last_hidden_state;
    }
    auto unused = std::make_shared<at::Generator>(at::make_generator<at::CPUGeneratorImpl>(0));
    step = [m, draws, unused, &batches](int64_t count) {
      return recipes::instruct_pix2pix_step(*m, batches.at(count), *unused, draws.at(count));
    };
  } else if (a.recipe == "dpo") {
    std::vector<recipes::DiffusionDpoDraws> draws;
    for (int i = 0; i < micro; ++i) {
      batches[i].images = {share(at::rand({G, 3, resolution, resolution}, gen) * 2 - 1, rank, B),
                           share(at::rand({G, 3, resolution, resolution}, gen) * 2 - 1, rank, B)};
      batches[i].texts = texts_of(i);
      recipes::DiffusionDpoDraws d;
      const auto noise2 = at::randn({2 * G, 4, latent, latent}, gen);  // preferred rows, then the others
      d.latent_noise = torch::cat({share(noise2.slice(0, 0, G), rank, B), share(noise2.slice(0, G, 2 * G), rank, B)});
      d.noise = share(at::randn({G, 4, latent, latent}, gen), rank, B);
      d.timesteps = share(at::randint(0, 1000, {G}, gen), rank, B);
      draws.push_back(d);
    }
    if (o.method != train::TrainMethod::kLora) {
      reference = models::load_unet(base / "unet", frozen);
      reference->eval();
    }
    unet = models::load_unet(base / "unet");
    torch::manual_seed(seed);
    o.lora.init = "gaussian";
    o.lora.target_modules = {"to_q", "to_k", "to_v", "to_out.0"};
    trainer = std::make_unique<train::Trainer>(train::trained_unet(unet), o);
    auto m = std::make_shared<recipes::DiffusionDpoModels>();
    m->tokenizer = &tokenizer;
    m->text_encoder = text_encoder;
    m->vae = vae;
    m->unet = unet;
    m->schedule = &schedule;
    m->beta = 50;
    auto* t = trainer.get();
    if (reference) {
      m->reference = [reference](const torch::Tensor& x, const torch::Tensor& ts, const torch::Tensor& c) mutable {
        return reference->forward(x, ts, c);
      };
    } else {
      m->reference = [t, unet](const torch::Tensor& x, const torch::Tensor& ts, const torch::Tensor& c) mutable {
        t->lora()->set_enabled(false);
        auto out = unet->forward(x, ts, c);
        t->lora()->set_enabled(true);
        return out;
      };
    }
    step = [m, draws, &batches](int64_t count) {
      return recipes::diffusion_dpo_step(*m, batches.at(count), draws.at(count));
    };
  } else {
    throw Error("dist_worker: unknown recipe " + a.recipe);
  }
  if (target) {
    train::StatePart part;
    part.name = "target";
    part.save_files = [&](const fs::path& dir) { io::write_safetensors(dir / "target.safetensors", target_pairs); };
    part.load_files = [&](const fs::path& dir) {
      models::load_parameters(*target, {dir / "target.safetensors"}, models::LoadOptions{});
    };
    trainer->add_state(part);
  }
  trainer->resume();
  trainer->train([&](const train::MicroBatch& mb) { return step(mb.count); },
                 [&](int64_t) {
                   if (target) train::ema_update_(target_pairs, student_pairs, 0.9);
                 },
                 a.stop_after >= 0 ? std::optional<int64_t>(a.stop_after) : std::nullopt);
  if (rank == 0) {
    io::NamedTensors result;
    for (const auto& [name, t] : trainer->trainable()) result.emplace_back("trained." + name, t.detach().to(torch::kFloat32).contiguous());
    for (const auto& [name, t] : target_pairs) result.emplace_back("target." + name, t.detach().contiguous());
    io::write_safetensors(a.out / "result.safetensors", result);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
