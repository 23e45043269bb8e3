// The lcm_distill recipe against a Python reference of the scripts' training loop
// (scripts/lcm_reference.py: diffusers components, peft LoRA, torch AdamW, clip_grad_norm_,
// get_scheduler), fed the same stored random draws: 10 optimizer steps with gradient
// accumulation 2 on the micro pipeline, whose teacher UNet has no time_cond_proj_dim (so the
// student gets one): full fine-tuning (the script's classic step, l2 loss), LISA with the sets
// lisadiff drew (huber loss) and LoRA as the LCM-LoRA script (huber): the loss of every
// micro-batch, the trained tensors and the target's. Also: the same seed gives diffusers' and
// peft's initialisation of the student's new cond_proj and of the adapters, and the outputs
// of the executable are folders and files diffusers loads and samples with LCMScheduler.
// Label python.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include "data/loader.h"
#include "io/safetensors.h"
#include "recipes/lcm_distill.h"
#include "recipes/recipe_parity.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;

struct ParityCase {
  train::TrainMethod method;
  const char* loss_type;
};

void PrintTo(const ParityCase& c, std::ostream* os) { *os << train::method_name(c.method) << " " << c.loss_type; }

class LcmDistillParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(LcmDistillParity, TenStepsEqualThePythonReference) {
  const auto [method, loss_name] = GetParam();
  const bool lora = method == train::TrainMethod::kLora;
  testing::TempDir tmp;
  const auto base = fixtures_dir() / "pipelines/micro-sd";
  testing::ParityLoop loop;
  loop.lr = lora ? 5e-3 : 1e-3;
  loop.max_grad_norm = 0.5;
  const int steps = loop.steps, accumulation = loop.accumulation, batch = 2, resolution = 32, seed = 7,
            cond_dim = 16, rank = 4;
  const double ema_decay = 0.9, huber_c = 0.01, w_min = 2, w_max = 6;
  const int num_ddim = 50;
  const std::vector<std::string> prompts = {"a red circle", "a blue square on a green background", "a cat", ""};

  // The stored draws: the images, the VAE sample noise, grid indices, noise and w.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4321);
  io::NamedTensors inputs;
  std::vector<data::Batch> batches;
  std::vector<recipes::LcmDistillDraws> draws;
  nlohmann::json texts = nlohmann::json::array();
  const int64_t latent = resolution / 2;  // micro-sd's VAE halves the size
  for (int i = 0; i < steps * accumulation; ++i) {
    data::Batch b;
    b.images = {at::rand({batch, 3, resolution, resolution}, gen) * 2 - 1};
    nlohmann::json t = nlohmann::json::array();
    for (int k = 0; k < batch; ++k) {
      b.keys.push_back(std::to_string(i * batch + k));
      b.texts.push_back(prompts[(i * batch + k) % prompts.size()]);
      t.push_back(b.texts.back());
    }
    texts.push_back(t);
    recipes::LcmDistillDraws d;
    d.latent_noise = at::randn({batch, 4, latent, latent}, gen);
    // Include the grid's first point (t_end = 0: c_skip 1, c_out 0) and its last.
    d.index = i == 0 ? torch::tensor({0, num_ddim - 1}, torch::kLong) : at::randint(0, num_ddim, {batch}, gen);
    d.noise = at::randn({batch, 4, latent, latent}, gen);
    d.w = at::rand({batch}, gen) * (w_max - w_min) + w_min;
    const auto n = std::to_string(i);
    inputs.emplace_back("images." + n, b.images[0]);
    inputs.emplace_back("latent_noise." + n, d.latent_noise);
    inputs.emplace_back("index." + n, d.index);
    inputs.emplace_back("noise." + n, d.noise);
    inputs.emplace_back("w." + n, d.w);
    batches.push_back(std::move(b));
    draws.push_back(d);
  }
  auto settings = testing::parity_settings(loop);
  settings.update({{"loss_type", loss_name}, {"huber_c", huber_c}, {"w_min", w_min}, {"w_max", w_max},
                   {"num_ddim_timesteps", num_ddim}, {"timestep_scaling_factor", 10.0}, {"ema_decay", ema_decay},
                   {"unet_time_cond_proj_dim", cond_dim}, {"lora_rank", rank}, {"lora_alpha", rank},
                   {"lora_target_modules", recipes::lcm_lora_target_modules()}, {"teacher_autocast", "no"},
                   {"seed", seed}, {"texts", texts}});

  // lisadiff: the executable's models (the student built after the seed, as the executable
  // does), the recipe's step, the Trainer's classic or LISA step, the target's EMA.
  auto parts = testing::load_frozen_parts(base);
  models::LoadOptions frozen;
  frozen.frozen = true;
  auto teacher = models::load_unet(base / "unet", frozen);
  const schedulers::LcmDdimSolver solver(parts.schedule.alphas_cumprod(), num_ddim);
  models::UNet2DConditionModel unet{nullptr}, target{nullptr};
  if (lora) {
    unet = models::load_unet(base / "unet");
    torch::manual_seed(seed);  // the adapters' initialisation comes next
  } else {
    torch::manual_seed(seed);  // the student's constructor initialises cond_proj
    unet = recipes::load_lcm_student(base / "unet", cond_dim, torch::kCPU);
    target = recipes::copy_unet(unet);
    EXPECT_TRUE(torch::equal(target->named_parameters()["time_embedding.cond_proj.weight"],
                             unet->named_parameters()["time_embedding.cond_proj.weight"]));
  }
  auto o = testing::parity_trainer_options(method, loop, tmp / "run");
  o.lora.rank = rank;
  o.lora.alpha = rank;
  o.lora.target_modules = recipes::lcm_lora_target_modules();
  train::Trainer trainer(train::trained_unet(unet), o);
  // The tensors initialised at random here, given to the reference (and compared with the
  // values its own seeded construction gives, below).
  io::NamedTensors initial;
  if (lora) {
    for (const auto& [name, t] : trainer.trainable()) initial.emplace_back(name, t.detach().clone());
  } else {
    initial.emplace_back("time_embedding.cond_proj.weight",
                         unet->named_parameters()["time_embedding.cond_proj.weight"].detach().clone());
  }
  for (const auto& [name, t] : initial) inputs.emplace_back("init." + name, t);
  fs::create_directories(tmp / "inputs");
  io::write_safetensors(tmp / "inputs/inputs.safetensors", inputs);

  recipes::LcmDistillModels m;
  m.tokenizer = &parts.tokenizer;
  m.text_encoder = parts.text_encoder;
  m.vae = parts.vae;
  m.teacher = teacher;
  m.unet = unet;
  m.target = target;
  m.schedule = &parts.schedule;
  m.solver = &solver;
  m.schedules = schedulers::alpha_sigma_schedules(parts.schedule.alphas_cumprod());
  {
    torch::NoGradGuard no_grad;
    m.uncond_embeds = parts.text_encoder->forward(parts.tokenizer.tokenize({"", ""}).input_ids).last_hidden_state;
  }
  m.w_min = w_min;
  m.w_max = w_max;
  m.loss_type = recipes::lcm_loss_type(loss_name);
  m.huber_c = huber_c;
  m.w_embedding_dim = lora ? 0 : cond_dim;
  m.teacher_autocast = std::nullopt;
  std::vector<double> losses;
  nlohmann::json sets = nlohmann::json::array();  // LISA: the active names of every step
  const io::NamedTensors target_pairs = target ? target->named_parameters().pairs() : io::NamedTensors{};
  const io::NamedTensors student_pairs = unet->named_parameters().pairs();
  trainer.train(
      [&](const train::MicroBatch& mb) {
        if (trainer.lisa() && mb.index == 0) sets.push_back(trainer.lisa()->active_names());
        auto r = recipes::lcm_distill_step(m, batches.at(mb.count), draws.at(mb.count));
        losses.push_back(r.loss.item<double>());
        return r;
      },
      [&](int64_t) {
        if (target) train::ema_update_(target_pairs, student_pairs, ema_decay);
      });

  const auto ref = testing::run_parity_reference("lcm_reference.py", base, tmp / "inputs", settings, method, sets);

  // The same seed, the same initialisation: the student built from the config after
  // manual_seed draws cond_proj as diffusers' constructor; the adapters as peft's.
  for (const auto& [name, t] : initial) {
    EXPECT_TRUE(testing::close_tensor("seeded_init." + name, t, ref.tensor("seeded_init." + name), 0, 1e-7));
  }
  // Per micro-batch losses: the forward passes agree to float32 rounding (the UNet and VAE
  // equal diffusers to ~1e-6 relative), through the boundary scalings, the teacher's CFG
  // (w up to 6 amplifies the teacher's rounding) and the float64 DDIM step.
  testing::expect_per_micro_batch("loss", losses, ref.tensor("losses"), 2e-5, 1e-7);
  // Trained tensors: AdamW divides by sqrt(v), so a gradient that differs in the 7th digit
  // moves a weight by up to lr times that relative difference per step; the target is an
  // average of the student's values.
  // LoRA (lr 5e-3): the convolution adapters' A sit where Adam's normalisation amplifies
  // rounding most; the reference itself, run with 1 and with 2 threads, differs there by up
  // to 2.9e-5 (measured), so those get 1e-4.
  testing::expect_trained_equal(trainer, ref, lora ? "lora." : "unet.", lora ? 1e-4 : 1e-5, 1e-4);
  for (const auto& [name, value] : target_pairs) {
    EXPECT_TRUE(testing::close_tensor("target." + name, value, ref.tensor("target." + name), 1e-5, 1e-4));
  }
  // The student moved, and the target moved towards it without reaching it.
  const auto& [first_name, first] = trainer.trainable().front();
  const auto teacher_params = teacher->named_parameters();
  EXPECT_FALSE(torch::equal(first, lora ? initial.front().second : teacher_params[first_name])) << first_name;
  if (target) {
    const auto& name = student_pairs.back().first;
    EXPECT_FALSE(torch::equal(target->named_parameters()[name], unet->named_parameters()[name]));
  }
  if (method == train::TrainMethod::kLisa) EXPECT_NE(sets.front(), sets.back());  // re-draws happened
}

INSTANTIATE_TEST_SUITE_P(Methods, LcmDistillParity,
                         ::testing::Values(ParityCase{train::TrainMethod::kFull, "l2"},
                                           ParityCase{train::TrainMethod::kLisa, "huber"},
                                           ParityCase{train::TrainMethod::kLora, "huber"}),
                         [](const auto& info) { return train::method_name(info.param.method); });

// The executable's outputs are what diffusers loads: unet/ and unet_target/ as UNet folders
// that StableDiffusionPipeline samples with LCMScheduler in 4 steps (the w embedding of
// guidance 7.5), and the LCM-LoRA file that load_lora_weights applies (convolution adapters
// included) and that changes the images.
TEST(LcmDistillParityApp, DiffusersLoadsTheOutputs) {
  testing::TempDir tmp;
  const auto app = fs::path(testing::cli_path()).parent_path() / "lcm_distill";
  const auto data = tmp / "data";
  ASSERT_EQ(testing::run_command(testing::cli_path() + " make-dataset --kind t2i --format wds --n 4 --size 32 --out " +
                                 data.string() + " 2>&1").first,
            0);
  const std::string common = app.string() + " --pretrained_teacher_model " + (fixtures_dir() / "pipelines/micro-sd").string() +
                             " --train_shards_path_or_url " + (data / "00000.tar").string() +
                             " --resolution 32 --train_batch_size 2 --max_train_steps 2 --learning_rate 1e-2 --seed 0";
  for (const char* method : {"lisa", "lora"}) {
    const auto out = tmp / method;
    const auto [rc, log] = testing::run_command(common + " --method " + method + " --lora_rank 4 --output_dir " +
                                                out.string() + " 2>&1");
    ASSERT_EQ(rc, 0) << log;
  }
  const std::string script =
      "import sys, torch, numpy as np\n"
      "from diffusers import StableDiffusionPipeline, LCMScheduler, UNet2DConditionModel\n"
      "base, lisa, lora = sys.argv[1:4]\n"
      "g = lambda: torch.Generator().manual_seed(0)\n"
      "for name in ('unet', 'unet_target'):\n"
      "    unet = UNet2DConditionModel.from_pretrained(f'{lisa}/{name}')\n"
      "    assert unet.config.time_cond_proj_dim == 256, unet.config.time_cond_proj_dim\n"
      "    pipe = StableDiffusionPipeline.from_pretrained(base, unet=unet, safety_checker=None)\n"
      "    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)\n"
      "    img = pipe('a red circle', num_inference_steps=4, guidance_scale=7.5, generator=g(), output_type='np').images\n"
      "    assert np.isfinite(img).all(), name\n"
      "pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)\n"
      "pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)\n"
      "run = lambda: pipe('a red circle', num_inference_steps=4, guidance_scale=1.0, generator=g(), output_type='np').images\n"
      "before = run()\n"
      "pipe.load_lora_weights(f'{lora}/unet_lora')\n"
      "keys = [k for k in pipe.unet.state_dict() if 'lora_A' in k]\n"
      "assert any('resnets.0.conv1' in k for k in keys) and any('upsamplers.0.conv' in k for k in keys), keys[:5]\n"
      "after = run()\n"
      "assert np.isfinite(after).all() and np.abs(after - before).max() > 0, 'the LoRA changed nothing'\n"
      "print('ok', len(keys))\n";
  testing::write_file(tmp / "load.py", script);
  const auto [prc, plog] = testing::run_command(testing::test_python() + " " + (tmp / "load.py").string() + " " +
                                                (fixtures_dir() / "pipelines/micro-sd").string() + " " +
                                                (tmp / "lisa").string() + " " + (tmp / "lora").string() + " 2>&1");
  EXPECT_EQ(prc, 0) << plog;
  EXPECT_NE(plog.find("ok"), std::string::npos) << plog;
}

}  // namespace
}  // namespace lisadiff
