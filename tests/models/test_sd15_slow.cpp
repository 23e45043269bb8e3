// Slow (ctest label "slow", not in CI): the full-size SD1.5 architecture. scripts/make_fixtures.py
// writes a pipeline with random weights (about 4.3 GB, in a temporary folder); the UNet loads
// through load_unet, its parameter order equals diffusers', its forward output at a 64x64
// latent equals diffusers', and lisadiff's own initialisation with the same seed reproduces
// the weights bit for bit. Run: LISADIFF_TEST_LABELS=slow scripts/test.sh
#include <gtest/gtest.h>

#include <iostream>

#include "config/unet_config.h"
#include "io/safetensors.h"
#include "models/unet.h"
#include "tools/inspect.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;

TEST(SD15, UNetKeysForwardAndInitialisationMatchDiffusers) {
  testing::TempDir tmp;
  const auto dir = tmp.path() / "sd15";
  const auto py = testing::test_python();
  const auto script = (testing::tests_dir().parent_path() / "scripts/make_fixtures.py").string();
  auto [rc, log] = testing::run_command(py + " " + script + " --pipeline sd15 --seed 0 --out " + dir.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const auto ref_file = tmp.path() / "reference.safetensors";
  std::tie(rc, log) = testing::run_command(py + " " + (testing::tests_dir() / "models/sd15_reference.py").string() + " " +
                                           dir.string() + " " + ref_file.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;

  // inspect: the counts the spec gives for SD1.5.
  const auto report = tools::inspect(dir);
  for (const auto& c : report.components) {
    if (c.name == "unet") EXPECT_EQ(c.weights->parameters, 859520964);
    if (c.name == "vae") EXPECT_EQ(c.weights->parameters, 83653863);
    if (c.name == "text_encoder") EXPECT_EQ(c.weights->parameters, 123060480);
  }

  auto unet = models::load_unet(dir / "unet");
  const auto order = testing::read_json(testing::fixtures_dir() / "models/parameter_order.json").at("sd15/unet");
  const auto params = unet->named_parameters();
  ASSERT_EQ(params.size(), order.size());
  ASSERT_EQ(params.size(), 686u);
  for (std::size_t i = 0; i < params.size(); ++i) {
    ASSERT_EQ(params[i].key(), order[i][0].get<std::string>()) << i;
    ASSERT_EQ(params[i].value().sizes().vec(), order[i][1].get<std::vector<int64_t>>()) << params[i].key();
  }

  io::SafetensorsReader ref(ref_file);
  torch::Tensor out;
  {
    torch::NoGradGuard no_grad;
    out = unet->forward(ref.tensor("input.sample"), ref.tensor("input.timesteps"), ref.tensor("input.encoder_hidden_states"));
  }
  // 686 tensors deep: float32 summation-order differences accumulate a little more than in
  // the micro models, still far below anything a fine-tune could notice.
  auto result = testing::close_tensor("sd15 unet output", out, ref.tensor("output.sample"), 1e-4, 1e-3);
  EXPECT_TRUE(result);
  std::cout << result.message() << "\n";
  unet = nullptr;

  // lisadiff's initialisation, seed 0, equals the weights diffusers drew with seed 0.
  auto cfg = config::UNet2DConditionConfig::from_file(dir / "unet/config.json");
  cfg.validate("sd15 unet");
  torch::manual_seed(0);
  models::UNet2DConditionModel fresh(cfg);
  io::SafetensorsReader weights(dir / "unet/diffusion_pytorch_model.safetensors");
  for (const auto& p : fresh->named_parameters()) {
    ASSERT_TRUE(testing::same_tensor(p.value(), weights.tensor(p.key()))) << p.key();
  }
}

}  // namespace
}  // namespace lisadiff
