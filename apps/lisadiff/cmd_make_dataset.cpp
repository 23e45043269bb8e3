#include <chrono>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/make_dataset.h"

namespace lisadiff::cli {

CommandRunner add_make_dataset(CLI::App& app) {
  auto options = std::make_shared<tools::MakeDatasetOptions>();
  auto* cmd = app.add_subcommand("make-dataset",
                                 "Write a synthetic dataset (coloured shapes, captions that describe them) "
                                 "in the formats of docs/data.md");
  cmd->add_option("--kind", options->kind, "Examples: t2i (image, caption), ip2p (image, edit, edited image), "
                                           "dpo (two images, label_0, caption)")
      ->required()
      ->check(CLI::IsMember({"t2i", "ip2p", "dpo"}));
  cmd->add_option("--format", options->format, "folder (metadata.jsonl + images/) or wds (tar shards)")
      ->required()
      ->check(CLI::IsMember({"folder", "wds"}));
  cmd->add_option("--n", options->n, "Number of examples")->required()->check(CLI::Range(1, 999'999'999));
  cmd->add_option("--out", options->out, "Output folder (missing or empty unless --overwrite)")->required();
  cmd->add_option("--seed", options->seed, "Seed: the same options give byte-identical files")->capture_default_str();
  cmd->add_option("--size", options->size, "Image side in pixels")->check(CLI::Range(8, 4096))->capture_default_str();
  cmd->add_flag("--vary-size", options->vary_size, "Draw width and height from [size, 3 * size / 2]");
  cmd->add_option("--image-format", options->image_format, "png or jpg")
      ->check(CLI::IsMember({"png", "jpg"}))
      ->capture_default_str();
  cmd->add_option("--shard-size", options->shard_size, "wds: examples per shard")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--tie-share", options->tie_share, "dpo: fraction of ties (label_0 0.5)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--colors", options->colors, "t2i: the colours shapes may have, comma-separated (default: all 8)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--backgrounds", options->backgrounds, "t2i: the colours backgrounds may have (default: all 8)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--shapes", options->shapes, "t2i: the shapes drawn: circle, square, triangle (default: all)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_flag("--overwrite", options->overwrite, "Replace --out if it exists and is not empty");
  return [cmd, options]() {
    if (!cmd->parsed()) return -1;
    const auto start = std::chrono::steady_clock::now();
    const auto summary = tools::make_dataset(*options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    spdlog::info("wrote {} {} examples ({}, {} files, {} bytes) to {} in {:.2f} s", summary.examples, options->kind,
                 options->format, summary.files, summary.bytes, summary.out.string(), seconds);
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
