// Typed diffusers/transformers configs: SD1.x/SD2.x forms parse with diffusers' defaults,
// and every kind of bad value gives one message with file, field, expected and found.
#include "config/clip_text_config.h"
#include "config/pipeline_index.h"
#include "config/scheduler_config.h"
#include "config/unet_config.h"
#include "config/vae_config.h"
#include "test_util.h"

namespace lisadiff::config {
namespace {

using lisadiff::testing::CapturedLog;
using lisadiff::testing::TempDir;
using lisadiff::testing::write_file;

const std::string kUNet = "unet/config.json";

// SD1.5's unet/config.json as first uploaded (diffusers 0.6.0, ../shared/spec/models.md 1.3).
Json sd15_unet_original() {
  return Json::parse(R"({
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]})");
}

Json with(Json json, const std::string& key, const Json& value) {
  json[key] = value;
  return json;
}

TEST(UNetConfig, ParsesTheOriginalSD15Config) {
  const auto c = UNet2DConditionConfig::from_json(sd15_unet_original(), kUNet);
  EXPECT_EQ(c.block_out_channels, (std::vector<int>{320, 640, 1280, 1280}));
  EXPECT_EQ(c.num_heads, (std::vector<int>{8, 8, 8, 8}));  // attention_head_dim means heads here
  EXPECT_EQ(c.layers, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(c.cross_attention_dims, (std::vector<int>{768, 768, 768, 768}));
  EXPECT_EQ(c.transformer_layers, (std::vector<int>{1, 1, 1, 1}));
  EXPECT_FALSE(c.time_cond_proj_dim.has_value());
  EXPECT_FALSE(c.use_linear_projection);
  EXPECT_EQ(c.mid_block_type, "UNetMidBlock2DCrossAttn");
}

TEST(UNetConfig, ResolvesPerBlockHeadsOfSD2) {
  auto json = with(sd15_unet_original(), "attention_head_dim", Json::array({5, 10, 20, 20}));
  json["use_linear_projection"] = true;
  json["cross_attention_dim"] = 1024;
  const auto c = UNet2DConditionConfig::from_json(json, kUNet);
  EXPECT_EQ(c.num_heads, (std::vector<int>{5, 10, 20, 20}));
  EXPECT_TRUE(c.use_linear_projection);
}

TEST(UNetConfig, WrongTypesNameFieldExpectedAndFound) {
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "layers_per_block", "two"), kUNet),
                    kUNet, "field 'layers_per_block'", "expected an integer or a list of integers",
                    "found string \"two\"");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "in_channels", 4.5), kUNet), kUNet,
                    "field 'in_channels'", "expected an integer", "found number 4.5");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "flip_sin_to_cos", "yes"), kUNet),
                    "field 'flip_sin_to_cos'", "expected a boolean");
  EXPECT_THROW_WITH(
      UNet2DConditionConfig::from_json(with(sd15_unet_original(), "down_block_types", Json::array({1, 2})), kUNet),
      "field 'down_block_types'", "expected a list of strings", "found list [1,2]");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(Json::array({1}), kUNet), kUNet, "expected a JSON object");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(
                        with(sd15_unet_original(), "freq_shift", Json(std::uint64_t{18446744073709551615ULL})), kUNet),
                    "field 'freq_shift'", "expected an integer", "18446744073709551615");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "sample_size", Json::array({64})), kUNet),
                    "field 'sample_size'", "expected 2 entries (height, width), found 1");
}

TEST(UNetConfig, UnknownBlockTypesAreErrors) {
  auto json = sd15_unet_original();
  json["down_block_types"][1] = "CrossAttnDownBlock3D";
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(json, kUNet), kUNet, "field 'down_block_types[1]'",
                    "unknown block type \"CrossAttnDownBlock3D\"", "supported: CrossAttnDownBlock2D, DownBlock2D");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "mid_block_type",
                                                          "UNetMidBlock2DSimpleCrossAttn"), kUNet),
                    "field 'mid_block_type'", "UNetMidBlock2DSimpleCrossAttn");
}

TEST(UNetConfig, InconsistentLengthsAreErrors) {
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(
                        with(sd15_unet_original(), "block_out_channels", Json::array({320, 640, 1280})), kUNet),
                    kUNet, "field 'block_out_channels'", "expected 4 entries", "found 3");
  auto json = sd15_unet_original();
  json["up_block_types"].erase(0);
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(json, kUNet), "field 'up_block_types'", "expected 4", "found 3");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(
                        with(sd15_unet_original(), "attention_head_dim", Json::array({8, 8})), kUNet),
                    "field 'attention_head_dim'", "expected 4 entries (one per down block), found 2");
}

TEST(UNetConfig, ChannelRulesAreChecked) {
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(
                        with(sd15_unet_original(), "attention_head_dim", Json::array({8, 8, 2000, 8})), kUNet),
                    "field 'attention_head_dim'", "down block 2 has 1280 channels but 2000 heads");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "norm_num_groups", 48), kUNet),
                    "field 'block_out_channels[0]'", "multiple of norm_num_groups (48)", "found 320");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "conv_in_kernel", 2), kUNet),
                    "field 'conv_in_kernel'", "odd");
}

TEST(UNetConfig, UnsupportedFeaturesAreErrorsNotSilentDefaults) {
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "class_embed_type", "timestep"), kUNet),
                    kUNet, "field 'class_embed_type'", "supports only null", "found string \"timestep\"");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "num_attention_heads", 8), kUNet),
                    "field 'num_attention_heads'");
  EXPECT_THROW_WITH(
      UNet2DConditionConfig::from_json(with(sd15_unet_original(), "resnet_time_scale_shift", "scale_shift"), kUNet),
      "field 'resnet_time_scale_shift'", "\"default\"");
  // The supported value itself is fine.
  EXPECT_NO_THROW(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "class_embed_type", nullptr), kUNet));
}

TEST(UNetConfig, WrongComponentClassIsAnError) {
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_json(with(sd15_unet_original(), "_class_name", "AutoencoderKL"), kUNet),
                    "field '_class_name'", "expected UNet2DConditionModel", "found \"AutoencoderKL\"");
}

TEST(UNetConfig, UnknownKeysWarnOnceAndUnderscoreKeysNever) {
  auto json = sd15_unet_original();
  json["foo"] = 1;
  json["bar_baz"] = "x";
  json["_name_or_path"] = "somewhere";
  const CapturedLog log;
  UNet2DConditionConfig::from_json(json, kUNet);
  EXPECT_EQ(log.text(), "warning: unet/config.json: ignoring unknown keys: foo, bar_baz\n");
}

TEST(UNetConfig, ToJsonRoundTrips) {
  auto json = with(sd15_unet_original(), "time_cond_proj_dim", 256);
  json["in_channels"] = 8;
  const auto c = UNet2DConditionConfig::from_json(json, kUNet);
  const auto again = UNet2DConditionConfig::from_json(c.to_json(), kUNet);
  EXPECT_EQ(again.to_json(), c.to_json());
  EXPECT_EQ(again.time_cond_proj_dim, 256);
  EXPECT_EQ(again.in_channels, 8);
  EXPECT_EQ(c.to_json()["_class_name"], "UNet2DConditionModel");
}

TEST(ConfigFiles, FileErrorsNameTheFile) {
  TempDir dir;
  write_file(dir / "config.json", "{\"in_channels\": 4,");
  EXPECT_THROW_WITH(UNet2DConditionConfig::from_file(dir / "config.json"), (dir / "config.json").string(),
                    "not valid JSON");
  EXPECT_THROW_WITH(AutoencoderKLConfig::from_file(dir / "missing.json"), "missing.json", "cannot open");
}

TEST(VAEConfig, ParsesSD15AndChecksValues) {
  const auto json = Json::parse(R"({"_class_name": "AutoencoderKL", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",
    "DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D",
    "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]})");
  const auto c = AutoencoderKLConfig::from_json(json, "vae/config.json");
  EXPECT_DOUBLE_EQ(c.scaling_factor, 0.18215);  // absent in the 0.6.0 file: the constructor default
  EXPECT_TRUE(c.force_upcast);
  EXPECT_EQ(c.layers_per_block, 2);
  EXPECT_THROW_WITH(AutoencoderKLConfig::from_json(with(json, "up_block_types", Json::array({"UpDecoderBlock2D"})),
                                                   "vae/config.json"),
                    "vae/config.json", "field 'up_block_types'", "expected 4 entries", "found 1");
  EXPECT_THROW_WITH(AutoencoderKLConfig::from_json(with(json, "latents_mean", Json::array({0.1, 0.2})),
                                                   "vae/config.json"),
                    "field 'latents_mean'", "expected 4", "found 2");
  EXPECT_THROW_WITH(AutoencoderKLConfig::from_json(with(json, "scaling_factor", "0.18"), "vae/config.json"),
                    "field 'scaling_factor'", "expected a number", "found string");
  EXPECT_THROW_WITH(AutoencoderKLConfig::from_json(with(json, "act_fn", "relu"), "vae/config.json"),
                    "field 'act_fn'", "expected one of silu, swish", "found \"relu\"");
}

TEST(CLIPTextConfig, ParsesSD15WithoutWarningsAndChecksValues) {
  const auto json = Json::parse(R"({"_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "projection_dim": 768, "torch_dtype": "float32", "transformers_version": "4.23.0.dev0", "vocab_size": 49408})");
  const CapturedLog log;
  const auto c = CLIPTextConfig::from_json(json, "text_encoder/config.json");
  EXPECT_EQ(log.text(), "");
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_THROW_WITH(CLIPTextConfig::from_json(with(json, "num_attention_heads", 10), "text_encoder/config.json"),
                    "text_encoder/config.json", "field 'num_attention_heads'", "divisor of hidden_size (768)",
                    "found 10");
  EXPECT_THROW_WITH(CLIPTextConfig::from_json(with(json, "model_type", "clip_vision_model"), "te.json"),
                    "field 'model_type'", "clip_vision_model");
  EXPECT_THROW_WITH(CLIPTextConfig::from_json(with(json, "hidden_act", "relu"), "te.json"), "field 'hidden_act'");
}

TEST(SchedulerConfig, DefaultsFollowTheClass) {
  EXPECT_EQ(SchedulerConfig::defaults_for("PNDMScheduler").set_alpha_to_one, false);
  EXPECT_EQ(SchedulerConfig::defaults_for("DDIMScheduler").set_alpha_to_one, true);
  EXPECT_EQ(SchedulerConfig::defaults_for("EulerDiscreteScheduler").timestep_spacing, "linspace");
  const auto lcm = SchedulerConfig::defaults_for("LCMScheduler");
  EXPECT_EQ(lcm.beta_schedule, "scaled_linear");
  EXPECT_DOUBLE_EQ(lcm.beta_start, 0.00085);
  EXPECT_FALSE(lcm.clip_sample);
}

TEST(SchedulerConfig, ParsesSD15HubFileWithoutWarnings) {
  const auto json = Json::parse(R"({"_class_name": "PNDMScheduler", "_diffusers_version": "0.17.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false,
    "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true,
    "steps_offset": 1, "thresholding": false, "trained_betas": null})");
  const CapturedLog log;
  const auto c = SchedulerConfig::from_json(json, "scheduler/scheduler_config.json");
  EXPECT_EQ(log.text(), "");
  EXPECT_EQ(c.class_name, "PNDMScheduler");
  EXPECT_EQ(c.steps_offset, 1);
  EXPECT_EQ(c.beta_schedule, "scaled_linear");
  EXPECT_EQ(c.timestep_spacing, "leading");
}

TEST(SchedulerConfig, BadValuesAndUnknownClasses) {
  const std::string src = "scheduler/scheduler_config.json";
  const Json base = {{"_class_name", "DDPMScheduler"}};
  EXPECT_THROW_WITH(SchedulerConfig::from_json(with(base, "beta_schedule", "cosine"), src), src,
                    "field 'beta_schedule'", "linear, scaled_linear, squaredcos_cap_v2", "found \"cosine\"");
  EXPECT_THROW_WITH(SchedulerConfig::from_json(with(base, "prediction_type", "x0"), src), "field 'prediction_type'");
  EXPECT_THROW_WITH(SchedulerConfig::from_json(with(base, "trained_betas", Json::array({0.1, 0.2})), src),
                    "field 'trained_betas'", "expected 1000 entries", "found 2");
  EXPECT_THROW_WITH(SchedulerConfig::from_json(with(base, "num_train_timesteps", 0), src),
                    "field 'num_train_timesteps'", "positive");
  EXPECT_THROW_WITH(SchedulerConfig::from_json(with(base, "beta_end", 1.5), src), "field 'beta_end'",
                    "expected a value in (0, 1), found 1.5");
  auto betas = with(base, "num_train_timesteps", 2);
  betas["trained_betas"] = Json::array({0.1, -0.2});
  EXPECT_THROW_WITH(SchedulerConfig::from_json(betas, src), "field 'trained_betas'", "found -0.2");
  const CapturedLog log;
  const auto c = SchedulerConfig::from_json({{"_class_name", "UniPCMultistepScheduler"}, {"beta_end", 0.012}},
                                            src);
  EXPECT_NE(log.text().find("'UniPCMultistepScheduler' is not one lisadiff implements"), std::string::npos);
  EXPECT_DOUBLE_EQ(c.beta_end, 0.012);
  EXPECT_DOUBLE_EQ(c.beta_start, 0.0001);
}

TEST(PipelineIndex, ParsesComponentsNullEntriesAndOptions) {
  const auto json = Json::parse(R"({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.18.0.dev0",
    "feature_extractor": [null, null], "requires_safety_checker": false, "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "unet": ["diffusers", "UNet2DConditionModel"]})");
  const auto index = PipelineIndex::from_json(json, "model_index.json");
  EXPECT_EQ(index.class_name, "StableDiffusionPipeline");
  ASSERT_EQ(index.components.size(), 4u);
  EXPECT_FALSE(index.find("feature_extractor")->present());
  EXPECT_EQ(*index.find("unet")->class_name, "UNet2DConditionModel");
  EXPECT_EQ(index.options["requires_safety_checker"], false);
  EXPECT_EQ(PipelineIndex::from_json(index.to_json(), "again").to_json(), index.to_json());
}

TEST(PipelineIndex, BadEntriesAreErrors) {
  EXPECT_THROW_WITH(PipelineIndex::from_json({{"_class_name", "P"}, {"unet", Json::array({"diffusers"})}},
                                             "model_index.json"),
                    "model_index.json", "field 'unet'", "[library, class]", "found list [\"diffusers\"]");
  EXPECT_THROW_WITH(PipelineIndex::from_json({{"unet", Json::array({"diffusers", "UNet2DConditionModel"})}},
                                             "model_index.json"),
                    "field '_class_name'", "missing");
  EXPECT_THROW_WITH(PipelineIndex::from_json({{"_class_name", 3}}, "model_index.json"), "field '_class_name'",
                    "expected a string");
}

}  // namespace
}  // namespace lisadiff::config
