// 8-bit AdamW for one parameter tensor: the moments are stored as uint8 codes with one fp32
// scale per block of 256 elements (block-wise dynamic quantisation, the technique of
// bitsandbytes' AdamW8bit, which `--use_8bit_adam` selects in the diffusers scripts;
// spec/recipes.md §1.2). Written with ATen ops only, so it runs wherever the parameter
// lives (CPU, CUDA) without custom kernels.
//
// Format of one moment tensor with n elements (n >= kMin8bitNumel):
//   codes  uint8 [n]                  index into the moment's 256-entry map
//   absmax fp32  [ceil(n / 256)]      per block of 256 consecutive elements (row-major
//                                     order of the parameter; the last block may be short)
//   value[i] = map[codes[i]] * absmax[i / 256]
// m uses the signed dynamic map, v the unsigned one (dynamic_quant_map). Parameters with
// fewer than kMin8bitNumel elements keep fp32 moments, as bitsandbytes' min_8bit_size does;
// for them a step is torch::optim::AdamW's step, op for op.
//
// A step dequantises m and v, updates them and the parameter in fp32 (the parameter is
// updated with the fresh fp32 moments), then re-quantises each block with absmax = max |x| of
// the block and the nearest code. Memory: 2 bytes per element plus 8 bytes per 256-element
// block, against 8 bytes per element for fp32 moments; during a step the fp32 temporaries of
// this one tensor exist (the point of the fused per-parameter step is that only one does).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "train/adamw_hyper.h"

namespace lisadiff::train {

constexpr int64_t kQuantBlockSize = 256;
// Tensors with fewer elements keep fp32 moments (bitsandbytes' min_8bit_size default).
constexpr int64_t kMin8bitNumel = 4096;

// bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 sorted
// fp32 values in [-1, 1] (signed; 0 and 1 included, the most negative is about -0.993) or
// [0, 1] (unsigned). A value is 10^-e times a linearly spaced fraction in [0.1, 1] with
// e = 0..6, finer fractions for larger exponents: relative precision where it matters for
// Adam's moments, whose magnitudes span orders within a block. On the CPU; cached.
torch::Tensor dynamic_quant_map(bool is_signed);

// The block-wise quantised form of a tensor (see the format above).
struct BlockwiseQuantized {
  torch::Tensor codes;   // uint8 [n]
  torch::Tensor absmax;  // fp32 [ceil(n / 256)]
};

// Quantises `x` (any floating dtype, flattened in row-major order) with `map` (256 sorted
// fp32 codes on x's device): per block absmax = max |x|, then each x / absmax goes to the
// nearest code (ties to the lower one). With keep_negative, a negative value whose nearest
// code is >= 0 takes the code below instead, as bitsandbytes' CUDA optimizer kernel does
// for the first moment so that a small negative momentum does not become zero. An all-zero
// block gets absmax 0 and the code of 0.
BlockwiseQuantized quantize_blockwise(const torch::Tensor& x, const torch::Tensor& map, bool keep_negative = false);
// The fp32 values of a quantised tensor, in `shape` (its numel must be codes.numel()).
torch::Tensor dequantize_blockwise(const BlockwiseQuantized& q, const torch::Tensor& map, at::IntArrayRef shape);

class AdamW8bitState {
 public:
  // Zero moments for `param` (floating point, any device). `name` only labels error
  // messages (e.g. the parameter's key). Throws lisadiff::Error for a non-floating param.
  explicit AdamW8bitState(const torch::Tensor& param, std::string name = "");
  // Move-only: a copy would share the fp32 moments, which a step updates in place.
  AdamW8bitState(AdamW8bitState&&) = default;
  AdamW8bitState& operator=(AdamW8bitState&&) = default;
  AdamW8bitState(const AdamW8bitState&) = delete;
  AdamW8bitState& operator=(const AdamW8bitState&) = delete;

  // One AdamW step at step count t (t = 1 for the first step of this state; the caller
  // keeps t, and checkpoints it beside state_tensors()):
  //   p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
  //   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
  // param: fp32, bf16 or fp16, updated in place (bf16/fp16 are computed in fp32 and written
  // back). grad: the param's shape and device, any floating dtype. Runs without autograd.
  // Throws lisadiff::Error for a shape, device or dtype mismatch or t < 1.
  void step(torch::Tensor& param, const torch::Tensor& grad, const AdamWHyper& hyper, int64_t t);

  bool quantized() const { return quantized_; }
  int64_t numel() const { return numel_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  torch::Device device() const { return device_; }

  // The moments as fp32 tensors in the parameter's shape (dequantised when quantized()).
  torch::Tensor exp_avg() const;
  torch::Tensor exp_avg_sq() const;

  // Bytes held by the state's tensors (codes + absmax, or the fp32 moments); the maps are
  // shared by every state on a device and not counted.
  int64_t state_bytes() const;

  // The state as named tensors for a checkpoint: "m_codes", "m_absmax", "v_codes",
  // "v_absmax" when quantized(), else "m" and "v" (fp32, the parameter's shape). On the
  // state's device; they stay valid after later steps (a step replaces, never modifies, them).
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  // The state of `param` from tensors that state_tensors() produced (any device: they are
  // moved to param's); continuing from it is bit-identical to never having stopped.
  // `source` names where they came from (e.g. "ckpt/optimizer.safetensors") in errors:
  // missing or unexpected names, wrong dtypes or shapes, negative or non-finite absmax.
  static AdamW8bitState from_state_tensors(const torch::Tensor& param,
                                           const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                           const std::string& source, std::string name = "");

 private:
  std::string what() const;  // "AdamW8bit: parameter 'name'" for messages
  void check_step_inputs(const torch::Tensor& param, const torch::Tensor& grad, int64_t t) const;

  std::string name_;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  torch::Device device_{torch::kCPU};
  bool quantized_ = false;
  // quantized(): the two moments block-wise; else m_ and v_ (fp32, the parameter's shape).
  BlockwiseQuantized m_q_, v_q_;
  torch::Tensor m_, v_;
  torch::Tensor signed_map_, unsigned_map_;  // on device_, shared
};

}  // namespace lisadiff::train
