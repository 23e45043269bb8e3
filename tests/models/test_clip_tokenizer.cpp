// CLIPTokenizer against transformers 5's CLIPTokenizer: the corpus of
// tests/fixtures/tokenizer/expected_ids.json (scripts/make_tokenizer_fixtures.py) for the tiny
// vocabulary and the full SD1.5 one, special-token handling of SD1.5/SD2/SDXL-style folders, the
// Unicode steps for every code point, and one clear error for each kind of bad tokenizer folder.
#include "models/clip_tokenizer.h"

#include <thread>

#include <fmt/format.h>

#include "test_util.h"

namespace lisadiff::models {
namespace {

using Json = nlohmann::ordered_json;
using lisadiff::testing::TempDir;
using lisadiff::testing::write_file;
using Ids = std::vector<std::int64_t>;

const Json& expected_ids() {
  static const Json json = lisadiff::testing::read_json(lisadiff::testing::fixtures_dir() / "tokenizer/expected_ids.json");
  return json;
}

std::filesystem::path micro_dir() { return lisadiff::testing::fixtures_dir() / "pipelines/micro-sd/tokenizer"; }

// The full vocabulary is made by scripts/setup.sh, so CI always has it: a missing one is a
// failure, not a reason to skip.
std::filesystem::path full_vocab_dir() {
  const auto dir = lisadiff::testing::clip_vocab_dir();
  if (dir.empty() || !std::filesystem::exists(dir / "vocab.json")) {
    throw std::runtime_error("clip_vocab_dir '" + dir.string() +
                             "' has no vocab.json: run scripts/setup.sh (it builds the full CLIP vocabulary)");
  }
  return dir;
}

std::string escaped(const std::string& text) { return Json(text).dump(); }

Ids to_ids(const torch::Tensor& tensor) {
  const torch::Tensor flat = tensor.contiguous().to(torch::kLong);
  return Ids(flat.data_ptr<std::int64_t>(), flat.data_ptr<std::int64_t>() + flat.numel());
}

// Equal id lists, or where they first differ.
::testing::AssertionResult same_ids(const Ids& got, const Json& expected, const std::string& what) {
  const auto want = expected.get<Ids>();
  if (got == want) return ::testing::AssertionSuccess();
  std::size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto at = [](const Ids& ids, std::size_t i) { return i < ids.size() ? std::to_string(ids[i]) : "(end)"; };
  return ::testing::AssertionFailure() << what << ": first difference at position " << i << ": got " << at(got, i)
                                       << ", transformers " << at(want, i) << " (lengths " << got.size() << " and "
                                       << want.size() << ")";
}

void check_corpus(const CLIPTokenizer& tokenizer, const Json& prompts, const Json& reference, const std::string& name) {
  EXPECT_EQ(tokenizer.bos_id(), reference.at("bos_id").get<std::int64_t>());
  EXPECT_EQ(tokenizer.eos_id(), reference.at("eos_id").get<std::int64_t>());
  EXPECT_EQ(tokenizer.pad_id(), reference.at("pad_id").get<std::int64_t>());
  EXPECT_EQ(tokenizer.vocab_size(), reference.at("vocab_size").get<std::int64_t>());
  ASSERT_EQ(prompts.size(), reference.at("content_ids").size());
  std::vector<std::string> batch;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto prompt = prompts[i].get<std::string>();
    batch.push_back(prompt);
    const std::string what = name + " prompt " + std::to_string(i) + " " + escaped(prompt);
    EXPECT_TRUE(same_ids(tokenizer.encode(prompt), reference.at("content_ids")[i], what + " (content ids)"));
    EXPECT_TRUE(same_ids(tokenizer.encode_padded(prompt), reference.at("input_ids")[i], what + " (input_ids)"));
  }
  const torch::Tensor ids = tokenizer.encode_batch(batch);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_TRUE(same_ids(to_ids(ids[static_cast<std::int64_t>(i)]), reference.at("input_ids")[i], name + " batch row " + std::to_string(i)));
  }
}

TEST(CLIPTokenizerParity, MicroSdCorpusMatchesTransformers) {
  const Json& fixture = expected_ids();
  const auto tokenizer = CLIPTokenizer::from_folder(micro_dir());
  check_corpus(tokenizer, fixture.at("prompts"), fixture.at("vocabularies").at("micro-sd"), "micro-sd");
}

TEST(CLIPTokenizerParity, FullSD15CorpusMatchesTransformers) {
  const Json& fixture = expected_ids();
  const auto tokenizer = CLIPTokenizer::from_folder(full_vocab_dir());
  check_corpus(tokenizer, fixture.at("prompts"), fixture.at("vocabularies").at("sd15"), "sd15");
}

// The tiny vocabulary with the json files of other folder layouts: which strings are special,
// which are matched after lowercasing, and the pad id.
TEST(CLIPTokenizerParity, FolderLayoutsResolveSpecialTokensLikeTransformers) {
  const Json& fixture = expected_ids();
  for (const auto& [name, layout] : fixture.at("layouts").items()) {
    SCOPED_TRACE("layout " + name);
    TempDir dir;
    for (const char* file : {"vocab.json", "merges.txt"}) std::filesystem::copy_file(micro_dir() / file, dir / file);
    for (const auto& [file, content] : layout.at("files").items()) write_file(dir / file, content.dump(2));
    const auto tokenizer = CLIPTokenizer::from_folder(dir.path());
    std::vector<std::tuple<std::string, std::int64_t, bool>> got, want;
    for (const auto& t : tokenizer.added_tokens()) got.emplace_back(t.content, t.id, t.normalized);
    for (const auto& t : layout.at("added_tokens")) {
      want.emplace_back(t.at("content").get<std::string>(), t.at("id").get<std::int64_t>(), t.at("normalized").get<bool>());
    }
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want);
    check_corpus(tokenizer, fixture.at("layout_prompts"), layout, name);
  }
}

std::string utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

// Every code point through the normaliser and the character classes, against tables made with
// `tokenizers` itself. It uses Unicode 16.0 data, utf8proc 15.0: the only differences allowed
// are at code points that Unicode 15 leaves unassigned (Unicode 16 added 5,185 characters).
TEST(CLIPTokenizerParity, EveryCodePointNormalisesAndClassifiesLikeTheReference) {
  using clip_detail::CharClass;
  const Json reference =
      lisadiff::testing::read_json(lisadiff::testing::fixtures_dir() / "tokenizer/unicode_reference.json");
  std::vector<CharClass> classes(0x110000, CharClass::kOther);
  const std::pair<const char*, CharClass> names[] = {
      {"letter", CharClass::kLetter}, {"number", CharClass::kNumber}, {"space", CharClass::kSpace}};
  for (const auto& [name, cls] : names) {
    for (const auto& range : reference.at("classes").at(name)) {
      for (auto c = range[0].get<std::uint32_t>(); c <= range[1].get<std::uint32_t>(); ++c) classes[c] = cls;
    }
  }
  std::unordered_map<char32_t, std::u32string> normalized;
  for (const auto& entry : reference.at("normalized")) {
    std::u32string out;
    for (const auto& c : entry[1]) out += static_cast<char32_t>(c.get<std::uint32_t>());
    normalized[static_cast<char32_t>(entry[0].get<std::uint32_t>())] = out;
  }
  ASSERT_GT(normalized.size(), 2000u);  // lowercase and NFC mappings; a truncated file would pass vacuously

  std::vector<std::string> failures;
  std::size_t newer_unicode = 0;
  for (char32_t c = 1; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    const auto it = normalized.find(c);
    const std::u32string want = it == normalized.end() ? std::u32string(1, c) : it->second;
    const bool class_ok = clip_detail::char_class(c) == classes[c];
    const bool normal_ok = clip_detail::normalize(utf8(c)) == want;
    if (class_ok && normal_ok) continue;
    if (clip_detail::is_unassigned(c)) {
      ++newer_unicode;
    } else if (failures.size() < 10) {
      failures.push_back(fmt::format("U+{:04X}: {}", static_cast<std::uint32_t>(c),
                                     class_ok ? "normalises differently" : "classified differently"));
    }
  }
  EXPECT_TRUE(failures.empty()) << fmt::format("{}", fmt::join(failures, "\n"));
  EXPECT_LE(newer_unicode, 5185u);
  RecordProperty("differing_code_points_unassigned_in_unicode_15", static_cast<int>(newer_unicode));
}

// ../shared/spec/models.md section 6.3, written out here, independent of the fixture file.
TEST(CLIPTokenizer, KnownSD15Ids) {
  const auto tokenizer = CLIPTokenizer::from_folder(full_vocab_dir());
  EXPECT_EQ(tokenizer.vocab_size(), 49408);
  EXPECT_EQ(tokenizer.bos_id(), 49406);
  EXPECT_EQ(tokenizer.eos_id(), 49407);
  EXPECT_EQ(tokenizer.pad_id(), 49407);  // SD1.5 pads with eos
  EXPECT_EQ(tokenizer.max_length(), 77);
  EXPECT_EQ(tokenizer.encode("a photo of a cat"), (Ids{320, 1125, 539, 320, 2368}));
  EXPECT_EQ(tokenizer.encode("hello"), (Ids{3306}));
  EXPECT_EQ(tokenizer.encode("hello world!"), (Ids{3306, 1002, 256}));
  EXPECT_EQ(tokenizer.encode("Hi there"), (Ids{1883, 997}));
  EXPECT_EQ(tokenizer.encode("magnificently"), (Ids{9725, 2922}));
  EXPECT_EQ(tokenizer.encode("let's see here"), (Ids{1094, 568, 862, 763}));
  Ids empty(77, 49407);
  empty[0] = 49406;
  EXPECT_EQ(tokenizer.encode_padded(""), empty);  // the unconditional prompt
}

TEST(CLIPTokenizer, TruncatesToMaxLengthMinusTwoAndPads) {
  const auto tokenizer = CLIPTokenizer::from_folder(full_vocab_dir());
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "cat ";
  const Ids content = tokenizer.encode(long_prompt);
  ASSERT_EQ(content.size(), 100u);
  const Ids row = tokenizer.encode_padded(long_prompt);
  ASSERT_EQ(row.size(), 77u);
  EXPECT_EQ(row.front(), 49406);
  EXPECT_EQ(Ids(row.begin() + 1, row.end() - 1), Ids(content.begin(), content.begin() + 75));
  EXPECT_EQ(row.back(), 49407);

  const auto out = tokenizer.tokenize({long_prompt, "a cat", ""});
  EXPECT_EQ(to_ids(out.attention_mask.sum(/*dim=*/1)), (Ids{77, 4, 2}));
  EXPECT_EQ(to_ids(out.input_ids[1].slice(/*dim=*/0, 0, 6)), (Ids{49406, 320, 2368, 49407, 49407, 49407}));
}

TEST(CLIPTokenizer, BatchShapesAndDtype) {
  const auto tokenizer = CLIPTokenizer::from_folder(micro_dir());
  const auto out = tokenizer.tokenize({"a photo of a cat", "", "dog"});
  EXPECT_EQ(out.input_ids.sizes(), (c10::IntArrayRef{3, 77}));
  EXPECT_EQ(out.attention_mask.sizes(), (c10::IntArrayRef{3, 77}));
  EXPECT_EQ(out.input_ids.scalar_type(), torch::kLong);
  EXPECT_EQ(out.attention_mask.scalar_type(), torch::kLong);
  EXPECT_TRUE(torch::equal(out.input_ids, tokenizer.encode_batch({"a photo of a cat", "", "dog"})));
  EXPECT_EQ(tokenizer.encode_batch({}).sizes(), (c10::IntArrayRef{0, 77}));
  // The micro tokenizer pads with its eos (814) too, and the mask covers bos..eos.
  EXPECT_EQ(out.input_ids[1][2].item<std::int64_t>(), 814);
  EXPECT_EQ(out.attention_mask[1].sum().item<std::int64_t>(), 2);
}

// Several threads encoding the same prompts (through the shared cache) agree with one thread.
TEST(CLIPTokenizer, ConcurrentEncodingGivesTheSameIds) {
  const Json& fixture = expected_ids();
  const auto tokenizer = CLIPTokenizer::from_folder(micro_dir());
  const auto prompts = fixture.at("prompts").get<std::vector<std::string>>();
  std::vector<std::vector<Ids>> results(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      const CLIPTokenizer copy = tokenizer;  // copies share the cache
      for (int round = 0; round < 20; ++round) {
        for (const auto& prompt : prompts) results[t].push_back(copy.encode(prompt));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const auto& reference = fixture.at("vocabularies").at("micro-sd").at("content_ids");
  for (const auto& result : results) {
    ASSERT_EQ(result.size(), prompts.size() * 20);
    for (std::size_t i = 0; i < result.size(); ++i) EXPECT_EQ(result[i], reference[i % prompts.size()].get<Ids>());
  }
}

TEST(CLIPTokenizer, InvalidUtf8IsAnError) {
  const auto tokenizer = CLIPTokenizer::from_folder(micro_dir());
  const std::pair<std::string, std::string> cases[] = {
      {std::string("ab\x80", 3), "byte 2"},                 // stray continuation byte
      {std::string("a\xC3", 2), "byte 1"},                  // truncated sequence
      {std::string("\xC0\x80", 2), "byte 0"},               // overlong NUL
      {std::string("x\xED\xA0\x80", 4), "byte 1"},         // UTF-16 surrogate
      {std::string("\xF4\x90\x80\x80", 4), "byte 0"},       // above U+10FFFF
      {std::string("ok \xFF", 4), "byte 3"},
  };
  for (const auto& [text, where] : cases) {
    EXPECT_THROW_WITH(tokenizer.encode(text), "prompt", "invalid UTF-8", where);
    EXPECT_THROW_WITH(tokenizer.encode_batch({"fine", text}), "prompt 1", "invalid UTF-8", where);
  }
  EXPECT_EQ(tokenizer.encode(std::string("a\0b", 3)).size(), 3u);  // NUL is valid UTF-8 (a control character)
}

// ---------------------------------------------------------------------------------------------
// Bad folders: each gives one message naming the file and the problem.

class BadFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    vocab_ = lisadiff::testing::read_json(micro_dir() / "vocab.json");
    merges_ = lisadiff::testing::read_file(micro_dir() / "merges.txt");
  }
  // Writes vocab_ and merges_ (and any extra files), then loads the folder.
  CLIPTokenizer load(const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "added_tokens.json"}) {
      std::filesystem::remove(dir_ / name);
    }
    write_file(dir_ / "vocab.json", vocab_.dump());
    write_file(dir_ / "merges.txt", merges_);
    for (const auto& [name, text] : extra) write_file(dir_ / name, text);
    return CLIPTokenizer::from_folder(dir_.path());
  }
  std::string file(const char* name) const { return (dir_ / name).string(); }

  TempDir dir_;
  Json vocab_;
  std::string merges_;
};

TEST_F(BadFolder, TheValidBaseLoads) {
  EXPECT_EQ(load().vocab_size(), 815);
  EXPECT_EQ(load().max_length(), 77);  // no tokenizer_config.json: CLIP's 77 positions
}

TEST_F(BadFolder, MissingFolderOrFiles) {
  EXPECT_THROW_WITH(CLIPTokenizer::from_folder(dir_ / "nope"), "nope", "not a directory");
  write_file(dir_ / "merges.txt", merges_);
  EXPECT_THROW_WITH(CLIPTokenizer::from_folder(dir_.path()), file("vocab.json"), "cannot open");
  std::filesystem::remove(dir_ / "merges.txt");
  write_file(dir_ / "vocab.json", vocab_.dump());
  EXPECT_THROW_WITH(CLIPTokenizer::from_folder(dir_.path()), file("merges.txt"), "cannot open");
}

TEST_F(BadFolder, VocabJson) {
  write_file(dir_ / "merges.txt", merges_);
  write_file(dir_ / "vocab.json", "{\"a\": 1,");
  EXPECT_THROW_WITH(CLIPTokenizer::from_folder(dir_.path()), file("vocab.json"), "not valid JSON");
  write_file(dir_ / "vocab.json", "[1, 2]");
  EXPECT_THROW_WITH(CLIPTokenizer::from_folder(dir_.path()), file("vocab.json"), "expected a JSON object");
  const Json base = vocab_;
  vocab_["hello</w>"] = "12";
  EXPECT_THROW_WITH(load(), file("vocab.json"), "token \"hello</w>\"", "non-negative integer id", "string \"12\"");
  vocab_ = base;
  vocab_["hello</w>"] = -3;
  EXPECT_THROW_WITH(load(), file("vocab.json"), "non-negative integer id", "integer -3");
  vocab_ = base;
  vocab_["zzz"] = 5;
  EXPECT_THROW_WITH(load(), file("vocab.json"), "id 5 is given to both");
  vocab_ = base;
  vocab_.erase("\u0100</w>");  // byte 0x00 with </w>
  EXPECT_THROW_WITH(load(), file("vocab.json"), "byte symbol \"\u0100</w>\" (byte 0x00) is missing");
}

TEST_F(BadFolder, MergeLines) {
  const std::string base = merges_;
  merges_ = base + "a\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 303", "expected two symbols separated by one space", "\"a\"");
  merges_ = base + "a b c\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 303", "expected two symbols");
  merges_ = base + "a  b\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 303", "expected two symbols");
  merges_ = "#version: 0.2\n\na c\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 2", "expected two symbols");
  merges_ = base + "q@ z\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 303", "symbol \"q@\" is not in vocab.json");
  merges_ = base + "q z\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 303", "merged token \"qz\" is not in vocab.json");
  merges_ = base + "a c\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "line 303", "repeats the merge of rank 0");
  merges_ = "#version: 0.2\n";
  EXPECT_THROW_WITH(load(), file("merges.txt"), "no merges");
  merges_ = std::string("#version: 0.2\na \xC3\n", 18);
  EXPECT_THROW_WITH(load(), file("merges.txt"), "invalid UTF-8");
  merges_ = "#version: 0.2\r\na c\r\n";  // CRLF lines are accepted, as `tokenizers` accepts them
  EXPECT_NO_THROW(load());
}

TEST_F(BadFolder, SpecialTokens) {
  vocab_.erase("<|startoftext|>");
  EXPECT_THROW_WITH(load(), file("vocab.json"), "special token bos_token = \"<|startoftext|>\"",
                    "CLIPTokenizer's default", "is not in the vocabulary");
  SetUp();
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"pad_token": "<pad>"})"}}), file("vocab.json"),
                    "special token pad_token = \"<pad>\"", file("tokenizer_config.json"), "not in the vocabulary");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"bos_token": 3})"}}), file("tokenizer_config.json"),
                    "field 'bos_token'", "expected a string or an AddedToken object", "integer 3");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"bos_token": {"content": "<|startoftext|>"}})"}}),
                    file("tokenizer_config.json"), "field 'bos_token'", "\"__type\": \"AddedToken\"");
  EXPECT_THROW_WITH(
      load({{"tokenizer_config.json", R"({"eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": true}})"}}),
      file("tokenizer_config.json"), "field 'eos_token'", "\"lstrip\": true is not supported");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"eos_token": {"__type": "AddedToken"}})"}}),
                    file("tokenizer_config.json"), "non-empty string \"content\"");
  EXPECT_THROW_WITH(load({{"special_tokens_map.json", R"({"pad_token": {"content": "!", "normalized": "yes"}})"}}),
                    file("special_tokens_map.json"), "field 'pad_token'", "\"normalized\" must be a boolean");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"pad_token": null})"}}), file("tokenizer_config.json"),
                    "must not be null");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", "{\"pad_token\": "}}), file("tokenizer_config.json"),
                    "not valid JSON");
  EXPECT_THROW_WITH(load({{"special_tokens_map.json", "[]"}}), file("special_tokens_map.json"), "JSON object");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"additional_special_tokens": ["<cat-toy>"]})"}}),
                    file("tokenizer_config.json"), "additional_special_tokens", "not supported");
}

// Textual-inversion style added tokens would be matched by transformers; lisadiff refuses them
// instead of tokenizing them as plain text.
TEST_F(BadFolder, AddedTokensBeyondTheSpecialOnesAreRefused) {
  EXPECT_THROW_WITH(
      load({{"tokenizer_config.json",
             R"({"added_tokens_decoder": {"815": {"content": "<cat-toy>", "special": false}}})"}}),
      file("tokenizer_config.json"), "added_tokens_decoder[\"815\"]", "added token \"<cat-toy>\" (id 815)",
      "not supported");
  EXPECT_THROW_WITH(load({{"tokenizer_config.json", R"({"added_tokens_decoder": {"x": {"content": "a"}}})"}}),
                    file("tokenizer_config.json"), "the key must be a token id");
  EXPECT_THROW_WITH(load({{"added_tokens.json", R"({"<cat-toy>": 815})"}}), file("added_tokens.json"),
                    "added token \"<cat-toy>\"", "not supported");
  EXPECT_THROW_WITH(load({{"tokenizer.json", R"({"added_tokens": [{"id": 815, "content": "<cat-toy>"}]})"}}),
                    file("tokenizer.json"), "added_tokens[0]", "added token \"<cat-toy>\"", "not supported");
  EXPECT_THROW_WITH(load({{"tokenizer.json", R"({"added_tokens": [{"content": "x"}]})"}}), file("tokenizer.json"),
                    "added_tokens[0]", "\"id\"");
}

TEST_F(BadFolder, ModelMaxLength) {
  EXPECT_EQ(load({{"tokenizer_config.json", R"({"model_max_length": 20})"}}).max_length(), 20);
  for (const char* bad : {"1", "77.5", "1e30", "\"77\""}) {
    EXPECT_THROW_WITH(load({{"tokenizer_config.json", std::string(R"({"model_max_length": )") + bad + "}"}}),
                      file("tokenizer_config.json"), "field 'model_max_length'", "expected an integer from 2");
  }
}

}  // namespace
}  // namespace lisadiff::models
