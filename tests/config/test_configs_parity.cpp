// Configs against diffusers/transformers: every config the fixture script saved parses
// without warnings and writes back the same values, and lisadiff's defaults equal the
// constructor defaults that the script dumped (tests/fixtures/diffusers_defaults.json).
#include "config/clip_text_config.h"
#include "config/pipeline_index.h"
#include "config/scheduler_config.h"
#include "config/unet_config.h"
#include "config/vae_config.h"
#include "test_util.h"

namespace lisadiff::config {
namespace {

using lisadiff::testing::CapturedLog;
using lisadiff::testing::fixtures_dir;
using lisadiff::testing::read_json;

// Every key of `ours` (but `skip` and diffusers' '_' bookkeeping) has the same value in
// `reference`, and (when `same_keys`) the reference has no key that `ours` lacks.
void expect_same_values(const Json& ours, const Json& reference, const std::set<std::string>& skip,
                        bool same_keys) {
  for (const auto& item : ours.items()) {
    if (skip.count(item.key()) || item.key()[0] == '_') continue;
    ASSERT_TRUE(reference.contains(item.key())) << item.key();
    EXPECT_EQ(item.value(), reference[item.key()]) << item.key();
  }
  if (!same_keys) return;
  for (const auto& item : reference.items()) {
    if (item.key()[0] != '_' && !skip.count(item.key())) EXPECT_TRUE(ours.contains(item.key())) << item.key();
  }
}

std::vector<std::filesystem::path> config_roots() {
  std::vector<std::filesystem::path> roots;
  const auto manifest = read_json(fixtures_dir() / "manifest.json");
  for (const auto& item : manifest["pipelines"].items()) roots.push_back(fixtures_dir() / item.value()["path"].get<std::string>());
  return roots;
}

TEST(ConfigParity, EveryFixtureConfigParsesWithoutWarningsAndWritesBackTheSameValues) {
  const auto roots = config_roots();
  ASSERT_EQ(roots.size(), 4u);  // micro-sd, lcm-micro, tiny-sd, sd15
  for (const auto& root : roots) {
    SCOPED_TRACE(root.string());
    const CapturedLog log;
    const auto unet_file = read_json(root / "unet" / "config.json");
    expect_same_values(UNet2DConditionConfig::from_file(root / "unet" / "config.json").to_json(), unet_file, {}, true);
    const auto vae_file = read_json(root / "vae" / "config.json");
    expect_same_values(AutoencoderKLConfig::from_file(root / "vae" / "config.json").to_json(), vae_file, {}, true);
    const auto clip_file = read_json(root / "text_encoder" / "config.json");
    // transformers 5 omits `dropout` (an old key lisadiff still reads) and a config saved
    // without its model omits `architectures`, so the key sets may differ.
    expect_same_values(CLIPTextConfig::from_file(root / "text_encoder" / "config.json").to_json(), clip_file,
                       {"dropout", "architectures"}, false);
    const auto sched_file = read_json(root / "scheduler" / "scheduler_config.json");
    expect_same_values(SchedulerConfig::from_file(root / "scheduler" / "scheduler_config.json").to_json(), sched_file,
                       {}, true);
    EXPECT_EQ(log.text(), "");
  }
}

TEST(ConfigParity, SD15PresetHasTheSD15Values) {
  const auto unet = UNet2DConditionConfig::from_file(fixtures_dir() / "configs/sd15/unet/config.json");
  EXPECT_EQ(unet.cross_attention_dims, (std::vector<int>{768, 768, 768, 768}));
  EXPECT_EQ(unet.num_heads, (std::vector<int>{8, 8, 8, 8}));
  const auto lcm = UNet2DConditionConfig::from_file(fixtures_dir() / "pipelines/lcm-micro/unet/config.json");
  EXPECT_EQ(lcm.time_cond_proj_dim, 32);
}

TEST(ConfigParity, DefaultsEqualDiffusersConstructorDefaults) {
  const auto defaults = read_json(fixtures_dir() / "diffusers_defaults.json");
  const CapturedLog log;
  expect_same_values(UNet2DConditionConfig{}.to_json(), defaults["UNet2DConditionModel"], {}, true);
  UNet2DConditionConfig::from_json(defaults["UNet2DConditionModel"], "defaults[UNet2DConditionModel]");
  expect_same_values(AutoencoderKLConfig{}.to_json(), defaults["AutoencoderKL"], {}, true);
  AutoencoderKLConfig::from_json(defaults["AutoencoderKL"], "defaults[AutoencoderKL]");
  // CLIPTextConfig().to_dict() holds the PretrainedConfig keys too; they must be known.
  expect_same_values(CLIPTextConfig{}.to_json(), defaults["CLIPTextConfig"], {"architectures", "dropout"}, false);
  CLIPTextConfig::from_json(defaults["CLIPTextConfig"], "defaults[CLIPTextConfig]");
  for (const auto& item : defaults["schedulers"].items()) {
    SCOPED_TRACE(item.key());
    EXPECT_TRUE(SchedulerConfig::is_known_class(item.key()));
    expect_same_values(SchedulerConfig::defaults_for(item.key()).to_json(), item.value(), {}, true);
    SchedulerConfig::from_json(item.value(), "defaults[" + item.key() + "]");
  }
  EXPECT_EQ(log.text(), "");
}

}  // namespace
}  // namespace lisadiff::config
