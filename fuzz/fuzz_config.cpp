// Fuzz target: every config parser. The first byte picks the parser, the rest is the file:
//   0 unet/config.json (UNet2DConditionConfig)     1 vae/config.json (AutoencoderKLConfig)
//   2 text_encoder/config.json (CLIPTextConfig)     3 scheduler/scheduler_config.json
//   4 model_index.json (PipelineIndex)              5 a recipe's --config FILE.json (the
//   shared flag table) and the dataset keys it holds (DataOptions::read + validate)
#include <cstdint>
#include <string>
#include <string_view>

#include "config/clip_text_config.h"
#include "config/json_fields.h"
#include "config/pipeline_index.h"
#include "config/scheduler_config.h"
#include "config/unet_config.h"
#include "config/vae_config.h"
#include "data/dataset.h"
#include "fuzz_util.h"
#include "recipes/options.h"
#include "recipes/shared_flags.h"

using namespace lisadiff;

namespace {

const recipes::FlagTable& recipe_table() {
  static const recipes::FlagTable table = [] {
    recipes::FlagTable t("fuzz_recipe", "the flags every recipe shares");
    recipes::add_model_flags(t);
    recipes::add_folder_dataset_flags(t);
    recipes::add_training_flags(t);
    recipes::add_method_flags(t, "lisa");
    recipes::add_rank_alias_flag(t);
    return t;
  }();
  return table;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  fuzz::init_quietly();
  const int which = data[0] % 6;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto path = fuzz::write_scratch("config.json", body);
  fuzz::expect_clean("config", [&] {
    switch (which) {
      case 0: (void)config::read_config_file<config::UNet2DConditionConfig>(path); break;
      case 1: (void)config::read_config_file<config::AutoencoderKLConfig>(path); break;
      case 2: (void)config::read_config_file<config::CLIPTextConfig>(path); break;
      case 3: (void)config::SchedulerConfig::from_json(config::read_scheduler_json_file(path), path.string()); break;
      case 4: (void)config::read_config_file<config::PipelineIndex>(path); break;
      default: {
        const auto& table = recipe_table();
        const auto parsed = table.parse({"--config", path.string(), "--method", "lisa"});
        config::Json values = recipes::recipe_values(table, parsed);
        config::FieldReader reader(values, path.string());
        auto options = data::DataOptions::for_recipe(data::ExampleKind::kT2i);
        options.read(reader);
        options.validate(path.string());
        break;
      }
    }
  });
  return 0;
}
