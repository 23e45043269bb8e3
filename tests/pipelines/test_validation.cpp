// Validation during training (pipelines/validation.h): it leaves training bit-identical, makes
// the images a pipeline makes with the same weights and generator, swaps EMA weights in and
// out, and writes the grid, the metrics event and the TensorBoard image.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>

#include "io/png.h"
#include "io/tfevent_reader.h"
#include "models/unet.h"
#include "pipelines/text_to_image.h"
#include "pipelines/validation.h"
#include "train/trainer.h"
#include "train/synthetic_step.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;
using train::MicroBatch;
using train::Trainer;
using train::TrainMethod;

const fs::path& micro_sd() {
  static const fs::path path = fixtures_dir() / "pipelines/micro-sd";
  return path;
}

pipelines::Components validation_components() {
  models::LoadOptions lo;
  lo.frozen = true;
  return pipelines::components_for_validation(micro_sd(), models::CLIPTokenizer::from_folder(micro_sd() / "tokenizer"),
                                              models::load_clip_text(micro_sd() / "text_encoder", lo),
                                              models::load_vae(micro_sd() / "vae", lo));
}

train::TrainerOptions options(const fs::path& out, TrainMethod method, train::MixedPrecision precision) {
  train::TrainerOptions o;
  o.method = method;
  o.output_dir = out;
  o.max_train_steps = 6;
  o.gradient_accumulation_steps = 2;
  o.checkpointing_steps = 100;
  o.schedule.base_lr = 1e-3;
  o.lisa.n_active = 8;
  o.lisa.interval = 2;
  o.lisa.seed = 5;
  o.lora.rank = 2;
  o.use_ema = true;
  o.ema.decay = 0.8;
  o.mixed_precision = precision;
  if (precision != train::MixedPrecision::kNo && method == TrainMethod::kLisa) o.frozen_dtype = torch::kBFloat16;
  return o;
}

pipelines::ValidationSpec spec(bool use_ema) {
  pipelines::ValidationSpec s;
  s.prompts = {"a red circle", "a blue square"};
  s.images_per_prompt = 2;
  s.num_inference_steps = 3;
  s.guidance_scale = 3.0;
  s.scheduler = "euler";
  s.seed = 11;
  s.use_ema = use_ema;
  return s;
}

struct RunResult {
  std::vector<double> losses;
  std::vector<torch::Tensor> weights, ema;
  torch::Tensor rng_after;
};

RunResult train_run(const fs::path& out, TrainMethod method, train::MixedPrecision precision, bool validate) {
  // Loading draws module initialisations from the global generator: both runs load the
  // same models before the seed.
  auto components = validation_components();
  auto unet = models::load_unet(micro_sd() / "unet");
  torch::manual_seed(9);
  Trainer trainer(train::trained_unet(unet), options(out, method, precision));
  std::optional<pipelines::Validator> validator;
  if (validate) validator.emplace(std::move(components), trainer, /*validation_steps=*/2);
  RunResult r;
  trainer.train(
      [&](const MicroBatch& mb) {
        return testing::synthetic_denoise_step(unet, mb, &r.losses);
      },
      [&](int64_t step) {
        if (validator && validator->due(step)) {
          validator->run(step, unet, spec(/*use_ema=*/step == 4));
        }
      });
  for (const auto& [name, p] : trainer.trainable()) r.weights.push_back(p.detach().clone());
  for (const auto& [name, t] : trainer.ema()->shadows()) r.ema.push_back(t.clone());
  r.rng_after = torch::randn({4});  // the global generator's position after the run
  return r;
}

struct Variant {
  const char* name;
  TrainMethod method;
  train::MixedPrecision precision;
};
void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class ValidationDuringTraining : public ::testing::TestWithParam<Variant> {};

TEST_P(ValidationDuringTraining, LeavesLossesWeightsEmaAndRngBitIdentical) {
  const auto v = GetParam();
  TempDir tmp;
  const auto off = train_run(tmp / "off", v.method, v.precision, false);
  const auto on = train_run(tmp / "on", v.method, v.precision, true);
  EXPECT_EQ(on.losses, off.losses);
  ASSERT_EQ(on.weights.size(), off.weights.size());
  for (std::size_t i = 0; i < on.weights.size(); ++i) EXPECT_TRUE(testing::same_tensor(on.weights[i], off.weights[i]));
  for (std::size_t i = 0; i < on.ema.size(); ++i) EXPECT_TRUE(testing::same_tensor(on.ema[i], off.ema[i]));
  EXPECT_TRUE(testing::same_tensor(on.rng_after, off.rng_after));
  // The outputs: a grid per validation step, an event for each, no grids without validation.
  for (int step : {2, 4, 6}) EXPECT_TRUE(fs::exists(tmp / "on/validation" / fmt::format("step-{}.png", step)));
  EXPECT_FALSE(fs::exists(tmp / "off/validation"));
  std::ifstream in(tmp / "on/metrics.jsonl");
  std::vector<nlohmann::json> events;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == "validation") events.push_back(j);
  }
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].at("step"), 4);
  EXPECT_EQ(events[1].at("file"), "validation/step-4.png");
  EXPECT_EQ(events[1].at("generation").at("images"), 4);
  EXPECT_EQ(events[1].at("generation").at("seed"), 11);
  EXPECT_EQ(events[1].at("generation").at("weights"), "ema");
  EXPECT_EQ(events[0].at("generation").at("weights"), "live");
}

INSTANTIATE_TEST_SUITE_P(Methods, ValidationDuringTraining,
                         ::testing::Values(Variant{"lisa", TrainMethod::kLisa, train::MixedPrecision::kNo},
                                           Variant{"lisa_bf16_frozen", TrainMethod::kLisa, train::MixedPrecision::kBf16},
                                           Variant{"full", TrainMethod::kFull, train::MixedPrecision::kNo},
                                           Variant{"lora", TrainMethod::kLora, train::MixedPrecision::kNo}),
                         [](const auto& info) { return std::string(info.param.name); });

// The images are the pipeline's for the same weights, with one generator seeded once and
// passed to every call; with use_ema they are the EMA weights' images, and the live weights
// are back afterwards.
TEST(Validation, ImagesArePipelineImagesWithOneGeneratorAcrossCalls) {
  TempDir tmp;
  auto unet = models::load_unet(micro_sd() / "unet");
  auto o = options(tmp / "run", TrainMethod::kFull, train::MixedPrecision::kNo);
  Trainer trainer(train::trained_unet(unet), o);
  // Make the EMA differ from the live weights.
  {
    torch::NoGradGuard no_grad;
    trainer.ema()->step(trainer.trainable());
    for (auto& p : unet->parameters()) p.add_(0.05);
  }
  pipelines::Validator validator(validation_components(), trainer);
  const auto live = validator.run(3, unet, spec(false));
  ASSERT_EQ(live.images.size(0), 4);

  auto reference = validation_components();
  auto sampler = reference.sampler("euler");
  const auto expected_images = [&](models::UNet2DConditionModel model) {
    reference.unet = model;
    auto generator = at::make_generator<at::CPUGeneratorImpl>(11);
    std::vector<torch::Tensor> images;
    for (const std::string prompt : {"a red circle", "a red circle", "a blue square", "a blue square"}) {
      pipelines::TextToImageOptions t;
      t.prompts = {prompt};
      t.guidance_scale = 3.0;
      t.num_inference_steps = 3;
      t.generator = generator;
      images.push_back(pipelines::text_to_image(reference, *sampler, t).pixels[0]);
    }
    return torch::stack(images);
  };
  EXPECT_TRUE(testing::same_tensor(live.images, expected_images(unet)));
  EXPECT_FALSE(testing::same_tensor(live.images.slice(0, 0, 1), live.images.slice(0, 1, 2)));  // the generator goes on

  const auto before = unet->parameters()[0].clone();
  const auto ema = validator.run(4, unet, spec(true));
  EXPECT_TRUE(testing::same_tensor(unet->parameters()[0], before));
  auto ema_unet = models::load_unet(micro_sd() / "unet");
  const auto named = ema_unet->named_parameters().pairs();
  trainer.ema()->copy_to(io::NamedTensors(named.begin(), named.end()));
  EXPECT_TRUE(testing::same_tensor(ema.images, expected_images(ema_unet)));
  EXPECT_FALSE(testing::same_tensor(ema.images, live.images));

  // The grid carries the settings; TensorBoard got both grids as images.
  const auto text = io::read_png_text(testing::read_file(live.grid), live.grid.string());
  const auto has = [&](const std::string& key, const std::string& value) {
    for (const auto& [k, v] : text) {
      if (k == key) return v == value;
    }
    return false;
  };
  EXPECT_TRUE(has("seed", "11"));
  EXPECT_TRUE(has("scheduler", "EulerDiscreteScheduler"));
  int images = 0;
  for (const auto& file : testing::event_files(tmp / "run/logs")) {
    for (const auto& event : testing::read_events(file)) {
      images += event.has_summary() && event.summary().value(0).has_image() &&
                event.summary().value(0).tag() == "validation";
    }
  }
  EXPECT_EQ(images, 2);
}

TEST(Validation, BadSpecsAreOneLineErrorsBeforeGenerating) {
  TempDir tmp;
  auto unet = models::load_unet(micro_sd() / "unet");
  auto o = options(tmp / "run", TrainMethod::kFull, train::MixedPrecision::kNo);
  o.use_ema = false;
  Trainer trainer(train::trained_unet(unet), o);
  pipelines::Validator validator(validation_components(), trainer, 5);
  EXPECT_FALSE(validator.due(0));
  EXPECT_FALSE(validator.due(4));
  EXPECT_TRUE(validator.due(10));
  auto s = spec(true);
  EXPECT_THROW_WITH(validator.run(1, unet, s), "validation", "needs use_ema");
  s.use_ema = false;
  s.prompts.clear();
  EXPECT_THROW_WITH(validator.run(1, unet, s), "no prompts");
  s = spec(false);
  s.name = "online";
  s.source_image = torch::zeros({16, 16, 3}, torch::kUInt8);
  EXPECT_THROW_WITH(validator.run(1, unet, s), "validation 'online'", "InstructPix2Pix UNet (8 input channels)",
                    "takes 4");
  s = spec(false);
  s.scheduler = "karras";
  EXPECT_THROW_WITH(validator.run(1, unet, s), "unknown scheduler 'karras'");
  EXPECT_FALSE(fs::exists(tmp / "run/validation"));
}

// An InstructPix2Pix validation: the source image first in the grid, then the edits.
TEST(Validation, InstructPix2PixEditsShowTheSourceFirst) {
  TempDir tmp;
  const auto ip2p = fixtures_dir() / "pipelines/ip2p-micro";
  auto unet = models::load_unet(ip2p / "unet");
  auto o = options(tmp / "run", TrainMethod::kLisa, train::MixedPrecision::kNo);
  o.use_ema = false;
  Trainer trainer(train::trained_unet(unet), o);
  models::LoadOptions lo;
  lo.frozen = true;
  pipelines::Validator validator(
      pipelines::components_for_validation(ip2p, models::CLIPTokenizer::from_folder(ip2p / "tokenizer"),
                                           models::load_clip_text(ip2p / "text_encoder", lo),
                                           models::load_vae(ip2p / "vae", lo)),
      trainer);
  pipelines::ValidationSpec s;
  s.prompts = {"make it blue"};
  s.images_per_prompt = 2;
  s.num_inference_steps = 2;
  s.guidance_scale = 7;
  s.image_guidance_scale = 1.5;
  s.seed = 3;
  s.source_image = torch::randint(0, 256, {32, 32, 3}, torch::kUInt8);
  const auto r = validator.run(7, unet, s);
  EXPECT_EQ(r.images.sizes(), (std::vector<int64_t>{2, 32, 32, 3}));
  EXPECT_EQ(r.grid.filename(), "step-7.png");
  const auto text = io::read_png_text(testing::read_file(r.grid), r.grid.string());
  EXPECT_FALSE(text.empty());
}

}  // namespace
}  // namespace lisadiff
