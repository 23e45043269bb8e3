// `lisadiff train-vae`: fits a pipeline's VAE to an image dataset, for small pipelines made
// from scratch (init-pipeline's random VAE decodes nothing recognisable, so a UNet trained on
// its latents could not show what it learned) and for datasets far from the VAE's own.
//
// The loss is the autoencoder's: mean squared error between the image and the decoding of a
// latent sampled from the encoder's distribution, plus kl_weight x the KL divergence to N(0, 1)
// (mean over the batch), minimised with AdamW over every VAE parameter. Images come through
// text_to_image's data path (the shorter side resized, cropped to --resolution, [-1, 1]).
//
// At the end the VAE's scaling_factor becomes 1 / std of the latents' means over up to 512
// training images, the way Stable Diffusion's 0.18215 was chosen, so that scaled latents have
// unit variance for the UNet. The output is the input pipeline folder with vae/ replaced,
// written under a temporary name and renamed into place.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lisadiff::tools {

struct TrainVaeOptions {
  std::filesystem::path pipeline;  // its vae/ is trained; the other parts are copied
  std::string train_data_dir;      // image folder with metadata.jsonl, or
  std::string train_shards;        // webdataset shards
  std::int64_t resolution = 0;     // 0: the VAE's sample_size
  std::int64_t batch_size = 32;
  std::int64_t max_train_steps = 1000;
  double learning_rate = 2e-3;
  double kl_weight = 1e-6;
  std::uint64_t seed = 0;
  int log_every = 100;  // steps between progress lines
  std::filesystem::path out;
  bool overwrite = false;
};

struct TrainVaeSummary {
  double first_loss = 0, last_loss = 0;  // the reconstruction error of the first and last step
  double scaling_factor = 0;
  double seconds = 0;
};

// Throws lisadiff::Error naming the flag or file for bad input (nothing written then).
TrainVaeSummary train_vae(const TrainVaeOptions& options);

}  // namespace lisadiff::tools
