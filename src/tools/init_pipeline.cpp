#include "tools/init_pipeline.h"

#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>

#include "config/clip_text_config.h"
#include "config/json_fields.h"
#include "config/scheduler_config.h"
#include "config/unet_config.h"
#include "config/vae_config.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "models/clip_text.h"
#include "models/state.h"
#include "models/unet.h"
#include "models/vae.h"
#include "tools/embedded.h"

namespace lisadiff::tools {

namespace fs = std::filesystem;
using config::Json;

namespace {

constexpr const char* kUnetConfig = "unet/config.json";
constexpr const char* kVaeConfig = "vae/config.json";
constexpr const char* kTextConfig = "text_encoder/config.json";
constexpr const char* kSchedulerConfig = "scheduler/scheduler_config.json";

// A component config: from the override folder when it has the file, else the preset.
struct Source {
  Json json;
  std::string name;  // for messages
};

Source read_config(const InitPipelineOptions& o, const std::string& relative) {
  if (!o.config_dir.empty() && fs::exists(o.config_dir / relative)) {
    const auto path = o.config_dir / relative;
    return {config::read_json_file(path), path.string()};
  }
  const auto data = embedded::find(o.preset + "/" + relative);
  if (!data) throw Error("preset '" + o.preset + "'", "has no " + relative);
  const std::string name = "preset '" + o.preset + "': " + relative;
  try {
    return {Json::parse(*data), name};
  } catch (const Json::exception& e) {
    throw Error(name, std::string("invalid JSON: ") + e.what());
  }
}

void write_json(const fs::path& path, const Json& json) {
  fs::create_directories(path.parent_path());
  io::write_file_atomic(path, json.dump(2) + "\n");
}

Json with_header(Json json, const std::string& class_name) {
  json["_class_name"] = class_name;
  json["_diffusers_version"] = models::kDiffusersFormatVersion;
  return json;
}

// Where vocab.json and merges.txt come from: the preset's own (compiled in), or a folder.
struct TokenizerSource {
  std::optional<std::string_view> vocab, merges;  // compiled-in files
  fs::path dir;                                   // else copied from here
};

TokenizerSource tokenizer_source(const InitPipelineOptions& o) {
  TokenizerSource src;
  if (o.tokenizer_dir.empty()) {
    src.vocab = embedded::find(o.preset + "/tokenizer/vocab.json");
    src.merges = embedded::find(o.preset + "/tokenizer/merges.txt");
    if (src.vocab && src.merges) return src;
  }
  src.dir = o.tokenizer_dir.empty() ? default_clip_vocab_dir() : o.tokenizer_dir;
  for (const char* name : {"vocab.json", "merges.txt"}) {
    if (!fs::exists(src.dir / name)) {
      throw Error((src.dir / name).string(),
                  "missing: preset '" + o.preset + "' needs a CLIP vocabulary (vocab.json + merges.txt); "
                  "scripts/setup.sh makes the full one, or pass --tokenizer DIR");
    }
  }
  return src;
}

void write_tokenizer(const TokenizerSource& src, const fs::path& dir) {
  fs::create_directories(dir);
  if (src.dir.empty()) {
    io::write_file_atomic(dir / "vocab.json", std::string(*src.vocab));
    io::write_file_atomic(dir / "merges.txt", std::string(*src.merges));
  } else {
    for (const char* name : {"vocab.json", "merges.txt"}) {
      fs::copy_file(src.dir / name, dir / name, fs::copy_options::overwrite_existing);
    }
  }
  // SD1.5's tokenizer folder: pad = eos = unk = <|endoftext|>, 77 tokens.
  const std::string bos = "<|startoftext|>", eos = "<|endoftext|>";
  write_json(dir / "special_tokens_map.json",
             {{"bos_token", bos}, {"eos_token", eos}, {"pad_token", eos}, {"unk_token", eos}});
  write_json(dir / "tokenizer_config.json",
             {{"add_prefix_space", false}, {"bos_token", bos}, {"do_lower_case", true}, {"eos_token", eos},
              {"errors", "replace"}, {"model_max_length", 77}, {"pad_token", eos},
              {"tokenizer_class", "CLIPTokenizer"}, {"unk_token", eos}});
}

}  // namespace

std::vector<std::string> preset_names() {
  std::set<std::string> names;
  for (const auto& f : embedded::all_files()) {
    const std::string path = f.path;
    names.insert(path.substr(0, path.find('/')));
  }
  return {names.begin(), names.end()};
}

fs::path default_clip_vocab_dir() {
  if (const char* env = std::getenv("LISADIFF_CLIP_VOCAB"); env && *env) return env;
  if (const char* cache = std::getenv("LISADIFF_CACHE_DIR"); cache && *cache) return fs::path(cache) / "clip-vocab";
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/tmp") / ".cache" / "lisadiff" / "clip-vocab";
}

void init_pipeline(const InitPipelineOptions& o) {
  const auto presets = preset_names();
  if (std::find(presets.begin(), presets.end(), o.preset) == presets.end()) {
    throw Error("unknown preset '" + o.preset + "' (known: " + fmt::format("{}", fmt::join(presets, ", ")) + ")");
  }
  if (o.out.empty()) throw Error("init-pipeline needs an output folder");
  if (!o.config_dir.empty() && !fs::is_directory(o.config_dir)) throw Error(o.config_dir.string(), "not a folder");
  if (fs::exists(o.out) && !o.overwrite) throw Error(o.out.string(), "exists already (pass --overwrite to replace it)");

  // Parse and validate everything before writing anything.
  const auto unet_src = read_config(o, kUnetConfig);
  auto unet_cfg = config::UNet2DConditionConfig::from_json(unet_src.json, unet_src.name);
  unet_cfg.validate(unet_src.name);
  const auto vae_src = read_config(o, kVaeConfig);
  auto vae_cfg = config::AutoencoderKLConfig::from_json(vae_src.json, vae_src.name);
  vae_cfg.validate(vae_src.name);
  const auto text_src = read_config(o, kTextConfig);
  auto text_cfg = config::CLIPTextConfig::from_json(text_src.json, text_src.name);
  text_cfg.validate(text_src.name);
  const auto sched_src = read_config(o, kSchedulerConfig);
  const auto sched_cfg = config::SchedulerConfig::from_json(sched_src.json, sched_src.name);
  const auto tokenizer = tokenizer_source(o);

  const fs::path out = fs::absolute(o.out);
  const fs::path tmp = out.parent_path() / ("." + out.filename().string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    {
      torch::manual_seed(o.seed);
      models::UNet2DConditionModel unet(unet_cfg);
      write_json(tmp / kUnetConfig, with_header(unet_cfg.to_json(), "UNet2DConditionModel"));
      models::save_parameters(*unet, tmp / "unet" / "diffusion_pytorch_model.safetensors");
      spdlog::info("unet: {} tensors, seed {}", unet->named_parameters().size(), o.seed);
    }
    {
      torch::manual_seed(o.seed + 1);
      models::AutoencoderKL vae(vae_cfg);
      write_json(tmp / kVaeConfig, with_header(vae_cfg.to_json(), "AutoencoderKL"));
      models::save_parameters(*vae, tmp / "vae" / "diffusion_pytorch_model.safetensors");
      spdlog::info("vae: {} tensors, seed {}", vae->named_parameters().size(), o.seed + 1);
    }
    {
      torch::manual_seed(o.seed + 2);
      models::CLIPTextModel text(text_cfg);
      models::init_clip_text_weights(*text);
      auto json = text_cfg.to_json();
      json["transformers_version"] = kTransformersVersion;
      write_json(tmp / kTextConfig, json);
      models::save_parameters(*text, tmp / "text_encoder" / "model.safetensors");
      spdlog::info("text_encoder: {} tensors, seed {}", text->named_parameters().size(), o.seed + 2);
    }
    write_tokenizer(tokenizer, tmp / "tokenizer");
    write_json(tmp / kSchedulerConfig, with_header(sched_cfg.to_json(), sched_cfg.class_name));
    const Json none = Json::array({nullptr, nullptr});
    write_json(tmp / "model_index.json",
               {{"_class_name", "StableDiffusionPipeline"},
                {"_diffusers_version", models::kDiffusersFormatVersion},
                {"feature_extractor", none},
                {"image_encoder", none},
                {"requires_safety_checker", false},
                {"safety_checker", none},
                {"scheduler", {"diffusers", sched_cfg.class_name}},
                {"text_encoder", {"transformers", "CLIPTextModel"}},
                {"tokenizer", {"transformers", "CLIPTokenizer"}},
                {"unet", {"diffusers", "UNet2DConditionModel"}},
                {"vae", {"diffusers", "AutoencoderKL"}}});
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
}

}  // namespace lisadiff::tools
