#include "train/adamw8bit.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace lisadiff::train {
namespace {

std::string shape_str(c10::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

int64_t num_blocks(int64_t numel) { return (numel + kQuantBlockSize - 1) / kQuantBlockSize; }

bool supported_param_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16;
}

// bitsandbytes' create_dynamic_map with max_exponent_bits = 7, total_bits = 8, computed with
// the same torch ops (float32 linspace, means and scaling), so the values agree to the bit.
// For exponent step i = 0..6 the fractions are the midpoints of a float32 linspace(0.1, 1)
// with 2^i + 1 points (signed; 2^(i+1) + 1 unsigned, which spends the sign bit on precision),
// scaled by 10^(i - 6); the signed map mirrors them. 0 and 1 complete the 256 entries.
torch::Tensor make_dynamic_map(bool is_signed) {
  constexpr int kMaxExponentBits = 7;
  constexpr int kNonSignBits = 7;  // total_bits - 1 for both maps, as bitsandbytes has it
  std::vector<float> data;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int shift = i + kNonSignBits - kMaxExponentBits + (is_signed ? 0 : 1);
    const int64_t points = (int64_t{1} << shift) + 1;
    const auto bounds = torch::linspace(0.1, 1.0, points, torch::dtype(torch::kFloat32));
    const auto means = (bounds.slice(0, 0, points - 1) + bounds.slice(0, 1, points)) / 2.0;
    const double scale = std::pow(10.0, i - (kMaxExponentBits - 1));
    for (const double sign : is_signed ? std::vector<double>{1.0, -1.0} : std::vector<double>{1.0}) {
      const auto scaled = (means * (sign * scale)).contiguous();
      const float* p = scaled.data_ptr<float>();
      data.insert(data.end(), p, p + scaled.numel());
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  TORCH_CHECK(data.size() == 256, "dynamic map has ", data.size(), " entries");
  std::sort(data.begin(), data.end());
  return torch::tensor(data, torch::dtype(torch::kFloat32));
}

// The map on `device`, made once per (device, signedness) and shared by every state there.
// Never freed: static CUDA tensors must not be destroyed after the CUDA context at exit.
torch::Tensor map_on(bool is_signed, torch::Device device) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::string, torch::Tensor>();
  const std::string key = device.str() + (is_signed ? "/signed" : "/unsigned");
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, dynamic_quant_map(is_signed).to(device)).first;
  return it->second;
}

}  // namespace

torch::Tensor dynamic_quant_map(bool is_signed) {
  static const auto* maps = new std::pair<torch::Tensor, torch::Tensor>(make_dynamic_map(true), make_dynamic_map(false));
  return is_signed ? maps->first : maps->second;
}

BlockwiseQuantized quantize_blockwise(const torch::Tensor& x, const torch::Tensor& map, bool keep_negative) {
  TORCH_CHECK(map.numel() == 256 && map.scalar_type() == torch::kFloat32, "quantize_blockwise: map must be 256 fp32 codes");
  const int64_t n = x.numel();
  const int64_t blocks = num_blocks(n);
  const int64_t pad = blocks * kQuantBlockSize - n;
  auto flat = x.reshape(-1).to(torch::kFloat32);
  // Zero padding leaves each block's max |x| unchanged; the padded codes are dropped below.
  const auto xb = (pad > 0 ? torch::constant_pad_nd(flat, {0, pad}, 0) : flat).view({blocks, kQuantBlockSize});
  auto absmax = xb.abs().amax(/*dim=*/1);
  // An all-zero block keeps absmax 0 (dequantises to 0 whatever its codes); divide by 1 there.
  const auto divisor = torch::where(absmax > 0, absmax, torch::ones_like(absmax));
  const auto scaled = xb / divisor.unsqueeze(1);  // in [-1, 1]: |x| <= absmax, IEEE division
  // Nearest code: code i wins on (mid[i-1], mid[i]] with mid the float32 midpoints of
  // neighbouring codes, as bitsandbytes' kernels compare against (lower + upper) * 0.5f.
  const auto mid = (map.slice(0, 0, 255) + map.slice(0, 1, 256)) * 0.5;
  auto idx = torch::bucketize(scaled, mid, /*out_int32=*/true, /*right=*/false);
  if (keep_negative) {
    const auto first_nonneg = torch::searchsorted(map, torch::zeros({1}, map.options()), /*out_int32=*/true);
    idx = idx - (scaled.lt(0) & idx.ge(first_nonneg)).to(torch::kInt32);
  }
  auto codes = idx.to(torch::kUInt8).view(-1);
  codes = pad > 0 ? codes.narrow(0, 0, n).clone() : codes;
  return {codes, absmax};
}

torch::Tensor dequantize_blockwise(const BlockwiseQuantized& q, const torch::Tensor& map, at::IntArrayRef shape) {
  const int64_t n = q.codes.numel();
  TORCH_CHECK(c10::multiply_integers(shape) == n, "dequantize_blockwise: shape ", shape_str(shape), " for ", n, " codes");
  auto values = map.index_select(0, q.codes.to(torch::kInt32));  // [n], fp32
  const int64_t full = n / kQuantBlockSize;
  const int64_t rest = n - full * kQuantBlockSize;
  if (full > 0) {
    values.narrow(0, 0, full * kQuantBlockSize)
        .view({full, kQuantBlockSize})
        .mul_(q.absmax.narrow(0, 0, full).unsqueeze(1));
  }
  if (rest > 0) values.narrow(0, full * kQuantBlockSize, rest).mul_(q.absmax.narrow(0, full, 1));
  return values.view(shape);
}

AdamW8bitState::AdamW8bitState(const torch::Tensor& param, std::string name)
    : name_(std::move(name)), device_(param.defined() ? param.device() : torch::Device(torch::kCPU)) {
  if (!param.defined()) throw Error(what() + ": the parameter is an undefined tensor");
  if (!supported_param_dtype(param.scalar_type())) {
    throw Error(fmt::format("{}: dtype {} is not supported (fp32, bf16 or fp16 parameters)", what(),
                            c10::toString(param.scalar_type())));
  }
  shape_ = param.sizes().vec();
  numel_ = param.numel();
  quantized_ = numel_ >= kMin8bitNumel;
  if (quantized_) {
    signed_map_ = map_on(/*is_signed=*/true, device_);
    unsigned_map_ = map_on(/*is_signed=*/false, device_);
    // Zero codes with absmax 0 dequantise to 0, as bitsandbytes initialises its state.
    const auto codes = torch::zeros({numel_}, torch::dtype(torch::kUInt8).device(device_));
    const auto absmax = torch::zeros({num_blocks(numel_)}, torch::dtype(torch::kFloat32).device(device_));
    m_q_ = {codes, absmax};
    v_q_ = {codes.clone(), absmax.clone()};
  } else {
    m_ = torch::zeros(shape_, torch::dtype(torch::kFloat32).device(device_));
    v_ = torch::zeros_like(m_);
  }
}

std::string AdamW8bitState::what() const {
  return name_.empty() ? std::string("AdamW8bit") : fmt::format("AdamW8bit: parameter '{}'", name_);
}

void AdamW8bitState::check_step_inputs(const torch::Tensor& param, const torch::Tensor& grad, int64_t t) const {
  if (!param.defined() || !grad.defined()) throw Error(what() + ": the parameter or its gradient is undefined");
  if (!supported_param_dtype(param.scalar_type())) {
    throw Error(fmt::format("{}: dtype {} is not supported (fp32, bf16 or fp16 parameters)", what(),
                            c10::toString(param.scalar_type())));
  }
  if (!grad.is_floating_point()) {
    throw Error(fmt::format("{}: gradient dtype {} is not floating point", what(), c10::toString(grad.scalar_type())));
  }
  if (param.sizes() != c10::IntArrayRef(shape_)) {
    throw Error(fmt::format("{}: parameter has shape {}, the state was made for {}", what(), shape_str(param.sizes()),
                            shape_str(shape_)));
  }
  if (grad.sizes() != param.sizes()) {
    throw Error(fmt::format("{}: gradient has shape {}, parameter has {}", what(), shape_str(grad.sizes()),
                            shape_str(param.sizes())));
  }
  if (param.device() != device_) {
    throw Error(fmt::format("{}: parameter is on {}, the state on {}", what(), param.device().str(), device_.str()));
  }
  if (grad.device() != param.device()) {
    throw Error(fmt::format("{}: gradient is on {}, parameter on {}", what(), grad.device().str(),
                            param.device().str()));
  }
  if (t < 1) throw Error(fmt::format("{}: step count t = {} (it counts from 1)", what(), t));
}

void AdamW8bitState::step(torch::Tensor& param, const torch::Tensor& grad, const AdamWHyper& hyper, int64_t t) {
  check_step_inputs(param, grad, t);
  torch::NoGradGuard no_grad;
  const bool fp32 = param.scalar_type() == torch::kFloat32;
  auto p = fp32 ? param : param.to(torch::kFloat32);  // fp32: the parameter itself, updated in place
  const auto g = grad.to(torch::kFloat32);
  torch::Tensor m = quantized_ ? dequantize_blockwise(m_q_, signed_map_, shape_) : m_;
  torch::Tensor v = quantized_ ? dequantize_blockwise(v_q_, unsigned_map_, shape_) : v_;

  // torch::optim::AdamW::step, op for op (and scalar for scalar), so the fp32 path matches it
  // bit for bit; bitsandbytes' reference update is the same sequence.
  if (hyper.weight_decay != 0) p.mul_(1 - hyper.lr * hyper.weight_decay);
  const double bias_correction1 = 1 - std::pow(hyper.beta1, static_cast<double>(t));
  const double bias_correction2 = 1 - std::pow(hyper.beta2, static_cast<double>(t));
  m.mul_(hyper.beta1).add_(g, 1 - hyper.beta1);
  v.mul_(hyper.beta2).addcmul_(g, g, 1 - hyper.beta2);
  const auto denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(hyper.eps);
  p.addcdiv_(m, denom, -hyper.lr / bias_correction1);
  if (!fp32) param.copy_(p);

  if (quantized_) {
    m_q_ = quantize_blockwise(m, signed_map_, /*keep_negative=*/true);
    v_q_ = quantize_blockwise(v, unsigned_map_);
  }
}

torch::Tensor AdamW8bitState::exp_avg() const {
  return quantized_ ? dequantize_blockwise(m_q_, signed_map_, shape_) : m_.clone();
}

torch::Tensor AdamW8bitState::exp_avg_sq() const {
  return quantized_ ? dequantize_blockwise(v_q_, unsigned_map_, shape_) : v_.clone();
}

int64_t AdamW8bitState::state_bytes() const {
  if (!quantized_) return static_cast<int64_t>(m_.nbytes() + v_.nbytes());
  return static_cast<int64_t>(m_q_.codes.nbytes() + m_q_.absmax.nbytes() + v_q_.codes.nbytes() + v_q_.absmax.nbytes());
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW8bitState::state_tensors() const {
  if (!quantized_) return {{"m", m_.clone()}, {"v", v_.clone()}};  // small: fewer than 4096 elements
  return {{"m_codes", m_q_.codes}, {"m_absmax", m_q_.absmax}, {"v_codes", v_q_.codes}, {"v_absmax", v_q_.absmax}};
}

AdamW8bitState AdamW8bitState::from_state_tensors(const torch::Tensor& param,
                                                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                                  const std::string& source, std::string name) {
  AdamW8bitState state(param, std::move(name));
  const std::string key = state.what() + " state";
  const std::vector<std::string> expected = state.quantized_
                                                ? std::vector<std::string>{"m_codes", "m_absmax", "v_codes", "v_absmax"}
                                                : std::vector<std::string>{"m", "v"};
  std::map<std::string, torch::Tensor> given;
  for (const auto& [tensor_name, tensor] : tensors) {
    if (std::find(expected.begin(), expected.end(), tensor_name) == expected.end()) {
      throw Error(source, key,
                  fmt::format("unexpected tensor '{}' (a parameter of {} elements has {} moments: {})", tensor_name,
                              state.numel_, state.quantized_ ? "8-bit" : "fp32", fmt::join(expected, ", ")));
    }
    if (!tensor.defined()) throw Error(source, key, fmt::format("tensor '{}' is undefined", tensor_name));
    given[tensor_name] = tensor;
  }
  for (const auto& tensor_name : expected) {
    if (!given.count(tensor_name)) throw Error(source, key, fmt::format("missing tensor '{}'", tensor_name));
  }

  // Each tensor is copied onto the parameter's device, so the state owns its memory.
  auto take = [&](const std::string& tensor_name, torch::ScalarType dtype, c10::IntArrayRef shape) {
    const auto& t = given[tensor_name];
    if (t.scalar_type() != dtype || t.sizes() != shape) {
      throw Error(source, key,
                  fmt::format("tensor '{}' is {} {}, expected {} {}", tensor_name, c10::toString(t.scalar_type()),
                              shape_str(t.sizes()), c10::toString(dtype), shape_str(shape)));
    }
    return t.to(state.device_, dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
  };
  auto check_nonnegative = [&](const std::string& tensor_name, const torch::Tensor& t) {
    if (!torch::isfinite(t).all().item<bool>() || t.lt(0).any().item<bool>()) {
      throw Error(source, key, fmt::format("tensor '{}' has negative or non-finite values", tensor_name));
    }
  };
  if (state.quantized_) {
    const std::vector<int64_t> codes_shape{state.numel_}, absmax_shape{num_blocks(state.numel_)};
    state.m_q_ = {take("m_codes", torch::kUInt8, codes_shape), take("m_absmax", torch::kFloat32, absmax_shape)};
    state.v_q_ = {take("v_codes", torch::kUInt8, codes_shape), take("v_absmax", torch::kFloat32, absmax_shape)};
    check_nonnegative("m_absmax", state.m_q_.absmax);
    check_nonnegative("v_absmax", state.v_q_.absmax);
  } else {
    state.m_ = take("m", torch::kFloat32, state.shape_);
    state.v_ = take("v", torch::kFloat32, state.shape_);
    check_nonnegative("v", state.v_);
  }
  return state;
}

}  // namespace lisadiff::train
