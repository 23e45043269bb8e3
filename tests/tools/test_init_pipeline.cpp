// `lisadiff init-pipeline`: diffusers' initialisation bit for bit, folders diffusers loads,
// the presets equal the configs diffusers writes, and bad input fails cleanly.
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "tools/embedded.h"
#include "tools/init_pipeline.h"
#include "tools/inspect.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::cli_path;
using testing::fixtures_dir;
using testing::run_command;
using testing::TempDir;

// Every tensor of `ours` equals the reference tensor of the same name (CLIP files written by
// transformers 5 lack the "text_model." prefix that lisadiff writes).
void expect_same_weights(const fs::path& ours, const fs::path& reference, const std::string& prefix = "") {
  io::SafetensorsReader a(ours), b(reference);
  ASSERT_EQ(a.size(), b.size()) << ours;
  for (const auto& e : b.entries()) {
    EXPECT_TRUE(testing::same_tensor(a.tensor(prefix + e.name), b.tensor(e.name))) << e.name;
  }
}

// With a committed pipeline's configs and its seed, init-pipeline draws exactly the weights
// diffusers and transformers drew (same construction order, same initialisers, same RNG).
class InitMatchesReference : public ::testing::TestWithParam<std::string> {};

TEST_P(InitMatchesReference, BitIdenticalWeights) {
  TempDir tmp;
  const auto ref = fixtures_dir() / "pipelines" / GetParam();
  const auto out = tmp.path() / "p";
  const auto [rc, log] = run_command(cli_path() + " init-pipeline --config " + ref.string() + " --seed 0 --out " + out.string());
  ASSERT_EQ(rc, 0) << log;
  expect_same_weights(out / "unet/diffusion_pytorch_model.safetensors", ref / "unet/diffusion_pytorch_model.safetensors");
  expect_same_weights(out / "vae/diffusion_pytorch_model.safetensors", ref / "vae/diffusion_pytorch_model.safetensors");
  expect_same_weights(out / "text_encoder/model.safetensors", ref / "text_encoder/model.safetensors", "text_model.");
}

INSTANTIATE_TEST_SUITE_P(Pipelines, InitMatchesReference, ::testing::Values("micro-sd", "lcm-micro"),
                         [](const auto& info) { return info.param == "micro-sd" ? "micro_sd" : "lcm_micro"; });

TEST(InitPipeline, TinyPresetLoadsAndRunsInDiffusers) {
  TempDir tmp;
  const auto out = tmp.path() / "tiny";
  tools::InitPipelineOptions o;
  o.preset = "tiny";
  o.seed = 7;
  o.out = out;
  tools::init_pipeline(o);
  const auto [rc, text] =
      run_command(testing::test_python() + " " + (testing::tests_dir() / "tools/check_diffusers_loads.py").string() + " " +
                  out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << text;
  const auto result = nlohmann::json::parse(text.substr(text.rfind("RESULT ") + 7));
  EXPECT_EQ(result["counts"]["unet"], 304);
  EXPECT_EQ(result["counts"]["vae"], 124);
  EXPECT_EQ(result["counts"]["text_encoder"], 84);
  EXPECT_TRUE(result["finite"].get<bool>());
  // lisadiff's own inspect agrees, and its module view adds up to the totals.
  const auto report = tools::inspect(out);
  for (const auto& c : report.components) {
    if (!c.weights) continue;
    std::int64_t tensors = 0, params = 0;
    for (const auto& b : c.blocks) {
      EXPECT_NE(b.name, "(not in the model)") << c.name;
      tensors += b.tensors;
      params += b.parameters;
    }
    EXPECT_EQ(tensors, c.weights->tensors) << c.name;
    EXPECT_EQ(params, c.weights->parameters) << c.name;
  }
}

// The compiled-in presets are the configs diffusers/transformers wrote for the same
// architectures (tests/fixtures/configs, scripts/make_fixtures.py).
TEST(InitPipeline, PresetsEqualDiffusersConfigs) {
  for (const auto& [preset, fixture] : std::vector<std::pair<std::string, std::string>>{{"tiny", "tiny-sd"}, {"sd15", "sd15"}}) {
    for (const char* rel : {"unet/config.json", "vae/config.json", "text_encoder/config.json",
                            "scheduler/scheduler_config.json"}) {
      const auto data = embedded::find(preset + "/" + rel);
      ASSERT_TRUE(data) << preset << "/" << rel;
      EXPECT_EQ(nlohmann::json::parse(*data), nlohmann::json::parse(testing::read_file(fixtures_dir() / "configs" / fixture / rel)))
          << preset << "/" << rel;
    }
  }
  EXPECT_EQ(tools::preset_names(), (std::vector<std::string>{"sd15", "shapes", "tiny"}));
}

TEST(InitPipeline, BadInputFailsCleanly) {
  TempDir tmp;
  const std::string cli = cli_path() + " init-pipeline ";
  {  // existing output
    fs::create_directories(tmp.path() / "exists");
    const auto [rc, out] = run_command(cli + "--out " + (tmp.path() / "exists").string() + " 2>&1");
    EXPECT_EQ(rc, 1);
    EXPECT_NE(out.find("exists already (pass --overwrite to replace it)"), std::string::npos) << out;
  }
  {  // unknown preset: a usage error
    const auto [rc, out] = run_command(cli + "--preset sd99 --out " + (tmp.path() / "x").string() + " 2>&1");
    EXPECT_EQ(rc, 2) << out;
  }
  {  // a bad config in --config names the file and the field; nothing is left behind
    fs::create_directories(tmp.path() / "cfg/unet");
    testing::write_file(tmp.path() / "cfg/unet/config.json", R"({"block_out_channels": [32, 64], "layers_per_block": "two"})");
    const auto [rc, out] = run_command(cli + "--config " + (tmp.path() / "cfg").string() + " --out " +
                                       (tmp.path() / "bad").string() + " 2>&1");
    EXPECT_EQ(rc, 1);
    EXPECT_NE(out.find("cfg/unet/config.json: field 'layers_per_block'"), std::string::npos) << out;
    EXPECT_FALSE(fs::exists(tmp.path() / "bad"));
  }
  {  // sd15 without a CLIP vocabulary: says what is missing and how to get it
    fs::create_directories(tmp.path() / "empty");
    const auto [rc, out] = run_command("LISADIFF_CLIP_VOCAB=" + (tmp.path() / "empty").string() + " " + cli +
                                       "--preset sd15 --out " + (tmp.path() / "sd15").string() + " 2>&1");
    EXPECT_EQ(rc, 1);
    EXPECT_NE(out.find("needs a CLIP vocabulary"), std::string::npos) << out;
    EXPECT_FALSE(fs::exists(tmp.path() / "sd15"));
    for (const auto& e : fs::directory_iterator(tmp.path())) EXPECT_EQ(e.path().filename().string().find(".sd15.tmp"), std::string::npos);
  }
}

}  // namespace
}  // namespace lisadiff
