// What the four recipe parity tests (tests/recipes/test_*_parity.cpp) share: the frozen parts
// they load, the Trainer settings and the reference loop's hyper-parameters they all use, the
// run of the Python reference (scripts/<recipe>_reference.py, which reads settings.json through
// scripts/reflib.py) and the comparisons of what it returns.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/clip_tokenizer.h"
#include "models/vae.h"
#include "schedulers/ddpm.h"
#include "train/trainer.h"

namespace lisadiff::testing {

// The tokenizer, text encoder, VAE (both frozen) and noise schedule of a pipeline folder.
struct FrozenParts {
  models::CLIPTokenizer tokenizer;
  models::CLIPTextModel text_encoder;
  models::AutoencoderKL vae;
  schedulers::DDPMNoiseSchedule schedule;
};
FrozenParts load_frozen_parts(const std::filesystem::path& pipeline);

// The training loop both sides run: `steps` optimizer steps of `accumulation` micro-batches,
// AdamW (betas 0.9, 0.999, weight decay 1e-2, eps 1e-8) at `lr` on a cosine schedule warming
// up 2 steps, gradients clipped to `max_grad_norm`; LISA draws 6 units every 3 steps (seed 11).
struct ParityLoop {
  int steps = 10;
  int accumulation = 2;
  double lr = 1e-3;
  double max_grad_norm = 0.05;
};
// lisadiff's side: the Trainer's options (no checkpoints, no reports; LoRA and EMA are the
// test's to set).
train::TrainerOptions parity_trainer_options(train::TrainMethod method, const ParityLoop& loop,
                                             const std::filesystem::path& output_dir);
// The reference's side: settings.json's loop keys; a test adds its recipe's.
nlohmann::json parity_settings(const ParityLoop& loop);

// Writes <inputs>/settings.json (`settings` with the method and LISA's active sets of every
// step), runs scripts/<script> on the pipeline and the inputs folder, and opens what it wrote
// (<inputs>/../ref.safetensors). Throws, with the script's output, when it fails.
io::SafetensorsReader run_parity_reference(const std::string& script, const std::filesystem::path& pipeline,
                                           const std::filesystem::path& inputs, nlohmann::json settings,
                                           train::TrainMethod method, const nlohmann::json& sets);

// A value of every micro-batch against the reference's tensor of them:
// |actual - expected| <= rtol * |actual| + atol each.
void expect_per_micro_batch(const std::string& what, const std::vector<double>& actual, const torch::Tensor& expected,
                            double rtol, double atol);
// Each trained tensor against the reference's <prefix><name>.
void expect_trained_equal(const train::Trainer& trainer, const io::SafetensorsReader& ref, const std::string& prefix,
                          double atol, double rtol);

}  // namespace lisadiff::testing
