// `lisadiff init-pipeline`: writes a complete Stable Diffusion pipeline folder (model_index,
// unet, vae, text_encoder, tokenizer, scheduler) with random weights initialised the way
// diffusers and transformers initialise them, from a preset (configs/presets/, compiled in)
// whose component configs a folder may override.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lisadiff::tools {

// The transformers release written into the text encoder's config (requirements.txt pins it);
// the diffusers one is models::kDiffusersFormatVersion.
inline constexpr const char* kTransformersVersion = "5.23.0";

struct InitPipelineOptions {
  std::string preset = "tiny";           // a folder of configs/presets: "tiny" or "sd15"
  std::filesystem::path config_dir;      // optional: <dir>/{unet,vae,text_encoder}/config.json,
                                         // <dir>/scheduler/scheduler_config.json override the preset
  std::filesystem::path tokenizer_dir;   // vocab.json + merges.txt; required when the preset has none
  std::uint64_t seed = 0;                // unet: seed, vae: seed + 1, text encoder: seed + 2
  std::filesystem::path out;
  bool overwrite = false;
};

std::vector<std::string> preset_names();

// Writes the folder under a temporary name next to `out`, then renames it: an interrupted
// run leaves no half pipeline. Throws lisadiff::Error for bad options or configs.
void init_pipeline(const InitPipelineOptions& options);

// The default tokenizer folder for presets without one (the full CLIP vocabulary that
// scripts/setup.sh converts): $LISADIFF_CLIP_VOCAB, else <cache>/clip-vocab under
// $LISADIFF_CACHE_DIR or ~/.cache/lisadiff.
std::filesystem::path default_clip_vocab_dir();

}  // namespace lisadiff::tools
