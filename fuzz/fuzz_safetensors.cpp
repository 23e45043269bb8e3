// Fuzz target: the safetensors reader (src/io/safetensors.h). Any bytes as a .safetensors
// file: the header is validated, then every tensor is read in its own dtype and as float32,
// and every byte of it is touched.
#include <cstdint>
#include <string_view>

#include <torch/torch.h>

#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace lisadiff;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::init_quietly();
  const auto path = fuzz::write_scratch("input.safetensors", {reinterpret_cast<const char*>(data), size});
  fuzz::expect_clean("safetensors", [&] {
    io::SafetensorsReader reader(path);
    std::uint64_t sum = 0;
    for (const auto& [key, value] : reader.metadata()) sum += key.size() + value.size();
    for (const auto& entry : reader.entries()) {
      if (!reader.contains(entry.name)) std::abort();  // the index must agree with the entries
      fuzz::expect_clean("safetensors tensor", [&] {
        const torch::Tensor t = reader.tensor(entry.name).contiguous();
        if (static_cast<std::uint64_t>(t.nbytes()) != entry.nbytes()) std::abort();
        const auto* bytes = static_cast<const std::uint8_t*>(t.data_ptr());
        for (std::size_t i = 0; i < t.nbytes(); ++i) sum += bytes[i];
        const torch::Tensor f = reader.tensor(entry.name, torch::kFloat32);
        if (f.numel() != t.numel()) std::abort();
      });
    }
    (void)sum;
  });
  return 0;
}
