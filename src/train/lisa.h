// LISA (Layerwise Importance Sampled AdamW) for any LibTorch module: at any moment only the
// always-on units and n randomly drawn units train; every `interval` optimizer steps the draw
// changes ("recall"); each parameter's AdamW step runs inside the backward pass
// (FusedOptimizer), so gradients and optimizer state of the whole model never exist at once.
// ../shared/spec/lisa.md describes the algorithm and the original's defects avoided here:
// every parameter carries the hook (not only those active at the start), learning rates
// follow the global optimizer step, the state of deactivated tensors is freed, the draw
// counts optimizer steps (not micro-batches), and the same seed gives the same sets in
// every process.
//
// The drop-in use (the seed project's single_lisa.py, in C++):
//
//   lisadiff::train::LisaOptions lisa;            // n_active / rate, interval, seed, ...
//   lisadiff::train::FusedOptimizerOptions opt;   // AdamW hyper-parameters, lr schedule, clipping
//   lisadiff::train::Lisa trainer(*model, lisa, opt);   // installs the hooks, draws the first set
//   for (...) {                                   // one optimizer step of A micro-batches
//     for (int k = 0; k < A; ++k) {
//       trainer.set_sync(k == A - 1);             // the last backward of the window steps
//       loss_fn(model->forward(x[k]), y[k]).backward();   // ... the active tensors, in here
//     }
//     trainer.step();     // ends the optimizer step; re-draws every `interval` steps
//   }
//
// step() = finish_step() + redraw_if_due(). Work that must see the set that just trained
// (an EMA update, a checkpoint) goes between the two; the Trainer calls redraw_if_due() at
// the start of each step, so the last step never draws a set that would not train.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "train/fused_optimizer.h"

namespace lisadiff::train {

enum class LisaUnit {
  kTensor,  // every parameter tensor is a unit (the original)
  kBlock,   // a resnet block, an attention block, a sampler, a CLIP layer, else one module:
            // a weight and its bias move together
};
enum class LisaSampling {
  kUniform,   // every candidate unit equally likely (the original)
  kWeighted,  // the extended variant: rank by size (0.999^rank), x10 for attention/conv targets
};

struct LisaOptions {
  LisaUnit unit = LisaUnit::kTensor;
  // Regular expressions searched in parameter names; a unit with a matching parameter is
  // always active. Empty: the first and the last parameter in registration order.
  std::vector<std::string> always_on;
  int64_t n_active = -1;  // units drawn besides the always-on ones; < 0: from `rate`
  double rate = -1.0;     // share of the candidate units; < 0 and n_active < 0: 8 / units
  int64_t interval = 20;  // re-draw every this many optimizer steps
  LisaSampling sampling = LisaSampling::kUniform;
  uint64_t seed = 0;
  bool keep_state = false;  // keep a deactivated tensor's AdamW moments (default: free them)
  // The precision switch of the authors' extended variant: frozen tensors are stored in this
  // dtype (kBFloat16 or kHalf) and an activated tensor is converted to float32, its master
  // copy, until it is frozen again and rounded back: float32 only for what trains. Tensors
  // whose names match `keep_fp32` (searched regular expressions; default: normalisation
  // layers, whose CPU kernels need float32 parameters) stay float32. The forward pass then
  // needs autocast (mixed precision). Unset: every tensor keeps its dtype.
  std::optional<torch::ScalarType> frozen_dtype;
  std::vector<std::string> keep_fp32 = {"norm"};

  static LisaUnit unit_from_name(const std::string& name);
  static LisaSampling sampling_from_name(const std::string& name);
};

struct LisaUnitInfo {
  std::string name;
  std::vector<std::size_t> params;  // indices into the parameter list
  int64_t numel = 0;
  bool always_on = false;
  double weight = 1.0;  // sampling weight (kWeighted)
};

// The precision switch for a fixed frozen set (LoRA's base): stores every tensor of `params`
// that does not require grad and whose name matches none of `keep_fp32` (searched regular
// expressions) in `dtype`, in place (set_data: modules keep holding the same tensors).
void store_frozen_weights(const std::vector<std::pair<std::string, torch::Tensor>>& params, torch::ScalarType dtype,
                          const std::vector<std::string>& keep_fp32 = {"norm"});

// The unit of a parameter name under kBlock: the path up to the index after resnets,
// attentions, downsamplers, upsamplers or layers; else the module path (name minus the last
// part). Exposed for tests and reports.
std::string block_of(const std::string& parameter_name);

// Which units are active: a deterministic random stream (mt19937_64 with its own integer and
// real reductions, so the same seed gives the same draws on every platform).
class LisaSampler {
 public:
  LisaSampler(const std::vector<std::pair<std::string, torch::Tensor>>& params, const LisaOptions& options);

  const std::vector<LisaUnitInfo>& units() const { return units_; }
  int64_t n_active() const { return n_; }
  // The next draw: indices of n distinct candidate (not always-on) units, ascending.
  std::vector<std::size_t> draw();
  int64_t draws() const { return draws_; }

  nlohmann::json state() const;  // RNG state and draw count (for checkpoints)
  void load_state(const nlohmann::json& state);

 private:
  uint64_t below(uint64_t n);  // uniform integer in [0, n)
  double uniform01();          // uniform double in (0, 1)

  std::vector<LisaUnitInfo> units_;
  std::vector<std::size_t> candidates_;
  int64_t n_ = 0;
  LisaSampling sampling_;
  std::mt19937_64 rng_;
  int64_t draws_ = 0;
};

class Lisa {
 public:
  // Takes every parameter of `model` (named_parameters order); freezes all but the first
  // draw's units and installs the fused optimizer's hooks on all of them.
  Lisa(torch::nn::Module& model, LisaOptions options, FusedOptimizerOptions optimizer);
  Lisa(std::vector<std::pair<std::string, torch::Tensor>> params, LisaOptions options,
       FusedOptimizerOptions optimizer);

  // Whether the next backward pass ends an accumulation window.
  void set_sync(bool sync) { optimizer_.set_sync(sync); }
  // After the backward pass of a sync micro-batch: completes the optimizer step (counting the
  // active set as trained on its first step) and returns the global optimizer step. Throws
  // lisadiff::Error after a non-sync backward pass (FusedOptimizer::finish_step).
  int64_t finish_step();
  // Re-draws when a multiple of `interval` steps is done and the active set was drawn
  // before that step; returns whether it did. Call before the forward pass of a step.
  bool redraw_if_due();
  // finish_step() then redraw_if_due(): the drop-in loop's one call per optimizer step.
  int64_t step();
  // Re-draw now: freeze the old set (dropping its optimizer state unless keep_state),
  // activate the always-on units and a new draw.
  void recall();
  // Activate the always-on units and exactly `units` (indices into sampler().units()), as a
  // recall would, without drawing: for replaying a recorded sequence of sets.
  void activate_units(const std::vector<std::size_t>& units);

  FusedOptimizer& optimizer() { return optimizer_; }
  const LisaSampler& sampler() const { return sampler_; }
  const std::vector<std::size_t>& active_units() const { return active_; }
  std::vector<std::string> active_names() const;  // active parameter names
  int64_t active_parameters() const;              // elements that train now
  int64_t total_parameters() const;
  // Per unit: how many active sets it was part of that trained at least one step (a set
  // drawn and never trained, e.g. when a run stops right after a draw, is not counted).
  const std::vector<int64_t>& activation_counts() const { return counts_; }
  int64_t sets_trained() const { return sets_trained_; }  // active sets that trained
  int64_t drawn_at() const { return drawn_at_; }          // global step the active set was drawn at

  // Sampler state, active units, counts, global step, the step the set was drawn at, and
  // the options a resume must share (unit kind and count, n_active, interval, sampling,
  // always-on patterns, keep_state).
  nlohmann::json state() const;
  // Throws lisadiff::Error naming the first setting that differs from the saved one.
  void load_state(const nlohmann::json& state);

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  LisaOptions options_;
  LisaSampler sampler_;
  FusedOptimizer optimizer_;
  std::vector<std::size_t> active_;
  std::vector<int64_t> counts_;
  int64_t drawn_at_ = 0;
  int64_t sets_trained_ = 0;
  std::vector<bool> keep_fp32_;  // per parameter: exempt from frozen_dtype
};

}  // namespace lisadiff::train
