// LoRA: peft's initialisation, 10 training steps against a Python (diffusers + peft)
// reference, and a file that diffusers' load_lora_weights accepts.
#include <gtest/gtest.h>

#include <iostream>
#include <map>

#include "io/safetensors.h"
#include "models/unet.h"
#include "train/fused_optimizer.h"
#include "train/ema.h"
#include "train/lora.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using io::SafetensorsReader;
using testing::close_tensor;
using testing::fixtures_dir;

std::filesystem::path micro_unet() { return fixtures_dir() / "pipelines/micro-sd/unet"; }

// With the same seed, the adapters are peft's, bit for bit, under both initialisations.
TEST(Lora, InitialisationEqualsPeft) {
  SafetensorsReader ref(fixtures_dir() / "train/lora_unet.safetensors");
  struct Case {
    std::string name;
    train::LoraOptions options;
  };
  train::LoraOptions gaussian, kaiming;
  gaussian.rank = 4;
  gaussian.alpha = 4;
  gaussian.init = "gaussian";
  kaiming.rank = 2;
  kaiming.alpha = 4;
  for (const auto& c : {Case{"gaussian", gaussian}, Case{"kaiming", kaiming}}) {
    auto unet = models::load_unet(micro_unet());
    torch::manual_seed(11);
    train::Lora lora(*unet, c.options);
    std::size_t n = 0;
    for (const auto& e : ref.entries()) n += e.name.rfind("init_" + c.name + ".", 0) == 0;
    ASSERT_EQ(lora.parameters().size(), n) << c.name;
    for (const auto& [name, t] : lora.parameters()) {
      EXPECT_TRUE(testing::same_tensor(t, ref.tensor("init_" + c.name + "." + name))) << c.name << " " << name;
    }
    EXPECT_DOUBLE_EQ(lora.scale(), c.name == "gaussian" ? 1.0 : 2.0);
  }
}

TEST(Lora, TrainingMatchesPeftAndDiffusersLoadsTheFile) {
  SafetensorsReader ref(fixtures_dir() / "train/lora_unet.safetensors");
  auto unet = models::load_unet(micro_unet());
  unet->train();
  std::map<std::string, torch::Tensor> base;
  for (const auto& p : unet->named_parameters()) base[p.key()] = p.value().clone();
  torch::manual_seed(11);
  train::LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 4;
  lo.init = "gaussian";
  train::Lora lora(*unet, lo);
  train::FusedOptimizerOptions o;
  o.adamw = {1e-2, 0.9, 0.999, 1e-8, 1e-2};
  o.lr_at = [](int64_t s) { return 1e-2 * std::min(1.0, static_cast<double>(s + 1) / 4.0); };
  o.max_grad_norm = 1.0;
  o.kernel = train::AdamWKernel::kSingle;
  train::FusedOptimizer opt(lora.parameters(), o);
  const auto latents = ref.tensor("data.latents"), noise = ref.tensor("data.noise");
  const auto timesteps = ref.tensor("data.timesteps"), context = ref.tensor("data.context");
  const auto losses = ref.tensor("train.losses");
  double worst_loss = 0;
  for (int64_t step = 0; step < 10; ++step) {
    auto loss = torch::mse_loss(unet->forward(latents[step] + noise[step], timesteps[step], context[step]), noise[step]);
    worst_loss = std::max(worst_loss, std::abs(loss.item<double>() - losses[step].item<double>()));
    loss.backward();
    opt.finish_step();
  }
  EXPECT_LT(worst_loss, 1e-5);
  for (const auto& [name, t] : lora.parameters()) {
    EXPECT_TRUE(close_tensor(name, t, ref.tensor("train.final." + name), 1e-6, 1e-4));
  }
  for (const auto& p : unet->named_parameters()) {
    EXPECT_TRUE(testing::same_tensor(p.value(), base[p.key()])) << p.key() << " changed: LoRA must leave the base alone";
  }
  torch::Tensor probe;
  {
    torch::NoGradGuard no_grad;
    probe = unet->forward(latents[0], timesteps[0], context[0]);
  }
  EXPECT_TRUE(close_tensor("probe output", probe, ref.tensor("train.probe_output"), 1e-5, 1e-4));
  std::cout << "max |loss diff| " << worst_loss << "\n";

  // The saved file loads in diffusers (pipe.load_lora_weights) and gives the same UNet output.
  testing::TempDir tmp;
  lora.save(tmp.path() / "lora");
  io::SafetensorsReader saved(tmp.path() / "lora/pytorch_lora_weights.safetensors");
  EXPECT_TRUE(saved.contains("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"));
  const auto [rc, out] = testing::run_command(
      testing::test_python() + " " + (testing::tests_dir() / "train/check_lora_loads.py").string() + " " +
      (fixtures_dir() / "pipelines/micro-sd").string() + " " + (tmp.path() / "lora").string() + " " +
      (fixtures_dir() / "train/lora_unet.safetensors").string() + " 2>&1");
  ASSERT_EQ(rc, 0) << out;
  const auto result = nlohmann::json::parse(out.substr(out.rfind("RESULT ") + 7));
  EXPECT_EQ(result["adapter_tensors"].get<std::size_t>(), lora.parameters().size());
  EXPECT_LT(result["max_abs_diff"].get<double>(), 1e-5) << out;

  // Loading it back into fresh adapters restores the values.
  auto other = models::load_unet(micro_unet());
  train::Lora again(*other, lo);
  again.load(tmp.path() / "lora/pytorch_lora_weights.safetensors");
  for (std::size_t i = 0; i < lora.parameters().size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(again.parameters()[i].second, lora.parameters()[i].second));
  }
}

TEST(Lora, BadInput) {
  auto unet = models::load_unet(micro_unet());
  train::LoraOptions lo;
  lo.target_modules = {"to_q", "norm1"};
  EXPECT_THROW_WITH(train::Lora(*unet, lo), "LoRA target module 'norm1' matches no layer of the model that LoRA can adapt");
  lo.target_modules = {"o_q"};  // a suffix, not a dotted one
  EXPECT_THROW_WITH(train::Lora(*unet, lo), "'o_q' matches no layer");
  lo = {};
  lo.rank = 0;
  EXPECT_THROW_WITH(train::Lora(*unet, lo), "LoRA rank must be positive");
  testing::TempDir tmp;
  {
    train::Lora small(*unet, {});
    small.save(tmp.path());
  }
  train::LoraOptions big;
  big.rank = 8;
  train::Lora lora(*unet, big);
  EXPECT_THROW_WITH(lora.load(tmp.path() / "pytorch_lora_weights.safetensors"), "lora_A.weight", "another rank?");
}

// modules_to_save (peft's): the named modules train in full next to the adapters, are saved
// apart from the LoRA file and loaded back; merged() gives plain weights that compute what the
// adapted model computes.
// Adapters on Linear and Conv2d layers (the LCM-LoRA script's kinds of targets), with
// modules_to_save: saved and loaded back, and merged weights that compute what the adapted
// model computes.
TEST(Lora, ConvAdaptersModulesToSaveAndMergedWeights) {
  auto unet = models::load_unet(micro_unet());
  train::LoraOptions lo;
  lo.rank = 2;
  lo.alpha = 4;  // scale 2
  lo.target_modules = {"to_q", "proj_in", "ff.net.2", "conv1", "conv_shortcut", "downsamplers.0.conv",
                       "upsamplers.0.conv", "time_emb_proj"};
  lo.modules_to_save = {"conv_in"};
  train::Lora lora(*unet, lo);
  const auto& params = lora.parameters();
  // One adapter per matching layer, in named_modules order, convolutions with 4-D halves.
  EXPECT_EQ(params.front().first, "down_blocks.0.resnets.0.conv1.lora_A.weight");
  const std::map<std::string, torch::Tensor> by_name(params.begin(), params.end());
  EXPECT_EQ(by_name.at("down_blocks.0.downsamplers.0.conv.lora_A.weight").sizes(), (std::vector<int64_t>{2, 4, 3, 3}));
  EXPECT_EQ(by_name.at("down_blocks.0.downsamplers.0.conv.lora_B.weight").sizes(), (std::vector<int64_t>{4, 2, 1, 1}));
  EXPECT_EQ(by_name.at("down_blocks.1.attentions.0.proj_in.lora_A.weight").dim(), 4);  // a 1x1 conv in SD1.5
  EXPECT_TRUE(by_name.count("up_blocks.0.upsamplers.0.conv.lora_B.weight"));
  EXPECT_TRUE(by_name.count("mid_block.resnets.0.time_emb_proj.lora_A.weight"));
  EXPECT_FALSE(by_name.count("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight"));
  ASSERT_EQ(params[params.size() - 2].first, "conv_in.weight");
  EXPECT_EQ(params.back().first, "conv_in.bias");
  EXPECT_TRUE(unet->conv_in->weight.requires_grad());
  EXPECT_FALSE(unet->conv_out->weight.requires_grad());
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, t] : params) t.add_(torch::randn_like(t) * 0.1);  // B is no longer zero
  }
  testing::TempDir tmp;
  lora.save(tmp.path());
  const io::SafetensorsReader adapters(tmp / "pytorch_lora_weights.safetensors");
  EXPECT_FALSE(adapters.contains("unet.conv_in.weight"));  // what load_lora_weights reads: adapters only
  const io::SafetensorsReader modules(tmp / "modules_to_save.safetensors");
  EXPECT_TRUE(testing::same_tensor(modules.tensor("conv_in.weight"), unet->conv_in->weight.detach()));
  // Loading restores adapters and modules.
  auto other = models::load_unet(micro_unet());
  train::Lora reloaded(*other, lo);
  reloaded.load(tmp / "pytorch_lora_weights.safetensors");
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(reloaded.parameters()[i].second, params[i].second)) << params[i].first;
  }
  std::filesystem::remove(tmp / "modules_to_save.safetensors");
  EXPECT_THROW_WITH(reloaded.load(tmp / "pytorch_lora_weights.safetensors"), "modules_to_save.safetensors", "missing");
  // Merged weights in a plain UNet give the adapted UNet's output.
  const auto merged = lora.merged(train::named_parameters(*unet));
  auto plain = models::load_unet(micro_unet());
  {
    torch::NoGradGuard no_grad;
    auto target = plain->named_parameters();
    for (const auto& [name, t] : merged) target[name].copy_(t);
  }
  torch::NoGradGuard no_grad;
  unet->eval();
  const auto x = torch::randn({1, 4, 8, 8});
  const auto ctx = torch::randn({1, 7, static_cast<int64_t>(unet->config.cross_attention_dim.at(0))});
  const auto t = torch::tensor({20});
  const auto adapted = unet->forward(x, t, ctx);
  EXPECT_TRUE(close_tensor("merged vs adapted", plain->forward(x, t, ctx), adapted, 1e-5, 1e-4));
  lora.set_enabled(false);
  EXPECT_FALSE(close_tensor("adapters off", unet->forward(x, t, ctx), adapted, 1e-5, 1e-4));
  lo.modules_to_save = {"no_such_module"};
  auto third = models::load_unet(micro_unet());
  EXPECT_THROW_WITH(train::Lora(*third, lo), "modules_to_save 'no_such_module' names no module");
}

}  // namespace
}  // namespace lisadiff
