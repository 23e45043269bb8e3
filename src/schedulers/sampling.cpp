#include "schedulers/sampling.h"

#include <fmt/format.h>

#include "core/error.h"
#include "schedulers/ddim.h"
#include "schedulers/euler.h"
#include "schedulers/dpm_solver.h"
#include "schedulers/lcm.h"
#include "schedulers/pndm.h"

namespace lisadiff::schedulers {
namespace {

// What the three adapters share: everything but the step, with the timestep read as the
// scheduler's own type (`Time`: int64_t or double).
template <typename Scheduler, typename Time>
class Adapter : public Sampler {
 public:
  Adapter(std::string name, config::SchedulerConfig c, const std::string& source)
      : name_(std::move(name)), s_(std::move(c), source) {}
  std::string class_name() const override { return name_; }
  const config::SchedulerConfig& config() const override { return s_.config(); }
  void set_timesteps(int n) override { s_.set_timesteps(n); }
  torch::Tensor timesteps() const override { return s_.timesteps(); }
  double init_noise_sigma() const override { return s_.init_noise_sigma(); }
  torch::Tensor scale_model_input(const torch::Tensor& sample, const torch::Tensor& t) override {
    return s_.scale_model_input(sample, time(t));
  }

 protected:
  static Time time(const torch::Tensor& t) { return t.item<Time>(); }
  std::string name_;
  Scheduler s_;
};

class DdimSampler final : public Adapter<DDIMScheduler, int64_t> {
 public:
  using Adapter::Adapter;
  torch::Tensor step(const torch::Tensor& out, const torch::Tensor& t, const torch::Tensor& sample,
                     const SamplerStepSettings& settings) override {
    DDIMStepOptions o;
    o.eta = settings.eta;
    if (settings.eta > 0) o.generator = settings.generator;  // drawn only when eta > 0
    return s_.step(out, time(t), sample, o).prev_sample;
  }
};

class EulerSampler final : public Adapter<EulerDiscreteScheduler, double> {
 public:
  using Adapter::Adapter;
  torch::Tensor step(const torch::Tensor& out, const torch::Tensor& t, const torch::Tensor& sample,
                     const SamplerStepSettings& settings) override {
    EulerStepOptions o;  // s_churn 0: deterministic, nothing is drawn
    o.generator = settings.generator;
    return s_.step(out, time(t), sample, o).prev_sample;
  }
};

class LcmSampler final : public Adapter<LCMScheduler, int64_t> {
 public:
  using Adapter::Adapter;
  torch::Tensor step(const torch::Tensor& out, const torch::Tensor& t, const torch::Tensor& sample,
                     const SamplerStepSettings& settings) override {
    LCMStepOptions o;
    o.generator = settings.generator;
    return s_.step(out, time(t), sample, o).prev_sample;
  }
};

// PNDM and DPM-Solver take neither eta nor a generator (diffusers passes them none).
template <typename Scheduler>
class PlainSampler final : public Adapter<Scheduler, int64_t> {
 public:
  using Adapter<Scheduler, int64_t>::Adapter;
  torch::Tensor step(const torch::Tensor& out, const torch::Tensor& t, const torch::Tensor& sample,
                     const SamplerStepSettings&) override {
    return this->s_.step(out, this->time(t), sample).prev_sample;
  }
};

}  // namespace

std::vector<std::pair<std::string, std::string>> sampler_names() {
  return {{"ddim", "DDIMScheduler"},
          {"euler", "EulerDiscreteScheduler"},
          {"lcm", "LCMScheduler"},
          {"pndm", "PNDMScheduler"},
          {"dpm", "DPMSolverMultistepScheduler"}};
}

std::string sampler_class(const std::string& name) {
  std::string known;
  for (const auto& [short_name, cls] : sampler_names()) {
    if (name == short_name || name == cls) return cls;
    known += (known.empty() ? "" : ", ") + short_name + " (" + cls + ")";
  }
  throw Error(fmt::format("unknown scheduler '{}' (known: {})", name, known));
}

std::unique_ptr<Sampler> make_sampler(const std::string& name, const config::Json& json, const std::string& source) {
  std::string cls;
  if (name.empty()) {
    const auto it = json.find("_class_name");
    if (it == json.end() || !it->is_string()) throw Error(source, "has no _class_name: name a scheduler");
    cls = it->get<std::string>();
    try {
      cls = sampler_class(cls);
    } catch (const Error& e) {
      throw Error(source, fmt::format("its scheduler {} cannot sample here: {}", cls, e.problem()));
    }
  } else {
    cls = sampler_class(name);
  }
  auto config = config::SchedulerConfig::from_json_as(json, source, cls);
  if (cls == "DDIMScheduler") return std::make_unique<DdimSampler>(cls, std::move(config), source);
  if (cls == "EulerDiscreteScheduler") return std::make_unique<EulerSampler>(cls, std::move(config), source);
  if (cls == "PNDMScheduler") return std::make_unique<PlainSampler<PNDMScheduler>>(cls, std::move(config), source);
  if (cls == "DPMSolverMultistepScheduler") {
    return std::make_unique<PlainSampler<DPMSolverMultistepScheduler>>(cls, std::move(config), source);
  }
  return std::make_unique<LcmSampler>(cls, std::move(config), source);
}

}  // namespace lisadiff::schedulers
