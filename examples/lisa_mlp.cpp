// LISA on a model that has nothing to do with diffusion: a 6-layer MLP learns a 2-D spiral
// classification. Only 2 of its 12 tensors (plus the first and the last) train at any time;
// the draw changes every 10 optimizer steps; the AdamW steps run inside backward(), in the
// last of two accumulated micro-batches per step.
//
//   build/examples/lisa_mlp [steps]          (default 1500; about 10 s on 2 CPU cores)
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "train/lisa.h"

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 1500;
  torch::manual_seed(0);
  spdlog::set_level(spdlog::level::warn);  // LISA logs every re-draw at info level

  // Two interleaved spirals, 512 points each.
  auto t = torch::linspace(0.25, 3.0 * M_PI, 512);
  auto a = torch::stack({t * torch::cos(t), t * torch::sin(t)}, 1) / 10;
  auto x = torch::cat({a, -a}) + 0.02 * torch::randn({1024, 2});
  auto y = torch::cat({torch::zeros({512}, torch::kLong), torch::ones({512}, torch::kLong)});

  torch::nn::Sequential model;
  model->push_back(torch::nn::Linear(2, 64));
  for (int i = 0; i < 4; ++i) {
    model->push_back(torch::nn::Tanh());
    model->push_back(torch::nn::Linear(64, 64));
  }
  model->push_back(torch::nn::Tanh());
  model->push_back(torch::nn::Linear(64, 2));

  // Gradient accumulation: each optimizer step sees the data as two micro-batches.
  const auto xs = x.chunk(2), ys = y.chunk(2);

  // --- the LISA part ---
  lisadiff::train::LisaOptions lisa;
  lisa.n_active = 2;    // tensors drawn besides the always-on first and last
  lisa.interval = 10;   // re-draw every 10 optimizer steps
  lisa.seed = 0;
  lisadiff::train::FusedOptimizerOptions opt;
  opt.adamw.lr = 1e-2;
  opt.lr_at = [&](int64_t s) { return 1e-2 * 0.5 * (1 + std::cos(M_PI * s / steps)); };  // cosine
  lisadiff::train::Lisa trainer(*model, lisa, opt);
  for (int step = 0; step < steps; ++step) {
    double loss = 0;
    for (int k = 0; k < 2; ++k) {
      trainer.set_sync(k == 1);  // the window's last backward runs the AdamW steps
      auto part = torch::nn::functional::cross_entropy(model->forward(xs[k]), ys[k]) / 2;
      part.backward();           // k = 1: the active tensors are updated in here, their gradients freed
      loss += part.item<double>();
    }
    trainer.step();              // ends the optimizer step; re-draws every `interval` steps
    // --- end of the LISA part ---
    if (step % 250 == 0 || step == steps - 1) {
      torch::NoGradGuard no_grad;
      const double acc = (model->forward(x).argmax(1) == y).to(torch::kFloat).mean().item<double>();
      std::printf("step %5d  loss %.4f  accuracy %.3f  active %lld of %lld parameters\n", step, loss, acc,
                  static_cast<long long>(trainer.active_parameters()), static_cast<long long>(trainer.total_parameters()));
    }
  }
  torch::NoGradGuard no_grad;
  const double acc = (model->forward(x).argmax(1) == y).to(torch::kFloat).mean().item<double>();
  std::printf("final accuracy %.3f\n", acc);
  return 0;
}
