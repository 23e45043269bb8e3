// Fuzz target: the CLIP tokenizer (src/models/clip_tokenizer.h).
//   first byte even: the rest is a prompt, tokenized with the tiny preset's tokenizer (any
//     bytes: invalid UTF-8 is a lisadiff::Error);
//   first byte odd: the rest is a tokenizer folder, its files separated by "\n--8<--\n" lines:
//     vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json, tokenizer.json
//     (missing parts: the file is absent); loaded, then a fixed prompt is tokenized.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "models/clip_tokenizer.h"

using namespace lisadiff;
namespace fs = std::filesystem;

#ifndef LISADIFF_SOURCE_DIR
#error "LISADIFF_SOURCE_DIR must name the source tree (fuzz/CMakeLists.txt sets it)"
#endif

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  fuzz::init_quietly();
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    static const models::CLIPTokenizer tokenizer =
        models::CLIPTokenizer::from_folder(fs::path(LISADIFF_SOURCE_DIR) / "configs/presets/tiny/tokenizer");
    fuzz::expect_clean("tokenizer encode", [&] {
      const std::string prompt(body);
      const auto ids = tokenizer.encode(prompt);
      for (auto id : ids) {
        if (id < 0 || id >= tokenizer.vocab_size() + 2) std::abort();  // ids index the embedding
      }
      const auto row = tokenizer.encode_padded(prompt);
      if (static_cast<std::int64_t>(row.size()) != tokenizer.max_length()) std::abort();
    });
    return 0;
  }
  static const char* kFiles[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                                 "tokenizer.json"};
  const auto parts = fuzz::split_parts(body, 5);
  const fs::path dir = fuzz::scratch_dir() / "tokenizer";
  std::error_code ec;
  fs::remove_all(dir, ec);
  for (std::size_t i = 0; i < parts.size(); ++i) fuzz::write_scratch(std::string("tokenizer/") + kFiles[i], parts[i]);
  fuzz::expect_clean("tokenizer folder", [&] {
    const auto tokenizer = models::CLIPTokenizer::from_folder(dir);
    const auto out = tokenizer.tokenize({"a photo of a cat", "<|startoftext|>x y z<|endoftext|>!"});
    if (out.input_ids.size(1) != tokenizer.max_length()) std::abort();
  });
  return 0;
}
