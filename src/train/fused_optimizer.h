// The fused per-parameter optimizer: every parameter that may ever train carries a
// post-accumulate-grad hook. When the backward pass has accumulated a parameter's gradient on
// the last micro-batch of an accumulation window, the hook
//   1. hands the gradient to an optional reducer (data parallel: average across ranks),
//   2. clips *this parameter's* gradient norm to max_grad_norm (the original LISA semantics;
//      a global norm cannot be computed in one fused pass),
//   3. runs its AdamW step with lr = schedule(global optimizer step),
//   4. frees the gradient at once,
// so gradients and optimizer state of the whole model never exist at the same time. On
// earlier micro-batches gradients accumulate in .grad as usual (that costs one gradient per
// active parameter for the length of the window).
//
// Parameters with requires_grad = false get no gradient, so their hooks never fire: the
// active set is whatever requires grad (the LISA sampler switches it). Optimizer state is
// created on a parameter's first step and can be dropped when it is deactivated.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "train/adamw8bit.h"
#include "train/distributed.h"

namespace lisadiff::train {

struct AdamWOptions {
  double lr = 1e-4;  // base lr; the schedule multiplies it (see lr_at)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // decoupled, on every tensor (biases and norms too), as torch
};

enum class AdamWKernel {
  kAuto,    // kSingle on CPU (bit-identical to torch.optim.AdamW's CPU default), kFused on CUDA
  kSingle,  // torch's single-tensor AdamW arithmetic, op for op
  kFused,   // ATen's _fused_adamw_ kernel (one launch per parameter on CUDA)
};

// Dynamic loss scaling for fp16 training, compatible with fused steps (GradScaler's
// constants). The loop multiplies the loss by loss_scale() before backward. Each hook
// unscales its tensor's gradient and checks it (ATen's _amp_foreach_non_finite_check_and_unscale_,
// as GradScaler): a non-finite gradient skips *that tensor's* update (earlier tensors of the
// same backward pass have already stepped with finite gradients: a fused step cannot be
// undone, which is the documented difference from GradScaler's all-or-nothing step);
// finish_step() then halves the scale. After growth_interval clean steps the scale doubles.
// Scales are powers of two, so unscaling is exact: without overflow a scaled run equals an
// unscaled one bit for bit.
// The per-tensor overflow flag stays on the device where the kernel can act on it (kFused:
// _fused_adamw_'s found_inf skips the update inside the kernel) and is read once per step in
// finish_step(), with the gradient norms; the kSingle and 8-bit kernels read it per tensor
// (free on CPU, one device synchronisation per tensor on CUDA).
struct LossScaling {
  bool enabled = false;
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

struct FusedOptimizerOptions {
  AdamWOptions adamw;
  AdamWKernel kernel = AdamWKernel::kAuto;
  // lr of the update that follows `step` optimizer steps already taken (diffusers/accelerate
  // semantics: the first update uses lr_at(0)). Default: constant adamw.lr.
  std::function<double(int64_t step)> lr_at;
  double max_grad_norm = 0.0;  // per parameter; <= 0 disables clipping
  // 8-bit AdamW (block-wise quantised moments, train/adamw8bit.h) instead of fp32 moments:
  // about 2 bytes of state per element instead of 8. `kernel` is then unused.
  bool use_8bit_adam = false;
  LossScaling loss_scaling;
  // Data parallel (train/distributed.h): on sync micro-batches every gradient is averaged
  // across the ranks before it is clipped and stepped. Fused: the hook hands the gradient to
  // the bucketed, asynchronous all-reduce and steps the tensors whose reduced gradient is
  // there (the rest at finish_step()); classic: the buckets reduce during the backward pass
  // and finish_step() waits for them before the global clip. Non-sync micro-batches
  // communicate nothing. finish_step() checks that every rank reduced the same tensors in
  // the same order.
  std::shared_ptr<GradientSync> grad_sync;
  // The classic (unfused) step of the diffusers scripts, for the baselines: the hooks do not
  // step; finish_step() steps every tensor that holds a gradient, after clipping the *global*
  // norm over all of them (torch.nn.utils.clip_grad_norm_) and, with loss scaling, skipping
  // the whole step when any gradient is non-finite (GradScaler). All gradients are alive at
  // once, as with torch.optim.AdamW.
  bool classic = false;
};

// Per-parameter AdamW state; moments in the parameter's dtype (float32: other dtypes are
// refused by the optimizer, an update of 1e-4 is below bf16's resolution).
struct AdamWState {
  torch::Tensor exp_avg, exp_avg_sq;
  torch::Tensor step;  // float32 scalar tensor, as torch keeps it (the fused kernel needs it)
};

class FusedOptimizer {
 public:
  // Installs the hooks on every tensor of `params` (name, parameter). The parameters must be
  // leaves; their requires_grad flags are left as they are.
  FusedOptimizer(std::vector<std::pair<std::string, torch::Tensor>> params, FusedOptimizerOptions options);
  ~FusedOptimizer();
  FusedOptimizer(const FusedOptimizer&) = delete;
  FusedOptimizer& operator=(const FusedOptimizer&) = delete;

  // Whether the backward pass about to run ends an accumulation window (default true).
  void set_sync(bool sync) { sync_ = sync; }
  bool sync() const { return sync_; }

  // Call after the backward pass of a sync micro-batch: the optimizer step is complete.
  // Tensors that still hold a gradient (they require grad but were not in the sync
  // micro-batch's graph, so their hook did not fire) are stepped here, as a classic
  // optimizer would. Returns the new global step. Also resets the per-step statistics.
  // Throws lisadiff::Error when the last backward pass was not a sync one (set_sync(false)):
  // nothing was updated, and ending the step there would skip the window's update.
  int64_t finish_step();

  int64_t global_step() const { return global_step_; }
  // Multiply the loss by this before backward (1 unless loss scaling is on).
  double loss_scale() const { return scale_; }
  bool loss_scaling() const { return options_.loss_scaling.enabled; }
  // Throws lisadiff::Error when loss scaling is off (the scale must stay 1) or the scale is
  // not a positive power of two (unscaling would no longer be exact).
  void set_loss_scale(double scale, int64_t growth_tracker);
  int64_t growth_tracker() const { return growth_tracker_; }
  // Tensors whose update the last step skipped for a non-finite gradient.
  int64_t last_skipped_tensors() const { return last_skipped_; }
  // Sets the global step (a resume) and the schedule's step to `step`, and forgets every
  // per-step record of the run so far (which tensor stepped at which step, the statistics
  // of a step in progress): an optimizer that already trained continues as a fresh resume.
  void set_global_step(int64_t step);
  // The step the lr schedule is at: the global step minus the steps that overflow skipped
  // entirely (accelerate does not advance the scheduler when GradScaler skipped the
  // optimizer step). lr_at(schedule_step()) is the lr of the next update.
  int64_t schedule_step() const { return schedule_step_; }
  void set_schedule_step(int64_t step);
  double current_lr() const;  // the lr the next update uses

  // Statistics of the step in progress / just finished (before finish_step resets them):
  // the L2 norm over all stepped gradients before clipping.
  double last_grad_norm() const { return last_grad_norm_; }

  // Drops the optimizer state of a parameter (LISA deactivation). Its hook stays.
  void drop_state(const std::string& name);
  bool has_state(const std::string& name) const;
  const AdamWState* state(const std::string& name) const;
  void set_state(const std::string& name, AdamWState state);
  std::int64_t state_bytes() const;  // bytes held by optimizer state now
  // Every tensor's state for a checkpoint: "<param>/exp_avg", "<param>/exp_avg_sq",
  // "<param>/step" (fp32 moments) or "<param>/8bit/<name>" and "<param>/8bit/step".
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  // Replaces all state by the one in `tensors` (as state_tensors() wrote it); `source`
  // names the file in errors. Moments take the memory layout of their parameter
  // (channels_last stays channels_last). A file with a loss scale is refused when loss
  // scaling is off, and one without it when loss scaling is on (an fp16 run resumed
  // without fp16, or the other way round).
  void load_state_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& source);
  const std::vector<std::pair<std::string, torch::Tensor>>& params() const { return params_; }
  // The data-parallel gradient all-reduce, or null (one process).
  GradientSync* grad_sync() const { return options_.grad_sync.get(); }

  // The AdamW update for one parameter, exposed for tests and for the classic (unfused)
  // baseline: p, grad (already clipped), state (created when empty; moments in p's memory
  // layout). `found_inf` (kFused only): a 0-d float tensor on p's device; when it is
  // nonzero the kernel leaves p and the state as they were (the step count included).
  static void adamw_step(torch::Tensor& p, const torch::Tensor& grad, AdamWState& state, const AdamWOptions& o,
                         double lr, AdamWKernel kernel, const torch::Tensor& found_inf = {});

 private:
  void on_grad(std::size_t index, const torch::Tensor& param);
  // The fused step of tensor i with its (reduced) gradient: unscale, clip, update, free.
  void step_tensor(std::size_t index);
  void step_ready(const std::vector<std::size_t>& indices);
  void classic_step();
  void check_float32(std::size_t index) const;  // throws for a trained tensor that is not float32
  // Unscales gradients on one device in place (loss scaling on) and returns a 0-d float
  // tensor on that device: 1 when any of them is not finite, else 0. No host transfer.
  torch::Tensor unscale(const std::vector<torch::Tensor>& grads);
  // Whether tensor i's kernel skips on a device flag (kFused) or needs it on the host.
  bool skips_on_device(std::size_t index) const;
  // The AdamW (or 8-bit) update of tensor i with its prepared gradient; `found_inf` as in
  // adamw_step (only for tensors that skip on the device).
  void update(std::size_t index, torch::Tensor& param, const torch::Tensor& grad, const torch::Tensor& found_inf = {});
  void remove_hooks(std::size_t count);

  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::map<std::string, std::size_t> index_;
  FusedOptimizerOptions options_;
  std::vector<AdamWState> states_;
  std::vector<std::unique_ptr<AdamW8bitState>> states8_;
  std::vector<int64_t> steps8_;
  std::vector<int64_t> stepped_at_;  // global step of each tensor's last update (-1: never)
  bool sync_backward_seen_ = false;
  bool sync_ = true;
  int64_t global_step_ = 0, schedule_step_ = 0;
  // Sum of squared gradient norms of the step and count of tensors skipped for overflow,
  // float64 on the gradients' device: read once in finish_step(), so the hooks never wait
  // for the device.
  torch::Tensor sq_norm_, found_count_;
  int64_t handled_ = 0;  // tensors whose gradient this step took (stepped or skipped)
  double last_grad_norm_ = 0.0;
  double scale_ = 1.0;
  torch::Tensor inv_scale_;  // 1 / scale_ as a float32 tensor on the gradients' device
  int64_t growth_tracker_ = 0, skipped_ = 0, last_skipped_ = 0;
};

// Clips one gradient in place as torch.nn.utils.clip_grad_norm_ does for a single tensor:
// coef = min(1, max_norm / (norm + 1e-6)); grad *= coef. Returns the norm before clipping,
// a 0-d float32 tensor on the gradient's device (no host synchronisation).
torch::Tensor clip_grad_norm_(torch::Tensor& grad, double max_norm);
// torch.nn.utils.clip_grad_norm_ over several gradients (the global norm); max_norm <= 0
// only measures. Returns the norm before clipping, as clip_grad_norm_.
torch::Tensor clip_grad_norms_(const std::vector<torch::Tensor>& grads, double max_norm);

}  // namespace lisadiff::train
