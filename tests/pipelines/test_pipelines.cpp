// Inference pipelines against diffusers 0.42.1 (scripts/make_pipeline_fixtures.py): for every
// case the initial latents, the latents after every step and the final images, same seeds,
// CPU, float32.
#include <gtest/gtest.h>

#include <map>
#include <optional>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "data/image.h"
#include "io/safetensors.h"
#include "pipelines/instruct_pix2pix.h"
#include "pipelines/lora.h"
#include "pipelines/text_to_image.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;

const io::SafetensorsReader& reference() {
  static io::SafetensorsReader r(fixtures_dir() / "inference/cases.safetensors");
  return r;
}

const nlohmann::ordered_json& cases() {
  static const auto json = testing::read_json(fixtures_dir() / "inference/cases.json");
  return json.at("cases");
}

pipelines::Components& components(const std::string& pipe) {
  static std::map<std::string, pipelines::Components> loaded;
  auto it = loaded.find(pipe);
  if (it == loaded.end()) {
    it = loaded.emplace(pipe, pipelines::load_components(fixtures_dir() / "pipelines" / pipe)).first;
  }
  return it->second;
}

std::vector<std::string> strings(const nlohmann::ordered_json& j, const char* key) {
  return j.contains(key) && !j.at(key).is_null() ? j.at(key).get<std::vector<std::string>>() : std::vector<std::string>{};
}

struct Run {
  std::vector<torch::Tensor> latents;
  pipelines::DecodedImages images;
};

Run run(const std::string& name) {
  const auto& c = cases().at(name);
  std::optional<pipelines::Components> with_lora;
  if (c.contains("lora")) {
    pipelines::PipelineLoadOptions lo;
    lo.lora = fixtures_dir() / "inference" / c.at("lora").get<std::string>();
    lo.lora_scale = c.at("lora_scale").get<double>();
    with_lora = pipelines::load_components(fixtures_dir() / "pipelines" / c.at("pipe").get<std::string>(), lo);
  }
  auto& comps = with_lora ? *with_lora : components(c.at("pipe").get<std::string>());
  auto scheduler_config = comps.scheduler_config;  // from_config(config, **scheduler_kwargs)
  if (c.contains("scheduler_kwargs")) scheduler_config.update(c.at("scheduler_kwargs"));
  auto sampler = schedulers::make_sampler(c.at("scheduler").get<std::string>(), scheduler_config, "scheduler_config.json");
  Run out;
  const auto record = [&](int, int, const torch::Tensor& latents) { out.latents.push_back(latents.clone()); };
  if (c.contains("image")) {
    pipelines::InstructPix2PixOptions o;
    o.prompts = strings(c, "prompts");
    o.negative_prompts = strings(c, "negative");
    o.image = data::decode_image(testing::read_file(fixtures_dir() / "inference" / c.at("image").get<std::string>()),
                                 "source.png");
    o.guidance_scale = c.at("guidance").get<double>();
    o.image_guidance_scale = c.at("image_guidance").get<double>();
    o.num_images_per_prompt = c.at("images_per_prompt").get<int>();
    o.num_inference_steps = c.at("steps").get<int>();
    o.seed = c.at("seed").get<uint64_t>();
    o.on_step = record;
    out.images = pipelines::instruct_pix2pix(comps, *sampler, o);
  } else {
    pipelines::TextToImageOptions o;
    o.prompts = strings(c, "prompts");
    o.negative_prompts = strings(c, "negative");
    o.guidance_scale = c.at("guidance").get<double>();
    o.num_images_per_prompt = c.at("images_per_prompt").get<int>();
    o.num_inference_steps = c.at("steps").get<int>();
    o.eta = c.value("eta", 0.0);
    o.seed = c.at("seed").get<uint64_t>();
    o.height = c.value("height", 32);
    o.width = c.value("width", 32);
    o.on_step = record;
    out.images = pipelines::text_to_image(comps, *sampler, o);
  }
  return out;
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

class PipelineParity : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineParity, LatentsEveryStepAndImagesEqualDiffusers) {
  const std::string name = GetParam();
  const auto r = run(name);
  const auto steps = cases().at(name).at("loop_steps").get<std::size_t>();  // model calls (PNDM: more)
  ASSERT_EQ(r.latents.size(), steps);
  double worst_latent = 0;
  for (std::size_t i = 0; i < steps; ++i) {
    const auto expected = reference().tensor(name + ".latents." + std::to_string(i));
    ASSERT_EQ(r.latents[i].sizes(), expected.sizes()) << "step " << i;
    const double e = max_abs(r.latents[i], expected);
    worst_latent = std::max(worst_latent, e);
    // The models equal diffusers' to float32 rounding (docs/models.md), not bit for bit;
    // each step carries the previous steps' rounding, and Euler's and LCM's first latents
    // are scaled up by sigma_max (about 14.6), so the bound is relative to the latents' size.
    const double scale = std::max(1.0, expected.abs().max().item<double>());
    EXPECT_LE(e, 2e-5 * scale) << name << " step " << i;
  }
  const auto values = reference().tensor(name + ".image");
  ASSERT_EQ(r.images.values.sizes(), values.sizes());
  const double image_error = max_abs(r.images.values, values);
  EXPECT_LE(image_error, 2e-5) << name << ": float images";
  // uint8: round(x * 255) of values within 2e-5 can only differ where x * 255 sits on a
  // rounding boundary, by one level.
  const auto pixels = reference().tensor(name + ".image_u8");
  ASSERT_EQ(r.images.pixels.sizes(), pixels.sizes());
  const auto diff = (r.images.pixels.to(torch::kInt32) - pixels.to(torch::kInt32)).abs();
  EXPECT_LE(diff.max().item<int>(), 1) << name;
  RecordProperty("max_latent_error", fmt::format("{:.3g}", worst_latent));
  RecordProperty("max_image_error", fmt::format("{:.3g}", image_error));
  RecordProperty("pixels_off_by_one", std::to_string(diff.gt(0).sum().item<int64_t>()));
}

INSTANTIATE_TEST_SUITE_P(Cases, PipelineParity,
                         ::testing::Values("ddim_cfg", "ddim_cfg_negative", "ddim_eta", "ddim_nocfg", "euler_cfg",
                                           "euler_nocfg", "lcm_1", "lcm_2", "lcm_4", "ip2p_cfg", "ip2p_nocfg",
                                           "pndm_cfg", "pndm_prk", "dpm_cfg", "dpm_karras_nocfg", "lora_ddim"),
                         [](const auto& info) { return info.param; });

// The seed gives diffusers' initial latents: torch.randn(shape, generator=Generator().manual_seed(seed)).
TEST(Pipelines, TheSeedDrawsDiffusersInitialLatents) {
  auto& comps = components("micro-sd");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(0);
  const auto latents = pipelines::initial_latents(comps, generator, 4, 4, 16, 16, 1.0);
  EXPECT_TRUE(testing::same_tensor(latents, reference().tensor("ddim_cfg.init_latents")));
}

TEST(Pipelines, BadInputsAreOneLineErrors) {
  auto& sd = components("micro-sd");
  auto& ip2p = components("ip2p-micro");
  auto sampler = sd.sampler();
  pipelines::TextToImageOptions t2i;
  t2i.prompts = {"a red circle"};
  t2i.num_inference_steps = 2;
  t2i.height = 36;
  EXPECT_THROW_WITH(pipelines::text_to_image(sd, *sampler, t2i), "multiples of 8", "36");
  t2i.height = 32;
  EXPECT_THROW_WITH(pipelines::text_to_image(ip2p, *sampler, t2i), "ip2p-micro", "8 input channels",
                    "needs a source image");
  t2i.negative_prompts = {"a", "b"};
  EXPECT_THROW_WITH(pipelines::text_to_image(sd, *sampler, t2i), "2 negative prompts for 1 prompts");
  pipelines::InstructPix2PixOptions edit;
  edit.prompts = {"make it blue"};
  edit.num_inference_steps = 2;
  edit.image = torch::zeros({32, 32, 3}, torch::kUInt8);
  EXPECT_THROW_WITH(pipelines::instruct_pix2pix(sd, *sampler, edit), "takes 4 input channels", "needs 8");
  edit.image = torch::zeros({31, 32, 3}, torch::kUInt8);
  EXPECT_THROW_WITH(pipelines::instruct_pix2pix(ip2p, *sampler, edit), "32 x 31", "multiples of 2");
  EXPECT_THROW_WITH(sd.sampler("karras"), "unknown scheduler 'karras'", "ddim");
}

// diffusers writes DPMSolverMultistepScheduler's lambda_min_clipped default as the bare
// -Infinity of Python's json; such a pipeline folder loads and its scheduler is built.
TEST(Pipelines, SchedulerConfigWithMinusInfinityLoads) {
  testing::TempDir tmp;
  fs::copy(fixtures_dir() / "pipelines/micro-sd", tmp / "pipe", fs::copy_options::recursive);
  testing::write_file(tmp / "pipe/scheduler/scheduler_config.json",
                      R"({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear",
                          "beta_start": 0.00085, "beta_end": 0.012, "lambda_min_clipped": -Infinity,
                          "algorithm_type": "dpmsolver++", "num_train_timesteps": 1000})");
  auto comps = pipelines::load_components(tmp / "pipe");
  EXPECT_TRUE(comps.scheduler_config.at("lambda_min_clipped").is_null());
  auto sampler = comps.sampler();
  EXPECT_EQ(sampler->class_name(), "DPMSolverMultistepScheduler");
  sampler->set_timesteps(4);
  EXPECT_EQ(sampler->timesteps().size(0), 4);
  testing::write_file(tmp / "pipe/scheduler/scheduler_config.json", R"({"beta_end": -Infinit})");
  EXPECT_THROW_WITH(pipelines::load_components(tmp / "pipe"), "scheduler_config.json", "not valid JSON");
}

// A LoRA file that does not fit the UNet is refused naming the file and the key, and leaves
// the pipeline without adapters.
TEST(Pipelines, LoraFilesThatDoNotFitAreRefused) {
  testing::TempDir tmp;
  auto comps = pipelines::load_components(fixtures_dir() / "pipelines/micro-sd");
  io::NamedTensors good;
  const io::SafetensorsReader reader(fixtures_dir() / "inference/lora.safetensors");
  for (const auto& e : reader.entries()) good.emplace_back(e.name, reader.tensor(e.name).clone());
  const auto write = [&](const std::string& name, const io::NamedTensors& tensors) {
    io::write_safetensors(tmp / name, tensors, {{"format", "pt"}});
    return tmp / name;
  };
  io::NamedTensors renamed = good;
  renamed[0].first = "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight";
  renamed[1].first = "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_k.lora.up.weight";
  EXPECT_THROW_WITH(pipelines::apply_lora(comps, write("nomodule.safetensors", renamed)), "nomodule.safetensors",
                    "down_blocks.7", "names no layer of the UNet that LoRA can adapt");
  EXPECT_FALSE(comps.lora);
  io::NamedTensors reshaped = good;
  reshaped[0].second = torch::zeros({2, 5});
  EXPECT_THROW_WITH(pipelines::apply_lora(comps, write("shape.safetensors", reshaped)), "shape.safetensors",
                    "does not fit the module");
  io::NamedTensors text = good;
  text[0].first = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight";
  EXPECT_THROW_WITH(pipelines::apply_lora(comps, write("text.safetensors", text)), "text-encoder LoRA");
  io::NamedTensors half = good;
  half.erase(half.begin() + 1);
  EXPECT_THROW_WITH(pipelines::apply_lora(comps, write("half.safetensors", half)), "no matching up/down half");
  EXPECT_FALSE(comps.lora);
  pipelines::apply_lora(comps, fixtures_dir() / "inference/lora.safetensors", 0.5);
  EXPECT_TRUE(comps.lora);
  EXPECT_THROW_WITH(pipelines::apply_lora(comps, fixtures_dir() / "inference/lora.safetensors"), "already applied");
}

}  // namespace
}  // namespace lisadiff
