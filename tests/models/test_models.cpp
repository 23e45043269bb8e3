// Module tree = key tree, and what the loaders do with bad weights.
#include <gtest/gtest.h>

#include "config/clip_text_config.h"
#include "config/unet_config.h"
#include "config/vae_config.h"
#include "io/pipeline_folder.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/state.h"
#include "models/unet.h"
#include "models/vae.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;

fs::path pipeline(const std::string& name) { return fixtures_dir() / "pipelines" / name; }

// (name, shape) in named_parameters() order; `prefix` is dropped (see clip_key_alias).
nlohmann::ordered_json order_of(const torch::nn::Module& m, const std::string& prefix = "") {
  auto out = nlohmann::ordered_json::array();
  for (const auto& p : m.named_parameters()) {
    out.push_back({p.key().substr(p.key().rfind(prefix, 0) == 0 ? prefix.size() : 0), p.value().sizes().vec()});
  }
  return out;
}

void expect_same_order(const nlohmann::ordered_json& ours, const nlohmann::ordered_json& reference,
                       const std::string& what) {
  ASSERT_EQ(ours.size(), reference.size()) << what;
  for (std::size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(ours[i], reference[i]) << what << ": parameter " << i;
  }
}

// Same names, same values.
void expect_same_parameters(const torch::nn::Module& got, const torch::nn::Module& expected) {
  const auto params = got.named_parameters();
  ASSERT_EQ(params.size(), expected.named_parameters().size());
  for (const auto& p : expected.named_parameters()) EXPECT_TRUE(testing::same_tensor(params[p.key()], p.value())) << p.key();
}

config::UNet2DConditionConfig unet_config(const fs::path& file) {
  auto c = config::UNet2DConditionConfig::from_file(file);
  c.validate(file.string());
  return c;
}

TEST(ParameterOrder, EqualsDiffusersAndTransformersForEveryTinyConfig) {
  const auto orders = testing::read_json(fixtures_dir() / "models" / "parameter_order.json");
  struct Where {
    std::string key;
    fs::path dir;
  };
  const std::vector<Where> sets = {{"micro-sd", pipeline("micro-sd")},
                                   {"lcm-micro", pipeline("lcm-micro")},
                                   {"tiny-sd", fixtures_dir() / "configs" / "tiny-sd"}};
  for (const auto& w : sets) {
    models::UNet2DConditionModel unet(unet_config(w.dir / "unet" / "config.json"));
    expect_same_order(order_of(*unet), orders.at(w.key + "/unet"), w.key + "/unet");
    auto vc = config::AutoencoderKLConfig::from_file(w.dir / "vae" / "config.json");
    models::AutoencoderKL vae(vc);
    expect_same_order(order_of(*vae), orders.at(w.key + "/vae"), w.key + "/vae");
    models::CLIPTextModel clip(config::CLIPTextConfig::from_file(w.dir / "text_encoder" / "config.json"));
    expect_same_order(order_of(*clip, "text_model."), orders.at(w.key + "/text_encoder"), w.key + "/text_encoder");
  }
  models::UNet2DConditionModel ip2p(unet_config(fixtures_dir() / "models" / "unet-ip2p-lcm" / "config.json"));
  expect_same_order(order_of(*ip2p), orders.at("unet-ip2p-lcm"), "unet-ip2p-lcm");
}

// A copy of micro-sd's unet folder whose weights a test rewrites.
struct UNetCopy {
  TempDir tmp;
  fs::path dir = tmp.path() / "unet";
  fs::path weights = dir / "diffusion_pytorch_model.safetensors";
  io::NamedTensors tensors;

  UNetCopy() {
    fs::create_directories(dir);
    fs::copy_file(pipeline("micro-sd") / "unet" / "config.json", dir / "config.json");
    io::SafetensorsReader r(pipeline("micro-sd") / "unet" / "diffusion_pytorch_model.safetensors");
    for (const auto& e : r.entries()) tensors.emplace_back(e.name, r.tensor(e.name).clone());
  }
  void write() { io::write_safetensors(weights, tensors, {{"format", "pt"}}); }
  torch::Tensor& at(const std::string& name) {
    for (auto& [n, t] : tensors) {
      if (n == name) return t;
    }
    throw std::runtime_error("no tensor " + name);
  }
};

TEST(Loading, MissingKeyNamesFileAndKey) {
  UNetCopy c;
  c.tensors.erase(std::remove_if(c.tensors.begin(), c.tensors.end(), [](auto& p) { return p.first == "conv_out.bias"; }),
                  c.tensors.end());
  c.write();
  EXPECT_THROW_WITH(models::load_unet(c.dir), c.weights.string(), "1 missing keys: conv_out.bias");
}

TEST(Loading, UnexpectedKeyNamesIt) {
  UNetCopy c;
  c.tensors.emplace_back("mid_block.extra.weight", torch::zeros({3}));
  c.write();
  EXPECT_THROW_WITH(models::load_unet(c.dir), c.weights.string(), "1 unexpected keys: mid_block.extra.weight");
}

TEST(Loading, WrongShapeGivesBothShapes) {
  UNetCopy c;
  c.at("conv_in.weight") = torch::zeros({4, 8, 3, 3});
  c.write();
  EXPECT_THROW_WITH(models::load_unet(c.dir), c.weights.string(),
                    "1 shape mismatches: conv_in.weight: file [4, 8, 3, 3] vs model [4, 4, 3, 3]");
}

TEST(Loading, IntegerWeightsAreRefused) {
  UNetCopy c;
  c.at("conv_out.bias") = torch::zeros({4}, torch::kInt32);
  c.write();
  EXPECT_THROW_WITH(models::load_unet(c.dir), "not floating point", "conv_out.bias: I32");
}

TEST(Loading, ConfigThatDisagreesWithWeightsReportsEverything) {
  UNetCopy c;
  c.write();
  auto cfg = testing::read_json(c.dir / "config.json");
  cfg["cross_attention_dim"] = 16;
  testing::write_file(c.dir / "config.json", cfg.dump());
  // Every attn2.to_k / to_v weight has the wrong width: reported once, with a count.
  EXPECT_THROW_WITH(models::load_unet(c.dir), c.weights.string(), "shape mismatches",
                    "attn2.to_k.weight: file [8, 8] vs model [8, 16]", "more)");
}

TEST(Loading, HalfPrecisionFilesLoadIntoAnyFloatDtype) {
  UNetCopy c;
  for (auto& [n, t] : c.tensors) t = t.to(torch::kBFloat16);
  c.write();
  models::LoadOptions o;
  auto unet = models::load_unet(c.dir, o);
  auto ref = models::load_unet(pipeline("micro-sd") / "unet");
  // named_parameters() returns the dict by value: keep it, or got would refer into a temporary
  // (ASan: heap-use-after-free).
  const auto loaded = unet->named_parameters();
  for (const auto& p : ref->named_parameters()) {
    const auto& got = loaded[p.key()];
    ASSERT_EQ(got.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(testing::same_tensor(got, p.value().to(torch::kBFloat16).to(torch::kFloat32))) << p.key();
  }
  o.dtype = torch::kFloat16;
  auto half = models::load_unet(c.dir, o);
  EXPECT_EQ(half->conv_in->weight.scalar_type(), torch::kFloat16);
}

TEST(Loading, VariantWeightsAreFound) {
  UNetCopy c;
  for (auto& [n, t] : c.tensors) t = t.to(torch::kFloat16);
  io::write_safetensors(c.dir / "diffusion_pytorch_model.fp16.safetensors", c.tensors, {{"format", "pt"}});
  auto unet = models::load_unet(c.dir, {}, "fp16");
  EXPECT_EQ(unet->conv_out->bias.scalar_type(), torch::kFloat32);
}

// The VAE's pre-2023 attention names load into the same model; a file with both spellings
// of a tensor is an error (diffusers would silently let one overwrite the other).
TEST(Loading, LegacyVaeAttentionNames) {
  TempDir tmp;
  const auto dir = tmp.path() / "vae";
  fs::create_directories(dir);
  fs::copy_file(pipeline("micro-sd") / "vae" / "config.json", dir / "config.json");
  io::SafetensorsReader r(pipeline("micro-sd") / "vae" / "diffusion_pytorch_model.safetensors");
  io::NamedTensors legacy;
  const std::vector<std::pair<std::string, std::string>> renames = {
      {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};
  int renamed = 0;
  for (const auto& e : r.entries()) {
    std::string name = e.name;
    if (name.find("mid_block.attentions.0") != std::string::npos) {
      for (const auto& [cur, old] : renames) {
        const auto at = name.find(cur);
        if (at != std::string::npos) {
          name.replace(at, cur.size(), old);
          ++renamed;
        }
      }
    }
    legacy.emplace_back(name, r.tensor(e.name));
  }
  EXPECT_EQ(renamed, 16);  // 2 attentions x 4 linears x (weight, bias)
  io::write_safetensors(dir / "diffusion_pytorch_model.safetensors", legacy, {{"format", "pt"}});
  expect_same_parameters(*models::load_vae(dir), *models::load_vae(pipeline("micro-sd") / "vae"));
  legacy.emplace_back("encoder.mid_block.attentions.0.to_q.weight", r.tensor("encoder.mid_block.attentions.0.to_q.weight"));
  io::write_safetensors(dir / "diffusion_pytorch_model.safetensors", legacy, {{"format", "pt"}});
  EXPECT_THROW_WITH(models::load_vae(dir), "keys given twice", "encoder.mid_block.attentions.0.to_q.weight");
}

// SD1.5-era files: "text_model." prefix and a position_ids buffer; both are accepted.
TEST(Loading, ClipPrefixedFileWithPositionIds) {
  TempDir tmp;
  const auto dir = tmp.path() / "text_encoder";
  fs::create_directories(dir);
  fs::copy_file(pipeline("micro-sd") / "text_encoder" / "config.json", dir / "config.json");
  io::SafetensorsReader r(pipeline("micro-sd") / "text_encoder" / "model.safetensors");
  io::NamedTensors old;
  for (const auto& e : r.entries()) old.emplace_back("text_model." + e.name, r.tensor(e.name));
  old.emplace_back("text_model.embeddings.position_ids", torch::arange(77, torch::kInt64).unsqueeze(0));
  io::write_safetensors(dir / "model.safetensors", old, {{"format", "pt"}});
  testing::CapturedLog log;
  expect_same_parameters(*models::load_clip_text(dir), *models::load_clip_text(pipeline("micro-sd") / "text_encoder"));
  EXPECT_EQ(log.text().find("position_ids"), std::string::npos);
  old.back().second = torch::zeros({1, 77}, torch::kInt64);  // a broken merge
  io::write_safetensors(dir / "model.safetensors", old, {{"format", "pt"}});
  models::load_clip_text(dir);
  EXPECT_NE(log.text().find("does not hold 0..76"), std::string::npos) << log.text();
}

TEST(Saving, RoundTripKeepsNamesOrderAndValues) {
  TempDir tmp;
  auto vae = models::load_vae(pipeline("micro-sd") / "vae");
  models::save_parameters(*vae, tmp.path() / "w.safetensors");
  io::SafetensorsReader r(tmp.path() / "w.safetensors");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  for (const auto& p : vae->named_parameters()) EXPECT_TRUE(testing::same_tensor(r.tensor(p.key()), p.value()));
  EXPECT_EQ(r.size(), vae->named_parameters().size());
}

}  // namespace
}  // namespace lisadiff
