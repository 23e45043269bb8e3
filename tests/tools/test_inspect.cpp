// `lisadiff inspect` against what diffusers/transformers recorded in the fixture manifest,
// through the library and through the executable, and on broken pipelines.
#include <fstream>

#include "tools/inspect.h"
#include "test_util.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using lisadiff::testing::fixtures_dir;
using lisadiff::testing::read_json;
using lisadiff::testing::run_command;
using lisadiff::testing::TempDir;

const nlohmann::ordered_json& manifest() {
  static const auto m = read_json(fixtures_dir() / "manifest.json");
  return m;
}

std::vector<std::string> committed_pipelines() {
  std::vector<std::string> names;
  for (const auto& item : manifest()["pipelines"].items()) {
    if (item.value()["weights_committed"].get<bool>()) names.push_back(item.key());
  }
  return names;
}

const ComponentReport& component(const InspectReport& report, const std::string& name) {
  for (const auto& c : report.components) {
    if (c.name == name) return c;
  }
  throw std::runtime_error("no component " + name);
}

TEST(Inspect, CountsEqualWhatDiffusersRecorded) {
  ASSERT_EQ(committed_pipelines().size(), 2u);
  for (const auto& name : committed_pipelines()) {
    SCOPED_TRACE(name);
    const auto& expected = manifest()["pipelines"][name];
    const auto report = inspect(fixtures_dir() / expected["path"].get<std::string>());
    EXPECT_TRUE(report.is_pipeline);
    EXPECT_EQ(report.pipeline_class, "StableDiffusionPipeline");
    for (const auto& item : expected["components"].items()) {
      SCOPED_TRACE(item.key());
      const auto& c = component(report, item.key());
      const auto& want = item.value();
      EXPECT_EQ(c.class_name, want["class"].get<std::string>());
      ASSERT_TRUE(c.weights.has_value());
      EXPECT_EQ(c.weights->tensors, want["tensors"].get<std::int64_t>());
      EXPECT_EQ(c.weights->parameters, want["parameters"].get<std::int64_t>());
      EXPECT_EQ(c.weights->first_tensor, want["file_first_tensor"].get<std::string>());
      EXPECT_EQ(c.weights->last_tensor, want["file_last_tensor"].get<std::string>());
      EXPECT_EQ(c.weights->bytes, static_cast<std::uint64_t>(4 * c.weights->parameters));  // all F32
      EXPECT_EQ(c.weights->dtypes.at("F32"), c.weights->tensors);
      EXPECT_EQ(c.weights->metadata.at("format"), "pt");
    }
    EXPECT_FALSE(component(report, "safety_checker").weights.has_value());
    EXPECT_NE(component(report, "tokenizer").config.find("merges"), std::string::npos);
    EXPECT_NE(component(report, "scheduler").config.find("Scheduler"), std::string::npos);
  }
}

TEST(Inspect, SingleSafetensorsFile) {
  const auto& unet = manifest()["pipelines"]["micro-sd"]["components"]["unet"];
  const auto report = inspect(fixtures_dir() / "pipelines/micro-sd" / unet["file"].get<std::string>());
  EXPECT_FALSE(report.is_pipeline);
  ASSERT_TRUE(report.weights.has_value());
  EXPECT_EQ(report.weights->tensors, unet["tensors"].get<std::int64_t>());
  EXPECT_EQ(report.weights->parameters, unet["parameters"].get<std::int64_t>());
}

TEST(Inspect, ExecutablePrintsJsonAndText) {
  const std::string cli = lisadiff::testing::cli_path();
  const auto path = (fixtures_dir() / "pipelines/lcm-micro").string();
  const auto [rc, out] = run_command(cli + " inspect --json " + path);
  ASSERT_EQ(rc, 0) << out;
  const auto json = nlohmann::ordered_json::parse(out);
  const auto& want = manifest()["pipelines"]["lcm-micro"]["components"];
  std::int64_t total = 0;
  for (const auto& c : json["components"]) {
    if (!c.contains("weights")) continue;
    EXPECT_EQ(c["weights"]["parameters"], want[c["name"].get<std::string>()]["parameters"]);
    total += c["weights"]["parameters"].get<std::int64_t>();
  }
  EXPECT_EQ(json["totals"]["parameters"].get<std::int64_t>(), total);
  const auto [rc_text, text] = run_command(cli + " inspect " + path);
  ASSERT_EQ(rc_text, 0) << text;
  EXPECT_NE(text.find("UNet2DConditionModel"), std::string::npos) << text;
  EXPECT_NE(text.find("18,592"), std::string::npos) << text;  // the LCM micro UNet's parameters
  EXPECT_NE(text.find("time_cond_proj_dim 32"), std::string::npos) << text;
}

TEST(Inspect, ExecutableExitCodes) {
  const std::string cli = lisadiff::testing::cli_path();
  const auto [rc_missing, missing] = run_command(cli + " inspect /no/such/pipeline");
  EXPECT_EQ(rc_missing, 1);
  EXPECT_NE(missing.find("error: /no/such/pipeline: no such file or folder"), std::string::npos) << missing;
  const auto [rc_flag, flag] = run_command(cli + " inspect --no-such-flag x");
  EXPECT_EQ(rc_flag, 2) << flag;
  const auto [rc_none, none] = run_command(cli);
  EXPECT_EQ(rc_none, 2) << none;
  const auto [rc_help, help] = run_command(cli + " --help");
  EXPECT_EQ(rc_help, 0) << help;
}

class BrokenPipeline : public ::testing::Test {
 protected:
  void SetUp() override { fs::copy(fixtures_dir() / "pipelines/micro-sd", root_, fs::copy_options::recursive); }
  TempDir dir_;
  fs::path root_ = dir_ / "micro-sd";
};

TEST_F(BrokenPipeline, TruncatedWeightsNameTheFile) {
  const auto file = root_ / "unet/diffusion_pytorch_model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  EXPECT_THROW_WITH(inspect(root_), file.string(), "truncated");
}

TEST_F(BrokenPipeline, MissingComponentFolder) {
  fs::remove_all(root_ / "vae");
  EXPECT_THROW_WITH(inspect(root_), "model_index.json", "field 'vae'", "AutoencoderKL", "does not exist");
}

TEST_F(BrokenPipeline, BadConfigValueNamesFileAndField) {
  auto config = read_json(root_ / "unet/config.json");
  config["layers_per_block"] = "one";
  std::ofstream(root_ / "unet/config.json") << config.dump();
  EXPECT_THROW_WITH(inspect(root_), (root_ / "unet/config.json").string(), "field 'layers_per_block'",
                    "found string \"one\"");
}

TEST_F(BrokenPipeline, PickleOnlyWeightsAreRefusedWithAHint) {
  fs::rename(root_ / "vae/diffusion_pytorch_model.safetensors", root_ / "vae/diffusion_pytorch_model.bin");
  EXPECT_THROW_WITH(inspect(root_), "diffusion_pytorch_model.bin", "pickled", "safetensors");
}

TEST_F(BrokenPipeline, MissingVariantIsNamed) {
  // text_encoder is the first component with weights in model_index.json order.
  EXPECT_THROW_WITH(inspect(root_, "fp16"), "text_encoder", "no weights for variant 'fp16'",
                    "looked for model.fp16.safetensors", "found model.safetensors");
}

TEST_F(BrokenPipeline, VariantOnlyWeightsAskForTheVariant) {
  fs::rename(root_ / "vae/diffusion_pytorch_model.safetensors", root_ / "vae/diffusion_pytorch_model.fp16.safetensors");
  EXPECT_THROW_WITH(inspect(root_), "diffusion_pytorch_model.fp16.safetensors", "--variant", "fp16");
}

TEST_F(BrokenPipeline, NamesFromJsonMustStayInsideThePipeline) {
  auto index = read_json(root_ / "model_index.json");
  index["../outside"] = {"diffusers", "UNet2DConditionModel"};
  std::ofstream(root_ / "model_index.json") << index.dump();
  EXPECT_THROW_WITH(inspect(root_), "model_index.json", "field '../outside'", "inside the pipeline");
}

TEST_F(BrokenPipeline, ShardedVariantIndexUsesDiffusersNaming) {
  const auto unet = root_ / "unet";
  fs::rename(unet / "diffusion_pytorch_model.safetensors", unet / "diffusion_pytorch_model-00001-of-00001.fp16.safetensors");
  nlohmann::json index = {{"weight_map", {{"conv_in.weight", "diffusion_pytorch_model-00001-of-00001.fp16.safetensors"}}}};
  std::ofstream(unet / "diffusion_pytorch_model.safetensors.index.fp16.json") << index.dump();
  for (const char* part : {"vae/diffusion_pytorch_model", "text_encoder/model"}) {
    fs::rename(root_ / (std::string(part) + ".safetensors"), root_ / (std::string(part) + ".fp16.safetensors"));
  }
  EXPECT_EQ(component(inspect(root_, "fp16"), "unet").weights->files.size(), 1u);
  index["weight_map"]["x"] = "../../etc/passwd";
  std::ofstream(unet / "diffusion_pytorch_model.safetensors.index.fp16.json") << index.dump();
  EXPECT_THROW_WITH(inspect(root_, "fp16"), "index.fp16.json", "tensor 'x'", "inside the folder");
}

TEST_F(BrokenPipeline, ShardedWeightsAreFollowed) {
  // Move the UNet weights into a one-shard index, as a sharded save would.
  const auto unet = root_ / "unet";
  fs::rename(unet / "diffusion_pytorch_model.safetensors", unet / "diffusion_pytorch_model-00001-of-00001.safetensors");
  const auto names = read_json(fixtures_dir() / "manifest.json");
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  index["weight_map"]["conv_in.weight"] = "diffusion_pytorch_model-00001-of-00001.safetensors";
  std::ofstream(unet / "diffusion_pytorch_model.safetensors.index.json") << index.dump();
  const auto report = inspect(root_);
  EXPECT_EQ(component(report, "unet").weights->tensors,
            names["pipelines"]["micro-sd"]["components"]["unet"]["tensors"].get<std::int64_t>());
  index["weight_map"]["x"] = "missing-shard.safetensors";
  std::ofstream(unet / "diffusion_pytorch_model.safetensors.index.json") << index.dump();
  EXPECT_THROW_WITH(inspect(root_), "index.json", "missing-shard.safetensors", "does not exist");
}

}  // namespace
}  // namespace lisadiff::tools
