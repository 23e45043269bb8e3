#include "models/checkpoint.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>
#include <optional>

namespace lisadiff::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(CheckpointFn f) : fn(std::move(f)) {}
  CheckpointFn fn;
};

// Autocast state of the device types lisadiff runs on, captured and restored as a whole.
struct AutocastState {
  struct One {
    bool enabled;
    at::ScalarType dtype;
  };
  One cpu, cuda;
  bool cache;

  static AutocastState capture() {
    return {{at::autocast::is_autocast_enabled(at::kCPU), at::autocast::get_autocast_dtype(at::kCPU)},
            {at::autocast::is_autocast_enabled(at::kCUDA), at::autocast::get_autocast_dtype(at::kCUDA)},
            at::autocast::is_autocast_cache_enabled()};
  }
  void apply() const {
    at::autocast::set_autocast_enabled(at::kCPU, cpu.enabled);
    at::autocast::set_autocast_dtype(at::kCPU, cpu.dtype);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda.enabled);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda.dtype);
    at::autocast::set_autocast_cache_enabled(cache);
  }
};

class AutocastRestore {
 public:
  explicit AutocastRestore(const AutocastState& s) : saved_(AutocastState::capture()) { s.apply(); }
  ~AutocastRestore() {
    saved_.apply();
    // Casts cached while recomputing must not outlive it: the fused optimizer updates the
    // weights in place right after (torch.autocast's exit clears the cache too).
    if (!saved_.cpu.enabled && !saved_.cuda.enabled) at::autocast::clear_cache();
  }

 private:
  AutocastState saved_;
};

at::Generator generator_for(const TensorList& inputs) {
  for (const auto& t : inputs) {
    if (t.defined() && t.is_cuda()) return at::globalContext().defaultGenerator(t.device());
  }
  return at::detail::getDefaultCPUGenerator();
}

torch::Tensor get_rng_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(at::Generator gen, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Sets a generator to `state` and puts its current state back on destruction.
class RngRestore {
 public:
  RngRestore(at::Generator gen, const torch::Tensor& state) : gen_(std::move(gen)), saved_(get_rng_state(gen_)) {
    set_rng_state(gen_, state);
  }
  ~RngRestore() { set_rng_state(gen_, saved_); }

 private:
  at::Generator gen_;
  torch::Tensor saved_;
};

// Inputs: the block's defined tensors. Everything else travels in saved_data.
struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<FnHolder> holder, at::TensorList args) {
    const variable_list inputs = args.vec();
    auto gen = generator_for(inputs);
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    ctx->saved_data["rng"] = get_rng_state(gen);
    ctx->saved_data["cpu_autocast"] = at::autocast::is_autocast_enabled(at::kCPU);
    ctx->saved_data["cuda_autocast"] = at::autocast::is_autocast_enabled(at::kCUDA);
    ctx->saved_data["cpu_dtype"] = at::autocast::get_autocast_dtype(at::kCPU);
    ctx->saved_data["cuda_dtype"] = at::autocast::get_autocast_dtype(at::kCUDA);
    ctx->saved_data["cache"] = at::autocast::is_autocast_cache_enabled();
    ctx->save_for_backward(inputs);
    // The function runs under no_grad here (autograd::Function disables grad mode).
    auto outputs = holder->fn(inputs);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    TensorList inputs;
    inputs.reserve(saved.size());
    for (const auto& s : saved) {
      auto d = s.detach();
      d.set_requires_grad(s.requires_grad());
      inputs.push_back(d);
    }
    AutocastState state{
        {ctx->saved_data["cpu_autocast"].toBool(), ctx->saved_data["cpu_dtype"].toScalarType()},
        {ctx->saved_data["cuda_autocast"].toBool(), ctx->saved_data["cuda_dtype"].toScalarType()},
        ctx->saved_data["cache"].toBool()};

    auto gen = generator_for(inputs);
    TensorList outputs;
    {
      RngRestore rng(gen, ctx->saved_data["rng"].toTensor());  // back to now, even on an exception
      AutocastRestore autocast(state);
      torch::AutoGradMode grad(true);
      outputs = holder->fn(inputs);
    }

    TensorList roots, grads;
    for (std::size_t i = 0; i < outputs.size() && i < grad_outputs.size(); ++i) {
      if (outputs[i].defined() && outputs[i].requires_grad() && grad_outputs[i].defined()) {
        roots.push_back(outputs[i]);
        grads.push_back(grad_outputs[i]);
      }
    }
    if (!roots.empty()) torch::autograd::backward(roots, grads);

    variable_list result;
    result.push_back(torch::Tensor());  // the holder
    for (const auto& in : inputs) result.push_back(in.requires_grad() ? in.grad() : torch::Tensor());
    return result;
  }
};

bool any_requires_grad(const torch::nn::Module& block, const TensorList& inputs) {
  for (const auto& t : inputs) {
    if (t.defined() && t.requires_grad()) return true;
  }
  for (const auto& p : block.parameters(/*recurse=*/true)) {
    if (p.requires_grad()) return true;
  }
  return false;
}

}  // namespace

TensorList checkpoint(const torch::nn::Module& block, const CheckpointFn& fn, const TensorList& inputs) {
  if (!torch::GradMode::is_enabled() || !any_requires_grad(block, inputs)) return fn(inputs);

  // The autograd Function sees only defined tensors plus the anchor; `wrapped` puts the
  // undefined ones back in their places and drops the anchor before calling fn.
  std::vector<int> slot;  // input position of each function argument, -1 for the anchor
  variable_list args;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].defined()) {
      slot.push_back(static_cast<int>(i));
      args.push_back(inputs[i]);
    }
  }
  const auto options = args.empty() ? torch::TensorOptions() : args.front().options();
  slot.push_back(-1);
  args.push_back(torch::empty({0}, options.dtype(torch::kFloat32).requires_grad(true)));

  const std::size_t n = inputs.size();
  auto holder = c10::make_intrusive<FnHolder>([fn, slot, n](const TensorList& a) {
    TensorList full(n);
    for (std::size_t j = 0; j < a.size(); ++j) {
      if (slot[j] >= 0) full[slot[j]] = a[j];
    }
    return fn(full);
  });
  // Passed as a TensorList: autograd only tracks tensors handed over as Tensor or TensorList.
  return CheckpointFunction::apply(holder, at::TensorList(args));
}

torch::Tensor checkpoint1(const torch::nn::Module& block, const std::function<torch::Tensor(const TensorList&)>& fn,
                          const TensorList& inputs) {
  // fn is copied: the recomputation in the backward pass outlives this call.
  return checkpoint(block, [fn](const TensorList& in) { return TensorList{fn(in)}; }, inputs).at(0);
}

}  // namespace lisadiff::models
