#include "config/clip_text_config.h"

#include <fmt/format.h>

#include "config/config_checks.h"

namespace lisadiff::config {
namespace {

template <class Self, class Visitor>
void visit_clip_text_fields(Self& c, Visitor& v) {
  v("vocab_size", c.vocab_size);
  v("hidden_size", c.hidden_size);
  v("intermediate_size", c.intermediate_size);
  v("projection_dim", c.projection_dim);
  v("num_hidden_layers", c.num_hidden_layers);
  v("num_attention_heads", c.num_attention_heads);
  v("max_position_embeddings", c.max_position_embeddings);
  v("hidden_act", c.hidden_act);
  v("layer_norm_eps", c.layer_norm_eps);
  v("attention_dropout", c.attention_dropout);
  v("dropout", c.dropout);
  v("initializer_range", c.initializer_range);
  v("initializer_factor", c.initializer_factor);
  v("pad_token_id", c.pad_token_id);
  v("bos_token_id", c.bos_token_id);
  v("eos_token_id", c.eos_token_id);
}

// Keys every transformers PretrainedConfig writes (generation, labels, bookkeeping); they
// do not change what CLIPTextModel computes.
const char* const kPretrainedConfigKeys[] = {
    "architectures", "transformers_version", "torch_dtype", "dtype", "output_hidden_states",
    "output_attentions", "return_dict", "torchscript", "use_bfloat16", "tie_word_embeddings",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "pruned_heads", "id2label", "label2id",
    "problem_type", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
    "tf_legacy_loss", "use_cache", "sep_token_id", "decoder_start_token_id", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature",
    "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "model_type",
};

const auto kVisitClipText = [](auto& config, auto& visitor) { visit_clip_text_fields(config, visitor); };

}  // namespace

CLIPTextConfig CLIPTextConfig::from_json(const Json& json, const std::string& source) {
  FieldReader reader(json, source);
  const auto type = json.find("model_type");
  if (type != json.end() && *type != "clip_text_model") {
    field_error(source, "model_type", "expected \"clip_text_model\", found " + describe_json(*type));
  }
  for (const char* key : kPretrainedConfigKeys) reader.ignored(key);
  return read_fields(CLIPTextConfig{}, reader, kVisitClipText);
}

CLIPTextConfig CLIPTextConfig::from_file(const std::filesystem::path& path) {
  return read_config_file<CLIPTextConfig>(path);
}

void CLIPTextConfig::validate(const std::string& source) const {
  require_positive(source, "vocab_size", vocab_size);
  require_positive(source, "hidden_size", hidden_size);
  require_positive(source, "intermediate_size", intermediate_size);
  require_positive(source, "num_hidden_layers", num_hidden_layers);
  require_positive(source, "num_attention_heads", num_attention_heads);
  require_positive(source, "max_position_embeddings", max_position_embeddings);
  require_positive(source, "layer_norm_eps", layer_norm_eps);
  require_one_of(source, "hidden_act", hidden_act, {"quick_gelu", "gelu"});
  if (hidden_size % num_attention_heads != 0) {
    field_error(source, "num_attention_heads",
                fmt::format("expected a divisor of hidden_size ({}), found {}", hidden_size, num_attention_heads));
  }
}

Json CLIPTextConfig::to_json() const {
  const Json header = {{"architectures", Json::array({"CLIPTextModel"})}, {"model_type", "clip_text_model"}};
  return write_fields(*this, header, kVisitClipText);
}

std::string CLIPTextConfig::summary() const {
  return fmt::format("hidden {}, layers {}, heads {}, intermediate {}, vocab {}, positions {}, {}", hidden_size,
                     num_hidden_layers, num_attention_heads, intermediate_size, vocab_size,
                     max_position_embeddings, hidden_act);
}

}  // namespace lisadiff::config
