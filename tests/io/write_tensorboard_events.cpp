// Test-only: writes known scalars and one image with io::TensorBoardWriter into the folder
// named on the command line, for scripts/test_tensorboard_events.py, which reads them back
// with TensorBoard's own EventAccumulator and recomputes the same values:
//   steps 1..5: "loss" = 1 / step, "lr" = 1e-4 * step, "train/grad_norm" = step * 0.5
//   step 5: image "validation/grid", 6 high x 4 wide, pixel (y, x, c) = (40y + 7x + 90c) % 256
// With a second argument R (a run resumed from a checkpoint at step R), a new file instead:
//   a SessionLog START at step R + 1, then for steps R + 1..5 "loss" = 10 + step and "lr",
//   "train/grad_norm" as above.
#include <cstdlib>
#include <cstdio>
#include <exception>
#include <vector>

#include "io/tensorboard.h"

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: %s LOG_DIR [RESUME_STEP]\n", argv[0]);
    return 2;
  }
  try {
    lisadiff::io::TensorBoardWriter writer(argv[1]);
    if (argc == 3) {
      const int resume = std::atoi(argv[2]);
      writer.add_session_start(resume + 1);
      for (int step = resume + 1; step <= 5; ++step) {
        writer.add_scalar("loss", 10.0 + step, step);
        writer.add_scalar("lr", 1e-4 * step, step);
        writer.add_scalar("train/grad_norm", step * 0.5, step);
      }
      std::printf("%s\n", writer.file().c_str());
      return 0;
    }
    for (int step = 1; step <= 5; ++step) {
      writer.add_scalar("loss", 1.0 / step, step);
      writer.add_scalar("lr", 1e-4 * step, step);
      writer.add_scalar("train/grad_norm", step * 0.5, step);
    }
    const int height = 6, width = 4;
    std::vector<std::uint8_t> rgb;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        for (int c = 0; c < 3; ++c) rgb.push_back(static_cast<std::uint8_t>((40 * y + 7 * x + 90 * c) % 256));
      }
    }
    writer.add_image("validation/grid", rgb.data(), height, width, 5);
    writer.flush();
    std::printf("%s\n", writer.file().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
