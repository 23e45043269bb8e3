// bench_data_loader: throughput of the data loader (decode, resize, crop, flip, collate) on a
// dataset that `lisadiff make-dataset` wrote, for comparison with the Python reference
// (scripts/bench_data.py: a torch DataLoader over the same files with the DPO script's PIL +
// torchvision pipeline). Prints one JSON object:
//   {"impl": "lisadiff", "resolution", "workers", "batch", "images", "seconds", "images_per_s"}
//
//   bench_data_loader --data DIR [--format folder|wds] [--resolution 512] [--workers 2]
//                     [--batch 8] [--images 400] [--warmup 16]
// Images count examples (one image each for t2i); the first `warmup` examples are not timed.
#include <chrono>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/exit_codes.h"
#include "core/logging.h"
#include "data/loader.h"

int main(int argc, char** argv) {
  using namespace lisadiff;
  CLI::App app{"Data loader throughput", "bench_data_loader"};
  std::string dir, format = "folder";
  int resolution = 512, workers = 2, batch = 8, images = 400, warmup = 16;
  app.add_option("--data", dir, "dataset folder (make-dataset --kind t2i)")->required();
  app.add_option("--format", format, "folder or wds")->check(CLI::IsMember({"folder", "wds"}));
  app.add_option("--resolution", resolution, "output size");
  app.add_option("--workers", workers, "loader threads (0: inline)");
  app.add_option("--batch", batch, "batch size");
  app.add_option("--images", images, "examples to time");
  app.add_option("--warmup", warmup, "examples before timing starts");
  CLI11_PARSE(app, argc, argv);
  try {
    init_logging("warn");
    data::DataOptions o;
    o.kind = data::ExampleKind::kT2i;
    if (format == "folder") o.train_data_dir = dir;
    else o.train_shards = dir + "/{00000..99999}.tar";
    o.transform.resolution = resolution;
    o.transform.crop = data::ImageTransform::Crop::kRandom;
    o.transform.random_flip = true;
    o.num_workers = workers;
    o.batch_size = batch;
    o.seed = 1;
    data::DataLoader loader(o);
    std::int64_t seen = 0;
    while (seen < warmup) seen += loader.next().size();
    const auto start = std::chrono::steady_clock::now();
    std::int64_t timed = 0;
    while (timed < images) timed += loader.next().size();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << nlohmann::json{{"impl", "lisadiff"}, {"resolution", resolution}, {"workers", workers},
                                {"batch", batch}, {"images", timed}, {"seconds", seconds},
                                {"images_per_s", static_cast<double>(timed) / seconds}}
                     .dump()
              << std::endl;
    return exit_code::kOk;
  } catch (const std::exception& e) {
    std::cerr << "bench_data_loader: " << e.what() << std::endl;
    return exit_code::kError;
  }
}
