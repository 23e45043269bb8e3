// The data loader inside the training loop: its position travels in the Trainer's
// checkpoints, so a run that crashes and resumes sees the same batches (and therefore the same
// losses and weights) as a run that never stopped.
#include <gtest/gtest.h>

#include "data/loader.h"
#include "models/unet.h"
#include "schedulers/ddpm.h"
#include "test_util.h"
#include "tools/make_dataset.h"
#include "recipes/common.h"
#include "train/trainer.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;

// A denoising loss on "latents" made from the batch's pixels (pooled to 8 x 8, a fourth
// channel of their mean), with DDPM noise and timesteps from the global generator.
train::MicroResult step(models::UNet2DConditionModel& unet, data::DataLoader& loader,
                        const schedulers::DDPMNoiseSchedule& schedule, std::vector<double>* losses) {
  const auto batch = loader.next();
  auto pooled = torch::adaptive_avg_pool2d(batch.images[0], {8, 8});
  auto latents = torch::cat({pooled, pooled.mean(1, true)}, 1);
  auto noise = torch::randn_like(latents);
  auto t = torch::randint(0, schedule.num_train_timesteps(), {latents.size(0)});
  auto context = torch::randn({latents.size(0), 7, static_cast<int64_t>(unet->config.cross_attention_dim.at(0))});
  auto pred = unet->forward(schedule.add_noise(latents, noise, t), t, context);
  auto loss = torch::mse_loss(pred, schedule.training_target(latents, noise, t));
  if (losses) losses->push_back(loss.item<double>());
  train::MicroResult r;
  r.loss = loss;
  r.end_of_epoch = batch.end_of_epoch;
  return r;
}

TEST(LoaderInTraining, ACrashAndResumeSeeTheSameBatchesAsAStraightRun) {
  testing::TempDir tmp;
  tools::MakeDatasetOptions m;
  m.kind = "t2i";
  m.format = "wds";
  m.n = 9;  // epochs of 5 batches (the last one short): the epoch end closes every third window early
  m.size = 40;
  m.vary_size = true;
  m.shard_size = 4;
  m.out = tmp / "data";
  tools::make_dataset(m);
  auto data_options = data::DataOptions::for_recipe(data::ExampleKind::kT2i);
  data_options.train_shards = (tmp / "data/{00000..00002}.tar").string();
  data_options.resample_shards = false;
  data_options.drop_last = false;
  data_options.transform.resolution = 32;
  data_options.batch_size = 2;
  data_options.num_workers = 2;
  data_options.shuffle_buffer = 5;
  data_options.seed = 11;
  const auto schedule = schedulers::DDPMNoiseSchedule(config::SchedulerConfig{});
  const auto trainer_options = [&](const fs::path& out) {
    train::TrainerOptions o;
    o.method = train::TrainMethod::kLisa;
    o.output_dir = out;
    o.max_train_steps = 8;
    o.gradient_accumulation_steps = 2;
    o.checkpointing_steps = 3;
    o.schedule.base_lr = 1e-3;
    o.lisa.n_active = 8;
    o.lisa.interval = 2;
    return o;
  };
  const auto unet_path = testing::fixtures_dir() / "pipelines/micro-sd/unet";

  std::vector<double> straight;
  std::vector<torch::Tensor> straight_weights;
  {
    torch::manual_seed(5);
    auto unet = models::load_unet(unet_path);
    data::DataLoader loader(data_options);
    train::Trainer trainer(train::trained_unet(unet), trainer_options(tmp / "straight"));
    trainer.add_state(recipes::loader_state_part(loader));
    trainer.train([&](const train::MicroBatch&) { return step(unet, loader, schedule, &straight); });
    for (const auto& [name, p] : trainer.trainable()) straight_weights.push_back(p.detach().clone());
  }
  {
    torch::manual_seed(5);
    auto unet = models::load_unet(unet_path);
    data::DataLoader loader(data_options);
    train::Trainer trainer(train::trained_unet(unet), trainer_options(tmp / "crashed"));
    trainer.add_state(recipes::loader_state_part(loader));
    EXPECT_THROW(trainer.train([&](const train::MicroBatch& mb) {
      if (mb.step == 5) throw std::runtime_error("simulated crash");
      return step(unet, loader, schedule, nullptr);
    }),
                 std::runtime_error);
  }
  std::vector<double> resumed;
  {
    torch::manual_seed(77);
    auto unet = models::load_unet(unet_path);
    auto o = trainer_options(tmp / "crashed");
    o.resume_from_checkpoint = "latest";
    data_options.num_workers = 1;  // the worker count is not part of the data order
    data::DataLoader loader(data_options);
    train::Trainer trainer(train::trained_unet(unet), o);
    trainer.add_state(recipes::loader_state_part(loader));
    EXPECT_EQ(trainer.resume(), 3);
    trainer.train([&](const train::MicroBatch&) { return step(unet, loader, schedule, &resumed); });
    ASSERT_LT(resumed.size(), straight.size());
    const auto offset = straight.size() - resumed.size();
    for (std::size_t i = 0; i < resumed.size(); ++i) EXPECT_EQ(resumed[i], straight[offset + i]) << "micro-batch " << offset + i;
    std::size_t i = 0;
    for (const auto& [name, p] : trainer.trainable()) EXPECT_TRUE(testing::same_tensor(p, straight_weights[i++])) << name;
  }
  // Windows of 2, 2, 1 micro-batches per epoch of 5: 8 steps take 5 + 5 + 4 micro-batches.
  EXPECT_EQ(straight.size(), 14u);
}

}  // namespace
}  // namespace lisadiff
