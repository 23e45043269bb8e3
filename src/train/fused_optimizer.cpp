#include "train/fused_optimizer.h"

#include <cmath>
#include <optional>

#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "core/error.h"

#include <spdlog/spdlog.h>

namespace lisadiff::train {
namespace {

// The hook object the autograd engine calls after AccumulateGrad has written .grad.
class Hook : public torch::autograd::PostAccumulateGradHook {
 public:
  Hook(std::function<void(const torch::Tensor&)> fn) : fn_(std::move(fn)) {}
  void operator()(const torch::autograd::Variable& tensor) override { fn_(tensor); }

 private:
  std::function<void(const torch::Tensor&)> fn_;
};

AdamWKernel resolve(AdamWKernel k, const torch::Tensor& p) {
  if (k != AdamWKernel::kAuto) return k;
  return p.is_cuda() ? AdamWKernel::kFused : AdamWKernel::kSingle;
}

}  // namespace

torch::Tensor clip_grad_norms_(const std::vector<torch::Tensor>& grads, double max_norm) {
  // torch.nn.utils.clip_grad_norm_ (foreach), op for op: the total norm is the norm of the
  // stacked per-tensor norms, the coefficient is clamped to 1 and always applied.
  std::vector<torch::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) norms.push_back(torch::linalg_vector_norm(g, 2));
  const auto total = torch::linalg_vector_norm(torch::stack(norms), 2);
  if (max_norm > 0) {
    const auto coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
    for (const auto& g : grads) g.mul_(coef);
  }
  return total;
}

torch::Tensor clip_grad_norm_(torch::Tensor& grad, double max_norm) { return clip_grad_norms_({grad}, max_norm); }

namespace {

// sum += norm^2 in float64 (the same IEEE operations as adding norm * norm of doubles);
// nothing is added where `skipped` (a 0-d flag, when defined) is nonzero.
void add_square(torch::Tensor& sum, const torch::Tensor& norm, const torch::Tensor& skipped = {}) {
  auto sq = norm.to(torch::kFloat64).square();
  if (skipped.defined()) sq = torch::where(skipped.ne(0), torch::zeros_like(sq), sq);
  sum = sum.defined() ? sum + sq : sq;
}

// sum += value (a 0-d tensor), in float64 on the value's device.
void add_to(torch::Tensor& sum, const torch::Tensor& value) {
  const auto v = value.to(torch::kFloat64);
  sum = sum.defined() ? sum + v : v;
}

bool is_power_of_two(double x) {
  int exponent = 0;
  return std::isfinite(x) && x > 0 && std::frexp(x, &exponent) == 0.5;
}

}  // namespace

void FusedOptimizer::adamw_step(torch::Tensor& p, const torch::Tensor& grad, AdamWState& s, const AdamWOptions& o,
                                double lr, AdamWKernel kernel, const torch::Tensor& found_inf) {
  torch::NoGradGuard no_grad;
  const bool fused = resolve(kernel, p) == AdamWKernel::kFused;
  if (found_inf.defined() && !fused) throw Error("FusedOptimizer::adamw_step: found_inf needs the fused kernel");
  if (!s.exp_avg.defined()) {
    s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
    s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
    s.step = torch::zeros({}, torch::dtype(torch::kFloat32).device(fused ? p.device() : torch::kCPU));
  }
  if (fused) {
    if (s.step.device() != p.device()) s.step = s.step.to(p.device());
    // torch.optim's _fused_adamw: the kernel reads the step count (for the bias
    // corrections) but does not advance it; the caller adds 1 before and takes the overflow
    // flag back off after, so a skipped update leaves the count where it was.
    s.step.add_(1);
    at::_fused_adamw_({p}, {grad}, {s.exp_avg}, {s.exp_avg_sq}, {}, {s.step}, lr, o.beta1, o.beta2, o.weight_decay,
                      o.eps, /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt,
                      found_inf.defined() ? std::optional<torch::Tensor>(found_inf) : std::nullopt);
    if (found_inf.defined()) s.step.sub_(found_inf);
    return;
  }
  // torch.optim.adam._single_tensor_adam with decoupled weight decay, op for op.
  s.step += 1;
  const double step = s.step.item<double>();
  if (o.weight_decay != 0) p.mul_(1 - lr * o.weight_decay);
  s.exp_avg.lerp_(grad, 1 - o.beta1);
  s.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1 - o.beta2);
  const double bias_correction1 = 1 - std::pow(o.beta1, step);
  const double bias_correction2 = 1 - std::pow(o.beta2, step);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  // denom = (exp_avg_sq.sqrt() / c).add_(eps), as torch, but computed in a scratch buffer
  // reused across tensors and steps (the same operations, so the same values): torch.optim
  // allocates two parameter-sized temporaries per tensor per step, and for a full SD1.5 step
  // the kernel then zeroes 6.9 GB of fresh pages.
  thread_local torch::Tensor scratch;
  const int64_t n = s.exp_avg_sq.numel();
  if (!scratch.defined() || scratch.numel() < n || scratch.device() != p.device() ||
      scratch.scalar_type() != s.exp_avg_sq.scalar_type()) {
    scratch = torch::empty({n}, s.exp_avg_sq.options().memory_format(torch::MemoryFormat::Contiguous));
  }
  auto denom = scratch.as_strided(s.exp_avg_sq.sizes(), s.exp_avg_sq.strides());
  at::sqrt_out(denom, s.exp_avg_sq);
  denom.div_(bias_correction2_sqrt).add_(o.eps);
  p.addcdiv_(s.exp_avg, denom, -step_size);
}

FusedOptimizer::FusedOptimizer(std::vector<std::pair<std::string, torch::Tensor>> params, FusedOptimizerOptions options)
    : params_(std::move(params)),
      options_(std::move(options)),
      states_(params_.size()),
      states8_(params_.size()),
      steps8_(params_.size(), 0) {
  if (options_.loss_scaling.enabled) scale_ = options_.loss_scaling.init_scale;
  if (!options_.lr_at) {
    const double lr = options_.adamw.lr;
    options_.lr_at = [lr](int64_t) { return lr; };
  }
  // Check everything first, then install: a constructor that throws leaves no hook behind.
  std::map<const void*, std::string> seen;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    if (!p.defined() || !p.is_leaf()) throw Error("FusedOptimizer: parameter '" + name + "' is not a leaf tensor");
    if (!index_.emplace(name, i).second) throw Error("FusedOptimizer: parameter '" + name + "' given twice");
    if (auto [it, inserted] = seen.emplace(p.unsafeGetTensorImpl(), name); !inserted) {
      throw Error("FusedOptimizer: '" + name + "' and '" + it->second +
                  "' are the same tensor (tied weights): give it once");
    }
    if (torch::autograd::impl::post_acc_grad_hooks(p)) {
      throw Error("FusedOptimizer: parameter '" + name + "' already has a post-accumulate-grad hook (another optimizer?)");
    }
  }
  stepped_at_.assign(params_.size(), -1);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(
        params_[i].second, std::make_unique<Hook>([this, i](const torch::Tensor& t) { on_grad(i, t); }));
  }
}

void FusedOptimizer::remove_hooks(std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) torch::autograd::impl::set_post_acc_grad_hooks(params_[i].second, nullptr);
}

FusedOptimizer::~FusedOptimizer() { remove_hooks(params_.size()); }

void FusedOptimizer::on_grad(std::size_t i, const torch::Tensor& param) {
  if (!sync_) return;  // inside an accumulation window: keep accumulating
  if (options_.classic) {
    sync_backward_seen_ = true;  // finish_step() steps every tensor at once
    if (options_.grad_sync && param.grad().defined() && stepped_at_[i] != global_step_) {
      stepped_at_[i] = global_step_;  // here: handed to the all-reduce
      options_.grad_sync->add(i, param.grad());
    }
    return;
  }
  auto p = param;
  auto& grad = p.mutable_grad();
  if (!grad.defined()) return;
  const auto& name = params_[i].first;
  if (stepped_at_[i] == global_step_) {
    // The tensor's accumulate-grad ran twice in one backward pass: it is used inside a
    // gradient-checkpointed segment and elsewhere, and each part would step it with a
    // partial gradient.
    throw Error("FusedOptimizer: '" + name + "' received two separate gradients in one step (a parameter shared "
                "between a gradient-checkpointed block and other code); fused steps need one gradient per step");
  }
  check_float32(i);
  stepped_at_[i] = global_step_;
  sync_backward_seen_ = true;
  if (options_.grad_sync) {
    // Stepped once its bucket is reduced: now for the buckets that are, the rest later.
    options_.grad_sync->add(i, grad);
    step_ready(options_.grad_sync->ready());
    return;
  }
  step_tensor(i);
}

void FusedOptimizer::step_ready(const std::vector<std::size_t>& indices) {
  for (const auto j : indices) step_tensor(j);
}

void FusedOptimizer::step_tensor(std::size_t i) {
  auto p = params_[i].second;
  auto& grad = p.mutable_grad();
  ++handled_;
  torch::NoGradGuard no_grad;
  torch::Tensor found;  // loss scaling: 1 when this gradient overflowed
  if (options_.loss_scaling.enabled) {
    found = unscale({grad});
    if (!skips_on_device(i)) {
      // The kernel cannot skip by itself: decide here (a memory read on CPU).
      if (found.item<float>() != 0) {
        ++skipped_;
        grad.reset();
        return;
      }
      found = torch::Tensor();
    } else {
      add_to(found_count_, found);
    }
  }
  add_square(sq_norm_, clip_grad_norm_(grad, options_.max_grad_norm), found);  // <= 0: measured only
  update(i, p, grad, found);
  grad.reset();  // free the gradient now
}

bool FusedOptimizer::skips_on_device(std::size_t i) const {
  return !options_.use_8bit_adam && resolve(options_.kernel, params_[i].second) == AdamWKernel::kFused;
}

void FusedOptimizer::check_float32(std::size_t i) const {
  const auto& p = params_[i].second;
  if (!options_.use_8bit_adam && p.scalar_type() != torch::kFloat32) {
    throw Error("FusedOptimizer: '" + params_[i].first + "' is " + std::string(c10::toString(p.scalar_type())) +
                "; trained tensors must be float32 (an AdamW update is below half precision's resolution)");
  }
}

torch::Tensor FusedOptimizer::unscale(const std::vector<torch::Tensor>& grads) {
  const auto device = grads.front().device();
  if (!inv_scale_.defined() || inv_scale_.device() != device) {
    inv_scale_ = torch::full({}, 1.0 / scale_, torch::dtype(torch::kFloat32).device(device));  // exact: a power of two
  }
  auto found = torch::zeros({}, torch::dtype(torch::kFloat32).device(device));
  // GradScaler's kernel: grads *= inv_scale, found = 1 if any element is inf or NaN.
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found, inv_scale_);
  return found;
}

void FusedOptimizer::set_loss_scale(double scale, int64_t growth_tracker) {
  if (!options_.loss_scaling.enabled) throw Error("FusedOptimizer: set_loss_scale, but loss scaling is off");
  if (!is_power_of_two(scale)) {
    throw Error(fmt::format("FusedOptimizer: loss scale {} is not a positive power of two", scale));
  }
  scale_ = scale;
  growth_tracker_ = growth_tracker;
  inv_scale_ = torch::Tensor();
}

void FusedOptimizer::set_global_step(int64_t step) {
  global_step_ = step;
  schedule_step_ = step;
  std::fill(stepped_at_.begin(), stepped_at_.end(), -1);
  sync_backward_seen_ = false;
  sq_norm_ = found_count_ = torch::Tensor();
  handled_ = skipped_ = 0;
}

void FusedOptimizer::set_schedule_step(int64_t step) {
  if (step < 0 || step > global_step_) {
    throw Error(fmt::format("FusedOptimizer: schedule step {} is outside [0, global step {}]", step, global_step_));
  }
  schedule_step_ = step;
}

void FusedOptimizer::update(std::size_t i, torch::Tensor& p, const torch::Tensor& grad, const torch::Tensor& found_inf) {
  const double lr = options_.lr_at(schedule_step_);
  if (options_.use_8bit_adam) {
    if (!states8_[i]) states8_[i] = std::make_unique<AdamW8bitState>(p, params_[i].first);
    const auto& a = options_.adamw;
    states8_[i]->step(p, grad, AdamWHyper{lr, a.beta1, a.beta2, a.eps, a.weight_decay}, ++steps8_[i]);
  } else {
    adamw_step(p, grad, states_[i], options_.adamw, lr, options_.kernel, found_inf);
  }
}

void FusedOptimizer::classic_step() {
  std::vector<std::size_t> with_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i].second;
    if (p.requires_grad() && p.grad().defined()) with_grad.push_back(i);
  }
  if (with_grad.empty()) return;
  sync_backward_seen_ = true;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (auto i : with_grad) {
    check_float32(i);
    auto& g = params_[i].second.mutable_grad();
    if (options_.grad_sync && stepped_at_[i] != global_step_) {
      stepped_at_[i] = global_step_;
      options_.grad_sync->add(i, g);  // not in the sync micro-batch's graph: reduced last
    }
    grads.push_back(g);
  }
  if (options_.grad_sync) options_.grad_sync->flush();  // every gradient averaged in place
  const auto drop_grads = [&] {
    for (auto i : with_grad) params_[i].second.mutable_grad().reset();
  };
  handled_ += static_cast<int64_t>(grads.size());
  if (options_.loss_scaling.enabled) {
    // GradScaler.unscale_: one check per device, one host read for the whole step.
    std::map<std::string, std::vector<torch::Tensor>> by_device;
    for (const auto& g : grads) by_device[g.device().str()].push_back(g);
    bool finite = true;
    for (auto& [device, list] : by_device) finite = unscale(list).item<float>() == 0 && finite;
    if (!finite) {  // GradScaler: the whole step is skipped
      skipped_ += static_cast<int64_t>(grads.size());
      drop_grads();
      return;
    }
  }
  add_square(sq_norm_, clip_grad_norms_(grads, options_.max_grad_norm));  // the global norm
  for (std::size_t k = 0; k < with_grad.size(); ++k) update(with_grad[k], params_[with_grad[k]].second, grads[k]);
  drop_grads();
}

int64_t FusedOptimizer::finish_step() {
  if (!sync_) {
    // The hooks took no step in a non-sync backward; ending the step here would advance the
    // schedule with nothing updated and leave the window's gradients behind.
    throw Error(fmt::format("FusedOptimizer: finish_step() at step {} after a backward pass that was not a sync "
                            "micro-batch: call set_sync(true) before the backward pass of the last micro-batch of "
                            "the window", global_step_));
  }
  // Tensors whose hook did not fire on the sync micro-batch (not in its graph) but that
  // accumulated a gradient earlier in the window: step them now rather than carry the
  // gradient into the next window.
  if (options_.classic) {
    classic_step();
  } else {
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i].second;
      if (p.requires_grad() && p.grad().defined() && stepped_at_[i] != global_step_) on_grad(i, p);
    }
    if (options_.grad_sync) step_ready(options_.grad_sync->flush());
  }
  if (options_.grad_sync) {
    auto& sync = *options_.grad_sync;
    sync.group().check_same(sync.hash(), fmt::format("the list of gradients all-reduced at step {} ({} tensors here)",
                                                     global_step_, sync.count()));
    sync.reset_step();
  }
  if (!sync_backward_seen_) {
    spdlog::warn("FusedOptimizer: finish_step() at step {} without a gradient on a sync micro-batch: "
                 "nothing was updated", global_step_);
  }
  sync_backward_seen_ = false;
  // The step's device-side statistics, in one transfer: the squared norm and the overflow
  // count of the tensors that skip on the device.
  double sq_norm = 0.0;
  if (sq_norm_.defined() || found_count_.defined()) {
    const auto on = sq_norm_.defined() ? sq_norm_.device() : found_count_.device();
    const auto zero = torch::zeros({}, torch::dtype(torch::kFloat64).device(on));
    const auto both = torch::stack({sq_norm_.defined() ? sq_norm_ : zero,
                                    found_count_.defined() ? found_count_.to(on) : zero})
                          .to(torch::kCPU);
    sq_norm = both[0].item<double>();
    skipped_ += static_cast<int64_t>(both[1].item<double>());
  }
  const auto& ls = options_.loss_scaling;
  if (ls.enabled) {
    if (skipped_ > 0) {
      scale_ *= ls.backoff_factor;
      growth_tracker_ = 0;
      inv_scale_ = torch::Tensor();
    } else if (++growth_tracker_ == ls.growth_interval) {
      scale_ *= ls.growth_factor;
      growth_tracker_ = 0;
      inv_scale_ = torch::Tensor();
    }
  }
  // accelerate steps the lr scheduler only when the optimizer stepped: a step whose every
  // gradient overflowed (GradScaler skipped it) leaves the schedule where it was.
  if (!(handled_ > 0 && skipped_ == handled_)) ++schedule_step_;
  last_skipped_ = skipped_;
  skipped_ = handled_ = 0;
  last_grad_norm_ = std::sqrt(sq_norm);
  sq_norm_ = found_count_ = torch::Tensor();
  return ++global_step_;
}

double FusedOptimizer::current_lr() const { return options_.lr_at(schedule_step_); }

void FusedOptimizer::drop_state(const std::string& name) {
  const auto i = index_.at(name);
  states_[i] = AdamWState{};
  states8_[i].reset();
  steps8_[i] = 0;
}

bool FusedOptimizer::has_state(const std::string& name) const {
  const auto i = index_.at(name);
  return states_[i].exp_avg.defined() || states8_[i] != nullptr;
}

const AdamWState* FusedOptimizer::state(const std::string& name) const {
  const auto& s = states_.at(index_.at(name));
  return s.exp_avg.defined() ? &s : nullptr;
}

void FusedOptimizer::set_state(const std::string& name, AdamWState state) {
  states_.at(index_.at(name)) = std::move(state);
}

std::int64_t FusedOptimizer::state_bytes() const {
  std::int64_t bytes = 0;
  for (const auto& s : states_) {
    if (!s.exp_avg.defined()) continue;
    bytes += s.exp_avg.nbytes() + s.exp_avg_sq.nbytes() + s.step.nbytes();
  }
  for (const auto& s : states8_) bytes += s ? s->state_bytes() : 0;
  return bytes;
}

namespace {
constexpr const char* kScalerKey = "__loss_scaler__";
}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> FusedOptimizer::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (options_.loss_scaling.enabled) {
    out.emplace_back(std::string(kScalerKey) + "/scale", torch::tensor(scale_, torch::kFloat64));
    out.emplace_back(std::string(kScalerKey) + "/growth_tracker", torch::tensor(growth_tracker_, torch::kInt64));
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& name = params_[i].first;
    if (states_[i].exp_avg.defined()) {
      out.emplace_back(name + "/exp_avg", states_[i].exp_avg);
      out.emplace_back(name + "/exp_avg_sq", states_[i].exp_avg_sq);
      out.emplace_back(name + "/step", states_[i].step);
    }
    if (states8_[i]) {
      for (auto& [k, t] : states8_[i]->state_tensors()) out.emplace_back(name + "/8bit/" + k, t);
      out.emplace_back(name + "/8bit/step", torch::tensor(steps8_[i], torch::kInt64));
    }
  }
  return out;
}

void FusedOptimizer::load_state_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                        const std::string& source) {
  std::map<std::string, std::map<std::string, torch::Tensor>> by_param;
  std::optional<double> scale;
  std::optional<int64_t> tracker;
  for (const auto& [key, t] : tensors) {
    const auto slash = key.find('/');
    if (slash == std::string::npos) throw Error(source, tensor_key(key), "not an optimizer state name (<param>/<field>)");
    const auto param = key.substr(0, slash);
    if (param == kScalerKey) {
      if (!options_.loss_scaling.enabled) {
        throw Error(source, tensor_key(key),
                    "holds a loss scale (an fp16 run), but this run does not scale the loss: resume with "
                    "mixed precision fp16");
      }
      if (key == std::string(kScalerKey) + "/scale") {
        scale = t.item<double>();
        if (!is_power_of_two(*scale)) throw Error(source, tensor_key(key), fmt::format("{} is not a power of two", *scale));
      } else if (key == std::string(kScalerKey) + "/growth_tracker") {
        tracker = t.item<int64_t>();
      } else {
        throw Error(source, tensor_key(key), "unknown loss scaler field");
      }
      continue;
    }
    if (!index_.count(param)) throw Error(source, tensor_key(key), "state for a parameter this optimizer does not have");
    by_param[param][key.substr(slash + 1)] = t;
  }
  if (options_.loss_scaling.enabled && (!scale || !tracker)) {
    throw Error(source, "holds no loss scale (not an fp16 run), but this run scales the loss (mixed precision fp16)");
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    states_[i] = AdamWState{};
    states8_[i].reset();
    steps8_[i] = 0;
  }
  torch::NoGradGuard no_grad;
  for (auto& [param, fields] : by_param) {
    const auto i = index_.at(param);
    const auto& p = params_[i].second;
    const bool eight = !fields.count("exp_avg");
    if (eight != options_.use_8bit_adam) {
      throw Error(source, tensor_key(param),
                  std::string("holds ") + (eight ? "8-bit" : "fp32") + " AdamW state, but the optimizer uses " +
                      (options_.use_8bit_adam ? "8-bit" : "fp32") + " moments (--use_8bit_adam must match the run)");
    }
    if (!eight) {
      for (const char* f : {"exp_avg", "exp_avg_sq", "step"}) {
        if (!fields.count(f)) throw Error(source, tensor_key(param + "/" + f), "missing");
      }
      for (const char* f : {"exp_avg", "exp_avg_sq"}) {
        if (!fields.at(f).sizes().equals(p.sizes())) {
          throw Error(source, tensor_key(param + "/" + f), "shape differs from the parameter's");
        }
      }
      // The moments take the parameter's layout: the fused kernel walks all three tensors in
      // one memory order, so contiguous moments of a channels_last weight would pair the
      // wrong elements.
      AdamWState st;
      st.exp_avg = torch::empty_like(p, torch::MemoryFormat::Preserve).copy_(fields.at("exp_avg"));
      st.exp_avg_sq = torch::empty_like(p, torch::MemoryFormat::Preserve).copy_(fields.at("exp_avg_sq"));
      st.step = fields.at("step").to(torch::kFloat32).clone();
      states_[i] = std::move(st);
    } else {
      std::vector<std::pair<std::string, torch::Tensor>> eight;
      for (auto& [f, t] : fields) {
        if (f.rfind("8bit/", 0) != 0) throw Error(source, tensor_key(param + "/" + f), "unknown optimizer state field");
        if (f == "8bit/step") {
          steps8_[i] = t.item<int64_t>();
        } else {
          eight.emplace_back(f.substr(5), t);
        }
      }
      states8_[i] = std::make_unique<AdamW8bitState>(AdamW8bitState::from_state_tensors(p, eight, source, param));
    }
  }
  if (scale) {
    scale_ = *scale;
    growth_tracker_ = *tracker;
    inv_scale_ = torch::Tensor();
  }
}

}  // namespace lisadiff::train
