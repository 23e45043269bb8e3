// EMA: parity with diffusers' EMAModel (tests/fixtures/train/ema.{json,safetensors}, written
// by scripts/make_train_fixtures.py: the parameters passed to every step() and the shadows
// after it), the decay numbers of recipes.md §6.5, the plain-copy rule for frozen tensors,
// store/restore, checkpoint state, and LCM's fixed-rate target update.
#include <gtest/gtest.h>

#include <iostream>

#include <fmt/format.h>

#include "io/safetensors.h"
#include "train/ema.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using io::NamedTensors;
using io::SafetensorsReader;
using testing::close_tensor;
using testing::fixtures_dir;
using testing::read_json;
using testing::TempDir;
using train::EMA;
using train::EMAOptions;

// Same float32 ops, in the same order, on the same LibTorch as the reference, so the shadows
// agree bit for bit here; the tolerance leaves room for a CPU whose vector kernels round
// differently (an FMA): one float32 ulp of O(1) values per step, over 12 steps.
constexpr double kAtol = 1e-6, kRtol = 1e-6;

std::filesystem::path train_dir() { return fixtures_dir() / "train"; }

EMAOptions options_from(const config::Json& json) {
  EMAOptions o;
  o.decay = json.value("decay", o.decay);
  o.min_decay = json.value("min_decay", o.min_decay);
  o.update_after_step = json.value("update_after_step", o.update_after_step);
  o.use_ema_warmup = json.value("use_ema_warmup", o.use_ema_warmup);
  o.inv_gamma = json.value("inv_gamma", o.inv_gamma);
  o.power = json.value("power", o.power);
  o.foreach = json.value("foreach", o.foreach);
  return o;
}

NamedTensors load_named(const SafetensorsReader& ref, const std::string& prefix, const std::vector<std::string>& names) {
  NamedTensors out;
  for (const auto& name : names) out.emplace_back(name, ref.tensor(prefix + name).clone());
  return out;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

class EMAParity : public ::testing::TestWithParam<std::string> {};

TEST_P(EMAParity, ShadowsMatchDiffusersEMAModelAfterEveryStep) {
  const std::string case_name = GetParam();
  const auto record = read_json(train_dir() / "ema.json");
  const SafetensorsReader ref(train_dir() / "ema.safetensors");
  const auto names = record.at("names").get<std::vector<std::string>>();
  const auto& c = record.at("cases").at(case_name);
  const auto options = options_from(c.at("options"));

  EMA ema(load_named(ref, case_name + ".init.", names), options);
  const int steps = record.at("steps").get<int>();
  double max_err = 0;
  for (int k = 1; k <= steps; ++k) {
    NamedTensors params = load_named(ref, fmt::format("{}.param.{}.", case_name, k), names);
    for (std::size_t i = 0; i < names.size(); ++i) {
      params[i].second.requires_grad_(c.at("requires_grad")[k - 1][i].get<bool>());
    }
    ema.step(params);
    EXPECT_EQ(ema.optimization_step(), k);
    EXPECT_DOUBLE_EQ(ema.current_decay(), c.at("decay")[k - 1].get<double>()) << "step " << k;
    for (const auto& name : names) {
      const auto expected = ref.tensor(fmt::format("{}.shadow.{}.{}", case_name, k, name));
      ASSERT_TRUE(close_tensor(fmt::format("{} step {} {}", case_name, k, name), ema.shadow(name), expected, kAtol, kRtol));
      max_err = std::max(max_err, max_abs_diff(ema.shadow(name), expected));
    }
  }
  // The fields diffusers' state_dict() holds after the run.
  const auto fields = ema.config_fields();
  for (const auto& item : c.at("state").items()) {
    EXPECT_EQ(fields.at(item.key()), item.value()) << item.key();
  }
  std::cout << case_name << ": max abs shadow error " << max_err << "\n";
  RecordProperty("max_abs_error", std::to_string(max_err));
}

INSTANTIATE_TEST_SUITE_P(Cases, EMAParity, ::testing::Values("default", "default_foreach", "warmup", "after_step"));

TEST(EMA, LcmTargetUpdateMatchesUpdateEma) {
  const auto record = read_json(train_dir() / "ema.json");
  const SafetensorsReader ref(train_dir() / "ema.safetensors");
  const auto names = record.at("names").get<std::vector<std::string>>();
  const double rate = record.at("lcm").at("rate").get<double>();
  NamedTensors target = load_named(ref, "lcm.init.", names);
  double max_err = 0;
  for (int k = 1; k <= record.at("lcm").at("steps").get<int>(); ++k) {
    train::ema_update_(target, load_named(ref, fmt::format("lcm.source.{}.", k), names), rate);
    for (const auto& [name, t] : target) {
      const auto expected = ref.tensor(fmt::format("lcm.target.{}.{}", k, name));
      ASSERT_TRUE(close_tensor(fmt::format("lcm step {} {}", k, name), t, expected, kAtol, kRtol));
      max_err = std::max(max_err, max_abs_diff(t, expected));
    }
  }
  std::cout << "lcm target: max abs error " << max_err << "\n";
}

TEST(EMA, DecayNumbersOfTheSpec) {
  const EMA ema({}, EMAOptions{});  // defaults: 0.9999 cap, no warmup
  // recipes.md §6.5.
  EXPECT_EQ(ema.decay(1), 0.0);
  EXPECT_NEAR(ema.decay(2), 0.181818, 1e-6);
  EXPECT_DOUBLE_EQ(ema.decay(3), 0.25);
  EXPECT_NEAR(ema.decay(10), 0.526316, 1e-6);
  EXPECT_NEAR(ema.decay(100), 0.917431, 1e-6);
  EXPECT_NEAR(ema.decay(1000), 0.991080, 1e-6);
  EXPECT_LT(ema.decay(89990), 0.9999);
  EXPECT_DOUBLE_EQ(ema.decay(89991), 0.9999);  // the cap is reached at s = 89,990
  EXPECT_EQ(ema.decay(1'000'000), 0.9999);

  // Warmup (crowsonkb's note in diffusers): inv_gamma 1, power 2/3 reaches 0.999 at ~31.6K steps.
  EMAOptions warm;
  warm.use_ema_warmup = true;
  const EMA warm_ema({}, warm);
  EXPECT_NEAR(warm_ema.decay(31624), 0.999, 1e-6);
  EXPECT_EQ(warm_ema.decay(1), 0.0);

  // update_after_step delays the rule; min_decay does not apply while the rule returns 0.
  EMAOptions late;
  late.update_after_step = 5;
  late.min_decay = 0.5;
  const EMA late_ema({}, late);
  for (int k = 0; k <= 6; ++k) EXPECT_EQ(late_ema.decay(k), 0.0) << k;
  EXPECT_EQ(late_ema.decay(7), 0.5);  // rule 0.1818 floored at 0.5
}

TEST(EMA, FrozenTensorsAreCopiedTrainedOnesAveraged) {
  auto trained = torch::ones({3});
  auto frozen = torch::ones({2});
  EMA ema({{"a", trained}, {"b", frozen}});
  ema.load_config_fields(config::Json{{"optimization_step", 999}}, "test");  // late: decay ~0.991
  trained = torch::full({3}, 3.0).requires_grad_(true);
  frozen = torch::full({2}, 5.0);  // requires_grad false
  ema.step({{"a", trained}, {"b", frozen}});
  const double d = ema.decay(1000);
  EXPECT_EQ(ema.current_decay(), d);
  EXPECT_GT(d, 0.99);
  // shadow <- shadow - (1 - d) (shadow - theta) = 1 + (1 - d) * 2 for the trained tensor...
  EXPECT_TRUE(close_tensor("a", ema.shadow("a"), torch::full({3}, 1.0 + (1.0 - d) * 2.0), 1e-7, 1e-6));
  // ...and the frozen one is the live weight exactly, whatever the decay.
  EXPECT_TRUE(testing::same_tensor(ema.shadow("b"), frozen));
  // The shadows never require grad, even though they were averaged with a tensor that does.
  EXPECT_FALSE(ema.shadow("a").requires_grad());
}

TEST(EMA, ShadowsAreFloat32CopiesOnTheChosenDevice) {
  auto half = torch::randn({4, 4}).to(torch::kBFloat16);
  EMAOptions options;
  options.device = torch::Device(torch::kCPU);
  EMA ema({{"w", half}}, options);
  EXPECT_EQ(ema.shadow("w").scalar_type(), torch::kFloat32);
  EXPECT_TRUE(close_tensor("w", ema.shadow("w"), half.to(torch::kFloat32), 0, 0));
  half.add_(1);  // a copy, not a view of the live tensor
  EXPECT_FALSE(torch::equal(ema.shadow("w"), half.to(torch::kFloat32)));
  // copy_to converts back to the parameter's dtype.
  ema.copy_to({{"w", half}});
  EXPECT_TRUE(torch::equal(half, ema.shadow("w").to(torch::kBFloat16)));
}

TEST(EMA, ForeachAndDefaultPathsAgree) {
  torch::manual_seed(3);
  // "z" is a bfloat16 parameter (a frozen LISA tensor kept in half precision): the foreach
  // kernels take their per-tensor route for it.
  NamedTensors init = {{"x", torch::randn({7, 5})}, {"y", torch::randn({11})}, {"z", torch::randn({6}).to(torch::kBFloat16)}};
  EMAOptions fe;
  fe.foreach = true;
  EMA a(init), b(init, fe);
  for (int k = 0; k < 20; ++k) {
    NamedTensors live = {{"x", torch::randn({7, 5}).requires_grad_(k % 2 == 0)},
                         {"y", torch::randn({11}).requires_grad_(true)},
                         {"z", torch::randn({6}).to(torch::kBFloat16).requires_grad_(k % 3 == 0)}};
    a.step(live);
    b.step(live);
  }
  for (const auto& [name, s] : a.shadows()) EXPECT_TRUE(close_tensor(name, b.shadow(name), s, 1e-6, 1e-6));
}

TEST(EMA, StoreCopyToRestoreSwapsLiveWeightsForValidation) {
  torch::nn::Linear model(3, 2);
  const auto params = train::named_parameters(*model);
  ASSERT_EQ(params.size(), 2u);
  EMA ema(params);
  const auto original_weight = model->weight.detach().clone();
  {
    torch::NoGradGuard no_grad;
    model->weight.add_(1.0);
  }
  ema.step(params);  // decay 0 at step 1: the shadow becomes the live weight
  {
    torch::NoGradGuard no_grad;
    model->weight.add_(1.0);  // live weight moves on
  }
  const auto live = model->weight.detach().clone();
  ema.store(params);
  EXPECT_TRUE(ema.has_stored());
  ema.copy_to(params);
  EXPECT_TRUE(torch::allclose(model->weight, original_weight + 1.0));
  EXPECT_TRUE(model->weight.requires_grad());  // still a trainable parameter
  ema.restore(params);
  EXPECT_TRUE(torch::equal(model->weight, live));
  EXPECT_FALSE(ema.has_stored());
  EXPECT_THROW_WITH(ema.restore(params), "nothing stored", "store()");
}

TEST(EMA, StateRoundTripContinuesIdentically) {
  torch::manual_seed(1);
  NamedTensors init = {{"p", torch::randn({4, 3})}, {"q", torch::randn({5})}};
  EMAOptions options;
  options.use_ema_warmup = true;
  options.update_after_step = 2;
  EMA a(init, options);
  const auto live = [](int k) {
    torch::manual_seed(100 + k);
    return NamedTensors{{"p", torch::randn({4, 3}).requires_grad_(true)}, {"q", torch::randn({5}).requires_grad_(k % 2)}};
  };
  for (int k = 0; k < 7; ++k) a.step(live(k));
  const auto state = a.state();
  EXPECT_EQ(state.fields.at("optimization_step"), 7);
  EXPECT_EQ(state.fields.at("use_ema_warmup"), true);
  EXPECT_EQ(state.fields.at("update_after_step"), 2);

  EMA b({{"p", torch::zeros({4, 3})}, {"q", torch::zeros({5})}});  // default options until loaded
  b.load_state(state, "checkpoint-7");
  EXPECT_EQ(b.optimization_step(), 7);
  EXPECT_TRUE(b.options().use_ema_warmup);
  EXPECT_EQ(b.decay(8), a.decay(8));
  for (int k = 7; k < 10; ++k) {
    a.step(live(k));
    b.step(live(k));
  }
  for (const auto& [name, s] : a.shadows()) EXPECT_TRUE(testing::same_tensor(b.shadow(name), s)) << name;
  // state() copies: later steps do not change a saved state.
  EXPECT_TRUE(testing::same_tensor(state.shadows[0].second, state.shadows[0].second.clone()));
  EXPECT_FALSE(torch::equal(state.shadows[0].second, a.shadow("p")));
}

TEST(EMA, LoadStateReportsEveryMismatchAndChangesNothing) {
  EMA ema({{"a", torch::zeros({2})}, {"b", torch::zeros({3})}, {"c", torch::zeros({1})}});
  train::EMAState bad;
  bad.shadows = {{"a", torch::ones({2})}, {"b", torch::ones({4})}, {"zzz", torch::ones({1})}};
  bad.fields = config::Json{{"optimization_step", 5}};
  EXPECT_THROW_WITH(ema.load_state(bad, "ckpt/unet_ema"), "ckpt/unet_ema", "1 missing: c", "1 unexpected: zzz",
                    "b [4] (EMA [3])");
  EXPECT_EQ(ema.optimization_step(), 0);
  EXPECT_TRUE(torch::equal(ema.shadow("a"), torch::zeros({2})));

  train::EMAState bad_fields = ema.state();
  bad_fields.fields["decay"] = "high";
  EXPECT_THROW_WITH(ema.load_state(bad_fields, "ema.json"), "ema.json", "field 'decay'", "expected a number");
  bad_fields.fields["decay"] = 1.5;
  EXPECT_THROW_WITH(ema.load_state(bad_fields, "ema.json"), "field 'decay'", "between 0 and 1");
}

TEST(EMA, SavePretrainedWritesTheDiffusersFolder) {
  const TempDir dir;
  torch::manual_seed(2);
  NamedTensors init = {{"conv_in.weight", torch::randn({4, 2, 3, 3})}, {"conv_in.bias", torch::randn({4})}};
  EMAOptions options;
  options.decay = 0.999;
  EMA ema(init, options);
  for (int k = 0; k < 3; ++k) {
    ema.step({{"conv_in.weight", torch::randn({4, 2, 3, 3}).requires_grad_(true)},
              {"conv_in.bias", torch::randn({4}).requires_grad_(true)}});
  }
  const config::Json unet_config = {{"_class_name", "UNet2DConditionModel"}, {"in_channels", 2}};
  ema.save_pretrained(dir / "unet_ema", unet_config);

  const auto json = read_json(dir / "unet_ema" / "config.json");
  EXPECT_EQ(json.at("_class_name"), "UNet2DConditionModel");
  EXPECT_EQ(json.at("in_channels"), 2);
  EXPECT_EQ(json.at("decay"), 0.999);
  EXPECT_EQ(json.at("optimization_step"), 3);
  for (const auto* key : {"min_decay", "update_after_step", "use_ema_warmup", "inv_gamma", "power"}) {
    EXPECT_TRUE(json.contains(key)) << key;
  }
  const SafetensorsReader weights(dir / "unet_ema" / "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(weights.metadata().at("format"), "pt");
  EXPECT_TRUE(testing::same_tensor(weights.tensor("conv_in.bias"), ema.shadow("conv_in.bias")));

  EMA loaded(init);
  loaded.load_pretrained(dir / "unet_ema");
  EXPECT_EQ(loaded.optimization_step(), 3);
  EXPECT_EQ(loaded.options().decay, 0.999);
  for (const auto& [name, s] : ema.shadows()) EXPECT_TRUE(testing::same_tensor(loaded.shadow(name), s)) << name;

  EMA other({{"conv_out.weight", torch::zeros({1})}});
  EXPECT_THROW_WITH(other.load_pretrained(dir / "unet_ema"), "diffusion_pytorch_model.safetensors",
                    "1 missing: conv_out.weight", "2 unexpected");
  EXPECT_THROW_WITH(other.load_pretrained(dir / "nowhere"), "nowhere", "config.json");
}

TEST(EMAParityFolder, LoadsAndWritesWhatEMAModelSavePretrainedWrites) {
  // diffusers wrote ema_unet/config.json for the micro-sd UNet; its weights file is the
  // committed micro-sd UNet file byte for byte (make_train_fixtures.py checks that).
  const auto unet_weights = fixtures_dir() / "pipelines" / "micro-sd" / "unet" / "diffusion_pytorch_model.safetensors";
  const auto diffusers_config = read_json(train_dir() / "ema_unet" / "config.json");
  const TempDir dir;
  std::filesystem::create_directories(dir / "theirs");
  std::filesystem::copy_file(train_dir() / "ema_unet" / "config.json", dir / "theirs" / "config.json");
  std::filesystem::copy_file(unet_weights, dir / "theirs" / "diffusion_pytorch_model.safetensors");

  const SafetensorsReader weights(unet_weights);
  NamedTensors zeros;
  for (const auto& e : weights.entries()) zeros.emplace_back(e.name, torch::zeros(e.shape));
  EMA ema(zeros);
  ema.load_pretrained(dir / "theirs");
  EXPECT_EQ(ema.optimization_step(), 7);
  EXPECT_EQ(ema.options().decay, 0.999);
  EXPECT_TRUE(ema.options().use_ema_warmup);
  EXPECT_EQ(ema.options().power, 0.75);
  for (const auto& e : weights.entries()) EXPECT_TRUE(testing::same_tensor(ema.shadow(e.name), weights.tensor(e.name)));

  // Written back with the UNet's own config, the folder is diffusers': the same JSON values
  // (key order aside) and the same weight bytes.
  config::Json unet_config = diffusers_config;
  for (const auto* key : {"decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power"}) {
    unet_config.erase(key);
  }
  ema.save_pretrained(dir / "ours", unet_config);
  const auto ours = read_json(dir / "ours" / "config.json");
  EXPECT_EQ(nlohmann::json(ours), nlohmann::json(diffusers_config));
  EXPECT_EQ(testing::read_file(dir / "ours" / "diffusion_pytorch_model.safetensors"), testing::read_file(unet_weights));
}

TEST(EMA, BadInputIsAClearError) {
  EXPECT_THROW_WITH(EMA({{"a", torch::zeros({1})}, {"a", torch::zeros({1})}}), "'a' is listed twice");
  EXPECT_THROW_WITH(EMA({{"i", torch::zeros({1}, torch::kInt64)}}), "'i' is not a floating-point tensor");
  EMAOptions o;
  o.decay = 1.5;
  EXPECT_THROW_WITH(EMA({}, o), "EMA: field 'decay'", "between 0 and 1");
  o = {};
  o.min_decay = 0.5;
  o.decay = 0.4;
  EXPECT_THROW_WITH(o.validate("cfg"), "cfg: field 'min_decay'", "larger than decay");
  o = {};
  o.inv_gamma = 0;
  EXPECT_THROW_WITH(o.validate(), "field 'inv_gamma'", "must be positive");

  EMA ema({{"a", torch::zeros({2})}, {"b", torch::zeros({2})}});
  EXPECT_THROW_WITH(ema.step({{"a", torch::zeros({2})}}), "got 1 parameters, the EMA tracks 2");
  EXPECT_THROW_WITH(ema.step({{"a", torch::zeros({2})}, {"c", torch::zeros({2})}}), "parameter 1 is 'c'", "tracks 'b'");
  EXPECT_THROW_WITH(ema.copy_to({{"a", torch::zeros({2})}, {"b", torch::zeros({3})}}), "'b' has shape [3]", "[2]");
  EXPECT_THROW_WITH(ema.shadow("nope"), "no parameter named 'nope'");
  EXPECT_EQ(ema.optimization_step(), 0);  // failed steps did not count

  std::vector<torch::Tensor> t = {torch::zeros({2})}, s = {torch::zeros({3})};
  EXPECT_THROW_WITH(train::ema_update_(t, s, 0.95), "tensor 0", "[2]", "[3]");
  EXPECT_THROW_WITH(train::ema_update_(t, {}, 0.95), "1 target tensors but 0 source tensors");
  EXPECT_THROW_WITH(train::ema_update_(t, t, 1.5), "between 0 and 1");
  EXPECT_THROW_WITH(train::ema_update_(NamedTensors{{"x", t[0]}}, NamedTensors{{"y", t[0]}}, 0.5), "'x' in the target",
                    "'y' in the source");
}

TEST(EMA, FixedRateUpdateHandlesMixedDtypes) {
  // L-DPO's reference network is fp16 and tracks the fp32 policy at 0.9999.
  auto target = torch::ones({8}, torch::kHalf);
  auto source = torch::full({8}, 3.0);
  train::ema_update_(std::vector<torch::Tensor>{target}, std::vector<torch::Tensor>{source}, 0.5);
  EXPECT_EQ(target.scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::equal(target, torch::full({8}, 2.0, torch::kHalf)));
}

}  // namespace
}  // namespace lisadiff
