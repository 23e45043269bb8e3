// Every flag of the diffusers scripts the recipes follow keeps its name, type and default in
// the recipe executable's table. The scripts' flags come from their own argparse parsers
// (tests/fixtures/recipes/<script>.flags.json, written by scripts/make_script_flags.py from a
// diffusers checkout); a deliberate difference is listed here with its reason.
#include <gtest/gtest.h>

#include <map>

#include "recipes/diffusion_dpo.h"
#include "recipes/instruct_pix2pix.h"
#include "recipes/lcm_distill.h"
#include "recipes/text_to_image.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using recipes::FlagType;

const char* kind_name(FlagType t) {
  switch (t) {
    case FlagType::kSwitch: return "switch";
    case FlagType::kInt: return "int";
    case FlagType::kFloat: return "float";
    case FlagType::kString: return "string";
    case FlagType::kList: return "list";
    case FlagType::kStrings: return "list";
  }
  return "?";
}

// Defaults compared as the JSON values argparse gives: numbers by value, the rest exactly.
bool same_default(const nlohmann::json& ours, const nlohmann::json& script) {
  if (ours.is_number() && script.is_number()) return ours.get<double>() == script.get<double>();
  return ours == script;
}

void expect_table_keeps_script_flags(const recipes::FlagTable& table, const std::string& fixture,
                                     const std::map<std::string, std::string>& deliberate) {
  const auto doc = testing::read_json(testing::fixtures_dir() / "recipes" / fixture);
  int checked = 0;
  for (const auto& f : doc.at("flags")) {
    const auto name = f.at("name").get<std::string>();
    SCOPED_TRACE(fixture + ": --" + name);
    const auto* ours = table.find(name);
    ASSERT_NE(ours, nullptr) << "the script's flag is missing";
    if (deliberate.count(name)) continue;
    ++checked;
    EXPECT_EQ(kind_name(ours->type), f.at("kind").get<std::string>());
    const auto our_default = table.defaults_json().at(name);
    EXPECT_TRUE(same_default(our_default, f.at("default"))) << "ours " << our_default.dump() << ", the script's "
                                                            << f.at("default").dump();
    if (!f.at("choices").is_null() && !ours->choices.empty()) {
      for (const auto& c : f.at("choices")) {
        EXPECT_NE(std::find(ours->choices.begin(), ours->choices.end(), c.get<std::string>()), ours->choices.end())
            << "choice " << c;
      }
    }
    EXPECT_EQ(ours->required, f.at("required").get<bool>());
  }
  EXPECT_GT(checked, 40);
  for (const auto& [name, why] : deliberate) {
    bool in_script = false;
    for (const auto& f : doc.at("flags")) in_script |= f.at("name") == name;
    EXPECT_TRUE(in_script) << "--" << name << " is listed as a deliberate difference but the script has no such flag";
  }
}

TEST(ScriptFlags, InstructPix2PixKeepsEveryFlagOfTheScript) {
  expect_table_keeps_script_flags(recipes::instruct_pix2pix_flags(), "train_instruct_pix2pix.flags.json", {});
}

TEST(ScriptFlags, DiffusionDpoKeepsEveryFlagOfTheScript) {
  expect_table_keeps_script_flags(recipes::diffusion_dpo_flags(), "train_diffusion_dpo.flags.json", {});
}

TEST(ScriptFlags, LcmDistillKeepsEveryFlagOfTheScript) {
  expect_table_keeps_script_flags(recipes::lcm_distill_flags(), "train_lcm_distill_sd_wds.flags.json", {});
}

TEST(ScriptFlags, TextToImageKeepsEveryFlagOfTheScript) {
  expect_table_keeps_script_flags(recipes::text_to_image_flags(), "train_text_to_image.flags.json", {});
}

// nargs="+": every argument up to the next flag is one value, commas kept; a config file may
// give a list or one string.
TEST(ScriptFlags, ValidationPromptsTakeSeveralArguments) {
  const auto table = recipes::text_to_image_flags();
  const auto parsed = table.parse(std::vector<std::string>{"--pretrained_model_name_or_path", "sd", "--validation_prompts",
                                                           "a cat", "a dog, at night", "--resolution", "64"});
  EXPECT_EQ(parsed.values.at("validation_prompts"), config::Json::array({"a cat", "a dog, at night"}));
  EXPECT_EQ(parsed.values.at("resolution"), 64);
  EXPECT_EQ(table.parse(std::vector<std::string>{"--pretrained_model_name_or_path", "sd", "--validation_prompts=one, two"})
                .values.at("validation_prompts"),
            config::Json::array({"one, two"}));
  EXPECT_THROW(table.parse(std::vector<std::string>{"--pretrained_model_name_or_path", "sd", "--validation_prompts",
                                                    "--resolution", "64"}),
               recipes::UsageError);
}

// The LISA-diffusion README's LCM command parses as written (the model and the shards named
// as local paths), with one note per flag that has no effect here.
TEST(ScriptFlags, TheReadmeLcmCommandParses) {
  const auto parsed = recipes::lcm_distill_flags().parse(
      {"--pretrained_teacher_model=/models/sd15", "--output_dir=./lcm_distill_sd_lisa", "--mixed_precision=no",
       "--resolution=512", "--learning_rate=1e-5", "--loss_type=huber", "--ema_decay=0.95", "--adam_weight_decay=0.0",
       "--max_train_steps=1000", "--max_train_samples=4000000", "--dataloader_num_workers=8",
       "--train_shards_path_or_url=pipe:cat /data/cc12m/{00000..01099}.tar", "--validation_steps=200",
       "--checkpointing_steps=200", "--checkpoints_total_limit=10", "--train_batch_size=8", "--gradient_checkpointing",
       "--enable_xformers_memory_efficient_attention", "--gradient_accumulation_steps=2", "--use_8bit_adam",
       "--resume_from_checkpoint=latest", "--report_to=wandb", "--seed=453645634"});
  EXPECT_EQ(parsed.values.at("loss_type"), "huber");
  EXPECT_EQ(parsed.values.at("train_shards_path_or_url"), "pipe:cat /data/cc12m/{00000..01099}.tar");
  EXPECT_EQ(parsed.values.at("seed"), 453645634);
  ASSERT_EQ(parsed.notes.size(), 1u);
  EXPECT_NE(parsed.notes[0].find("enable_xformers_memory_efficient_attention"), std::string::npos);
}

}  // namespace
}  // namespace lisadiff
