#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "io/atomic_file.h"
#include "tools/score.h"

namespace lisadiff::cli {

CommandRunner add_score(CLI::App& app) {
  struct Options {
    std::string folder, json;
    bool per_image = false;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("score",
                                 "How often images show their prompt's colour and shape (make-dataset's shapes; "
                                 "a generate output or a make-dataset folder)");
  cmd->add_option("folder", options->folder, "Folder with images.jsonl (lisadiff generate) or metadata.jsonl (make-dataset)")
      ->required();
  cmd->add_option("--json", options->json, "Also write the scores as JSON to this file");
  cmd->add_flag("--per-image", options->per_image, "Put every image's reading into the JSON");
  return [cmd, options]() {
    if (!cmd->parsed()) return -1;
    const auto summary = tools::score_folder(options->folder);
    auto row = [](const char* name, const tools::Tally& t) {
      if (t.judged == 0) return fmt::format("{:<17} not asked\n", name);
      return fmt::format("{:<17} {:>6.1f} %  ({}/{})\n", name, 100.0 * t.rate(), t.hits, t.judged);
    };
    std::string text = fmt::format("{}: {} images\n", options->folder, summary.images.size());
    text += row("colour", summary.color);
    text += row("shape", summary.shape);
    text += row("colour and shape", summary.color_and_shape);
    text += row("background", summary.background);
    std::fputs(text.c_str(), stdout);
    if (!options->json.empty()) io::write_file_atomic(options->json, tools::score_json(summary, options->per_image));
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
