#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "models/state.h"
#include "train/checkpoint.h"
#include "train/training_state.h"

namespace lisadiff::train {

namespace fs = std::filesystem;

namespace {

// Adds `offset` to the seed of the CPU and every CUDA default generator (a fresh stream).
void reseed_default_generators(uint64_t offset) {
  auto reseed = [offset](at::Generator gen) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(gen.current_seed() + offset);
  };
  reseed(at::detail::getDefaultCPUGenerator());
  if (torch::cuda::is_available()) {
    for (int64_t d = 0; d < static_cast<int64_t>(torch::cuda::device_count()); ++d) {
      reseed(at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(d))));
    }
  }
}

constexpr const char* kWeightsName = "diffusion_pytorch_model.safetensors";
constexpr const char* kStateName = "training_state.json";

std::string dtype_name(const std::optional<torch::ScalarType>& d) {
  if (!d || *d == torch::kFloat32) return "fp32";
  return *d == torch::kHalf ? "fp16" : "bf16";
}

std::optional<torch::ScalarType> dtype_from_name(const std::string& source, const std::string& name) {
  if (name == "fp32" || name == "no") return std::nullopt;
  if (name == "fp16") return torch::kHalf;
  if (name == "bf16") return torch::kBFloat16;
  config::field_error(source, "frozen_dtype", "'" + name + "' is not one of fp32, fp16, bf16");
}

// Copies the float32 values of `params` into a safetensors file (half-precision frozen
// tensors are widened: checkpoints and outputs always hold float32).
void write_float32(const fs::path& file, const std::vector<std::pair<std::string, torch::Tensor>>& params) {
  io::NamedTensors tensors;
  tensors.reserve(params.size());
  for (const auto& [name, p] : params) tensors.emplace_back(name, p.detach().to(torch::kCPU, torch::kFloat32).contiguous());
  io::write_safetensors(file, tensors, {{"format", "pt"}});
}

// Mean of the numeric values per key over a window's micro-batches; other values: the last.
nlohmann::ordered_json merge_logs(const std::vector<nlohmann::ordered_json>& logs) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  std::map<std::string, std::pair<double, int>> sums;
  for (const auto& l : logs) {
    for (auto it = l.begin(); it != l.end(); ++it) {
      if (it.value().is_number()) {
        auto& [sum, n] = sums[it.key()];
        sum += it.value().get<double>();
        ++n;
        out[it.key()] = nullptr;  // keeps first-seen order
      } else {
        out[it.key()] = it.value();
      }
    }
  }
  for (auto& [k, sn] : sums) out[k] = sn.first / sn.second;
  return out;
}

}  // namespace

std::string method_name(TrainMethod m) {
  switch (m) {
    case TrainMethod::kLisa: return "lisa";
    case TrainMethod::kFull: return "full";
    case TrainMethod::kLora: return "lora";
  }
  return "?";
}

TrainMethod method_from_name(const std::string& name) {
  if (name == "lisa") return TrainMethod::kLisa;
  if (name == "full") return TrainMethod::kFull;
  if (name == "lora") return TrainMethod::kLora;
  throw Error("unknown method '" + name + "' (expected lisa, full or lora)");
}

std::string precision_name(MixedPrecision p) {
  switch (p) {
    case MixedPrecision::kNo: return "no";
    case MixedPrecision::kFp16: return "fp16";
    case MixedPrecision::kBf16: return "bf16";
  }
  return "?";
}

MixedPrecision precision_from_name(const std::string& name) {
  if (name == "no") return MixedPrecision::kNo;
  if (name == "fp16") return MixedPrecision::kFp16;
  if (name == "bf16") return MixedPrecision::kBf16;
  throw Error("unknown mixed_precision '" + name + "' (expected no, fp16 or bf16)");
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

TrainerOptions TrainerOptions::read(config::FieldReader& r) {
  TrainerOptions o;
  const auto& src = r.source();
  const auto named = [&](const char* key, auto parse, auto& field, std::string value) {
    r(key, value);
    try {
      field = parse(value);
    } catch (const Error& e) {
      config::field_error(src, key, e.problem());
    }
  };
  named("method", method_from_name, o.method, method_name(o.method));
  named("mixed_precision", precision_from_name, o.mixed_precision, precision_name(o.mixed_precision));
  std::string step = "classic";
  r("optimizer_step", step);
  if (step != "classic" && step != "fused") config::field_error(src, "optimizer_step", "'" + step + "' is not classic or fused");
  o.fused_step = step == "fused";
  std::string frozen = "fp32";
  r("frozen_dtype", frozen);
  o.frozen_dtype = dtype_from_name(src, frozen);

  std::optional<int> max_steps;
  r("max_train_steps", max_steps);
  if (!max_steps) config::field_error(src, "max_train_steps", "is required");
  o.max_train_steps = *max_steps;
  o.schedule = LrSchedule::read(r);
  r("adam_beta1", o.adamw.beta1);
  r("adam_beta2", o.adamw.beta2);
  r("adam_weight_decay", o.adamw.weight_decay);
  r("adam_epsilon", o.adamw.eps);
  o.adamw.lr = o.schedule.base_lr;
  r("max_grad_norm", o.max_grad_norm);
  r("use_8bit_adam", o.use_8bit_adam);
  r("gradient_accumulation_steps", o.gradient_accumulation_steps);
  r("gradient_checkpointing", o.gradient_checkpointing);
  int ckpt = static_cast<int>(o.checkpointing_steps);
  r("checkpointing_steps", ckpt);
  o.checkpointing_steps = ckpt;
  r("checkpoints_total_limit", o.checkpoints_total_limit);
  std::optional<std::string> resume;
  r("resume_from_checkpoint", resume);
  o.resume_from_checkpoint = resume.value_or("");
  std::string out;
  r("output_dir", out);
  o.output_dir = out;
  r("report_to", o.report_to);
  std::string logging_dir = o.logging_dir.string();
  r("logging_dir", logging_dir);
  o.logging_dir = logging_dir;
  r("tracker_name", o.tracker_project_name);  // the DPO script's name for it
  r("tracker_project_name", o.tracker_project_name);

  r("use_ema", o.use_ema);
  r("ema_decay", o.ema.decay);
  r("ema_min_decay", o.ema.min_decay);
  int after = static_cast<int>(o.ema.update_after_step);
  r("ema_update_after_step", after);
  o.ema.update_after_step = after;
  r("ema_use_warmup", o.ema.use_ema_warmup);
  r("ema_inv_gamma", o.ema.inv_gamma);
  r("ema_power", o.ema.power);

  named("lisa_unit", LisaOptions::unit_from_name, o.lisa.unit, "tensor");
  named("lisa_sampling", LisaOptions::sampling_from_name, o.lisa.sampling, "uniform");
  int n_active = static_cast<int>(o.lisa.n_active);
  r("lisa_n_active", n_active);
  o.lisa.n_active = n_active;
  r("lisa_rate", o.lisa.rate);
  int interval = static_cast<int>(o.lisa.interval);
  r("lisa_interval", interval);
  o.lisa.interval = interval;
  int seed = static_cast<int>(o.lisa.seed);
  r("lisa_seed", seed);
  if (seed < 0) config::field_error(src, "lisa_seed", "must be >= 0");
  o.lisa.seed = static_cast<uint64_t>(seed);
  r("lisa_keep_state", o.lisa.keep_state);
  r("lisa_always_on", o.lisa.always_on);

  int rank = static_cast<int>(o.lora.rank);
  r("rank", rank);  // the DPO script's flag name
  r("lora_rank", rank);
  o.lora.rank = rank;
  r("lora_alpha", o.lora.alpha);
  r("lora_target_modules", o.lora.target_modules);
  r("lora_init", o.lora.init);
  r("lora_modules_to_save", o.lora.modules_to_save);
  o.validate(src);
  return o;
}

void TrainerOptions::validate(const std::string& src) const {
  using config::field_error;
  if (output_dir.empty()) field_error(src, "output_dir", "is required");
  if (report_to != "tensorboard" && report_to != "wandb" && report_to != "comet_ml" && report_to != "all" &&
      report_to != "none") {
    field_error(src, "report_to", "'" + report_to + "' is not one of tensorboard, wandb, comet_ml, all, none");
  }
  if (logging_dir.empty()) field_error(src, "logging_dir", "must not be empty (the scripts' default is \"logs\")");
  if (max_train_steps < 1) field_error(src, "max_train_steps", fmt::format("must be >= 1, got {}", max_train_steps));
  if (gradient_accumulation_steps < 1) {
    field_error(src, "gradient_accumulation_steps", fmt::format("must be >= 1, got {}", gradient_accumulation_steps));
  }
  if (checkpointing_steps < 1) field_error(src, "checkpointing_steps", fmt::format("must be >= 1, got {}", checkpointing_steps));
  if (checkpoints_total_limit && *checkpoints_total_limit < 1) {
    field_error(src, "checkpoints_total_limit", fmt::format("must be >= 1, got {}", *checkpoints_total_limit));
  }
  if (!(max_grad_norm >= 0) || !std::isfinite(max_grad_norm)) field_error(src, "max_grad_norm", "must be a finite number >= 0");
  const auto in01 = [&](const char* key, double v) {
    if (!(v >= 0 && v < 1)) field_error(src, key, fmt::format("must be in [0, 1), got {}", v));
  };
  in01("adam_beta1", adamw.beta1);
  in01("adam_beta2", adamw.beta2);
  if (!(adamw.eps > 0)) field_error(src, "adam_epsilon", "must be > 0");
  if (!(adamw.weight_decay >= 0)) field_error(src, "adam_weight_decay", "must be >= 0");
  if (frozen_dtype && *frozen_dtype != torch::kFloat32) {
    if (method == TrainMethod::kFull) field_error(src, "frozen_dtype", "applies to lisa and lora (full training freezes nothing)");
    if (mixed_precision == MixedPrecision::kNo) {
      field_error(src, "frozen_dtype", "half-precision frozen weights need mixed_precision fp16 or bf16 (autocast)");
    }
  }
  if (method == TrainMethod::kLisa) {
    if (lisa.interval < 1) field_error(src, "lisa_interval", fmt::format("must be >= 1, got {}", lisa.interval));
    if (lisa.rate > 1) field_error(src, "lisa_rate", fmt::format("must be <= 1, got {}", lisa.rate));
  }
  if (method == TrainMethod::kLora) {
    if (lora.rank < 1) field_error(src, "lora_rank", fmt::format("must be >= 1, got {}", lora.rank));
    if (lora.init != "kaiming" && lora.init != "gaussian") field_error(src, "lora_init", "must be kaiming or gaussian");
  }
  if (use_ema) ema.validate(src);
  auto s = schedule;
  s.total_steps = max_train_steps;
  s.validate(src);
}

fs::path TrainerOptions::tensorboard_dir() const {
  const fs::path dir = output_dir / logging_dir;
  return tracker_project_name.empty() ? dir : dir / tracker_project_name;
}

config::Json TrainerOptions::to_json() const {
  config::Json j = schedule.to_json();
  j["method"] = method_name(method);
  j["max_train_steps"] = max_train_steps;
  j["adam_beta1"] = adamw.beta1;
  j["adam_beta2"] = adamw.beta2;
  j["adam_weight_decay"] = adamw.weight_decay;
  j["adam_epsilon"] = adamw.eps;
  j["max_grad_norm"] = max_grad_norm;
  j["use_8bit_adam"] = use_8bit_adam;
  j["optimizer_step"] = fused_step ? "fused" : "classic";
  j["gradient_accumulation_steps"] = gradient_accumulation_steps;
  j["mixed_precision"] = precision_name(mixed_precision);
  j["frozen_dtype"] = dtype_name(frozen_dtype);
  j["gradient_checkpointing"] = gradient_checkpointing;
  j["checkpointing_steps"] = checkpointing_steps;
  j["checkpoints_total_limit"] = checkpoints_total_limit ? config::Json(*checkpoints_total_limit) : config::Json(nullptr);
  j["output_dir"] = output_dir.string();
  j["report_to"] = report_to;
  j["logging_dir"] = logging_dir.string();
  j["tracker_project_name"] = tracker_project_name;
  j["use_ema"] = use_ema;
  if (method == TrainMethod::kLisa) {
    j["lisa_unit"] = lisa.unit == LisaUnit::kTensor ? "tensor" : "block";
    j["lisa_sampling"] = lisa.sampling == LisaSampling::kUniform ? "uniform" : "weighted";
    j["lisa_n_active"] = lisa.n_active;
    j["lisa_rate"] = lisa.rate;
    j["lisa_interval"] = lisa.interval;
    j["lisa_seed"] = lisa.seed;
    j["lisa_keep_state"] = lisa.keep_state;
    j["lisa_always_on"] = lisa.always_on;
  }
  if (method == TrainMethod::kLora) {
    j["lora_rank"] = lora.rank;
    j["lora_alpha"] = lora.alpha;
    j["lora_target_modules"] = lora.target_modules;
    j["lora_init"] = lora.init;
  }
  return j;
}

TrainedModel trained_unet(const models::UNet2DConditionModel& unet) {
  TrainedModel m;
  m.name = "unet";
  m.module = unet.ptr();
  auto impl = unet.ptr();
  m.config = [impl] { return impl->config.to_json(); };
  m.set_gradient_checkpointing = [impl](bool on) { impl->set_gradient_checkpointing(on); };
  return m;
}

// ---------------------------------------------------------------------------------------------
// Autocast
// ---------------------------------------------------------------------------------------------

AutocastScope::AutocastScope(torch::Device device, torch::ScalarType dtype) : type_(device.type()) {
  if (dtype == torch::kFloat32) return;
  active_ = true;
  was_enabled_ = at::autocast::is_autocast_enabled(type_);
  was_dtype_ = at::autocast::get_autocast_dtype(type_);
  at::autocast::set_autocast_dtype(type_, dtype);
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // torch.autocast.__exit__: the outermost exit drops the cached weight casts.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(type_, was_enabled_);
  at::autocast::set_autocast_dtype(type_, was_dtype_);
}

// ---------------------------------------------------------------------------------------------
// Trainer
// ---------------------------------------------------------------------------------------------

StatePart generator_state_part(std::string name, at::Generator& generator) {
  StatePart part;
  part.name = name;
  part.save_json = [&generator] {
    torch::Tensor state;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      state = generator.get_state().contiguous();
    }
    static const char* digits = "0123456789abcdef";
    std::string hex;
    hex.reserve(static_cast<std::size_t>(state.numel()) * 2);
    const auto* bytes = state.data_ptr<uint8_t>();
    for (int64_t i = 0; i < state.numel(); ++i) {
      hex.push_back(digits[bytes[i] >> 4]);
      hex.push_back(digits[bytes[i] & 15]);
    }
    return nlohmann::json{{"state", hex}};
  };
  part.load_json = [&generator, name](const nlohmann::json& j) {
    const auto hex = j.at("state").get<std::string>();
    const auto nibble = [&](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      throw Error("training state: part '" + name + "': not a hex string");
    };
    if (hex.size() % 2 != 0) throw Error("training state: part '" + name + "': odd length");
    auto state = torch::empty({static_cast<int64_t>(hex.size() / 2)}, torch::kUInt8);
    auto* bytes = state.data_ptr<uint8_t>();
    for (std::size_t i = 0; i < hex.size() / 2; ++i) {
      bytes[i] = static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
    }
    std::lock_guard<std::mutex> lock(generator.mutex());
    try {
      generator.set_state(state);
    } catch (const c10::Error& e) {
      throw Error("training state: part '" + name + "': " + e.what_without_backtrace());
    }
  };
  return part;
}

Trainer::Trainer(TrainedModel model, TrainerOptions options) : model_(std::move(model)), options_(std::move(options)) {
  options_.validate();
  if (!model_.module) throw Error("Trainer: no model");
  if (!model_.config) throw Error("Trainer: model '" + model_.name + "' has no config function");
  auto& module = *model_.module;
  const auto params = module.named_parameters(/*recurse=*/true);
  if (params.is_empty()) throw Error("Trainer: the model has no parameters");
  device_ = params.begin()->value().device();

  auto schedule = options_.schedule;
  schedule.total_steps = options_.max_train_steps;
  FusedOptimizerOptions opt;
  opt.adamw = options_.adamw;
  opt.adamw.lr = schedule.base_lr;
  opt.lr_at = [schedule](int64_t step) { return schedule.lr(step); };
  opt.max_grad_norm = options_.max_grad_norm;
  opt.use_8bit_adam = options_.use_8bit_adam;
  opt.loss_scaling.enabled = options_.mixed_precision == MixedPrecision::kFp16;
  opt.classic = !options_.fused_step && options_.method != TrainMethod::kLisa;
  if (distributed()) {
    options_.main_process = options_.group->rank() == 0;
    opt.grad_sync = std::make_shared<GradientSync>(options_.group, options_.bucket_bytes);
  }

  module.train();
  if (model_.set_gradient_checkpointing) {
    model_.set_gradient_checkpointing(options_.gradient_checkpointing);
  } else if (options_.gradient_checkpointing) {
    throw Error("Trainer: gradient_checkpointing is on but model '" + model_.name + "' cannot checkpoint");
  }

  switch (options_.method) {
    case TrainMethod::kLisa: {
      auto lo = options_.lisa;
      lo.frozen_dtype = options_.frozen_dtype;
      trainable_ = named_parameters(module);
      lisa_ = std::make_unique<Lisa>(trainable_, lo, opt);
      break;
    }
    case TrainMethod::kFull:
      trainable_ = named_parameters(module);
      for (auto& [name, p] : trainable_) p.set_requires_grad(true);
      optimizer_ = std::make_unique<FusedOptimizer>(trainable_, opt);
      break;
    case TrainMethod::kLora: {
      lora_ = std::make_unique<Lora>(module, options_.lora);
      trainable_ = lora_->parameters();
      // The frozen base in half precision, norms in float32.
      if (options_.frozen_dtype) store_frozen_weights(named_parameters(module), *options_.frozen_dtype);
      optimizer_ = std::make_unique<FusedOptimizer>(trainable_, opt);
      break;
    }
  }
  if (distributed()) {
    // DDP's start: every rank trains from rank 0's values (adapters and new layers drawn
    // from a generator included).
    for (auto& [name, p] : trainable_) options_.group->broadcast_any(p, 0);
    // From here on each process draws its own random numbers (noise, timesteps, dropout):
    // rank r > 0 re-seeds the default generators with their seed + r; rank 0 goes on as a
    // single process would. (accelerate's set_seed gives every rank the same stream.)
    if (const int rank = options_.group->rank(); rank > 0) reseed_default_generators(static_cast<uint64_t>(rank));
  }
  if (options_.use_ema) ema_ = std::make_unique<EMA>(trainable_, options_.ema);
  model_params_ = named_parameters(module);
  for (const auto& [name, p] : trainable_) owned_.insert(p.unsafeGetTensorImpl());
  metrics_ = MetricsWriter(options_.output_dir, options_.main_process);
  if (options_.main_process && options_.report_to != "none") {
    // wandb and comet_ml are network services: one warning, then what "tensorboard" writes,
    // so that the scripts' commands run as written.
    if (options_.report_to == "all") {
      spdlog::warn("report_to all: wandb and comet_ml are network services that lisadiff does not talk to; "
                   "writing TensorBoard event files only, to {} (and metrics.jsonl as always)",
                   options_.tensorboard_dir().string());
    } else if (options_.report_to != "tensorboard") {
      spdlog::warn("report_to {}: {} is a network service that lisadiff does not talk to; writing TensorBoard "
                   "event files to {} instead (and metrics.jsonl as always)",
                   options_.report_to, options_.report_to, options_.tensorboard_dir().string());
    }
    metrics_.mirror_to_tensorboard(options_.tensorboard_dir());
  }
  spdlog::info("{}: {} of {} ({} tensors can train, {} parameters train now), {} steps x {} micro-batches, "
               "mixed precision {}, frozen weights {}",
               options_.label.empty() ? "trainer" : options_.label, method_name(options_.method), model_.name,
               trainable_.size(), active_parameters(), options_.max_train_steps, options_.gradient_accumulation_steps,
               precision_name(options_.mixed_precision), dtype_name(options_.frozen_dtype));
}

Trainer::~Trainer() = default;

void Trainer::add_state(StatePart part) {
  for (const auto& p : parts_) {
    if (p.name == part.name) throw Error("Trainer: state part '" + part.name + "' added twice");
  }
  parts_.push_back(std::move(part));
}

FusedOptimizer& Trainer::optimizer() { return lisa_ ? lisa_->optimizer() : *optimizer_; }
const FusedOptimizer& Trainer::optimizer() const { return lisa_ ? lisa_->optimizer() : *optimizer_; }
int64_t Trainer::global_step() const { return optimizer().global_step(); }
double Trainer::current_lr() const { return optimizer().current_lr(); }

int64_t Trainer::active_parameters() const {
  int64_t n = 0;
  for (const auto& [name, p] : trainable_) n += p.requires_grad() ? p.numel() : 0;
  return n;
}

void Trainer::check_model_unchanged(const char* when) const {
  const auto now = named_parameters(*model_.module);
  const auto fail = [&](const std::string& what) {
    throw Error(fmt::format("Trainer ({}): the parameters of {} changed after the Trainer was built ({}); build the "
                            "Trainer after changing the model (e.g. after replacing conv_in), so that it hooks, "
                            "trains and saves the tensors the model uses",
                            when, model_.name, what));
  };
  for (std::size_t i = 0; i < std::min(now.size(), model_params_.size()); ++i) {
    const auto& [name, p] = now[i];
    const auto& [old_name, old] = model_params_[i];
    if (name != old_name) fail(fmt::format("parameter {} is '{}', was '{}'", i, name, old_name));
    if (p.unsafeGetTensorImpl() != old.unsafeGetTensorImpl()) {
      fail(fmt::format("'{}' is a new tensor of shape [{}]; the Trainer holds one of shape [{}]", name,
                       fmt::join(p.sizes(), ", "), fmt::join(old.sizes(), ", ")));
    }
  }
  if (now.size() != model_params_.size()) {
    fail(fmt::format("{} parameter tensors, {} when it was built", now.size(), model_params_.size()));
  }
}

void Trainer::check_graph(const torch::Tensor& loss, int64_t step, int index) const {
  using torch::autograd::Node;
  const auto root = loss.grad_fn();
  if (!root) return;  // backward() itself says that the loss does not require grad
  std::vector<Node*> stack{root.get()};
  std::unordered_set<Node*> seen{root.get()};
  std::vector<torch::Tensor> foreign;
  int64_t foreign_count = 0;
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    if (const auto* acc = dynamic_cast<const torch::autograd::AccumulateGrad*>(node)) {
      const auto& v = acc->variable;
      // Empty leaves hold no gradient (the gradient-checkpoint anchor is one).
      if (v.defined() && v.numel() > 0 && !owned_.count(v.unsafeGetTensorImpl())) {
        ++foreign_count;
        if (foreign.size() < 3) foreign.push_back(v);
      }
      continue;
    }
    for (const auto& edge : node->next_edges()) {
      Node* next = edge.function.get();
      if (next && seen.insert(next).second) stack.push_back(next);
    }
  }
  if (foreign_count == 0) return;
  std::vector<std::string> shapes;
  for (const auto& t : foreign) shapes.push_back(fmt::format("[{}]", fmt::join(t.sizes(), ", ")));
  throw Error(fmt::format("{}: step {} micro-batch {}: the loss depends on {} tensor(s) that require grad but are not "
                          "trained by this run (shapes {}{}): their gradients would pile up unused. Freeze every other "
                          "model in the forward pass (models::LoadOptions::frozen, or run it under torch::NoGradGuard)",
                          options_.label.empty() ? "trainer" : options_.label, step, index, foreign_count,
                          fmt::join(shapes, ", "), foreign_count > 3 ? ", ..." : ""));
}

void Trainer::write_model(const fs::path& dir) const {
  if (lora_) {
    lora_->save(dir);
    return;
  }
  const fs::path sub = dir / model_.name;
  fs::create_directories(sub);
  auto json = model_.config();
  json["_diffusers_version"] = models::kDiffusersFormatVersion;
  io::write_file_atomic(sub / "config.json", json.dump(2) + "\n");
  write_float32(sub / kWeightsName, trainable_);
}

void Trainer::read_model(const fs::path& dir) {
  if (lora_) {
    lora_->load(dir / Lora::kFileName);
    return;
  }
  const fs::path file = dir / model_.name / kWeightsName;
  if (!fs::exists(file)) throw Error(file.string(), "the checkpoint has no weights for " + model_.name);
  // Into each tensor's current dtype (exact for frozen half-precision ones: they were
  // rounded before they were saved).
  models::LoadOptions options;
  options.convert_module = false;
  models::load_parameters(*model_.module, {file}, options);
}

nlohmann::json Trainer::parts_state() const {
  nlohmann::json parts = nlohmann::json::object();
  for (const auto& p : parts_) {
    if (p.save_json) parts[p.name] = p.save_json();
  }
  return parts;
}

void Trainer::check_lisa_set(const char* when) const {
  if (!lisa_ || !distributed()) return;
  uint64_t h = fnv1a("lisa");
  for (const auto& name : lisa_->active_names()) h = fnv1a(name + ";", h);
  options_.group->check_same(static_cast<int64_t>(h & 0x7fffffffffffffffull),
                             fmt::format("the LISA set {} (step {}, {} tensors here)", when, global_step(),
                                         lisa_->active_names().size()));
}

nlohmann::json Trainer::training_state() const {
  nlohmann::json s;
  s["format"] = kTrainingStateFormat;
  s["global_step"] = global_step();
  s["schedule_step"] = optimizer().schedule_step();
  s["micro_batches"] = micro_count_;
  s["method"] = method_name(options_.method);
  s["model"] = model_.name;
  s["mixed_precision"] = precision_name(options_.mixed_precision);
  s["gradient_accumulation_steps"] = options_.gradient_accumulation_steps;
  if (lisa_) s["lisa"] = lisa_->state();
  s["parts"] = parts_state();
  s["world_size"] = distributed() ? options_.group->size() : 1;
  if (!options_.recipe.empty()) s["recipe"] = options_.recipe;
  return s;
}

void Trainer::write_lisa_activations(const fs::path& file) const {
  if (!lisa_) return;
  nlohmann::ordered_json j;
  j["global_step"] = global_step();
  j["sets_trained"] = lisa_->sets_trained();
  nlohmann::ordered_json units = nlohmann::ordered_json::array();
  const auto& info = lisa_->sampler().units();
  const auto& counts = lisa_->activation_counts();
  for (std::size_t u = 0; u < info.size(); ++u) {
    units.push_back({{"unit", info[u].name}, {"parameters", info[u].numel}, {"always_on", info[u].always_on},
                     {"activations", counts[u]}});
  }
  j["units"] = units;
  io::write_file_atomic(file, j.dump(1) + "\n");
}

fs::path Trainer::save_checkpoint() {
  check_model_unchanged("save_checkpoint");
  // Every rank's RNG states and recipe state, gathered on rank 0, which writes the folder;
  // the others wait for it at a barrier.
  std::vector<std::string> rng, rank_parts;
  if (distributed()) {
    rng = options_.group->allgather(rng_states_bytes());
    rank_parts = options_.group->allgather(parts_state().dump());
  }
  if (!options_.main_process) {
    if (distributed()) options_.group->barrier();
    return {};
  }
  CheckpointManager manager(options_.output_dir, options_.checkpoints_total_limit);
  const auto path = manager.save(global_step(), [&](const fs::path& dir) {
    write_model(dir);
    if (ema_) ema_->save_pretrained(dir / (model_.name + "_ema"), lora_ ? config::Json::object() : model_.config());
    save_optimizer_state(optimizer(), dir / "optimizer.safetensors");
    for (const auto& p : parts_) {
      if (p.save_files) p.save_files(dir);
    }
    write_lisa_activations(dir / "lisa_activations.json");
    save_rng_states(dir / "random_states.safetensors");
    auto state = training_state();
    if (distributed()) {
      auto ranks = nlohmann::json::array();
      for (std::size_t r = 0; r < rank_parts.size(); ++r) {
        ranks.push_back(nlohmann::json::parse(rank_parts[r]));
        if (r > 0) write_rng_states(dir / fmt::format("random_states_{}.safetensors", r), rng[r]);
      }
      state["rank_parts"] = ranks;
    }
    io::write_file_atomic(dir / kStateName, state.dump(1) + "\n");
  });
  metrics_.event(global_step(), "checkpoint", {{"path", path.filename().string()}});
  if (distributed()) options_.group->barrier();
  return path;
}

int64_t Trainer::resume() {
  if (options_.resume_from_checkpoint.empty()) return global_step();
  CheckpointManager manager(options_.output_dir, options_.checkpoints_total_limit);
  const auto found = manager.find(options_.resume_from_checkpoint);
  if (!found) {
    spdlog::warn("resume_from_checkpoint '{}': no checkpoint in {}; starting a new training run",
                 options_.resume_from_checkpoint, options_.output_dir.string());
    return global_step();
  }
  load_checkpoint(*found);
  return global_step();
}

void Trainer::load_checkpoint(const fs::path& dir) {
  const fs::path state_file = dir / kStateName;
  if (!fs::exists(state_file)) throw Error(state_file.string(), "missing: not a lisadiff checkpoint");
  const auto state = config::read_json_file(state_file);
  // The whole file is checked before anything is loaded: a refused resume changes nothing.
  const SavedTrainingState saved = parse_training_state(state, state_file.string());
  try {
    if (!saved.recipe.empty() && !options_.recipe.empty() && saved.recipe != options_.recipe) {
      throw Error(state_file.string(), "was written by a " + saved.recipe + " run; this run is " + options_.recipe +
                                           ": resume a run with the recipe that wrote it");
    }
    if (saved.method != method_name(options_.method)) {
      throw Error(state_file.string(),
                  "was written by a " + saved.method + " run; this run is " + method_name(options_.method));
    }
    if (saved.model != model_.name) {
      throw Error(state_file.string(), "holds the state of a " + saved.model + ", this run trains a " + model_.name);
    }
    if (saved.mixed_precision != precision_name(options_.mixed_precision)) {
      // The fp16 loss scale would otherwise be applied without unscaling, or be lost.
      throw Error(state_file.string(), fmt::format("was written with mixed_precision {}; this run has {}: resume with "
                                                   "the same mixed precision",
                                                   saved.mixed_precision, precision_name(options_.mixed_precision)));
    }
    if (saved.gradient_accumulation_steps != options_.gradient_accumulation_steps) {
      throw Error(state_file.string(), fmt::format("was written with gradient_accumulation_steps {}; this run has {}: "
                                                   "resume with the same value (the micro-batch count and the data "
                                                   "position depend on it)",
                                                   saved.gradient_accumulation_steps, options_.gradient_accumulation_steps));
    }
    if (lisa_ && saved.lisa.is_null()) throw Error(state_file.string(), "has no LISA state");
    // This rank's recipe state when the checkpoint was written by as many processes, else
    // rank 0's (a different world size: see docs/distributed.md).
    const int rank = distributed() ? options_.group->rank() : 0;
    const int world = distributed() ? options_.group->size() : 1;
    const int saved_world = saved.world_size;
    const nlohmann::json& parts = rank > 0 && saved_world == world && !saved.rank_parts.is_null()
                                      ? saved.rank_parts.at(static_cast<std::size_t>(rank))
                                      : saved.parts;
    for (const auto& p : parts_) {
      if (p.load_json && !parts.contains(p.name)) throw Error(state_file.string(), "has no state for '" + p.name + "'");
    }
    const int64_t step = saved.global_step;
    const int64_t schedule_step = saved.schedule_step;
    // The LISA set (and with it each tensor's dtype) before the weights, so that the saved
    // float32 values land in tensors of the dtype they had when saved.
    if (lisa_) {
      try {
        lisa_->load_state(saved.lisa);
      } catch (const Error& e) {
        throw Error(state_file.string(), e.problem());
      }
    }
    read_model(dir);
    load_optimizer_state(optimizer(), dir / "optimizer.safetensors");
    optimizer().set_global_step(step);
    optimizer().set_schedule_step(schedule_step);
    if (ema_) ema_->load_pretrained(dir / (model_.name + "_ema"));
    if (saved_world != world) {
      spdlog::warn("{}: written by {} process(es), resumed by {}: the weights, optimizer and LISA state continue; the "
                   "data continues after the examples all of them read where the data allows it (image folders), and "
                   "each process draws fresh random numbers from rank 0's saved state",
                   dir.string(), saved_world, world);
    }
    for (const auto& p : parts_) {
      if (p.load_json) p.load_json(nlohmann::json(parts.at(p.name)));
      if (p.load_files) p.load_files(dir);
    }
    micro_count_ = saved.micro_batches;
    const auto dropped = metrics_.truncate_after(step);
    if (dropped > 0) spdlog::info("{}: dropped {} metrics lines after step {}", metrics_.file().string(), dropped, step);
  } catch (const nlohmann::json::exception& e) {
    throw Error(state_file.string(), std::string("malformed: ") + e.what());
  }
  // Last: loading may draw numbers. Rank r's states where the checkpoint has them.
  const int rank = distributed() ? options_.group->rank() : 0;
  const auto rank_file = dir / fmt::format("random_states_{}.safetensors", rank);
  const bool own = rank == 0 || fs::exists(rank_file);
  load_rng_states(rank > 0 && own ? rank_file : dir / "random_states.safetensors");
  // A rank the checkpoint has no states for (it had fewer processes): rank 0's, re-seeded
  // with this rank and step, so that this rank's stream is its own and not its first one again.
  if (!own) reseed_default_generators(static_cast<uint64_t>(rank) + (static_cast<uint64_t>(global_step()) << 20));
  spdlog::info("resumed from {} at step {}", dir.string(), global_step());
}

void Trainer::train(const MicroStep& micro_step, const std::function<void(int64_t)>& after_step,
                    std::optional<int64_t> stop_after) {
  using Clock = std::chrono::steady_clock;
  const int64_t end = stop_after ? std::min(options_.max_train_steps, global_step() + *stop_after) : options_.max_train_steps;
  const int A = options_.gradient_accumulation_steps;
  const auto dtype = options_.mixed_precision == MixedPrecision::kBf16   ? torch::kBFloat16
                     : options_.mixed_precision == MixedPrecision::kFp16 ? torch::kHalf
                                                                         : torch::kFloat32;
  ProgressOptions po;
  po.label = options_.label;
  po.enabled = options_.main_process;
  check_model_unchanged("train");
  ProgressDisplay progress(options_.max_train_steps, po, global_step());
  auto& opt = optimizer();
  const int64_t lisa_total = lisa_ ? lisa_->total_parameters() : 0;  // fixed for the run
  check_lisa_set("at the start");
  while (global_step() < end) {
    const auto t0 = Clock::now();
    const double comm_wait0 = opt.grad_sync() ? opt.grad_sync()->wait_seconds() : 0.0;
    const int64_t step = global_step();
    // A re-draw falls at the start of a step, so that everything at the end of the previous
    // one saw the set that trained, and a run never draws after its last step.
    const bool redrew = lisa_ && lisa_->redraw_if_due();
    if (redrew) check_lisa_set("drawn");
    double loss_sum = 0;
    int n = 0;
    std::vector<nlohmann::ordered_json> logs;
    for (int index = 0; index < A; ++index) {
      MicroResult r;
      {
        AutocastScope autocast(device_, dtype);
        r = micro_step(MicroBatch{step, index, micro_count_});
      }
      ++micro_count_;
      if (!r.loss.defined() || r.loss.numel() != 1) {
        throw Error(fmt::format("{}: step {}: the micro-step returned {} instead of a scalar loss",
                                options_.label.empty() ? "trainer" : options_.label, step,
                                r.loss.defined() ? "a tensor of " + std::to_string(r.loss.numel()) + " elements" : "no loss"));
      }
      const double value = r.loss.detach().to(torch::kFloat64).item<double>();
      if (!std::isfinite(value) && options_.mixed_precision != MixedPrecision::kFp16) {
        throw Error(fmt::format("{}: step {} micro-batch {}: the loss is {}; stopping instead of training on it "
                                "(the last checkpoint is intact)",
                                options_.label.empty() ? "trainer" : options_.label, step, index, value));
      }
      loss_sum += value;
      ++n;
      logs.push_back(std::move(r.logs));
      const bool sync = index == A - 1 || r.end_of_epoch;
      check_graph(r.loss, step, index);
      opt.set_sync(sync);
      // accelerate divides by A even when an epoch ends the window early.
      (r.loss.to(torch::kFloat32) * (opt.loss_scale() / A)).backward();
      if (sync) break;
    }
    const int64_t done = lisa_ ? lisa_->finish_step() : opt.finish_step();
    if (ema_) ema_->step(trainable_);
    if (after_step) after_step(done);

    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double loss = distributed() ? options_.group->mean(loss_sum / n) : loss_sum / n;
    const int64_t active = active_parameters();
    nlohmann::ordered_json fields;
    fields["loss"] = loss;
    fields["lr"] = opt.current_lr();  // the lr of the next update, as the scripts log get_last_lr()
    fields["grad_norm"] = opt.last_grad_norm();
    fields["active_parameters"] = active;
    fields["step_time"] = seconds;
    fields["peak_memory"] = peak_memory_bytes();
    if (opt.grad_sync()) {
      // Seconds of the step spent blocked on the gradient all-reduce (the rest overlapped).
      fields["comm_wait"] = opt.grad_sync()->wait_seconds() - comm_wait0;
    }
    if (options_.mixed_precision == MixedPrecision::kFp16) {
      fields["loss_scale"] = opt.loss_scale();
      fields["skipped_tensors"] = opt.last_skipped_tensors();
    }
    if (ema_) fields["ema_decay"] = ema_->current_decay();
    const auto merged = merge_logs(logs);
    for (auto it = merged.begin(); it != merged.end(); ++it) fields[it.key()] = it.value();
    metrics_.log(done, fields);
    if (redrew) {
      // Logged at the first step the new set trained.
      metrics_.event(done, "recall", {{"active_parameters", active}, {"active_tensors", lisa_->active_names().size()}});
    }
    const double share = 100.0 * static_cast<double>(active) /
                         static_cast<double>(std::max<int64_t>(1, lisa_ ? lisa_total : active));
    progress.update(done, loss, fields["lr"].get<double>(), {{"active", fmt::format("{:.1f}%", share)}});
    if (done % options_.checkpointing_steps == 0) {
      progress.break_line();
      save_checkpoint();
    }
  }
}

void Trainer::save_final() {
  check_model_unchanged("save_final");
  if (ema_) ema_->copy_to(trainable_);
  if (!options_.main_process) return;
  fs::create_directories(options_.output_dir);
  write_model(options_.output_dir);
  write_lisa_activations(options_.output_dir / "lisa_activations.json");
  spdlog::info("saved the trained {} to {}", lora_ ? std::string("LoRA adapters") : model_.name,
               (options_.output_dir / (lora_ ? Lora::kFileName : model_.name)).string());
}

}  // namespace lisadiff::train
