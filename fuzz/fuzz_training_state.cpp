// Fuzz target: a checkpoint's training_state.json as a resume reads it: the JSON file, the
// checks of parse_training_state (src/train/training_state.h), then the LISA state applied to
// a small LISA run (Lisa::load_state), which refuses what does not fit it.
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "config/json_fields.h"
#include "fuzz_util.h"
#include "train/lisa.h"
#include "train/training_state.h"

using namespace lisadiff;

namespace {

train::Lisa& small_lisa() {
  static train::Lisa* lisa = [] {
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (int i = 0; i < 6; ++i) params.emplace_back("layer" + std::to_string(i) + ".weight", torch::zeros({2, 2}, torch::requires_grad()));
    train::LisaOptions options;
    options.n_active = 2;
    options.interval = 5;
    train::FusedOptimizerOptions optimizer;
    return new train::Lisa(std::move(params), options, optimizer);
  }();
  return *lisa;
}

}  // namespace

// LISADIFF_FUZZ_WRITE_SEED=FILE: writes a training_state.json that fits small_lisa() (the seed
// that fuzz/make_seeds.py commits) and exits.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* out = std::getenv("LISADIFF_FUZZ_WRITE_SEED")) {
    fuzz::init_quietly();
    nlohmann::json state = {{"format", train::kTrainingStateFormat}, {"global_step", 7}, {"schedule_step", 7},
                            {"micro_batches", 14}, {"method", "lisa"}, {"model", "unet"},
                            {"mixed_precision", "no"}, {"gradient_accumulation_steps", 2},
                            {"world_size", 1}, {"parts", {{"data_loader", {{"records", 28}}}}}};
    state["lisa"] = small_lisa().state();
    std::ofstream(out) << state.dump(1) << "\n";
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::init_quietly();
  auto& lisa = small_lisa();
  const auto path = fuzz::write_scratch("training_state.json", {reinterpret_cast<const char*>(data), size});
  fuzz::expect_clean("training_state.json", [&] {
    const auto json = config::read_json_file(path);
    const auto saved = train::parse_training_state(json, path.string());
    if (saved.schedule_step > saved.global_step || saved.gradient_accumulation_steps < 1) std::abort();
    if (!saved.lisa.is_null()) lisa.load_state(saved.lisa);
  });
  return 0;
}
