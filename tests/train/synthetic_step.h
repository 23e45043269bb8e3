// A recipe's micro-step stand-in for the training-loop tests: the denoising loss of a UNet on
// micro-batch `count` of a deterministic synthetic stream (the stream's position is the
// micro-batch count). The noise comes from the global generator, which a resume must restore
// and which nothing else (validation) may draw from.
#pragma once

#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "models/unet.h"
#include "train/trainer.h"

namespace lisadiff::testing {

inline train::MicroResult synthetic_denoise_step(models::UNet2DConditionModel unet, const train::MicroBatch& mb,
                                                 std::vector<double>* losses = nullptr) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + mb.count);
  auto latents = at::randn({2, 4, 8, 8}, gen);
  auto t = at::randint(0, 1000, {2}, gen);
  auto context = at::randn({2, 7, static_cast<int64_t>(unet->config.cross_attention_dim.at(0))}, gen);
  auto noise = torch::randn_like(latents);
  auto pred = unet->forward(latents + noise, t, context);
  auto loss = torch::mse_loss(pred.to(torch::kFloat32), noise);
  if (losses) losses->push_back(loss.item<double>());
  return {loss, {{"pred_std", pred.detach().to(torch::kFloat32).std().item<double>()}}};
}

}  // namespace lisadiff::testing
