#include "recipes/recipe_parity.h"

#include <stdexcept>

#include "test_util.h"

namespace lisadiff::testing {

namespace fs = std::filesystem;

FrozenParts load_frozen_parts(const fs::path& pipeline) {
  models::LoadOptions frozen;
  frozen.frozen = true;
  return FrozenParts{models::CLIPTokenizer::from_folder(pipeline / "tokenizer"),
                     models::load_clip_text(pipeline / "text_encoder", frozen), models::load_vae(pipeline / "vae", frozen),
                     schedulers::DDPMNoiseSchedule::from_pretrained(pipeline / "scheduler")};
}

train::TrainerOptions parity_trainer_options(train::TrainMethod method, const ParityLoop& loop, const fs::path& output_dir) {
  train::TrainerOptions o;
  o.method = method;
  o.lisa.n_active = 6;
  o.lisa.interval = 3;
  o.lisa.seed = 11;
  o.output_dir = output_dir;
  o.max_train_steps = loop.steps;
  o.gradient_accumulation_steps = loop.accumulation;
  o.schedule.type = train::LrScheduleType::kCosine;
  o.schedule.base_lr = loop.lr;
  o.schedule.warmup_steps = 2;
  o.max_grad_norm = loop.max_grad_norm;
  o.checkpointing_steps = 1000;
  o.report_to = "none";
  return o;
}

nlohmann::json parity_settings(const ParityLoop& loop) {
  return {{"steps", loop.steps},           {"accumulation", loop.accumulation},
          {"learning_rate", loop.lr},      {"lr_scheduler", "cosine"},
          {"lr_warmup_steps", 2},          {"max_grad_norm", loop.max_grad_norm},
          {"adam_beta1", 0.9},             {"adam_beta2", 0.999},
          {"adam_weight_decay", 1e-2},     {"adam_epsilon", 1e-8}};
}

io::SafetensorsReader run_parity_reference(const std::string& script, const fs::path& pipeline, const fs::path& inputs,
                                           nlohmann::json settings, train::TrainMethod method,
                                           const nlohmann::json& sets) {
  settings["method"] = train::method_name(method);
  settings["sets"] = sets;
  write_file(inputs / "settings.json", settings.dump());
  const auto out = inputs.parent_path() / "ref.safetensors";
  const auto [rc, log] = run_reference(script, pipeline, inputs, out);
  if (rc != 0) throw std::runtime_error(script + " failed (exit " + std::to_string(rc) + "):\n" + log);
  return io::SafetensorsReader(out);
}

void expect_per_micro_batch(const std::string& what, const std::vector<double>& actual, const torch::Tensor& expected,
                            double rtol, double atol) {
  ASSERT_EQ(static_cast<std::int64_t>(actual.size()), expected.size(0)) << what;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[static_cast<std::int64_t>(i)].item<double>(), rtol * std::abs(actual[i]) + atol)
        << what << " of micro-batch " << i;
  }
}

void expect_trained_equal(const train::Trainer& trainer, const io::SafetensorsReader& ref, const std::string& prefix,
                          double atol, double rtol) {
  for (const auto& [name, value] : trainer.trainable()) {
    EXPECT_TRUE(close_tensor(prefix + name, value, ref.tensor(prefix + name), atol, rtol));
  }
}

}  // namespace lisadiff::testing
