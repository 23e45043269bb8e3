// The bad-input matrix (docs/hardening.md): every executable (the lisadiff subcommands and the
// four recipe apps) given a wrong flag, config, pipeline folder, weight file, dataset or
// checkpoint. Each case asserts
//   - the exit code: 2 for a usage mistake (a flag, a config key or value), 1 for bad input;
//   - exactly one error line ("error: ..." or "<app>: error: ..."), and that it names the
//     flag or file and the problem (the case's substrings);
//   - that nothing was written over: every file that existed before the run (the case's own
//     folder and the shared pipeline, datasets and runs) has the same bytes after it.
// LISADIFF_BAD_INPUT_TABLE=FILE writes the table of cases as Markdown (docs/hardening.md).
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>

#include "io/safetensors.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string bin(const std::string& name) { return (fs::path(testing::cli_path()).parent_path() / name).string(); }
std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

fs::path micro_sd() { return testing::fixtures_dir() / "pipelines/micro-sd"; }
fs::path ip2p_micro() { return testing::fixtures_dir() / "pipelines/ip2p-micro"; }
fs::path lcm_micro() { return testing::fixtures_dir() / "pipelines/lcm-micro"; }

// What the cases share: datasets and finished runs with checkpoints, made once.
struct Shared {
  TempDir tmp;
  fs::path t2i, ip2p, dpo, wds;  // datasets
  fs::path lisa_run, lora_run, dpo_run;  // output folders, each with checkpoint-1 and checkpoint-2
};

Shared* shared = nullptr;

fs::path make_data(const fs::path& dir, const std::string& kind, const std::string& format = "folder") {
  tools::MakeDatasetOptions m;
  m.kind = kind;
  m.format = format;
  m.n = 6;
  m.size = 32;
  m.out = dir;
  tools::make_dataset(m);
  return dir;
}

std::string t2i_base(const fs::path& data, const fs::path& out) {
  return bin("text_to_image") + " --pretrained_model_name_or_path " + q(micro_sd()) + " --train_data_dir " + q(data) +
         " --resolution 32 --train_batch_size 2 --max_train_steps 2 --seed 0 --output_dir " + q(out);
}

std::string dpo_base(const fs::path& data, const fs::path& out) {
  return bin("diffusion_dpo") + " --pretrained_model_name_or_path " + q(micro_sd()) + " --dataset_name " + q(data) +
         " --resolution 32 --train_batch_size 2 --max_train_steps 2 --seed 0 --output_dir " + q(out);
}

std::string ip2p_base(const fs::path& data, const fs::path& out) {
  return bin("instruct_pix2pix") + " --pretrained_model_name_or_path " + q(ip2p_micro()) + " --train_data_dir " +
         q(data) + " --resolution 32 --train_batch_size 2 --max_train_steps 2 --seed 0 --output_dir " + q(out);
}

std::string lcm_base(const fs::path& shards, const fs::path& out) {
  return bin("lcm_distill") + " --pretrained_teacher_model " + q(micro_sd()) + " --train_shards_path_or_url " +
         q(shards) + " --resolution 32 --train_batch_size 2 --max_train_steps 2 --seed 0 --output_dir " + q(out);
}

void run_ok(const std::string& command) {
  const auto [rc, log] = testing::run_command(command + " 2>&1");
  ASSERT_EQ(rc, 0) << command << "\n" << log;
}

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::create_directories(to.parent_path());
  fs::copy(from, to, fs::copy_options::recursive);
}

void truncate_half(const fs::path& file) {
  const auto bytes = testing::read_file(file);
  testing::write_file(file, bytes.substr(0, bytes.size() / 2));
}

// Rewrites a safetensors file (its metadata kept) with `edit(name, tensor)` of each tensor.
void rewrite_tensors(const fs::path& file,
                     const std::function<torch::Tensor(const std::string&, const torch::Tensor&)>& edit) {
  io::NamedTensors tensors;
  std::map<std::string, std::string> metadata;
  {
    io::SafetensorsReader r(file);
    metadata = r.metadata();
    for (const auto& e : r.entries()) tensors.emplace_back(e.name, edit(e.name, r.tensor(e.name).clone()));
  }
  io::write_safetensors(file, tensors, metadata);
}

// A case: `make(dir)` prepares what it needs under `dir` and returns the command.
struct Case {
  std::string name;
  std::string input;  // what is wrong, for the table
  int rc;
  std::vector<std::string> expect;  // substrings of the one error line
  std::function<std::string(const fs::path& dir)> make;
};

std::vector<Case> cases() {
  const std::string L = bin("lisadiff");
  std::vector<Case> c;
  // ---- lisadiff: the command line
  c.push_back({"lisadiff_no_subcommand", "`lisadiff` alone", 2, {"subcommand"}, [=](auto&) { return L; }});
  c.push_back({"lisadiff_unknown_subcommand", "`lisadiff frobnicate`", 2, {"frobnicate"},
               [=](auto&) { return L + " frobnicate"; }});
  c.push_back({"lisadiff_bad_log_level", "`--log-level loud`", 2, {"--log-level", "loud"},
               [=](auto&) { return L + " --log-level loud inspect " + q(micro_sd()); }});
  c.push_back({"generate_unknown_flag", "`generate PIPE --bogus`", 2, {"--bogus"},
               [=](auto& d) { return L + " generate " + q(micro_sd()) + " --bogus --out " + q(d / "gen"); }});
  c.push_back({"generate_height_not_multiple_of_8", "`generate --height 30`", 2, {"--height", "30"}, [=](auto& d) {
                 return L + " generate " + q(micro_sd()) + " --prompt x --steps 1 --height 30 --out " + q(d / "gen");
               }});
  c.push_back({"make_dataset_unknown_kind", "`make-dataset --kind bogus`", 2, {"--kind", "bogus"}, [=](auto& d) {
                 return L + " make-dataset --kind bogus --format folder --n 2 --out " + q(d / "data");
               }});
  c.push_back({"make_dataset_zero_examples", "`make-dataset --n 0`", 2, {"--n", "0"}, [=](auto& d) {
                 return L + " make-dataset --kind t2i --format folder --n 0 --out " + q(d / "data");
               }});
  c.push_back({"make_dataset_unknown_colour", "`make-dataset --colors teal`", 2, {"--colors", "teal"}, [=](auto& d) {
                 return L + " make-dataset --kind t2i --format folder --n 2 --colors teal --out " + q(d / "data");
               }});
  c.push_back({"init_pipeline_unknown_preset", "`init-pipeline --preset huge`", 2, {"--preset", "huge"},
               [=](auto& d) { return L + " init-pipeline --preset huge --out " + q(d / "p"); }});
  c.push_back({"launch_zero_processes", "`launch --num_processes 0`", 2, {"--num_processes"},
               [=](auto&) { return L + " launch --num_processes 0 true"; }});
  c.push_back({"train_vae_without_data", "`train-vae PIPE` without --train_data_dir", 2, {"--train_data_dir"},
               [=](auto& d) { return L + " train-vae " + q(micro_sd()) + " --out " + q(d / "p"); }});
  // ---- lisadiff: files and folders
  c.push_back({"inspect_missing_path", "a path that does not exist", 1, {"no-such-pipeline", "no such"},
               [=](auto& d) { return L + " inspect " + q(d / "no-such-pipeline"); }});
  c.push_back({"inspect_truncated_weights", "a .safetensors file cut in half", 1, {"unet.safetensors"}, [=](auto& d) {
                 fs::copy_file(micro_sd() / "unet/diffusion_pytorch_model.safetensors", d / "unet.safetensors");
                 truncate_half(d / "unet.safetensors");
                 return L + " inspect " + q(d / "unet.safetensors");
               }});
  c.push_back({"inspect_header_not_json", "a .safetensors header that is not JSON", 1, {"bad.safetensors", "JSON"},
               [=](auto& d) {
                 const std::string header = "{\"a\": [1, 2,,]}";
                 std::string bytes(8, '\0');
                 bytes[0] = static_cast<char>(header.size());
                 testing::write_file(d / "bad.safetensors", bytes + header);
                 return L + " inspect " + q(d / "bad.safetensors");
               }});
  c.push_back({"init_pipeline_onto_a_folder", "`init-pipeline --out` an existing folder", 1, {"keep", "--overwrite"},
               [=](auto& d) {
                 testing::write_file(d / "keep/notes.txt", "mine");
                 return L + " init-pipeline --preset tiny --out " + q(d / "keep");
               }});
  c.push_back({"init_pipeline_config_bad_value", "`init-pipeline --config` a folder whose unet/config.json has "
               "block_out_channels [32, 48] (norm_num_groups 32 does not divide 48)", 1, {"unet", "config.json"}, [=](auto& d) {
                 copy_tree(testing::fixtures_dir() / "configs/tiny-sd", d / "cfg");
                 auto cfg = testing::read_json(d / "cfg/unet/config.json");
                 cfg["block_out_channels"] = {32, 48};
                 testing::write_file(d / "cfg/unet/config.json", cfg.dump(1));
                 return L + " init-pipeline --config " + q(d / "cfg") + " --out " + q(d / "p");
               }});
  c.push_back({"make_dataset_onto_a_folder", "`make-dataset --out` a folder with files", 1, {"data", "--overwrite"},
               [=](auto& d) {
                 testing::write_file(d / "data/metadata.jsonl", "{}\n");
                 return L + " make-dataset --kind t2i --format folder --n 2 --out " + q(d / "data");
               }});
  c.push_back({"plot_run_without_metrics", "`plot` a folder without metrics.jsonl", 1, {"metrics.jsonl"}, [=](auto& d) {
                 fs::create_directories(d / "run");
                 return L + " plot " + q(d / "run");
               }});
  c.push_back({"plot_metrics_without_records", "`plot` a metrics.jsonl with no record", 1, {"metrics.jsonl"},
               [=](auto& d) {
                 testing::write_file(d / "run/metrics.jsonl", "not json\n{\"no\": \"step\"}\n");
                 return L + " plot " + q(d / "run");
               }});
  c.push_back({"generate_pipeline_without_unet", "a pipeline folder without unet/", 1, {"unet"}, [=](auto& d) {
                 copy_tree(micro_sd(), d / "p");
                 fs::remove_all(d / "p/unet");
                 return L + " generate " + q(d / "p") + " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_truncated_unet_weights", "the UNet's weights cut in half", 1,
               {"diffusion_pytorch_model.safetensors"}, [=](auto& d) {
                 copy_tree(micro_sd(), d / "p");
                 truncate_half(d / "p/unet/diffusion_pytorch_model.safetensors");
                 return L + " generate " + q(d / "p") + " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_unet_weights_wrong_shape", "a UNet tensor of the wrong shape", 1,
               {"diffusion_pytorch_model.safetensors", "conv_in.weight"}, [=](auto& d) {
                 copy_tree(micro_sd(), d / "p");
                 rewrite_tensors(d / "p/unet/diffusion_pytorch_model.safetensors",
                                 [](const std::string& name, const torch::Tensor& t) {
                                   return name == "conv_in.weight"
                                              ? torch::zeros({t.size(0), t.size(1) + 1, t.size(2), t.size(3)})
                                              : t;
                                 });
                 return L + " generate " + q(d / "p") + " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_bad_unet_config_value", "unet/config.json with layers_per_block -1", 1,
               {"config.json", "layers_per_block"}, [=](auto& d) {
                 copy_tree(micro_sd(), d / "p");
                 auto cfg = testing::read_json(d / "p/unet/config.json");
                 cfg["layers_per_block"] = -1;
                 testing::write_file(d / "p/unet/config.json", cfg.dump(1));
                 return L + " generate " + q(d / "p") + " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_model_index_not_json", "model_index.json that is not JSON", 1, {"model_index.json"},
               [=](auto& d) {
                 copy_tree(micro_sd(), d / "p");
                 testing::write_file(d / "p/model_index.json", "{\"_class_name\": ");
                 return L + " generate " + q(d / "p") + " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_lora_of_another_model", "`--lora` with tensors that fit no layer", 1, {"wrong.safetensors"},
               [=](auto& d) {
                 io::write_safetensors(d / "wrong.safetensors",
                                       {{"unet.nowhere.lora_A.weight", torch::zeros({4, 8})},
                                        {"unet.nowhere.lora_B.weight", torch::zeros({8, 4})}},
                                       {{"format", "pt"}});
                 return L + " generate " + q(micro_sd()) + " --lora " + q(d / "wrong.safetensors") +
                        " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_corrupt_source_image", "`--image` a PNG cut in half (InstructPix2Pix)", 1, {"source.png"},
               [=](auto& d) {
                 fs::copy_file(testing::fixtures_dir() / "inference/source.png", d / "source.png");
                 truncate_half(d / "source.png");
                 return L + " generate " + q(ip2p_micro()) + " --image " + q(d / "source.png") +
                        " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"generate_out_is_a_full_folder", "`generate --out` a folder with files", 1, {"gen", "--overwrite"},
               [=](auto& d) {
                 testing::write_file(d / "gen/images.jsonl", "{}\n");
                 return L + " generate " + q(micro_sd()) + " --prompt x --steps 1 --out " + q(d / "gen");
               }});
  c.push_back({"score_missing_folder", "`score` a folder that does not exist", 1, {"nothing-here"},
               [=](auto& d) { return L + " score " + q(d / "nothing-here"); }});
  c.push_back({"score_corrupt_image", "`score` a dataset whose image is not an image", 1, {"0000"}, [=](auto& d) {
                 copy_tree(shared->t2i, d / "data");
                 for (const auto& e : fs::recursive_directory_iterator(d / "data")) {
                   if (e.path().extension() == ".png") testing::write_file(e.path(), "not a png");
                 }
                 return L + " score " + q(d / "data");
               }});
  c.push_back({"eval_loss_missing_data", "`eval-loss --data` a folder that does not exist", 1, {"held-out"},
               [=](auto& d) { return L + " eval-loss " + q(micro_sd()) + " --data " + q(d / "held-out"); }});
  c.push_back({"eval_loss_lora_of_another_run", "`eval-loss --lora` a file that is no LoRA", 1, {"weights.safetensors"},
               [=](auto& d) {
                 io::write_safetensors(d / "weights.safetensors", {{"x", torch::zeros({2})}}, {{"format", "pt"}});
                 return L + " eval-loss " + q(micro_sd()) + " --data " + q(shared->t2i) + " --lora " +
                        q(d / "weights.safetensors");
               }});
  c.push_back({"train_vae_out_onto_a_folder", "`train-vae --out` an existing folder", 1, {"p", "--overwrite"},
               [=](auto& d) {
                 testing::write_file(d / "p/notes.txt", "mine");
                 return L + " train-vae " + q(micro_sd()) + " --train_data_dir " + q(shared->t2i) + " --out " +
                        q(d / "p") + " --max_train_steps 1";
               }});
  // ---- recipes: flags and configs
  c.push_back({"t2i_unknown_flag", "`--learning_rat` (a typo)", 2, {"--learning_rat", "--learning_rate"},
               [=](auto& d) { return t2i_base(shared->t2i, d / "out") + " --learning_rat 1e-4"; }});
  c.push_back({"t2i_flag_wrong_type", "`--learning_rate fast`", 2, {"--learning_rate", "fast"},
               [=](auto& d) { return t2i_base(shared->t2i, d / "out") + " --learning_rate fast"; }});
  c.push_back({"t2i_flag_bad_choice", "`--lr_scheduler sometimes`", 2, {"--lr_scheduler", "sometimes"},
               [=](auto& d) { return t2i_base(shared->t2i, d / "out") + " --lr_scheduler sometimes"; }});
  c.push_back({"t2i_mixed_precision_fp8", "`--mixed_precision fp8`", 2, {"--mixed_precision", "fp8"},
               [=](auto& d) { return t2i_base(shared->t2i, d / "out") + " --mixed_precision fp8"; }});
  c.push_back({"t2i_zero_batch", "`--train_batch_size 0`", 2, {"train_batch_size"},
               [=](auto& d) { return t2i_base(shared->t2i, d / "out") + " --train_batch_size 0"; }});
  c.push_back({"t2i_no_model", "no --pretrained_model_name_or_path", 2, {"--pretrained_model_name_or_path"},
               [=](auto& d) {
                 return bin("text_to_image") + " --train_data_dir " + q(shared->t2i) + " --output_dir " + q(d / "out");
               }});
  c.push_back({"t2i_config_missing", "`--config` a file that does not exist", 1, {"missing.json"},
               [=](auto& d) { return t2i_base(shared->t2i, d / "out") + " --config " + q(d / "missing.json"); }});
  c.push_back({"t2i_config_not_json", "`--config` a file that is not JSON", 1, {"cfg.json"}, [=](auto& d) {
                 testing::write_file(d / "cfg.json", "{\"learning_rate\": 1e-4,");
                 return t2i_base(shared->t2i, d / "out") + " --config " + q(d / "cfg.json");
               }});
  c.push_back({"t2i_config_unknown_key", "a config key that is no flag", 2, {"cfg.json", "lerning_rate"},
               [=](auto& d) {
                 testing::write_file(d / "cfg.json", "{\"lerning_rate\": 1e-4}");
                 return t2i_base(shared->t2i, d / "out") + " --config " + q(d / "cfg.json");
               }});
  c.push_back({"t2i_config_wrong_type", "a config value of the wrong type", 2, {"cfg.json", "train_batch_size"},
               [=](auto& d) {
                 testing::write_file(d / "cfg.json", "{\"train_batch_size\": \"two\"}");
                 return t2i_base(shared->t2i, d / "out") + " --config " + q(d / "cfg.json");
               }});
  c.push_back({"ip2p_unknown_flag", "instruct_pix2pix `--edit_prompt_colum`", 2, {"--edit_prompt_colum"},
               [=](auto& d) { return ip2p_base(shared->ip2p, d / "out") + " --edit_prompt_colum x"; }});
  c.push_back({"dpo_beta_not_a_number", "diffusion_dpo `--beta_dpo high`", 2, {"--beta_dpo", "high"},
               [=](auto& d) { return dpo_base(shared->dpo, d / "out") + " --beta_dpo high"; }});
  c.push_back({"lcm_zero_ddim_timesteps", "lcm_distill `--num_ddim_timesteps 0`", 2, {"num_ddim_timesteps"},
               [=](auto& d) { return lcm_base(shared->wds, d / "out") + " --num_ddim_timesteps 0"; }});
  c.push_back({"lcm_no_teacher", "lcm_distill without --pretrained_teacher_model", 2, {"--pretrained_teacher_model"},
               [=](auto& d) {
                 return bin("lcm_distill") + " --train_shards_path_or_url " + q(shared->wds) + " --output_dir " +
                        q(d / "out");
               }});
  // ---- recipes: pipeline folders and datasets
  c.push_back({"t2i_model_missing", "a pipeline folder that does not exist", 2,
               {"--pretrained_model_name_or_path", "no-model"}, [=](auto& d) {
                 return bin("text_to_image") + " --pretrained_model_name_or_path " + q(d / "no-model") +
                        " --train_data_dir " + q(shared->t2i) + " --output_dir " + q(d / "out");
               }});
  c.push_back({"t2i_model_truncated_text_encoder", "the text encoder's weights cut in half", 1, {"text_encoder"},
               [=](auto& d) {
                 copy_tree(micro_sd(), d / "p");
                 for (const auto& e : fs::directory_iterator(d / "p/text_encoder")) {
                   if (e.path().extension() == ".safetensors") truncate_half(e.path());
                 }
                 return bin("text_to_image") + " --pretrained_model_name_or_path " + q(d / "p") + " --train_data_dir " +
                        q(shared->t2i) + " --resolution 32 --max_train_steps 1 --output_dir " + q(d / "out");
               }});
  c.push_back({"t2i_data_missing", "`--train_data_dir` a folder that does not exist", 1, {"no-data"},
               [=](auto& d) { return t2i_base(d / "no-data", d / "out"); }});
  c.push_back({"t2i_data_without_metadata", "an image folder without metadata.jsonl", 1, {"metadata.jsonl"},
               [=](auto& d) {
                 copy_tree(shared->t2i, d / "data");
                 fs::remove(d / "data/metadata.jsonl");
                 return t2i_base(d / "data", d / "out");
               }});
  c.push_back({"t2i_data_corrupt_images", "a dataset whose images are all corrupt", 1, {"data"}, [=](auto& d) {
                 copy_tree(shared->t2i, d / "data");
                 for (const auto& e : fs::recursive_directory_iterator(d / "data")) {
                   if (e.path().extension() == ".png") truncate_half(e.path());
                 }
                 return t2i_base(d / "data", d / "out");
               }});
  c.push_back({"t2i_data_of_another_kind", "text_to_image given an InstructPix2Pix dataset", 1, {"ip2p", "text"},
               [=](auto& d) { return t2i_base(shared->ip2p, d / "out"); }});
  c.push_back({"ip2p_data_of_another_kind", "instruct_pix2pix given a text-to-image dataset", 1, {"t2i", "edit_prompt"},
               [=](auto& d) { return ip2p_base(shared->t2i, d / "out"); }});
  c.push_back({"dpo_data_of_another_kind", "diffusion_dpo given a text-to-image dataset", 1, {"t2i", "caption"},
               [=](auto& d) { return dpo_base(shared->t2i, d / "out"); }});
  c.push_back({"lcm_corrupt_shard", "lcm_distill given a tar shard that is not a tar", 1, {"shard-000000.tar"},
               [=](auto& d) {
                 testing::write_file(d / "shards/shard-000000.tar", std::string(4096, 'x'));
                 return lcm_base(d / "shards/shard-000000.tar", d / "out");
               }});
  c.push_back({"t2i_output_dir_is_a_file", "`--output_dir` names a file", 1, {"out"}, [=](auto& d) {
                 testing::write_file(d / "out", "a file");
                 return t2i_base(shared->t2i, d / "out");
               }});
  // ---- recipes: checkpoints from another run, another method, or edited
  // `run` names one of the shared runs (made when the case runs, not when it is listed).
  const auto resume = [](fs::path Shared::*run, const std::function<void(const fs::path&)>& edit,
                         const std::string& extra = "") {
    return [=](const fs::path& d) {
      copy_tree(shared->*run, d / "out");
      edit(d / "out/checkpoint-2");
      // The runs were made with --lisa_interval 2 (a later flag overrides an earlier one).
      return t2i_base(shared->t2i, d / "out") + " --max_train_steps 3 --lisa_interval 2 --resume_from_checkpoint latest" +
             extra;
    };
  };
  c.push_back({"resume_lora_checkpoint_in_a_lisa_run", "a LoRA run's checkpoint resumed with --method lisa", 1,
               {"training_state.json", "lora run"}, resume(&Shared::lora_run, [](auto&) {}, " --method lisa")});
  c.push_back({"resume_dpo_checkpoint_in_text_to_image", "a diffusion_dpo checkpoint resumed by text_to_image", 1,
               {"training_state.json", "diffusion_dpo run"}, resume(&Shared::dpo_run, [](auto&) {})});
  c.push_back({"resume_other_accumulation", "resumed with another --gradient_accumulation_steps", 1,
               {"training_state.json", "gradient_accumulation_steps"},
               resume(&Shared::lisa_run, [](auto&) {}, " --gradient_accumulation_steps 2")});
  c.push_back({"resume_other_lisa_interval", "resumed with another --lisa_interval", 1,
               {"training_state.json", "lisa_interval"}, resume(&Shared::lisa_run, [](auto&) {}, " --lisa_interval 7")});
  c.push_back({"resume_edited_global_step", "training_state.json with global_step \"x\"", 1,
               {"training_state.json", "global_step"}, resume(&Shared::lisa_run, [](const fs::path& ck) {
                 auto s = testing::read_json(ck / "training_state.json");
                 s["global_step"] = "x";
                 testing::write_file(ck / "training_state.json", s.dump(1));
               })});
  c.push_back({"resume_schedule_after_step", "training_state.json whose schedule_step passes global_step", 1,
               {"training_state.json", "schedule_step"}, resume(&Shared::lisa_run, [](const fs::path& ck) {
                 auto s = testing::read_json(ck / "training_state.json");
                 s["schedule_step"] = 99;
                 testing::write_file(ck / "training_state.json", s.dump(1));
               })});
  c.push_back({"resume_truncated_state", "training_state.json cut in half", 1, {"training_state.json"},
               resume(&Shared::lisa_run, [](const fs::path& ck) { truncate_half(ck / "training_state.json"); })});
  c.push_back({"resume_edited_lisa_units", "training_state.json whose LISA active set names a unit twice", 1,
               {"training_state.json", "active_units"}, resume(&Shared::lisa_run, [](const fs::path& ck) {
                 auto s = testing::read_json(ck / "training_state.json");
                 auto& active = s["lisa"]["active_units"];
                 if (active.size() >= 2) active[1] = active[0];
                 testing::write_file(ck / "training_state.json", s.dump(1));
               })});
  c.push_back({"resume_truncated_weights", "a checkpoint's UNet weights cut in half", 1,
               {"checkpoint-2", "diffusion_pytorch_model.safetensors"}, resume(&Shared::lisa_run, [](const fs::path& ck) {
                 truncate_half(ck / "unet/diffusion_pytorch_model.safetensors");
               })});
  c.push_back({"resume_without_optimizer_state", "a checkpoint without optimizer.safetensors", 1,
               {"optimizer.safetensors"},
               resume(&Shared::lisa_run, [](const fs::path& ck) { fs::remove(ck / "optimizer.safetensors"); })});
  c.push_back({"resume_edited_optimizer_state", "optimizer.safetensors with a moment of the wrong shape", 1,
               {"optimizer.safetensors"}, resume(&Shared::lisa_run, [](const fs::path& ck) {
                 bool changed = false;  // the first moment of more than one element loses one
                 rewrite_tensors(ck / "optimizer.safetensors", [&](const std::string&, const torch::Tensor& t) {
                   if (changed || t.numel() < 2) return t;
                   changed = true;
                   return t.flatten().narrow(0, 0, t.numel() - 1).clone();
                 });
               })});
  return c;
}

// Every regular file under `roots` and a hash of its bytes.
std::map<std::string, std::size_t> snapshot(const std::vector<fs::path>& roots) {
  std::map<std::string, std::size_t> files;
  for (const auto& root : roots) {
    if (!fs::exists(root)) continue;
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (e.is_regular_file()) files[e.path().string()] = std::hash<std::string>{}(testing::read_file(e.path()));
    }
  }
  return files;
}

// "error: ..." (spdlog's pattern, lisadiff's usage errors) or "<app>: error: ..." (run_main).
bool is_error_line(const std::string& line) {
  static const std::regex kError(R"(^([A-Za-z0-9_]+: )?error: .*)");
  return std::regex_match(line, kError);
}

// The shared datasets (cheap) always; the runs with checkpoints only for the groups that resume.
void make_shared(bool runs) {
  if (shared == nullptr) {
    shared = new Shared;
    const auto& root = shared->tmp.path();
    shared->t2i = make_data(root / "t2i", "t2i");
    shared->ip2p = make_data(root / "ip2p", "ip2p");
    shared->dpo = make_data(root / "dpo", "dpo");
    shared->wds = make_data(root / "wds", "t2i", "wds") / "00000.tar";
  }
  if (runs && shared->lisa_run.empty()) {
    // Runs of two steps with a checkpoint after each.
    const auto& root = shared->tmp.path();
    shared->lisa_run = root / "lisa-run";
    run_ok(t2i_base(shared->t2i, shared->lisa_run) + " --checkpointing_steps 1 --method lisa --lisa_interval 2");
    shared->lora_run = root / "lora-run";
    run_ok(t2i_base(shared->t2i, shared->lora_run) + " --checkpointing_steps 1 --method lora");
    shared->dpo_run = root / "dpo-run";
    run_ok(dpo_base(shared->dpo, shared->dpo_run) + " --checkpointing_steps 1 --method lisa --lisa_interval 2");
  }
}

void run_case(const Case& c) {
  SCOPED_TRACE("case " + c.name);
  TempDir dir;
  const std::string command = c.make(dir.path());
  const std::vector<fs::path> roots = {dir.path(), shared->tmp.path(), micro_sd(), ip2p_micro()};
  const auto before = snapshot(roots);
  const auto [rc, log] = testing::run_command(command + " 2>&1 </dev/null");
  EXPECT_EQ(rc, c.rc) << command << "\n" << log;
  std::vector<std::string> errors;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (is_error_line(line)) errors.push_back(line);
  }
  ASSERT_EQ(errors.size(), 1u) << "expected one error line:\n" << log;
  for (const auto& part : c.expect) {
    EXPECT_NE(errors[0].find(part), std::string::npos) << "the error line does not name '" << part << "':\n  " << errors[0];
  }
  const auto after = snapshot(roots);
  for (const auto& [file, hash] : before) {
    const auto it = after.find(file);
    EXPECT_TRUE(it != after.end() && it->second == hash) << file << " was " << (it == after.end() ? "removed" : "changed");
  }
}

// The cases whose names start with one of `prefixes` (one test per group, so that ctest runs
// the groups side by side and only the checkpoint group trains the shared runs).
void run_group(const std::vector<std::string>& prefixes, bool runs) {
  make_shared(runs);
  int n = 0;
  for (const auto& c : cases()) {
    for (const auto& p : prefixes) {
      if (c.name.rfind(p, 0) == 0) {
        run_case(c);
        ++n;
        break;
      }
    }
  }
  EXPECT_GT(n, 0);
}

TEST(BadInput, LisadiffCommandLines) {
  run_group({"lisadiff_", "launch_", "make_dataset_", "init_pipeline_", "train_vae_"}, false);
}
TEST(BadInput, LisadiffFiles) { run_group({"inspect_", "plot_", "generate_", "score_", "eval_loss_"}, false); }
TEST(BadInput, RecipeFlagsConfigsModelsData) { run_group({"t2i_", "ip2p_", "dpo_", "lcm_"}, false); }
TEST(BadInput, Checkpoints) { run_group({"resume_"}, true); }

// The matrix is large enough to matter, and the table for docs/hardening.md on request.
TEST(BadInputMatrix, HasFortyCasesOverEveryExecutable) {
  const auto all = cases();
  EXPECT_GE(all.size(), 40u);
  std::map<std::string, int> per_program;
  for (const auto& c : all) {
    EXPECT_TRUE(c.rc == 1 || c.rc == 2) << c.name;
    EXPECT_FALSE(c.expect.empty()) << c.name;
  }
  for (const char* prefix : {"lisadiff_", "inspect_", "init_pipeline_", "plot_", "make_dataset_", "generate_", "launch_",
                             "score_", "train_vae_", "eval_loss_", "t2i_", "ip2p_", "dpo_", "lcm_", "resume_"}) {
    int n = 0;
    for (const auto& c : all) n += c.name.rfind(prefix, 0) == 0;
    EXPECT_GT(n, 0) << "no case for " << prefix;
  }
  if (const char* out = std::getenv("LISADIFF_BAD_INPUT_TABLE")) {
    std::ofstream f(out);
    f << "| case | what is wrong | exit | the error line names |\n|---|---|---|---|\n";
    for (const auto& c : all) {
      std::string names;
      for (const auto& e : c.expect) names += (names.empty() ? "`" : ", `") + e + "`";
      f << "| " << c.name << " | " << c.input << " | " << c.rc << " | " << names << " |\n";
    }
  }
}

}  // namespace
}  // namespace lisadiff
