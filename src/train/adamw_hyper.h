// AdamW hyper-parameters shared by lisadiff's optimizers (the fp32 fused AdamW and the
// 8-bit one), with the diffusers scripts' defaults (--adam_beta1/2, --adam_epsilon,
// --adam_weight_decay; spec/recipes.md §1.2).
#pragma once

namespace lisadiff::train {

struct AdamWHyper {
  double lr = 0.0;  // the learning rate of this step (the schedule already applied)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // decoupled: p <- p * (1 - lr * weight_decay)
};

}  // namespace lisadiff::train
