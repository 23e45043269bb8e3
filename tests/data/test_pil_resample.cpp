// data::pil_resize against Pillow's Image.resize itself (label python): random and structured
// 8-bit RGB images, shrunk, enlarged and both at once, with every filter torchvision's Resize
// can hand PIL (nearest, box, bilinear, hamming, bicubic, lanczos). Bit for bit: the
// algorithm is Pillow's, with its fixed-point weights and rounding.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include "core/error.h"
#include "data/pil_resample.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace lisadiff {
namespace {

TEST(PilResample, EqualsPillowForEveryFilter) {
  testing::TempDir tmp;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  // Noise, and a picture with hard edges and smooth ramps (where kernels' lobes show).
  std::vector<torch::Tensor> images = {at::randint(0, 256, {3, 37, 53}, gen).to(torch::kUInt8)};
  auto edges = torch::zeros({3, 40, 31}, torch::kUInt8);
  edges.slice(1, 10, 30).slice(2, 5, 20).fill_(255);
  edges[1] = (torch::arange(31).view({1, 31}) * 8).expand({40, 31}).to(torch::kUInt8);
  images.push_back(edges);
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{17, 23}, {64, 80}, {20, 97}, {1, 1}, {37, 26}};
  const std::vector<data::PilFilter> filters = {data::PilFilter::kNearest, data::PilFilter::kBox,
                                                data::PilFilter::kBilinear, data::PilFilter::kHamming,
                                                data::PilFilter::kBicubic, data::PilFilter::kLanczos};
  io::NamedTensors inputs;
  for (std::size_t i = 0; i < images.size(); ++i) inputs.emplace_back("image" + std::to_string(i), images[i]);
  io::write_safetensors(tmp / "in.safetensors", inputs);
  testing::write_file(tmp / "pil.py", R"(import sys
import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file
names = {"nearest": Image.NEAREST, "box": Image.BOX, "bilinear": Image.BILINEAR, "hamming": Image.HAMMING,
         "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
images = load_file(sys.argv[1])
out = {}
for key, chw in images.items():
    img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)), "RGB")
    for h, w in [(17, 23), (64, 80), (20, 97), (1, 1), (37, 26)]:
        for name, f in names.items():
            out[f"{key}.{h}x{w}.{name}"] = np.ascontiguousarray(np.asarray(img.resize((w, h), f)).transpose(2, 0, 1))
save_file(out, sys.argv[2])
)");
  const auto [rc, log] = testing::run_command(testing::test_python() + " " + (tmp / "pil.py").string() + " " +
                                              (tmp / "in.safetensors").string() + " " +
                                              (tmp / "out.safetensors").string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const io::SafetensorsReader ref(tmp / "out.safetensors");
  int compared = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    for (const auto& [h, w] : sizes) {
      for (const auto f : filters) {
        const auto key = "image" + std::to_string(i) + "." + std::to_string(h) + "x" + std::to_string(w) + "." +
                         data::pil_filter_name(f);
        const auto ours = data::pil_resize(images[i], h, w, f);
        const auto theirs = ref.tensor(key);
        EXPECT_TRUE(testing::same_tensor(ours, theirs))
            << key << ": max difference " << (ours.to(torch::kInt) - theirs.to(torch::kInt)).abs().max().item<int>();
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, 60);
}

TEST(PilResample, NamesAndBadInput) {
  EXPECT_EQ(data::parse_pil_filter("lanczos", "x"), data::PilFilter::kLanczos);
  EXPECT_EQ(data::parse_pil_filter("nearest_exact", "x"), data::PilFilter::kNearest);  // torchvision's PIL mapping
  EXPECT_THROW_WITH(data::parse_pil_filter("cubic", "--image_interpolation_mode"), "--image_interpolation_mode",
                    "unknown interpolation 'cubic'");
  EXPECT_THROW_WITH(data::pil_resize(torch::zeros({3, 4, 4}), 2, 2, data::PilFilter::kBox), "uint8");
  const auto same = torch::randint(0, 256, {3, 5, 6}, torch::kUInt8);
  EXPECT_TRUE(testing::same_tensor(data::pil_resize(same, 5, 6, data::PilFilter::kLanczos), same));
}

}  // namespace
}  // namespace lisadiff
