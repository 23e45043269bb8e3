// Parity of the models with diffusers/transformers: the fixtures under tests/fixtures/models
// (scripts/make_fixtures.py) hold inputs, outputs and the gradient of a fixed scalar loss for
// every parameter, computed in float32 by the Python reference from the same weights. The
// models are loaded through the user's loaders (load_unet, load_vae, load_clip_text).
#include <gtest/gtest.h>

#include <iostream>

#include <ATen/autocast_mode.h>

#include "config/unet_config.h"
#include "io/safetensors.h"
#include "models/blocks.h"
#include "models/checkpoint.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using io::SafetensorsReader;
using testing::close_tensor;
using testing::fixtures_dir;

// Same ops on the same CPU with the same LibTorch as the reference, so the numbers agree to
// float32 rounding; the differences come from summation order inside fused kernels (conv,
// GEMM blocking, SDPA) and grow with depth. Outputs: 1e-5 absolute + 1e-4 relative.
// Gradients sum over batch and positions, so they get 1e-4 absolute (their scale is ~1-100).
constexpr double kOutAtol = 1e-5, kOutRtol = 1e-4;
constexpr double kGradAtol = 1e-4, kGradRtol = 1e-4;

std::filesystem::path models_dir() { return fixtures_dir() / "models"; }
std::filesystem::path pipeline(const std::string& name) { return fixtures_dir() / "pipelines" / name; }

// Compares the gradient of every named parameter with "grad.<name>" in the reference, and
// checks that the reference holds no gradient the model lacks.
// `prefix` is dropped from our names first (transformers 5 names CLIP keys without it).
void expect_grads(const torch::nn::Module& model, const SafetensorsReader& ref, const std::string& prefix = "") {
  std::size_t n = 0;
  for (const auto& p : model.named_parameters()) {
    ++n;
    ASSERT_TRUE(p.value().grad().defined()) << "no gradient for " << p.key();
    ASSERT_EQ(p.key().compare(0, prefix.size(), prefix), 0) << p.key();
    const auto name = "grad." + p.key().substr(prefix.size());
    EXPECT_TRUE(close_tensor(name, p.value().grad(), ref.tensor(name), kGradAtol, kGradRtol));
  }
  std::size_t in_ref = 0;
  for (const auto& e : ref.entries()) in_ref += e.name.rfind("grad.", 0) == 0;
  EXPECT_EQ(n, in_ref);
}

// Folders are relative to tests/fixtures: parameters are built before main(), when the
// fixture location (an environment variable set by ctest) may not be known yet.
struct UNetCase {
  std::string dir;
  std::string file;
  bool cond;
};
void PrintTo(const UNetCase& c, std::ostream* os) { *os << c.file; }

class UNetParity : public ::testing::TestWithParam<std::tuple<UNetCase, bool>> {};

TEST_P(UNetParity, OutputAndGradients) {
  const auto& [c, checkpointing] = GetParam();
  auto unet = models::load_unet(fixtures_dir() / c.dir);
  unet->train();
  unet->set_gradient_checkpointing(checkpointing);
  SafetensorsReader ref(models_dir() / c.file);
  torch::Tensor cond;
  if (c.cond) {
    cond = models::guidance_scale_embedding(ref.tensor("input.guidance"), *unet->config.time_cond_proj_dim);
    EXPECT_TRUE(close_tensor("timestep_cond", cond, ref.tensor("input.timestep_cond"), 0, 0));
  }
  auto out = unet->forward(ref.tensor("input.sample"), ref.tensor("input.timesteps"),
                           ref.tensor("input.encoder_hidden_states"), cond);
  auto result = close_tensor("output.sample", out, ref.tensor("output.sample"), kOutAtol, kOutRtol);
  EXPECT_TRUE(result);
  std::cout << c.file << (checkpointing ? " (checkpointed) " : " ") << result.message() << "\n";
  (out * ref.tensor("probe")).sum().backward();
  expect_grads(*unet, ref);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, UNetParity,
    ::testing::Combine(::testing::Values(UNetCase{"pipelines/micro-sd/unet", "case-unet-micro.safetensors", false},
                                         UNetCase{"pipelines/micro-sd/unet", "case-unet-micro-odd.safetensors", false},
                                         UNetCase{"pipelines/lcm-micro/unet", "case-unet-lcm.safetensors", true},
                                         UNetCase{"models/unet-ip2p-lcm", "case-unet-ip2p-lcm.safetensors", true}),
                       ::testing::Bool()),
    [](const auto& info) {
      auto name = std::get<0>(info.param).file;
      name = name.substr(5, name.size() - 5 - 12);  // case-<...>.safetensors
      for (auto& ch : name) ch = ch == '-' ? '_' : ch;
      return name + (std::get<1>(info.param) ? "_checkpointed" : "");
    });

class VAEParity : public ::testing::TestWithParam<bool> {};

TEST_P(VAEParity, EncodeSampleDecodeAndGradients) {
  auto vae = models::load_vae(pipeline("micro-sd") / "vae");
  vae->train();
  vae->set_gradient_checkpointing(GetParam());
  SafetensorsReader ref(models_dir() / "case-vae-micro.safetensors");
  auto post = vae->encode(ref.tensor("input.image"));
  EXPECT_TRUE(close_tensor("output.mean", post.mean, ref.tensor("output.mean"), kOutAtol, kOutRtol));
  EXPECT_TRUE(close_tensor("output.logvar", post.logvar, ref.tensor("output.logvar"), kOutAtol, kOutRtol));
  EXPECT_TRUE(close_tensor("output.kl", post.kl(), ref.tensor("output.kl"), kOutAtol, kOutRtol));
  auto image = vae->decode(post.sample_with(ref.tensor("input.noise")));
  auto result = close_tensor("output.decoded", image, ref.tensor("output.decoded"), kOutAtol, kOutRtol);
  EXPECT_TRUE(result);
  std::cout << "vae " << result.message() << "\n";
  ((image * ref.tensor("probe")).sum() + post.kl().sum()).backward();
  expect_grads(*vae, ref);
}

INSTANTIATE_TEST_SUITE_P(Cases, VAEParity, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "checkpointed" : "plain"; });

struct ClipCase {
  std::string dir;
  std::string file;
};
void PrintTo(const ClipCase& c, std::ostream* os) { *os << c.file; }

class ClipParity : public ::testing::TestWithParam<std::tuple<ClipCase, bool>> {};

TEST_P(ClipParity, OutputsAndGradients) {
  const auto& [c, checkpointing] = GetParam();
  auto clip = models::load_clip_text(fixtures_dir() / c.dir);
  clip->train();
  clip->set_gradient_checkpointing(checkpointing);
  SafetensorsReader ref(models_dir() / c.file);
  auto out = clip->forward(ref.tensor("input.ids"), {}, /*output_hidden_states=*/true);
  auto result = close_tensor("output.last_hidden_state", out.last_hidden_state, ref.tensor("output.last_hidden_state"),
                             kOutAtol, kOutRtol);
  EXPECT_TRUE(result);
  std::cout << c.file << " " << result.message() << "\n";
  EXPECT_TRUE(close_tensor("output.pooled", out.pooled, ref.tensor("output.pooled"), kOutAtol, kOutRtol));
  const auto& hs = out.hidden_states;
  ASSERT_EQ(hs.size(), static_cast<std::size_t>(clip->config.num_hidden_layers + 1));
  EXPECT_TRUE(close_tensor("output.penultimate", hs[hs.size() - 2], ref.tensor("output.penultimate"), kOutAtol, kOutRtol));
  {
    torch::NoGradGuard no_grad;
    auto masked = clip->forward(ref.tensor("input.short_ids"), ref.tensor("input.short_mask"));
    EXPECT_TRUE(close_tensor("output.masked_last_hidden_state", masked.last_hidden_state,
                             ref.tensor("output.masked_last_hidden_state"), kOutAtol, kOutRtol));
    EXPECT_TRUE(close_tensor("output.masked_pooled", masked.pooled, ref.tensor("output.masked_pooled"), kOutAtol, kOutRtol));
  }
  ((out.last_hidden_state * ref.tensor("probe")).sum() + (out.pooled * ref.tensor("probe_pooled")).sum()).backward();
  expect_grads(*clip, ref, "text_model.");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ClipParity,
    ::testing::Combine(::testing::Values(ClipCase{"pipelines/micro-sd/text_encoder", "case-clip-micro.safetensors"},
                                         ClipCase{"pipelines/lcm-micro/text_encoder", "case-clip-lcm.safetensors"},
                                         ClipCase{"models/clip-eos2", "case-clip-eos2.safetensors"}),
                       ::testing::Bool()),
    [](const auto& info) {
      auto name = std::get<0>(info.param).file;
      name = name.substr(5, name.size() - 5 - 12);
      for (auto& ch : name) ch = ch == '-' ? '_' : ch;
      return name + (std::get<1>(info.param) ? "_checkpointed" : "");
    });

// Checkpointed and plain runs compute the same ops on the same values. Only the order in
// which autograd sums the contributions to a tensor used in several places (the time
// embedding feeds every resnet, conv_in's output feeds a skip) differs, so gradients agree
// to float32 rounding of those sums (measured: 2.4e-5 relative at worst, on conv_in), the
// same tolerance as against the reference.
TEST(GradientCheckpointing, GradientsMatchUncheckpointed) {
  SafetensorsReader ref(models_dir() / "case-unet-micro.safetensors");
  std::map<std::string, torch::Tensor> grads[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    auto unet = models::load_unet(pipeline("micro-sd") / "unet");
    unet->train();
    unet->set_gradient_checkpointing(ckpt == 1);
    auto out = unet->forward(ref.tensor("input.sample"), ref.tensor("input.timesteps"),
                             ref.tensor("input.encoder_hidden_states"));
    (out * ref.tensor("probe")).sum().backward();
    for (const auto& p : unet->named_parameters()) grads[ckpt][p.key()] = p.value().grad();
  }
  for (const auto& [name, g] : grads[0]) EXPECT_TRUE(close_tensor(name, grads[1].at(name), g, kGradAtol, kGradRtol));
}

// The recomputation restores the RNG state: with dropout on, the checkpointed run draws the
// same masks as the plain run from the same seed, so gradients agree as without dropout.
TEST(GradientCheckpointing, DropoutMasksAreReplayed) {
  auto cfg = config::UNet2DConditionConfig::from_file(pipeline("micro-sd") / "unet/config.json");
  cfg.dropout = 0.5;
  cfg.validate("micro-sd unet with dropout");
  SafetensorsReader ref(models_dir() / "case-unet-micro.safetensors");
  std::map<std::string, torch::Tensor> grads[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    torch::manual_seed(1);
    models::UNet2DConditionModel unet(cfg);
    unet->train();
    unet->set_gradient_checkpointing(ckpt == 1);
    torch::manual_seed(2);
    auto out = unet->forward(ref.tensor("input.sample"), ref.tensor("input.timesteps"),
                             ref.tensor("input.encoder_hidden_states"));
    (out * ref.tensor("probe")).sum().backward();
    for (const auto& p : unet->named_parameters()) grads[ckpt][p.key()] = p.value().grad();
  }
  for (const auto& [name, g] : grads[0]) EXPECT_TRUE(close_tensor(name, grads[1].at(name), g, kGradAtol, kGradRtol));
}

// The recomputation sees the forward's autocast state and random stream, although the
// backward runs after autocast was switched off and more numbers were drawn.
TEST(GradientCheckpointing, RecomputeSeesForwardAutocastAndRng) {
  auto lin = torch::nn::Linear(4, 4);
  std::vector<std::pair<bool, torch::Tensor>> calls;  // (autocast on, random draw)
  auto fn = [&calls, lin](const models::TensorList& in) mutable {
    calls.emplace_back(at::autocast::is_autocast_enabled(at::kCPU), torch::rand({3}));
    return models::TensorList{lin->forward(in[0])};
  };
  at::autocast::set_autocast_enabled(at::kCPU, true);
  at::autocast::set_autocast_dtype(at::kCPU, torch::kBFloat16);
  auto out = models::checkpoint(*lin, fn, {torch::ones({2, 4})}).at(0);
  at::autocast::set_autocast_enabled(at::kCPU, false);
  at::autocast::clear_cache();
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  torch::rand({5});  // moves the generator on
  out.to(torch::kFloat32).sum().backward();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_TRUE(calls[0].first);
  EXPECT_TRUE(calls[1].first);
  EXPECT_TRUE(torch::equal(calls[0].second, calls[1].second));
  EXPECT_TRUE(lin->weight.grad().defined());
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));  // restored after the backward
}

// channels_last changes memory layout only: the output and gradients still match diffusers.
TEST(ChannelsLast, SameOutputAndGradients) {
  SafetensorsReader ref(models_dir() / "case-unet-micro.safetensors");
  auto unet = models::load_unet(pipeline("micro-sd") / "unet");
  unet->train();
  models::to_channels_last(*unet);
  ASSERT_TRUE(unet->conv_in->weight.is_contiguous(torch::MemoryFormat::ChannelsLast));
  auto out = unet->forward(ref.tensor("input.sample").contiguous(torch::MemoryFormat::ChannelsLast),
                           ref.tensor("input.timesteps"), ref.tensor("input.encoder_hidden_states"));
  EXPECT_TRUE(close_tensor("output.sample", out, ref.tensor("output.sample"), kOutAtol, kOutRtol));
  (out * ref.tensor("probe")).sum().backward();
  expect_grads(*unet, ref);
}

// LISA freezes everything in front of an active block; torch's reentrant checkpoint would
// then give that block no gradient. Ours must.
TEST(GradientCheckpointing, TrainsABlockBehindFrozenLayers) {
  SafetensorsReader ref(models_dir() / "case-unet-micro.safetensors");
  auto unet = models::load_unet(pipeline("micro-sd") / "unet");
  unet->train();
  unet->set_gradient_checkpointing(true);
  for (auto& p : unet->parameters()) p.set_requires_grad(false);
  auto active = unet->named_parameters()["down_blocks.0.resnets.0.conv1.weight"];
  active.set_requires_grad(true);
  auto out = unet->forward(ref.tensor("input.sample"), ref.tensor("input.timesteps"),
                           ref.tensor("input.encoder_hidden_states"));
  ASSERT_TRUE(out.requires_grad());
  (out * ref.tensor("probe")).sum().backward();
  ASSERT_TRUE(active.grad().defined());
  EXPECT_TRUE(close_tensor("grad", active.grad(), ref.tensor("grad.down_blocks.0.resnets.0.conv1.weight"), kGradAtol,
                           kGradRtol));
}

}  // namespace
}  // namespace lisadiff
