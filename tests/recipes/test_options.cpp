// The recipes' option layer (recipes/options.h): argparse's semantics for the scripts' flags,
// --config files under the command line, the Python/Hub flags, usage errors with the nearest
// flag, and --help grouped by concern.
#include <gtest/gtest.h>

#include "recipes/options.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using recipes::FlagTable;
using recipes::FlagType;
using recipes::Handling;
using recipes::UsageError;
using testing::TempDir;

FlagTable table() {
  FlagTable t("recipe", "a test recipe");
  t.add("Model", "pretrained_model_name_or_path", FlagType::kString, nullptr, "the base pipeline").required = true;
  t.add("Training", "learning_rate", FlagType::kFloat, 1e-4, "base lr");
  t.add("Training", "train_batch_size", FlagType::kInt, 16, "batch");
  t.add("Training", "max_train_steps", FlagType::kInt, nullptr, "total steps");
  t.add("Training", "use_ema", FlagType::kSwitch, false, "keep an EMA");
  t.add("Training", "mixed_precision", FlagType::kString, nullptr, "autocast").choices = {"no", "fp16", "bf16"};
  t.add("Method", "lora_target_modules", FlagType::kList, config::Json::array({"to_q", "to_k"}), "modules");
  t.add("Python", "enable_xformers_memory_efficient_attention", FlagType::kSwitch, false, "xformers");
  t.set_handling("enable_xformers_memory_efficient_attention", Handling::kNote,
                 "no effect: attention always runs through scaled_dot_product_attention");
  t.add("Python", "push_to_hub", FlagType::kSwitch, false, "upload");
  t.set_handling("push_to_hub", Handling::kRefuse, "lisadiff does not upload; copy output_dir yourself");
  return t;
}

TEST(Options, ArgparseSemantics) {
  const auto t = table();
  const auto p = t.parse({"--pretrained_model_name_or_path=/m", "--learning_rate", "5e-05", "--use_ema",
                          "--train_batch_size=2", "--train_batch_size", "4", "--lora_target_modules", "to_q, to_v",
                          "--mixed_precision", "fp16"});
  EXPECT_EQ(p.values.at("pretrained_model_name_or_path"), "/m");
  EXPECT_DOUBLE_EQ(p.values.at("learning_rate").get<double>(), 5e-5);
  EXPECT_EQ(p.values.at("use_ema"), true);
  EXPECT_EQ(p.values.at("train_batch_size"), 4);  // the last one given wins
  EXPECT_EQ(p.values.at("lora_target_modules"), config::Json::array({"to_q", "to_v"}));
  EXPECT_FALSE(p.values.contains("max_train_steps"));  // only what was given
  EXPECT_FALSE(p.help);
  EXPECT_TRUE(t.parse({"--pretrained_model_name_or_path", "m", "-h"}).help);
  EXPECT_TRUE(t.parse({"--help", "--no_such_flag"}).help);  // help wins over other problems
}

TEST(Options, ConfigFileUnderTheCommandLine) {
  TempDir tmp;
  testing::write_file(tmp / "c.json", R"({"_comment": "ignored", "pretrained_model_name_or_path": "/base",
    "learning_rate": 2e-5, "train_batch_size": 8, "max_train_steps": null, "use_ema": true,
    "lora_target_modules": ["to_out.0"]})");
  const auto t = table();
  auto p = t.parse({"--config", (tmp / "c.json").string(), "--train_batch_size", "3"});
  EXPECT_EQ(p.values.at("pretrained_model_name_or_path"), "/base");
  EXPECT_DOUBLE_EQ(p.values.at("learning_rate").get<double>(), 2e-5);
  EXPECT_EQ(p.values.at("train_batch_size"), 3);
  EXPECT_TRUE(p.values.at("max_train_steps").is_null());
  EXPECT_EQ(p.values.at("lora_target_modules"), config::Json::array({"to_out.0"}));
  EXPECT_EQ(p.origin("learning_rate"), (tmp / "c.json").string() + ": key 'learning_rate'");
  EXPECT_EQ(p.origin("train_batch_size"), "--train_batch_size");
  // The config file supplies a required flag; its problems name the file and the key.
  testing::write_file(tmp / "typo.json", R"({"learning_rat": 1})");
  EXPECT_THROW_WITH(t.parse({"--config", (tmp / "typo.json").string(), "--pretrained_model_name_or_path", "m"}),
                    "typo.json: key 'learning_rat'", "not a flag", "did you mean 'learning_rate'");
  testing::write_file(tmp / "type.json", R"({"train_batch_size": 2.5})");
  EXPECT_THROW_WITH(t.parse({"--config", (tmp / "type.json").string()}), "type.json: key 'train_batch_size'",
                    "expected an integer");
  testing::write_file(tmp / "null.json", R"({"learning_rate": null})");
  EXPECT_THROW_WITH(t.parse({"--config", (tmp / "null.json").string()}), "null is only allowed");
  testing::write_file(tmp / "list.json", R"({"lora_target_modules": [1]})");
  EXPECT_THROW_WITH(t.parse({"--config", (tmp / "list.json").string()}), "expected a list of strings");
  testing::write_file(tmp / "bad.json", "{");
  try {
    t.parse({"--config", (tmp / "bad.json").string()});
    ADD_FAILURE() << "no error for a config that is not JSON";
  } catch (const UsageError&) {
    ADD_FAILURE() << "a config that cannot be read is an input error (exit 1), not a usage error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos);
  }
}

TEST(Options, UsageErrorsNameTheFlag) {
  const auto t = table();
  const std::vector<std::string> base = {"--pretrained_model_name_or_path", "m"};
  const auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), base.begin(), base.end());
    return more;
  };
  EXPECT_THROW_WITH(t.parse(with({"--lerning_rate", "1"})), "unknown flag '--lerning_rate'",
                    "did you mean --learning_rate?");
  EXPECT_THROW_WITH(t.parse(with({"--learning", "1"})), "did you mean --learning_rate?");
  EXPECT_THROW_WITH(t.parse(with({"--train_batch_size", "two"})), "--train_batch_size: 'two' is not an integer");
  EXPECT_THROW_WITH(t.parse(with({"--train_batch_size", "2.5"})), "is not an integer");
  EXPECT_THROW_WITH(t.parse(with({"--learning_rate", "fast"})), "--learning_rate: 'fast' is not a number");
  EXPECT_THROW_WITH(t.parse(with({"--mixed_precision", "fp8"})), "--mixed_precision: 'fp8' is not one of no, fp16, bf16");
  EXPECT_THROW_WITH(t.parse(with({"stray"})), "unexpected argument 'stray'");
  EXPECT_THROW_WITH(t.parse({"--learning_rate", "1"}), "--pretrained_model_name_or_path is required");
  EXPECT_THROW_WITH(t.parse(with({"--push_to_hub"})), "--push_to_hub: not supported", "copy output_dir");
  EXPECT_THROW_WITH(t.parse(with({"--learning_rate"})), "learning_rate");
}

TEST(Options, PythonWorldFlagsGiveOneNote) {
  const auto t = table();
  const auto p = t.parse({"--pretrained_model_name_or_path", "m", "--enable_xformers_memory_efficient_attention"});
  ASSERT_EQ(p.notes.size(), 1u);
  EXPECT_NE(p.notes[0].find("--enable_xformers_memory_efficient_attention: no effect"), std::string::npos);
  EXPECT_TRUE(t.parse({"--pretrained_model_name_or_path", "m"}).notes.empty());
}

TEST(Options, HelpIsGroupedWithDefaults) {
  const auto help = table().help();
  for (const char* text : {"Model", "Training", "Method", "Python", "--learning_rate", "0.0001", "--lora_target_modules",
                           "to_q,to_k", "(no, fp16, bf16)", "[required]", "--config", "lisadiff: no effect"}) {
    EXPECT_NE(help.find(text), std::string::npos) << "help lacks '" << text << "':\n" << help;
  }
  EXPECT_LT(help.find("Model"), help.find("Training"));
}

TEST(Options, DefaultsJsonHoldsEveryFlag) {
  const auto d = table().defaults_json();
  EXPECT_EQ(d.size(), table().flags().size());
  EXPECT_EQ(d.at("use_ema"), false);
  EXPECT_TRUE(d.at("max_train_steps").is_null());
  EXPECT_THROW_WITH(table().add("X", "learning_rate", FlagType::kFloat, 1.0, "again"), "defined twice");
}

}  // namespace
}  // namespace lisadiff
