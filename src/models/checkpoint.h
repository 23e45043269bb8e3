// Gradient checkpointing: run a block without keeping its activations, and recompute them in
// the backward pass. The reentrant scheme of torch.utils.checkpoint (use_reentrant=True),
// written as a custom autograd Function:
//   forward:  runs `fn` under no_grad; saves the inputs, the RNG state of their device and
//             the autocast state.
//   backward: restores that RNG and autocast state, re-runs `fn` with grad enabled on
//             detached copies of the inputs, and backpropagates the incoming gradients
//             through the recomputed graph. Parameters used inside `fn` receive their
//             gradients from this inner backward (their accumulate-grad hooks fire there,
//             which the fused optimizer relies on); the inputs' gradients are returned.
// Gradients equal those of the unchecked block (the same ops on the same values).
//
// Unlike torch's reentrant checkpoint, a block whose inputs need no gradient still trains:
// LISA often freezes everything in front of an active block, and torch would then silently
// give that block no gradient. Here a zero-size tensor that requires grad joins the inputs
// whenever a parameter of the block requires grad, so the output stays in the graph.
#pragma once

#include <functional>
#include <vector>

#include <torch/torch.h>

namespace lisadiff::models {

using TensorList = std::vector<torch::Tensor>;
using CheckpointFn = std::function<TensorList(const TensorList& inputs)>;

// Runs fn(inputs) checkpointed when grad mode is on and an input or a parameter of `block`
// requires grad; otherwise calls fn directly. Undefined inputs are passed through.
TensorList checkpoint(const torch::nn::Module& block, const CheckpointFn& fn, const TensorList& inputs);

// Convenience for a block with one output.
torch::Tensor checkpoint1(const torch::nn::Module& block, const std::function<torch::Tensor(const TensorList&)>& fn,
                          const TensorList& inputs);

}  // namespace lisadiff::models
