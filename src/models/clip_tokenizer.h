// CLIPTokenizer: the byte-level BPE tokenizer of CLIP text encoders, with the exact behaviour of
// transformers 5's CLIPTokenizer (the `tokenizers`-backed class; ../shared/spec/models.md §6,
// variant c). Reads a tokenizer folder as SD pipelines ship it: vocab.json + merges.txt, plus
// tokenizer_config.json / special_tokens_map.json when present.
//
// encode(text), step by step (each step matches a `tokenizers` component):
//   1. special tokens (bos/eos/unk/pad strings) marked `normalized: false` are cut out of the raw
//      text (leftmost-longest match);
//   2. every remaining segment is normalised: NFC, each run of Unicode White_Space to one space,
//      per-character full lowercase (U+0130 → "i" + U+0307; no final-sigma rule);
//   3. special tokens marked `normalized: true` are cut out of the normalised text;
//   4. pre-tokenisation: the matches of
//        <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//      (whitespace between them is dropped), each then split again by the GPT-2 byte-level regex;
//   5. each piece's UTF-8 bytes become byte symbols; BPE with "</w>" on the last symbol.
// Which special token is `normalized` follows transformers 5.23 (see clip_tokenizer.cpp): for
// SD1.5's folder "<|startoftext|>" is matched after lowercasing and "<|endoftext|>" only as
// written; SD2/SDXL folders whose pad token is "!" turn every "!" in a prompt into id 0.
//
// Thread safety: every const method may be called from several threads at once. Copies share
// the vocabulary and the per-piece BPE cache (a mutex-guarded map; it stops growing at
// kCacheCapacity pieces, as the `tokenizers` cache does).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <torch/types.h>

namespace lisadiff::models {

// A token matched as a whole in the text before BPE (transformers' AddedToken).
struct CLIPAddedToken {
  std::string content;
  std::int64_t id = 0;
  bool normalized = false;  // matched in the normalised (lowercased) text, else in the raw text
};

// Output of tokenize(): both int64 [B, max_length].
struct CLIPTokenizerOutput {
  torch::Tensor input_ids;       // bos, content ids (cut to max_length - 2), eos, then pad ids
  torch::Tensor attention_mask;  // 1 for bos/content/eos, 0 for padding
};

class CLIPTokenizer {
 public:
  static constexpr std::size_t kCacheCapacity = 65536;

  // Reads <dir>/vocab.json and <dir>/merges.txt, and <dir>/tokenizer_config.json and
  // <dir>/special_tokens_map.json when present (special tokens, model_max_length; without
  // model_max_length the length is 77, CLIP's number of positions). tokenizer.json is not read
  // except to refuse added tokens other than the special ones (textual-inversion tokens are not
  // supported). Throws lisadiff::Error naming the file and the problem for any bad input.
  static CLIPTokenizer from_folder(const std::filesystem::path& tokenizer_dir);

  // Content ids of one prompt, without bos/eos and without truncation; like
  // `tokenizer(text, add_special_tokens=False).input_ids`. Special-token strings inside the text
  // become their ids. Throws lisadiff::Error when `utf8` is not valid UTF-8 (a Python str cannot
  // hold such text, so there is no reference behaviour to copy).
  std::vector<std::int64_t> encode(const std::string& utf8) const;

  // `tokenizer(prompts, padding="max_length", max_length=max_length(), truncation=True)`:
  // [bos] + the first max_length()-2 content ids + [eos], padded with pad_id().
  CLIPTokenizerOutput tokenize(const std::vector<std::string>& prompts) const;
  // tokenize(prompts).input_ids: int64 [B, max_length()].
  torch::Tensor encode_batch(const std::vector<std::string>& prompts) const;
  // One row of encode_batch, as a vector of max_length() ids.
  std::vector<std::int64_t> encode_padded(const std::string& utf8) const;

  std::int64_t bos_id() const;
  std::int64_t eos_id() const;
  std::int64_t pad_id() const;
  std::int64_t unk_id() const;
  std::int64_t max_length() const;
  // Entries in vocab.json (transformers' `tokenizer.vocab_size`).
  std::int64_t vocab_size() const;
  // The special tokens as matched in text, with their `normalized` flags.
  const std::vector<CLIPAddedToken>& added_tokens() const;

  struct Impl;

 private:
  explicit CLIPTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// The Unicode steps, exposed for the exhaustive per-code-point test against the reference.
namespace clip_detail {
enum class CharClass : std::uint8_t { kLetter, kNumber, kSpace, kOther };  // \p{L}, \p{N}, \s, other
CharClass char_class(char32_t c);
// The normaliser: NFC, each run of White_Space to " ", lowercase. `utf8` must be valid UTF-8.
std::u32string normalize(std::string_view utf8);
// True where utf8proc's Unicode version assigns no character (general category Cn).
bool is_unassigned(char32_t c);
}  // namespace clip_detail

}  // namespace lisadiff::models
