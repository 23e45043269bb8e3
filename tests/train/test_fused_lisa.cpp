// The fused per-parameter AdamW and LISA: parity with torch's AdamW and with a Python
// reference of LISA's semantics (scripts/make_optimizer_fixtures.py), and the semantics the
// original got wrong (lisa.md section 3).
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <set>

#include "io/safetensors.h"
#include "models/checkpoint.h"
#include "models/unet.h"
#include "train/fused_optimizer.h"
#include "train/lisa.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using io::SafetensorsReader;
using testing::close_tensor;
using testing::fixtures_dir;
using train::FusedOptimizer;
using train::FusedOptimizerOptions;
using train::Lisa;
using train::LisaOptions;

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

Named named(torch::nn::Module& m) {
  Named out;
  for (const auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

torch::nn::Sequential mlp() {
  return torch::nn::Sequential(torch::nn::Linear(8, 32), torch::nn::Tanh(), torch::nn::Linear(32, 32),
                               torch::nn::Tanh(), torch::nn::Linear(32, 1));
}

// Two MLPs with the same weights (the second drawn, then overwritten: the generator moves on
// as if both were kept).
std::pair<torch::nn::Sequential, torch::nn::Sequential> twin_mlps() {
  auto a = mlp(), b = mlp();
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
  return {a, b};
}

double lr_lambda(int64_t step) {  // the fixture's warmup 10 + linear decay to 100
  if (step < 10) return static_cast<double>(step) / 10.0;
  return std::max(0.0, static_cast<double>(100 - step) / 90.0);
}

// 100 steps of the fused optimizer reproduce torch.optim.AdamW (CPU, single-tensor path) with a
// LambdaLR schedule and per-parameter clipping, op for op: identical losses and weights.
TEST(FusedAdamW, MatchesTorchPythonAdamWBitForBit) {
  SafetensorsReader ref(fixtures_dir() / "train/adamw_mlp.safetensors");
  auto model = mlp();
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : named(*model)) p.copy_(ref.tensor("init." + name));
  }
  FusedOptimizerOptions o;
  o.adamw = {1e-2, 0.9, 0.999, 1e-8, 1e-2};
  o.lr_at = [](int64_t s) { return 1e-2 * lr_lambda(s); };
  o.max_grad_norm = 1.0;
  o.kernel = train::AdamWKernel::kSingle;
  FusedOptimizer opt(named(*model), o);
  const auto x = ref.tensor("data.x"), y = ref.tensor("data.y");
  const auto losses = ref.tensor("losses");
  for (int64_t s = 0; s < 100; ++s) {
    auto loss = torch::mse_loss(model->forward(x), y);
    ASSERT_EQ(loss.item<double>(), losses[s].item<double>()) << "step " << s;
    loss.backward();
    for (auto& [name, p] : named(*model)) ASSERT_FALSE(p.grad().defined()) << "gradient of " << name << " kept";
    opt.finish_step();
  }
  for (auto& [name, p] : named(*model)) EXPECT_TRUE(testing::same_tensor(p, ref.tensor("final." + name))) << name;
}

// Against LibTorch's own AdamW (a different implementation of the same update): 100 steps.
TEST(FusedAdamW, MatchesLibTorchAdamW) {
  torch::manual_seed(3);
  auto [a, b] = twin_mlps();
  const auto x = torch::randn({32, 8}), y = torch::randn({32, 1});
  FusedOptimizerOptions o;
  o.adamw = {3e-3, 0.9, 0.99, 1e-8, 0.1};
  FusedOptimizer fused(named(*a), o);
  torch::optim::AdamW classic(b->parameters(), torch::optim::AdamWOptions(3e-3).betas({0.9, 0.99}).eps(1e-8).weight_decay(0.1));
  for (int s = 0; s < 100; ++s) {
    torch::mse_loss(a->forward(x), y).backward();
    fused.finish_step();
    classic.zero_grad();
    torch::mse_loss(b->forward(x), y).backward();
    classic.step();
  }
  // Same formula, different operation order (LibTorch folds the bias corrections
  // differently): float32 rounding, 1e-6 relative over 100 steps.
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    EXPECT_TRUE(close_tensor("param " + std::to_string(i), a->parameters()[i], b->parameters()[i], 1e-6, 1e-5));
  }
}

// Inside an accumulation window gradients accumulate; the sync micro-batch steps once with
// the sum and frees it. Equals one step on the summed gradient.
TEST(FusedAdamW, GradientAccumulationStepsOnlyOnSync) {
  torch::manual_seed(4);
  auto [a, b] = twin_mlps();
  const auto x = torch::randn({3, 16, 8}), y = torch::randn({3, 16, 1});
  FusedOptimizerOptions o;
  o.kernel = train::AdamWKernel::kSingle;
  FusedOptimizer fused(named(*a), o);
  const auto before = a->parameters()[0].clone();
  for (int m = 0; m < 3; ++m) {
    fused.set_sync(m == 2);
    (torch::mse_loss(a->forward(x[m]), y[m]) / 3).backward();
    if (m < 2) {
      EXPECT_TRUE(a->parameters()[0].grad().defined());
      EXPECT_TRUE(torch::equal(a->parameters()[0], before)) << "stepped inside the window";
    }
  }
  EXPECT_FALSE(a->parameters()[0].grad().defined());
  EXPECT_EQ(fused.finish_step(), 1);
  // Reference: accumulate the same three backward passes, then one step per parameter.
  for (int m = 0; m < 3; ++m) (torch::mse_loss(b->forward(x[m]), y[m]) / 3).backward();
  for (auto& p : b->parameters()) {
    train::AdamWState st;
    auto g = p.grad();
    FusedOptimizer::adamw_step(p, g, st, o.adamw, o.adamw.lr, train::AdamWKernel::kSingle);
  }
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(a->parameters()[i], b->parameters()[i])) << i;
  }
}

// fp16-style loss scaling: with power-of-two scales a run without overflow equals the
// unscaled run bit for bit; an overflowing tensor skips its update and halves the scale;
// after growth_interval clean steps the scale doubles.
TEST(FusedAdamW, LossScalingIsExactAndBacksOff) {
  torch::manual_seed(8);
  auto [a, b] = twin_mlps();
  const auto x = torch::randn({16, 8}), y = torch::randn({16, 1});
  FusedOptimizerOptions plain, scaled;
  scaled.loss_scaling.enabled = true;
  scaled.loss_scaling.growth_interval = 3;
  FusedOptimizer pa(named(*a), plain), pb(named(*b), scaled);
  for (int s = 0; s < 7; ++s) {
    torch::mse_loss(a->forward(x), y).backward();
    pa.finish_step();
    (torch::mse_loss(b->forward(x), y) * pb.loss_scale()).backward();
    pb.finish_step();
  }
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(a->parameters()[i], b->parameters()[i])) << i;
  }
  EXPECT_EQ(pb.loss_scale(), 65536.0 * 4);  // doubled after steps 3 and 6
  // An overflow in one tensor: it keeps its value, the others step, the scale halves.
  const auto w_last = b->parameters().back().clone(), w_first = b->parameters()[0].clone();
  auto out = b->forward(x);
  auto loss = torch::mse_loss(out, y) * pb.loss_scale();
  b->parameters().back().register_hook([](torch::Tensor g) { return g * std::numeric_limits<float>::infinity(); });
  loss.backward();
  pb.finish_step();
  EXPECT_EQ(pb.last_skipped_tensors(), 1);
  EXPECT_TRUE(torch::equal(b->parameters().back(), w_last));
  EXPECT_FALSE(torch::equal(b->parameters()[0], w_first));
  EXPECT_EQ(pb.loss_scale(), 65536.0 * 2);
}

// --use_8bit_adam in the fused optimizer: the same steps as AdamW8bitState on its own, and a
// quarter of the state memory for large tensors.
TEST(FusedAdamW, EightBitStatesThroughTheHooks) {
  torch::manual_seed(6);
  torch::nn::Linear big(100, 100);  // 10,000 elements: quantised moments
  auto ref_w = big->weight.detach().clone();
  const auto x = torch::randn({16, 100});
  FusedOptimizerOptions o;
  o.use_8bit_adam = true;
  o.adamw.lr = 1e-3;
  FusedOptimizer opt({{"weight", big->weight}}, o);
  train::AdamW8bitState ref_state(ref_w);
  for (int64_t t = 1; t <= 5; ++t) {
    auto loss = big->forward(x).pow(2).mean();
    auto g = torch::autograd::grad({loss}, {big->weight}, {}, /*retain_graph=*/true)[0];
    loss.backward();
    opt.finish_step();
    ref_state.step(ref_w, g, train::AdamWHyper{1e-3, 0.9, 0.999, 1e-8, 1e-2}, t);
    ASSERT_TRUE(testing::same_tensor(big->weight, ref_w)) << "step " << t;
  }
  EXPECT_EQ(opt.state_bytes(), ref_state.state_bytes());
  EXPECT_LT(opt.state_bytes(), 3 * 10000);  // vs 8 bytes per element for fp32 moments
  opt.drop_state("weight");
  EXPECT_EQ(opt.state_bytes(), 0);
}

// 10 optimizer steps on micro-sd's UNet (2 micro-batches each) against a Python reference of
// the same semantics (diffusers' UNet, torch's AdamW per tensor): full fine-tuning, and LISA
// with recorded active sets re-drawn every 3 steps (state dropped, global-step lr, per-tensor
// clipping).
class UNetTrainingParity : public ::testing::TestWithParam<std::string> {};

TEST_P(UNetTrainingParity, LossesAndFinalWeights) {
  const std::string regime = GetParam();
  SafetensorsReader ref(fixtures_dir() / "train/lisa_unet.safetensors");
  const auto meta = testing::read_json(fixtures_dir() / "train/lisa_unet.json");
  auto unet = models::load_unet(fixtures_dir() / "pipelines/micro-sd/unet");
  unet->train();
  FusedOptimizerOptions o;
  o.adamw = {1e-3, 0.9, 0.999, 1e-8, 1e-2};
  o.lr_at = [](int64_t s) { return 1e-3 * std::min(1.0, static_cast<double>(s + 1) / 4.0); };
  o.max_grad_norm = 1.0;
  o.kernel = train::AdamWKernel::kSingle;
  std::unique_ptr<FusedOptimizer> full;
  std::unique_ptr<Lisa> lisa;
  const auto draws = meta.at("draws").get<std::vector<std::vector<std::size_t>>>();
  if (regime == "full") {
    full = std::make_unique<FusedOptimizer>(named(*unet), o);
  } else {
    LisaOptions lo;
    lo.n_active = 12;
    lo.interval = 1000000;  // the recorded sets are replayed below
    lisa = std::make_unique<Lisa>(*unet, lo, o);
    lisa->activate_units(draws[0]);
  }
  FusedOptimizer& opt = full ? *full : lisa->optimizer();
  const auto latents = ref.tensor("data.latents"), noise = ref.tensor("data.noise");
  const auto timesteps = ref.tensor("data.timesteps"), context = ref.tensor("data.context");
  const auto losses = ref.tensor(regime + ".losses");
  double worst_loss = 0;
  for (int64_t step = 0; step < 10; ++step) {
    for (int64_t micro = 0; micro < 2; ++micro) {
      const int64_t k = step * 2 + micro;
      opt.set_sync(micro == 1);
      auto pred = unet->forward(latents[k] + noise[k], timesteps[k], context[k]);
      auto loss = torch::mse_loss(pred, noise[k]);
      worst_loss = std::max(worst_loss, std::abs(loss.item<double>() - losses[k].item<double>()));
      (loss / 2).backward();
    }
    const int64_t done = opt.finish_step();
    if (lisa && done % 3 == 0) lisa->activate_units(draws[static_cast<std::size_t>(done / 3)]);
  }
  // The forward passes agree to float32 rounding (see test_models_parity); AdamW normalises
  // each update, so a gradient element near zero turns its rounding into an update of up to lr:
  // after 10 steps the weights agree to about lr * 1e-3 with a reference made on the same CPU
  // (1.9e-6 here). The committed reference was made on another one, and torch itself does not
  // repeat across CPUs to that level: the same script on an AMD EPYC (AVX2) differs from the
  // committed file by 3.4e-6 (its kernels sum in another order), and lisadiff there by 4.2e-6.
  // The bound, lr * 1e-2, covers that spread; a wrong update rule moves weights by ~lr per step.
  EXPECT_LT(worst_loss, 1e-5);
  double worst = 0;
  for (const auto& p : unet->named_parameters()) {
    const auto expected = ref.tensor(regime + ".final." + p.key());
    worst = std::max(worst, (p.value() - expected).abs().max().item<double>());
    EXPECT_TRUE(close_tensor(p.key(), p.value(), expected, 1e-5, 1e-4));
  }
  std::cout << regime << ": max |loss diff| " << worst_loss << ", max |weight diff| " << worst << "\n";
}

INSTANTIATE_TEST_SUITE_P(Regimes, UNetTrainingParity, ::testing::Values("full", "lisa"));

// ---------------------------------------------------------------------------------------
// LISA semantics on a small model with many tensors.

torch::nn::Sequential deep_mlp() {
  torch::nn::Sequential s;
  for (int i = 0; i < 10; ++i) s->push_back(torch::nn::Linear(6, 6));
  return s;
}

std::set<std::string> active(const Lisa& l) {
  auto n = l.active_names();
  return {n.begin(), n.end()};
}

TEST(Lisa, ExactlyNUnitsBesidesAlwaysOnAndRedrawEveryKOptimizerSteps) {
  torch::manual_seed(0);
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 3;
  lo.interval = 2;
  lo.seed = 11;
  Lisa lisa(*m, lo, {});
  const auto& units = lisa.sampler().units();
  ASSERT_EQ(units.size(), 20u);  // 10 weights + 10 biases
  EXPECT_TRUE(units.front().always_on);
  EXPECT_TRUE(units.back().always_on);
  const auto x = torch::randn({4, 6});
  std::vector<std::set<std::string>> sets;
  for (int step = 0; step < 6; ++step) {
    EXPECT_EQ(lisa.active_names().size(), 5u) << "2 always-on + 3 drawn";
    EXPECT_EQ(lisa.active_units().size(), 3u);
    sets.push_back(active(lisa));
    for (int micro = 0; micro < 3; ++micro) {  // accumulation: 3 micro-batches per step
      lisa.set_sync(micro == 2);
      m->forward(x).pow(2).mean().backward();
      EXPECT_EQ(lisa.sampler().draws(), 1 + step / 2) << "drew inside an accumulation window";
    }
    lisa.step();
  }
  EXPECT_EQ(sets[0], sets[1]);
  EXPECT_EQ(sets[2], sets[3]);
  EXPECT_EQ(sets[4], sets[5]);
  EXPECT_NE(sets[0], sets[2]);  // with 18 candidates, three equal draws in a row are unlikely
}

TEST(Lisa, SameSeedSameSetsInEveryInstance) {
  auto draws = [](uint64_t seed) {
    auto m = deep_mlp();
    LisaOptions lo;
    lo.n_active = 4;
    lo.interval = 1;
    lo.seed = seed;
    train::LisaSampler sampler(named(*m), lo);
    std::vector<std::vector<std::size_t>> out;
    for (int i = 0; i < 20; ++i) out.push_back(sampler.draw());
    return out;
  };
  EXPECT_EQ(draws(5), draws(5));
  EXPECT_NE(draws(5), draws(6));
  // Resuming from a saved sampler state continues the same sequence.
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 4;
  lo.seed = 5;
  train::LisaSampler a(named(*m), lo), b(named(*m), lo);
  for (int i = 0; i < 7; ++i) a.draw();
  b.load_state(a.state());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a.draw(), b.draw());
}

TEST(Lisa, FrozenTensorsKeepTheirBytesAndDeactivatedStateIsFreed) {
  torch::manual_seed(1);
  auto m = deep_mlp();
  std::map<std::string, torch::Tensor> initial;
  for (auto& [n, p] : named(*m)) initial[n] = p.detach().clone();
  LisaOptions lo;
  lo.n_active = 2;
  lo.interval = 1;
  lo.seed = 3;
  Lisa lisa(*m, lo, {});
  std::set<std::string> ever;
  const auto x = torch::randn({4, 6});
  for (int step = 0; step < 5; ++step) {
    for (auto& n : lisa.active_names()) ever.insert(n);
    const auto before = active(lisa);
    m->forward(x).pow(2).mean().backward();
    int64_t bytes = 0;  // exp_avg + exp_avg_sq (fp32) + the step scalar of every active tensor
    for (auto& n : before) bytes += 2 * 4 * initial[n].numel() + 4;
    EXPECT_EQ(lisa.optimizer().state_bytes(), bytes) << "exactly the active tensors hold state";
    lisa.step();
    for (auto& [n, p] : named(*m)) {
      if (!active(lisa).count(n)) EXPECT_FALSE(lisa.optimizer().has_state(n)) << n << ": state kept after deactivation";
    }
  }
  for (auto& [n, p] : named(*m)) {
    if (!ever.count(n)) EXPECT_TRUE(testing::same_tensor(p, initial[n])) << n << " changed without being active";
    else EXPECT_FALSE(torch::equal(p, initial[n])) << n << " was active but did not change";
  }
}

TEST(Lisa, KeepStateOptionKeepsMoments) {
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 2;
  lo.interval = 1;
  lo.keep_state = true;
  Lisa lisa(*m, lo, {});
  const auto first = active(lisa);
  m->forward(torch::randn({4, 6})).pow(2).mean().backward();
  lisa.step();
  for (auto& n : first) EXPECT_TRUE(lisa.optimizer().has_state(n)) << n;
}

// A tensor first activated at global step s gets lr(s), not a restarted schedule.
TEST(Lisa, LateActivatedTensorGetsTheGlobalStepLr) {
  torch::manual_seed(2);
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 2;
  lo.interval = 1;
  lo.seed = 9;
  FusedOptimizerOptions o;
  o.adamw.weight_decay = 0;
  o.lr_at = [](int64_t s) { return 1e-3 * static_cast<double>(s + 1); };
  Lisa lisa(*m, lo, o);
  std::set<std::string> seen = active(lisa);
  const auto x = torch::randn({4, 6});
  int checked = 0;
  for (int step = 0; step < 8; ++step) {
    const auto now = active(lisa);
    std::map<std::string, torch::Tensor> before;
    for (auto& [n, p] : named(*m)) before[n] = p.detach().clone();
    m->forward(x).pow(2).mean().backward();
    for (auto& [n, p] : named(*m)) {
      if (!now.count(n) || step == 0 || seen.count(n)) continue;
      // AdamW's first update is lr * g / (|g| + eps'): every element moves by about lr(step).
      const double moved = (p - before[n]).abs().max().item<double>();
      EXPECT_NEAR(moved, 1e-3 * (step + 1), 1e-3 * (step + 1) * 1e-3) << n << " first active at step " << step;
      ++checked;
    }
    for (auto& n : now) seen.insert(n);
    lisa.step();
  }
  EXPECT_GT(checked, 0);
}

TEST(Lisa, BlockUnitsMoveWeightAndBiasTogether) {
  EXPECT_EQ(train::block_of("down_blocks.0.resnets.1.conv1.weight"), "down_blocks.0.resnets.1");
  EXPECT_EQ(train::block_of("up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q.weight"), "up_blocks.1.attentions.2");
  EXPECT_EQ(train::block_of("down_blocks.0.downsamplers.0.conv.bias"), "down_blocks.0.downsamplers.0");
  EXPECT_EQ(train::block_of("text_model.encoder.layers.11.mlp.fc1.weight"), "text_model.encoder.layers.11");
  EXPECT_EQ(train::block_of("conv_in.weight"), "conv_in");
  EXPECT_EQ(train::block_of("time_embedding.linear_1.bias"), "time_embedding.linear_1");
  auto unet = models::load_unet(fixtures_dir() / "pipelines/micro-sd/unet");
  LisaOptions lo;
  lo.unit = train::LisaUnit::kBlock;
  lo.n_active = 2;
  Lisa lisa(*unet, lo, {});
  std::set<std::string> names;
  for (const auto& u : lisa.sampler().units()) names.insert(u.name);
  EXPECT_TRUE(names.count("mid_block.attentions.0"));
  EXPECT_TRUE(names.count("down_blocks.1.resnets.0"));
  for (const auto& n : lisa.active_names()) {
    if (n.size() > 7 && n.substr(n.size() - 7) == ".weight") {
      const auto bias = n.substr(0, n.size() - 7) + ".bias";
      if (unet->named_parameters().contains(bias)) EXPECT_TRUE(unet->named_parameters()[bias].requires_grad()) << bias;
    }
  }
}

TEST(Lisa, BadOptionsAreErrors) {
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 19;
  EXPECT_THROW_WITH(Lisa(*m, lo, {}), "19 active units asked for, but only 18 can be drawn");
  lo.n_active = 1;
  lo.always_on = {"no_such_module"};
  EXPECT_THROW_WITH(Lisa(*m, lo, {}), "matches no parameter");
  EXPECT_THROW_WITH(LisaOptions::unit_from_name("layer"), "unknown LISA unit 'layer'");
}

// Gradient checkpointing recomputes inside the backward; the fused steps fire there and give
// the same weights as without checkpointing.
TEST(Lisa, FusedStepsWithGradientCheckpointing) {
  SafetensorsReader ref(fixtures_dir() / "models/case-unet-micro.safetensors");
  std::vector<torch::Tensor> finals[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    auto unet = models::load_unet(fixtures_dir() / "pipelines/micro-sd/unet");
    unet->train();
    unet->set_gradient_checkpointing(ckpt == 1);
    LisaOptions lo;
    lo.n_active = 40;
    lo.seed = 1;
    lo.interval = 1;
    Lisa lisa(*unet, lo, {});
    for (int step = 0; step < 3; ++step) {
      auto out = unet->forward(ref.tensor("input.sample"), ref.tensor("input.timesteps"),
                               ref.tensor("input.encoder_hidden_states"));
      (out * ref.tensor("probe")).sum().backward();
      lisa.step();
    }
    for (auto& p : unet->parameters()) finals[ckpt].push_back(p.detach().clone());
  }
  for (std::size_t i = 0; i < finals[0].size(); ++i) {
    EXPECT_TRUE(close_tensor("param " + std::to_string(i), finals[1][i], finals[0][i], 1e-6, 1e-5));
  }
}

// Misuse and edge cases found in review: each is an error or handled, never silent.
TEST(FusedAdamW, TiedWeightsAreRefusedWithoutLeavingHooks) {
  torch::nn::Linear a(3, 3);
  EXPECT_THROW_WITH(FusedOptimizer({{"w", a->weight}, {"tied", a->weight}}, {}), "are the same tensor");
  FusedOptimizer ok({{"w", a->weight}}, {});  // the failed constructor left no hook behind
  a->forward(torch::randn({2, 3})).sum().backward();
  EXPECT_EQ(ok.finish_step(), 1);
}

TEST(FusedAdamW, ParameterSharedAcrossACheckpointedBlockIsAnError) {
  torch::nn::Linear a(3, 3);
  FusedOptimizer opt({{"w", a->weight}, {"b", a->bias}}, {});
  auto x = torch::randn({2, 3});
  auto inside = models::checkpoint1(*a, [a](const models::TensorList& in) mutable { return a->forward(in[0]); }, {x});
  auto outside = a->forward(x);  // the same weight outside the checkpointed segment
  EXPECT_THROW_WITH((inside + outside).sum().backward(), "received two separate gradients in one step");
}

TEST(FusedAdamW, TensorMissingFromTheSyncMicroBatchIsSteppedAtFinish) {
  torch::nn::Linear a(3, 3), b(3, 3);
  FusedOptimizer opt({{"a", a->weight}, {"b", b->weight}}, {});
  const auto before = b->weight.clone();
  opt.set_sync(false);
  (a->forward(torch::randn({2, 3})) + b->forward(torch::randn({2, 3}))).sum().backward();
  opt.set_sync(true);
  a->forward(torch::randn({2, 3})).sum().backward();  // b is not in this graph
  opt.finish_step();
  EXPECT_FALSE(b->weight.grad().defined()) << "b's gradient leaked into the next window";
  EXPECT_FALSE(torch::equal(b->weight, before));
  EXPECT_TRUE(opt.has_state("b"));
}

TEST(FusedAdamW, HalfPrecisionTrainedTensorIsAnError) {
  torch::nn::Linear a(3, 3);
  a->to(torch::kBFloat16);
  FusedOptimizer opt({{"w", a->weight}}, {});
  EXPECT_THROW_WITH(a->forward(torch::randn({2, 3}, torch::kBFloat16)).sum().backward(), "'w' is BFloat16",
                    "must be float32");
}

TEST(Lisa, StateFromAnotherRunIsAnError) {
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 2;
  Lisa a(*m, lo, {});
  const auto state = a.state();
  auto other = deep_mlp();
  LisaOptions blocks = lo;
  blocks.unit = train::LisaUnit::kBlock;
  Lisa b(*other, blocks, {});
  EXPECT_THROW_WITH(b.load_state(state), "LISA state: saved for 20 tensor units");
  auto bad = state;
  bad["active_units"] = {0, 1};  // 0 is always on
  auto third = deep_mlp();
  Lisa c(*third, lo, {});
  EXPECT_THROW_WITH(c.load_state(bad), "is not a drawable unit");
  c.load_state(state);
  EXPECT_EQ(c.active_units(), a.active_units());
}

// Found by fuzz/fuzz_training_state.cpp (UBSan): "n_active": 200000000000000000000 is read
// by nlohmann as a float, and get<int64_t>() of 2e20 is undefined behaviour (a float such as
// 2.5 was silently truncated). Every number of the state must be a whole number in range, and
// the error names the key.
TEST(Lisa, StateNumbersMustBeWholeAndInRange) {
  auto m = deep_mlp();
  LisaOptions lo;
  lo.n_active = 2;
  Lisa a(*m, lo, {});
  const auto state = a.state();
  auto other = deep_mlp();
  Lisa b(*other, lo, {});
  const auto with = [&](const char* key, const nlohmann::json& value) {
    auto bad = state;
    bad[key] = value;
    return bad;
  };
  EXPECT_THROW_WITH(b.load_state(with("n_active", nlohmann::json::parse("200000000000000000000"))),
                    "LISA state: n_active is 2e+20, not a whole number");
  EXPECT_THROW_WITH(b.load_state(with("n_active", 2.0)), "LISA state: n_active is 2.0, not a whole number");
  EXPECT_THROW_WITH(b.load_state(with("units", nlohmann::json::parse("18446744073709551615"))),
                    "LISA state: units is 18446744073709551615, not a whole number");
  EXPECT_THROW_WITH(b.load_state(with("global_step", -3)), "LISA state: global_step is -3, not a whole number");
  EXPECT_THROW_WITH(b.load_state(with("active_units", {1, 2.5})), "LISA state: active_units holds 2.5");
  EXPECT_THROW_WITH(b.load_state(with("activation_counts", "many")), "LISA state: activation_counts is string");
  auto sampler = state;
  sampler["sampler"]["draws"] = 1e300;
  EXPECT_THROW_WITH(b.load_state(sampler), "LISA sampler state: draws is 1e+300, not a whole number");
  b.load_state(state);  // the untouched state still loads
  EXPECT_EQ(b.active_units(), a.active_units());
}

TEST(Lisa, SmallModelsWorkWithTheDefaultRate) {
  torch::nn::Linear a(2, 2);  // 2 tensors, both always on: 8 / 2 would be a rate of 4
  Lisa lisa(*a, {}, {});
  EXPECT_EQ(lisa.active_names().size(), 2u);
}

// ATen's _fused_adamw_ reads the step count but does not advance it (torch.optim adds 1
// around the call): the kFused kernel must count steps itself, or its first bias
// correction divides by zero. It agrees with the single-tensor path to float rounding.
TEST(FusedAdamW, FusedKernelCountsStepsAndAgreesWithTheSingleTensorPath) {
  torch::manual_seed(12);
  auto [a, b] = twin_mlps();
  const auto x = torch::randn({16, 8}), y = torch::randn({16, 1});
  FusedOptimizerOptions single, fused;
  single.kernel = train::AdamWKernel::kSingle;
  fused.kernel = train::AdamWKernel::kFused;
  single.adamw.lr = fused.adamw.lr = 1e-2;
  FusedOptimizer oa(named(*a), single), ob(named(*b), fused);
  for (int s = 0; s < 6; ++s) {
    torch::mse_loss(a->forward(x), y).backward();
    oa.finish_step();
    torch::mse_loss(b->forward(x), y).backward();
    ob.finish_step();
  }
  for (const auto& [name, p] : named(*b)) {
    ASSERT_NE(ob.state(name), nullptr) << name;
    EXPECT_EQ(ob.state(name)->step.item<float>(), 6.0f) << name;
  }
  const auto pa = a->parameters(), pb = b->parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    // Both compute AdamW in float32; the fused kernel orders the operations differently.
    EXPECT_TRUE(close_tensor("parameter " + std::to_string(i), pb[i], pa[i], 1e-6, 1e-5));
  }
}

// fp16 loss scaling with the fused kernel: the per-tensor overflow flag stays on the device
// and the kernel skips the update (weights, moments and step count unchanged); the flags are
// read once in finish_step, which counts the skipped tensor and halves the scale.
TEST(FusedAdamW, FusedKernelSkipsAnOverflowingTensorOnTheDevice) {
  torch::manual_seed(9);
  auto [a, b] = twin_mlps();
  const auto x = torch::randn({16, 8}), y = torch::randn({16, 1});
  FusedOptimizerOptions plain, scaled;
  plain.kernel = scaled.kernel = train::AdamWKernel::kFused;
  scaled.loss_scaling.enabled = true;
  FusedOptimizer pa(named(*a), plain), pb(named(*b), scaled);
  for (int s = 0; s < 3; ++s) {  // no overflow: scaled equals unscaled bit for bit
    torch::mse_loss(a->forward(x), y).backward();
    pa.finish_step();
    (torch::mse_loss(b->forward(x), y) * pb.loss_scale()).backward();
    pb.finish_step();
    EXPECT_EQ(pb.last_skipped_tensors(), 0);
    EXPECT_EQ(pb.last_grad_norm(), pa.last_grad_norm());
  }
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(a->parameters()[i], b->parameters()[i])) << i;
  }
  const auto names = named(*b);
  const auto& last = names.back().first;
  const auto w_last = b->parameters().back().clone(), w_first = b->parameters()[0].clone();
  const auto m_last = pb.state(last)->exp_avg.clone();
  auto loss = torch::mse_loss(b->forward(x), y) * pb.loss_scale();
  b->parameters().back().register_hook([](torch::Tensor g) { return g * std::numeric_limits<float>::infinity(); });
  loss.backward();
  pb.finish_step();
  EXPECT_EQ(pb.last_skipped_tensors(), 1);
  EXPECT_TRUE(torch::equal(b->parameters().back(), w_last));
  EXPECT_TRUE(torch::equal(pb.state(last)->exp_avg, m_last));
  EXPECT_EQ(pb.state(last)->step.item<float>(), 3.0f);
  EXPECT_EQ(pb.state(names.front().first)->step.item<float>(), 4.0f);
  EXPECT_FALSE(torch::equal(b->parameters()[0], w_first));
  EXPECT_TRUE(std::isfinite(pb.last_grad_norm()));  // over the tensors that stepped
  EXPECT_EQ(pb.loss_scale(), 32768.0);
  EXPECT_EQ(pb.schedule_step(), 4);  // some tensors stepped: the schedule advances
}

// Moments loaded from a checkpoint take the parameter's memory layout: the fused kernel
// walks weight, gradient and moments in one order, so contiguous moments of a channels_last
// weight would pair the wrong elements.
TEST(FusedAdamW, LoadedMomentsKeepTheParametersLayout) {
  torch::manual_seed(2);
  auto make = [] {
    auto w = torch::randn({8, 4, 3, 3}).contiguous(torch::MemoryFormat::ChannelsLast);
    w.set_requires_grad(true);
    return w;
  };
  auto straight = make();
  auto resumed = torch::empty_like(straight, torch::MemoryFormat::Preserve);
  {
    torch::NoGradGuard no_grad;
    resumed.copy_(straight);
  }
  resumed.set_requires_grad(true);
  const auto x = torch::randn({2, 4, 6, 6});
  const auto loss = [&](const torch::Tensor& w) { return torch::conv2d(x, w).pow(2).mean(); };
  FusedOptimizerOptions o;
  o.kernel = train::AdamWKernel::kFused;
  o.adamw.lr = 1e-2;
  FusedOptimizer a({{"w", straight}}, o);
  for (int s = 0; s < 3; ++s) {
    loss(straight).backward();
    a.finish_step();
  }
  {
    torch::NoGradGuard no_grad;
    resumed.copy_(straight);
  }
  FusedOptimizer b({{"w", resumed}}, o);
  std::vector<std::pair<std::string, torch::Tensor>> saved;
  for (const auto& [k, t] : a.state_tensors()) saved.emplace_back(k, t.contiguous());  // as a file holds them
  b.load_state_tensors(saved, "optimizer.safetensors");
  b.set_global_step(3);
  EXPECT_EQ(b.state("w")->exp_avg.strides(), resumed.strides());
  EXPECT_EQ(b.state("w")->exp_avg_sq.strides(), resumed.strides());
  for (int s = 0; s < 3; ++s) {
    loss(straight).backward();
    a.finish_step();
    loss(resumed).backward();
    b.finish_step();
  }
  EXPECT_TRUE(testing::same_tensor(resumed, straight));
}

// A loss scale belongs to an fp16 run: a file with one is refused by an optimizer that does
// not scale (every later loss would be multiplied by it and never unscaled), and the other
// way round.
TEST(FusedAdamW, LossScaleStateMustMatchTheRun) {
  auto m = mlp();
  FusedOptimizerOptions scaled, plain;
  scaled.loss_scaling.enabled = true;
  std::vector<std::pair<std::string, torch::Tensor>> with_scale, without_scale;
  {
    FusedOptimizer s(named(*m), scaled);
    s.set_loss_scale(1024.0, 7);
    with_scale = s.state_tensors();
    EXPECT_THROW_WITH(s.set_loss_scale(1000.0, 0), "not a positive power of two");
  }
  {
    FusedOptimizer p(named(*m), plain);
    without_scale = p.state_tensors();
    EXPECT_THROW_WITH(p.load_state_tensors(with_scale, "ckpt/optimizer.safetensors"), "ckpt/optimizer.safetensors",
                      "holds a loss scale", "does not scale the loss");
    EXPECT_EQ(p.loss_scale(), 1.0);
    EXPECT_THROW_WITH(p.set_loss_scale(2.0, 0), "loss scaling is off");
  }
  FusedOptimizer s(named(*m), scaled);
  EXPECT_THROW_WITH(s.load_state_tensors(without_scale, "ckpt/optimizer.safetensors"), "holds no loss scale",
                    "scales the loss");
  s.load_state_tensors(with_scale, "ckpt/optimizer.safetensors");
  EXPECT_EQ(s.loss_scale(), 1024.0);
  EXPECT_EQ(s.growth_tracker(), 7);
}

// accelerate does not step the lr scheduler when GradScaler skipped the optimizer step: a
// classic fp16 step whose gradients overflow leaves the schedule where it was.
TEST(FusedAdamW, ClassicOverflowDoesNotAdvanceTheSchedule) {
  auto m = mlp();
  FusedOptimizerOptions o;
  o.classic = true;
  o.loss_scaling.enabled = true;
  o.lr_at = [](int64_t s) { return 1e-3 * static_cast<double>(s + 1); };
  FusedOptimizer opt(named(*m), o);
  const auto x = torch::randn({16, 8}), y = torch::randn({16, 1});
  (torch::mse_loss(m->forward(x), y) * std::numeric_limits<float>::infinity()).backward();
  EXPECT_EQ(opt.finish_step(), 1);
  EXPECT_EQ(opt.last_skipped_tensors(), static_cast<int64_t>(m->parameters().size()));
  EXPECT_EQ(opt.schedule_step(), 0);
  EXPECT_EQ(opt.current_lr(), 1e-3);  // lr(0): the next update is the first one
  (torch::mse_loss(m->forward(x), y) * opt.loss_scale()).backward();
  EXPECT_EQ(opt.finish_step(), 2);
  EXPECT_EQ(opt.schedule_step(), 1);
  EXPECT_EQ(opt.current_lr(), 2e-3);
  opt.set_global_step(2);  // a resume sets both, then the saved schedule step
  opt.set_schedule_step(1);
  EXPECT_EQ(opt.schedule_step(), 1);
  EXPECT_THROW_WITH(opt.set_schedule_step(3), "schedule step 3");
}

// The drop-in API: ending a step after a backward pass that was not the window's sync one
// would advance the step with nothing updated; it is an error instead.
TEST(FusedAdamW, FinishStepAfterANonSyncBackwardIsAnError) {
  auto m = mlp();
  FusedOptimizer opt(named(*m), {});
  opt.set_sync(false);
  torch::mse_loss(m->forward(torch::randn({4, 8})), torch::randn({4, 1})).backward();
  EXPECT_THROW_WITH(opt.finish_step(), "not a sync micro-batch", "set_sync(true)");
  EXPECT_EQ(opt.global_step(), 0);
  opt.set_sync(true);
  torch::mse_loss(m->forward(torch::randn({4, 8})), torch::randn({4, 1})).backward();
  EXPECT_EQ(opt.finish_step(), 1);
  EXPECT_FALSE(m->parameters()[0].grad().defined());

  auto n = mlp();
  LisaOptions lo;
  lo.n_active = 1;
  Lisa lisa(*n, lo, {});
  lisa.set_sync(false);
  n->forward(torch::randn({4, 8})).pow(2).mean().backward();
  EXPECT_THROW_WITH(lisa.step(), "not a sync micro-batch");
  EXPECT_EQ(lisa.optimizer().global_step(), 0);
}

// Loading a checkpoint into an optimizer that already trained: the per-tensor record of the
// steps taken is forgotten, so the steps after the load are a fresh resume (not an error
// about a tensor stepped twice in one step).
TEST(FusedAdamW, SetGlobalStepBackwardsForgetsTheStepsTaken) {
  auto m = mlp();
  FusedOptimizer opt(named(*m), {});
  const auto x = torch::randn({4, 8}), y = torch::randn({4, 1});
  auto first = m->parameters()[0];
  for (int s = 0; s < 4; ++s) {
    first.set_requires_grad(s < 3);  // the first tensor last stepped at step 2, the others at 3
    torch::mse_loss(m->forward(x), y).backward();
    opt.finish_step();
  }
  first.set_requires_grad(true);
  opt.set_global_step(2);
  for (int s = 0; s < 2; ++s) {
    torch::mse_loss(m->forward(x), y).backward();
    EXPECT_NO_THROW(opt.finish_step());
  }
  EXPECT_EQ(opt.global_step(), 4);
}

// The drop-in example learns its task with only a few tensors active at a time.
TEST(Lisa, ExampleLearnsTheSpirals) {
  const auto example = std::filesystem::path(testing::cli_path()).parent_path().parent_path() / "examples/lisa_mlp";
  const auto [rc, out] = testing::run_command(example.string() + " 700 2>&1");
  ASSERT_EQ(rc, 0) << out;
  const auto at = out.find("final accuracy ");
  ASSERT_NE(at, std::string::npos) << out;
  EXPECT_GT(std::stod(out.substr(at + 15)), 0.9) << out;
}

}  // namespace
}  // namespace lisadiff
