// CLIPTextModel's config.json (transformers). Defaults are CLIPTextConfig's defaults.
#pragma once

#include <filesystem>
#include <string>

#include "config/json_fields.h"

namespace lisadiff::config {

struct CLIPTextConfig {
  int vocab_size = 49408;
  int hidden_size = 512;
  int intermediate_size = 2048;
  int projection_dim = 512;  // used by CLIPTextModelWithProjection only
  int num_hidden_layers = 12;
  int num_attention_heads = 8;
  int max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  double attention_dropout = 0.0;
  double dropout = 0.0;
  double initializer_range = 0.02;
  double initializer_factor = 1.0;
  int pad_token_id = 1;
  int bos_token_id = 49406;
  // The pooled output is taken at this token; SD1.5's stale value 2 selects the argmax id.
  int eos_token_id = 49407;

  static CLIPTextConfig from_json(const Json& json, const std::string& source);
  static CLIPTextConfig from_file(const std::filesystem::path& path);
  void validate(const std::string& source) const;
  Json to_json() const;
  std::string summary() const;
};

}  // namespace lisadiff::config
