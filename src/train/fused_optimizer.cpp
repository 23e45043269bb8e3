#include "train/fused_optimizer.h"

#include <cmath>

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

// sum += norm^2 in float64 (the same IEEE operations as adding norm * norm of doubles).
void add_square(torch::Tensor& sum, const torch::Tensor& norm) {
  const auto sq = norm.to(torch::kFloat64).square();
  sum = sum.defined() ? sum + sq : sq;
}

}  // namespace

void FusedOptimizer::adamw_step(torch::Tensor& p, const torch::Tensor& grad, AdamWState& s, const AdamWOptions& o,
                                double lr, AdamWKernel kernel) {
  torch::NoGradGuard no_grad;
  if (!s.exp_avg.defined()) {
    s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
    s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
    s.step = torch::zeros({}, torch::dtype(torch::kFloat32).device(kernel == AdamWKernel::kFused ? p.device() : torch::kCPU));
  }
  if (resolve(kernel, p) == AdamWKernel::kFused) {
    if (s.step.device() != p.device()) s.step = s.step.to(p.device());
    at::_fused_adamw_({p}, {grad}, {s.exp_avg}, {s.exp_avg_sq}, {}, {s.step}, lr, o.beta1, o.beta2, o.weight_decay,
                      o.eps, /*amsgrad=*/false, /*maximize=*/false);
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
  auto denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(o.eps);
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
  torch::NoGradGuard no_grad;
  if (options_.grad_reducer) options_.grad_reducer(grad);
  if (!unscale_finite(grad)) {
    ++skipped_;
    grad.reset();
    return;
  }
  add_square(sq_norm_, clip_grad_norm_(grad, options_.max_grad_norm));  // <= 0: measured only
  update(i, p, grad);
  grad.reset();  // free the gradient now
}

void FusedOptimizer::check_float32(std::size_t i) const {
  const auto& p = params_[i].second;
  if (!options_.use_8bit_adam && p.scalar_type() != torch::kFloat32) {
    throw Error("FusedOptimizer: '" + params_[i].first + "' is " + std::string(c10::toString(p.scalar_type())) +
                "; trained tensors must be float32 (an AdamW update is below half precision's resolution)");
  }
}

bool FusedOptimizer::unscale_finite(torch::Tensor& grad) const {
  if (!options_.loss_scaling.enabled) return true;
  grad.mul_(1.0 / scale_);  // exact: the scale is a power of two
  return torch::isfinite(grad).all().item<bool>();
}

void FusedOptimizer::update(std::size_t i, torch::Tensor& p, const torch::Tensor& grad) {
  const double lr = options_.lr_at(global_step_);
  if (options_.use_8bit_adam) {
    if (!states8_[i]) states8_[i] = std::make_unique<AdamW8bitState>(p, params_[i].first);
    const auto& a = options_.adamw;
    states8_[i]->step(p, grad, AdamWHyper{lr, a.beta1, a.beta2, a.eps, a.weight_decay}, ++steps8_[i]);
  } else {
    adamw_step(p, grad, states_[i], options_.adamw, lr, options_.kernel);
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
    if (options_.grad_reducer) options_.grad_reducer(g);
    grads.push_back(g);
  }
  const auto drop_grads = [&] {
    for (auto i : with_grad) params_[i].second.mutable_grad().reset();
  };
  bool finite = true;
  for (auto& g : grads) finite = unscale_finite(g) && finite;
  if (!finite) {  // GradScaler: the whole step is skipped
    skipped_ += static_cast<int64_t>(grads.size());
    drop_grads();
    return;
  }
  add_square(sq_norm_, clip_grad_norms_(grads, options_.max_grad_norm));  // the global norm
  for (std::size_t k = 0; k < with_grad.size(); ++k) update(with_grad[k], params_[with_grad[k]].second, grads[k]);
  drop_grads();
}

int64_t FusedOptimizer::finish_step() {
  // Tensors whose hook did not fire on the sync micro-batch (not in its graph) but that
  // accumulated a gradient earlier in the window: step them now rather than carry the
  // gradient into the next window.
  if (sync_ && options_.classic) {
    classic_step();
  } else if (sync_) {
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i].second;
      if (p.requires_grad() && p.grad().defined() && stepped_at_[i] != global_step_) on_grad(i, p);
    }
  }
  if (!sync_backward_seen_) {
    spdlog::warn("FusedOptimizer: finish_step() at step {} without a gradient on a sync micro-batch: "
                 "nothing was updated", global_step_);
  }
  sync_backward_seen_ = false;
  const auto& ls = options_.loss_scaling;
  if (ls.enabled) {
    if (skipped_ > 0) {
      scale_ *= ls.backoff_factor;
      growth_tracker_ = 0;
    } else if (++growth_tracker_ == ls.growth_interval) {
      scale_ *= ls.growth_factor;
      growth_tracker_ = 0;
    }
  }
  last_skipped_ = skipped_;
  skipped_ = 0;
  last_grad_norm_ = sq_norm_.defined() ? std::sqrt(sq_norm_.item<double>()) : 0.0;
  sq_norm_ = torch::Tensor();
  return ++global_step_;
}

double FusedOptimizer::current_lr() const { return options_.lr_at(global_step_); }

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
  for (const auto& [key, t] : tensors) {
    const auto slash = key.find('/');
    if (slash == std::string::npos) throw Error(source, tensor_key(key), "not an optimizer state name (<param>/<field>)");
    const auto param = key.substr(0, slash);
    if (param == kScalerKey) {
      if (key == std::string(kScalerKey) + "/scale") scale_ = t.item<double>();
      else if (key == std::string(kScalerKey) + "/growth_tracker") growth_tracker_ = t.item<int64_t>();
      else throw Error(source, tensor_key(key), "unknown loss scaler field");
      continue;
    }
    if (!index_.count(param)) throw Error(source, tensor_key(key), "state for a parameter this optimizer does not have");
    by_param[param][key.substr(slash + 1)] = t;
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
      AdamWState st;
      st.exp_avg = fields.at("exp_avg").to(p.device(), p.scalar_type()).clone();
      st.exp_avg_sq = fields.at("exp_avg_sq").to(p.device(), p.scalar_type()).clone();
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
}

}  // namespace lisadiff::train
