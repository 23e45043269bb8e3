#include "models/clip_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <queue>
#include <shared_mutex>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>
// Unicode data comes from utf8proc (Debian libutf8proc-dev, Unicode 15.0): NFC, general
// categories and case mapping, all from one table of one Unicode version. RE2 (also installed) is
// not used: its `\s` is ASCII-only (the reference's `\s` is Unicode White_Space), its `\p{L}`
// tables are an older Unicode version than utf8proc's, and the pattern is a plain
// leftmost-first alternation of literals and character-class runs, which a short scanner over
// utf8proc's categories reproduces exactly (split_pieces below). The reference, `tokenizers`
// 0.23, uses Unicode 16.0 tables: characters first assigned in Unicode 16 (Garay, Todhri, ...) are
// unassigned here, hence "other" symbols that are not lowercased. tests/models/
// test_clip_tokenizer.cpp checks every code point against tables made with the reference.
#include <utf8proc.h>

#include "config/json_fields.h"
#include "core/error.h"

namespace lisadiff::models {

using config::Json;

// ---------------------------------------------------------------------------------------------
// Unicode

namespace {

// Unicode White_Space: what `\s` matches in the Oniguruma regexes of `tokenizers` (U+0009..000D,
// U+0085 and the categories Zs, Zl, Zp).
bool is_white_space(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

// Rust's char::to_lowercase, which `tokenizers`' Lowercase applies character by character (so no
// final-sigma rule, unlike Python's str.lower). It is the full mapping; the only unconditional
// lowercase mapping of SpecialCasing.txt that differs from the simple one utf8proc_tolower gives
// is U+0130 (İ → "i" + U+0307).
void append_lowercase(char32_t c, std::u32string& out) {
  if (c == 0x130) {
    out += U'i';
    out += char32_t{0x307};
    return;
  }
  out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}

void append_utf8(char32_t c, std::string& out) {
  utf8proc_uint8_t buffer[4];
  const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buffer);
  out.append(reinterpret_cast<const char*>(buffer), static_cast<std::size_t>(n));
}

std::string to_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char32_t c : text) append_utf8(c, out);
  return out;
}

// Decodes valid UTF-8 (validated by the caller).
std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(text.size());
  while (left > 0) {
    utf8proc_int32_t c = 0;
    const auto n = utf8proc_iterate(p, left, &c);
    if (n <= 0) throw Error("internal error: invalid UTF-8 after validation");
    out += static_cast<char32_t>(c);
    p += n;
    left -= n;
  }
  return out;
}

// Throws for invalid UTF-8 (overlong forms, surrogates, > U+10FFFF, truncated sequences).
void validate_utf8(std::string_view text, const std::string& what) {
  const auto* begin = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  const auto* p = begin;
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(text.size());
  while (left > 0) {
    if (*p < 0x80) {
      ++p;
      --left;
      continue;
    }
    utf8proc_int32_t c = 0;
    const auto n = utf8proc_iterate(p, left, &c);
    if (n <= 0) {
      throw Error(what, fmt::format("invalid UTF-8 at byte {} (0x{:02x}); the tokenizer takes UTF-8 text",
                                    p - begin, static_cast<unsigned>(*p)));
    }
    p += n;
    left -= n;
  }
}

}  // namespace

namespace clip_detail {

CharClass char_class(char32_t c) {
  if (is_white_space(c)) return CharClass::kSpace;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
      return CharClass::kLetter;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return CharClass::kNumber;
    default:
      return CharClass::kOther;
  }
}

bool is_unassigned(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_CN;
}

// transformers 5 CLIPTokenizer's normalizer: NFC, then `\s+` → " ", then Lowercase.
std::u32string normalize(std::string_view utf8) {
  std::u32string decoded;
  const bool ascii = std::all_of(utf8.begin(), utf8.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii) {
    decoded.assign(utf8.begin(), utf8.end());  // NFC leaves ASCII unchanged
  } else {
    utf8proc_uint8_t* nfc = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                                static_cast<utf8proc_ssize_t>(utf8.size()), &nfc,
                                static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) throw Error(std::string("NFC normalisation failed: ") + utf8proc_errmsg(n));
    const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(nfc, &std::free);
    decoded = decode_utf8(std::string_view(reinterpret_cast<const char*>(nfc), static_cast<std::size_t>(n)));
  }
  std::u32string out;
  out.reserve(decoded.size());
  for (std::size_t i = 0; i < decoded.size(); ++i) {
    if (is_white_space(decoded[i])) {
      out += U' ';
      while (i + 1 < decoded.size() && is_white_space(decoded[i + 1])) ++i;
    } else {
      append_lowercase(decoded[i], out);
    }
  }
  return out;
}

}  // namespace clip_detail

namespace {

using clip_detail::CharClass;
using clip_detail::char_class;
using clip_detail::normalize;

// Pre-tokenisation

// Splits `text` into the matches of CLIP's pattern (mode kClip)
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// or of the GPT-2 pattern that `tokenizers`' ByteLevel pre-tokenizer applies afterwards (mode
// kByteLevel; on text without whitespace it reduces to
//   's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+ ).
// Alternatives are tried in order at each position (leftmost-first, like Oniguruma); positions
// where none matches (whitespace) are dropped.
enum class SplitMode { kClip, kByteLevel };

template <class Emit>
void split_pieces(std::u32string_view text, SplitMode mode, const Emit& emit) {
  static constexpr std::u32string_view kSpecials[] = {U"<|startoftext|>", U"<|endoftext|>"};
  static constexpr std::u32string_view kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  std::size_t i = 0;
  const std::size_t n = text.size();
  auto run = [&](std::size_t from, CharClass cls) {
    std::size_t j = from;
    while (j < n && char_class(text[j]) == cls) ++j;
    return j;
  };
  while (i < n) {
    const std::u32string_view rest = text.substr(i);
    std::size_t length = 0;
    if (mode == SplitMode::kClip) {
      for (const auto special : kSpecials) {
        if (rest.substr(0, special.size()) == special) {
          length = special.size();
          break;
        }
      }
    }
    if (length == 0 && text[i] == U'\'') {
      for (const auto contraction : kContractions) {
        if (rest.substr(0, contraction.size()) == contraction) {
          length = contraction.size();
          break;
        }
      }
    }
    if (length == 0) {
      const CharClass cls = char_class(text[i]);
      if (cls == CharClass::kSpace) {
        ++i;
        continue;
      }
      if (cls == CharClass::kNumber && mode == SplitMode::kClip) {
        length = 1;  // CLIP keeps every digit a piece of its own
      } else {
        length = run(i, cls) - i;
      }
    }
    emit(text.substr(i, length));
    i += length;
  }
}

// Leftmost-longest split of `text` on `tokens` (what `tokenizers`' AddedVocabulary does with
// aho-corasick): calls on_text(segment) for the text between matches and on_token(id) for each.
template <class Char, class OnText, class OnToken>
void split_on_tokens(std::basic_string_view<Char> text,
                     const std::vector<std::pair<std::basic_string<Char>, std::int64_t>>& tokens,
                     const OnText& on_text, const OnToken& on_token) {
  std::size_t start = 0;
  std::size_t i = 0;
  while (i < text.size() && !tokens.empty()) {
    std::size_t best_length = 0;
    std::int64_t best_id = 0;
    for (const auto& [content, id] : tokens) {
      if (content.size() > best_length && text.compare(i, content.size(), content) == 0) {
        best_length = content.size();
        best_id = id;
      }
    }
    if (best_length == 0) {
      ++i;
      continue;
    }
    if (i > start) on_text(text.substr(start, i - start));
    on_token(best_id);
    i += best_length;
    start = i;
  }
  if (start < text.size()) on_text(text.substr(start));
}

// GPT-2's bytes_to_unicode: byte b is written as this code point in vocab.json and merges.txt.
std::array<char32_t, 256> byte_symbols() {
  std::array<char32_t, 256> out{};
  char32_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    out[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next_extra++;
  }
  return out;
}

std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

std::string json_quoted(const std::string& text) { return Json(text).dump(); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// The loaded tokenizer

struct CLIPTokenizer::Impl {
  struct Merge {
    std::int32_t rank;
    std::int32_t new_id;
  };

  std::unordered_map<std::string, std::int32_t> vocab;
  std::unordered_map<std::uint64_t, Merge> merges;  // (left id, right id) → rank, merged id
  std::array<std::int32_t, 256> byte_id{};          // id of byte b's symbol
  std::array<std::int32_t, 256> byte_end_id{};      // id of byte b's symbol + "</w>"
  std::vector<CLIPAddedToken> added;
  std::vector<std::pair<std::string, std::int64_t>> raw_tokens;            // normalized: false
  std::vector<std::pair<std::u32string, std::int64_t>> normalized_tokens;  // normalized: true
  std::int64_t bos = 0, eos = 0, pad = 0, unk = 0, max_length = 77;

  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache;

  // Content ids; `label` names the text in the error for invalid UTF-8.
  std::vector<std::int64_t> encode(const std::string& utf8, const std::string& label) const;
  void encode_text(std::string_view text, std::vector<std::int64_t>& out) const;
  void encode_normalized(std::u32string_view text, std::vector<std::int64_t>& out) const;
  void bpe(const std::string& piece, std::vector<std::int64_t>& out) const;
  std::vector<std::int32_t> merge_all(const std::string& piece) const;
};

void CLIPTokenizer::Impl::encode_text(std::string_view text, std::vector<std::int64_t>& out) const {
  split_on_tokens<char>(
      text, raw_tokens,
      [&](std::string_view segment) {
        const std::u32string normalized = normalize(segment);
        split_on_tokens<char32_t>(
            normalized, normalized_tokens, [&](std::u32string_view part) { encode_normalized(part, out); },
            [&](std::int64_t id) { out.push_back(id); });
      },
      [&](std::int64_t id) { out.push_back(id); });
}

void CLIPTokenizer::Impl::encode_normalized(std::u32string_view text, std::vector<std::int64_t>& out) const {
  split_pieces(text, SplitMode::kClip, [&](std::u32string_view piece) {
    split_pieces(piece, SplitMode::kByteLevel, [&](std::u32string_view word) { bpe(to_utf8(word), out); });
  });
}

void CLIPTokenizer::Impl::bpe(const std::string& piece, std::vector<std::int64_t>& out) const {
  {
    std::shared_lock lock(cache_mutex);
    const auto it = cache.find(piece);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int32_t> ids = merge_all(piece);
  out.insert(out.end(), ids.begin(), ids.end());
  std::unique_lock lock(cache_mutex);
  if (cache.size() < kCacheCapacity) cache.emplace(piece, std::move(ids));
}

// `tokenizers`' Word::merge_all: a min-heap of candidate merges ordered by (rank, position); a
// popped candidate whose pair has changed since it was pushed is skipped.
std::vector<std::int32_t> CLIPTokenizer::Impl::merge_all(const std::string& piece) const {
  struct Symbol {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
    bool alive;
  };
  struct Candidate {
    std::int32_t rank;
    std::int32_t pos;
    std::int32_t new_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  const auto n = static_cast<std::int32_t>(piece.size());
  std::vector<Symbol> symbols(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) {
    const auto byte = static_cast<unsigned char>(piece[static_cast<std::size_t>(i)]);
    symbols[static_cast<std::size_t>(i)] = {i + 1 == n ? byte_end_id[byte] : byte_id[byte], i - 1,
                                            i + 1 == n ? -1 : i + 1, true};
  }
  auto find = [&](std::int32_t left, std::int32_t right) -> const Merge* {
    const auto it = merges.find(pair_key(left, right));
    return it == merges.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (std::int32_t i = 0; i + 1 < n; ++i) {
    if (const Merge* m = find(symbols[i].id, symbols[i + 1].id)) queue.push({m->rank, i, m->new_id});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[static_cast<std::size_t>(top.pos)];
    if (!current.alive || current.next < 0) continue;
    Symbol& right = symbols[static_cast<std::size_t>(current.next)];
    const Merge* still = find(current.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;  // an expired candidate
    current.id = top.new_id;
    right.alive = false;
    current.next = right.next;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;
    if (current.prev >= 0) {
      if (const Merge* m = find(symbols[static_cast<std::size_t>(current.prev)].id, current.id)) {
        queue.push({m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      if (const Merge* m = find(current.id, symbols[static_cast<std::size_t>(current.next)].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  std::vector<std::int32_t> ids;
  for (const Symbol& s : symbols) {
    if (s.alive) ids.push_back(s.id);
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string(), "cannot open (missing or unreadable)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error(path.string(), "read error");
  return buffer.str();
}

// For vocab.json and tokenizer.json: nlohmann::json, not the ordered_json of config files, whose
// objects insert in linear time (a CLIP vocabulary has 49,408 keys).
nlohmann::json read_large_json(const std::filesystem::path& path) {
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

std::unordered_map<std::string, std::int32_t> read_vocab(const std::filesystem::path& path) {
  const std::string file = path.string();
  const nlohmann::json json = read_large_json(path);
  if (!json.is_object() || json.empty()) {
    throw Error(file, "expected a JSON object mapping tokens to ids, found " + config::describe_json(Json(json)));
  }
  std::unordered_map<std::string, std::int32_t> vocab;
  vocab.reserve(json.size());
  std::unordered_map<std::int32_t, const std::string*> by_id;
  by_id.reserve(json.size());
  for (const auto& [token, value] : json.items()) {
    const bool in_range = value.is_number_unsigned() ? value.get<std::uint64_t>() <= INT32_MAX
                          : value.is_number_integer() && value.get<std::int64_t>() >= 0 && value.get<std::int64_t>() <= INT32_MAX;
    if (!in_range) {
      throw Error(file, "token " + json_quoted(token),
                  "expected a non-negative integer id, found " + config::describe_json(Json(value)));
    }
    const auto id = value.get<std::int32_t>();
    if (token.empty()) throw Error(file, "the empty string is not a token");
    const auto entry = vocab.emplace(token, id).first;
    const auto [other, fresh] = by_id.emplace(id, &entry->first);
    if (!fresh) {
      throw Error(file, fmt::format("id {} is given to both {} and {}", id, json_quoted(*other->second), json_quoted(token)));
    }
  }
  return vocab;
}

// merges.txt as `tokenizers` reads it: lines starting with "#version" are skipped, every other
// line is two symbols separated by one space; rank = index among the merge lines.
void read_merges(const std::filesystem::path& path, CLIPTokenizer::Impl& impl) {
  const std::string file = path.string();
  const std::string text = read_text_file(path);
  validate_utf8(text, file);
  std::size_t begin = 0;
  std::int32_t rank = 0;
  for (std::size_t line_number = 1; begin < text.size(); ++line_number) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0) continue;
    const std::string where = fmt::format("line {}", line_number);
    const auto space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      throw Error(file, where, "expected two symbols separated by one space, found " + json_quoted(line));
    }
    const std::string left = line.substr(0, space);
    const std::string right = line.substr(space + 1);
    auto id_of = [&](const std::string& token, const char* role) {
      const auto it = impl.vocab.find(token);
      if (it == impl.vocab.end()) {
        throw Error(file, where, fmt::format("{} {} is not in vocab.json", role, json_quoted(token)));
      }
      return it->second;
    };
    const std::int32_t left_id = id_of(left, "symbol");
    const std::int32_t right_id = id_of(right, "symbol");
    const std::int32_t merged_id = id_of(left + right, "merged token");
    const auto [it, fresh] = impl.merges.emplace(pair_key(left_id, right_id), CLIPTokenizer::Impl::Merge{rank, merged_id});
    if (!fresh) {
      throw Error(file, where, fmt::format("merge {} repeats the merge of rank {}", json_quoted(line), it->second.rank));
    }
    ++rank;
  }
  if (rank == 0) throw Error(file, "no merges (a CLIP merges.txt has a #version line, then one merge per line)");
}

void find_byte_symbols(const std::filesystem::path& vocab_path, CLIPTokenizer::Impl& impl) {
  const auto symbols = byte_symbols();
  for (std::size_t b = 0; b < 256; ++b) {
    const std::string symbol = to_utf8(std::u32string(1, symbols[b]));
    for (const auto& [token, slot] : {std::pair{symbol, &impl.byte_id[b]}, std::pair{symbol + "</w>", &impl.byte_end_id[b]}}) {
      const auto it = impl.vocab.find(token);
      if (it == impl.vocab.end()) {
        throw Error(vocab_path.string(),
                    fmt::format("byte symbol {} (byte 0x{:02x}) is missing: not a CLIP byte-level BPE vocabulary",
                                json_quoted(token), b));
      }
      *slot = it->second;
    }
  }
}

// ---- Special tokens, resolved the way transformers 5.23's from_pretrained resolves them.

// transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order (the order matters, see resolve_specials).
constexpr const char* kSpecialKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};

struct TokenSpec {
  std::string content;
  bool normalized = false;
  std::string file;  // where it was defined ("" for CLIPTokenizer's defaults)
  std::string key;
};

// An AddedToken given as a JSON object. `special_default` is what transformers assumes when the
// object has no "special" key; `normalized` defaults to !special, as in `tokenizers`.
TokenSpec parse_added_token(const Json& object, const std::string& file, const std::string& key, bool special_default) {
  const auto content = object.find("content");
  if (content == object.end() || !content->is_string() || content->get<std::string>().empty()) {
    throw Error(file, key, "an AddedToken needs a non-empty string \"content\"");
  }
  auto flag = [&](const char* name, bool fallback) {
    const auto it = object.find(name);
    if (it == object.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) {
      throw Error(file, key, fmt::format("\"{}\" must be a boolean, found {}", name, config::describe_json(*it)));
    }
    return it->get<bool>();
  };
  for (const char* unsupported : {"lstrip", "rstrip", "single_word"}) {
    if (flag(unsupported, false)) {
      throw Error(file, key, fmt::format("\"{}\": true is not supported (CLIP tokenizers use false)", unsupported));
    }
  }
  const bool special = flag("special", special_default);
  TokenSpec spec;
  spec.content = content->get<std::string>();
  spec.normalized = flag("normalized", !special);
  spec.file = file;
  spec.key = key;
  return spec;
}

// A value of bos_token etc.: a string (→ normalized false, as transformers adds named special
// tokens given as strings) or an AddedToken object.
TokenSpec parse_special_value(const Json& value, const std::string& file, const std::string& key, bool from_map) {
  if (value.is_string()) {
    if (value.get<std::string>().empty()) throw Error(file, field_key(key), "empty special token");
    return TokenSpec{value.get<std::string>(), false, file, key};
  }
  if (value.is_object()) {
    // tokenizer_config.json objects must carry "__type": "AddedToken" (transformers rejects others);
    // special_tokens_map.json objects are AddedTokens with special = true.
    if (!from_map && value.value("__type", std::string()) != "AddedToken") {
      throw Error(file, field_key(key), "an object here must have \"__type\": \"AddedToken\"");
    }
    return parse_added_token(value, file, field_key(key), /*special_default=*/from_map);
  }
  throw Error(file, field_key(key), "expected a string or an AddedToken object, found " + config::describe_json(value));
}

struct FolderFiles {
  std::filesystem::path dir;
  std::optional<Json> tokenizer_config;
  std::optional<Json> special_tokens_map;
  std::filesystem::path path(const char* name) const { return dir / name; }
};

std::optional<Json> read_optional_object(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return std::nullopt;
  Json json = config::read_json_file(path);
  if (!json.is_object()) {
    throw Error(path.string(), "expected a JSON object at the top level, found " + config::describe_json(json));
  }
  return json;
}

// transformers' added_tokens_decoder (id → AddedToken): from tokenizer_config.json's
// "added_tokens_decoder" when it has one; otherwise from added_tokens.json (legacy) and then
// tokenizer.json's "added_tokens".
std::vector<std::pair<std::int64_t, TokenSpec>> read_added_tokens(const FolderFiles& files,
                                                                  const std::vector<std::string>& special_contents) {
  std::vector<std::pair<std::int64_t, TokenSpec>> out;
  auto parse_id = [](const std::string& file, const std::string& key, const Json& value) -> std::int64_t {
    int id = 0;
    if (!config::decode(value, id) || id < 0) {
      throw Error(file, key, "expected a non-negative integer id, found " + config::describe_json(value));
    }
    return id;
  };
  if (files.tokenizer_config && files.tokenizer_config->contains("added_tokens_decoder")) {
    const std::string file = files.path("tokenizer_config.json").string();
    const Json& decoder = files.tokenizer_config->at("added_tokens_decoder");
    if (!decoder.is_object()) {
      throw Error(file, field_key("added_tokens_decoder"), "expected an object, found " + config::describe_json(decoder));
    }
    for (const auto& [id_text, token] : decoder.items()) {
      const std::string key = "added_tokens_decoder[" + json_quoted(id_text) + "]";
      std::size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(id_text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != id_text.size() || id < 0) throw Error(file, key, "the key must be a token id");
      if (!token.is_object()) throw Error(file, key, "expected an AddedToken object, found " + config::describe_json(token));
      out.emplace_back(id, parse_added_token(token, file, key, /*special_default=*/false));
    }
    return out;
  }
  const auto legacy = files.path("added_tokens.json");
  if (const auto added = read_optional_object(legacy)) {
    for (const auto& [content, id] : added->items()) {
      const bool special = std::find(special_contents.begin(), special_contents.end(), content) != special_contents.end();
      out.emplace_back(parse_id(legacy.string(), json_quoted(content), id), TokenSpec{content, !special, legacy.string(), json_quoted(content)});
    }
  }
  const auto tokenizer_json = files.path("tokenizer.json");
  if (std::filesystem::exists(tokenizer_json)) {
    const std::string file = tokenizer_json.string();
    const nlohmann::json whole = read_large_json(tokenizer_json);
    const Json tokens = whole.is_object() && whole.contains("added_tokens") ? Json(whole.at("added_tokens")) : Json();
    if (!tokens.is_null()) {
      if (!tokens.is_array()) {
        throw Error(file, field_key("added_tokens"), "expected a list, found " + config::describe_json(tokens));
      }
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        const Json& token = tokens[i];
        const std::string key = fmt::format("added_tokens[{}]", i);
        if (!token.is_object() || !token.contains("id")) throw Error(file, key, "expected an object with an \"id\"");
        out.emplace_back(parse_id(file, key, token.at("id")), parse_added_token(token, file, key, /*special_default=*/false));
      }
    }
  }
  return out;
}

// Which strings are special tokens and whether each is matched before or after normalisation,
// as transformers 5.23 decides it:
//  - bos/eos/unk/pad come from tokenizer_config.json, overridden key by key by
//    special_tokens_map.json (which transformers reads only when tokenizer_config.json has no
//    "added_tokens_decoder"); missing ones take CLIPTokenizer's defaults (strings).
//  - a value whose content is in the added-tokens table (read_added_tokens) is replaced by that
//    table's AddedToken;
//  - every named special token is then added to the backend in the order of kSpecialKeys, and a
//    later add of the same content replaces the earlier one's flags: the last key wins. So for
//    SD1.5's folder (bos/eos/unk AddedTokens with normalized true, pad the plain string
//    "<|endoftext|>"), "<|startoftext|>" is normalized and "<|endoftext|>" is not.
struct ResolvedSpecials {
  std::vector<std::pair<std::string, TokenSpec>> named;  // key → token, for keys that have one
  std::vector<TokenSpec> matched;                        // distinct contents with final flags
};

ResolvedSpecials resolve_specials(const FolderFiles& files) {
  std::vector<std::pair<std::string, TokenSpec>> named;
  const std::string config_file = files.path("tokenizer_config.json").string();
  const std::string map_file = files.path("special_tokens_map.json").string();
  const bool has_decoder = files.tokenizer_config && files.tokenizer_config->contains("added_tokens_decoder");
  for (const char* key : kSpecialKeys) {
    std::optional<TokenSpec> spec;
    const std::string name = key;
    if (name == "bos_token") spec = TokenSpec{"<|startoftext|>", false, "", key};
    if (name == "eos_token" || name == "unk_token" || name == "pad_token") spec = TokenSpec{"<|endoftext|>", false, "", key};
    if (files.tokenizer_config && files.tokenizer_config->contains(key)) {
      const Json& value = files.tokenizer_config->at(key);
      spec = value.is_null() ? std::nullopt : std::optional(parse_special_value(value, config_file, key, false));
    }
    if (!has_decoder && files.special_tokens_map && files.special_tokens_map->contains(key)) {
      const Json& value = files.special_tokens_map->at(key);
      spec = value.is_null() ? std::nullopt : std::optional(parse_special_value(value, map_file, key, true));
    }
    if (spec) named.emplace_back(key, *spec);
  }
  for (const char* list_key : {"additional_special_tokens", "extra_special_tokens"}) {
    for (const auto& [json, file] : {std::pair{&files.tokenizer_config, config_file}, std::pair{&files.special_tokens_map, map_file}}) {
      if (*json && (*json)->contains(list_key) && !(*json)->at(list_key).empty()) {
        throw Error(file, field_key(list_key), "extra special tokens are not supported by lisadiff's CLIP tokenizer");
      }
    }
  }

  std::vector<std::string> contents;
  for (const auto& [key, spec] : named) contents.push_back(spec.content);
  const auto added = read_added_tokens(files, contents);
  for (const auto& [id, token] : added) {
    if (std::find(contents.begin(), contents.end(), token.content) == contents.end()) {
      throw Error(token.file, token.key,
                  fmt::format("added token {} (id {}) is not one of the special tokens: added tokens (e.g. from "
                              "textual inversion) are not supported",
                              json_quoted(token.content), id));
    }
  }
  for (auto& [key, spec] : named) {
    for (const auto& [id, token] : added) {
      if (token.content == spec.content) spec = token;  // the last entry with that content, like a dict
    }
  }
  ResolvedSpecials out;
  out.named = named;
  for (const auto& entry : named) {
    const TokenSpec& spec = entry.second;  // not a structured binding: C++17 lambdas cannot capture those
    auto same = std::find_if(out.matched.begin(), out.matched.end(),
                             [&](const TokenSpec& t) { return t.content == spec.content; });
    if (same == out.matched.end()) {
      out.matched.push_back(spec);
    } else {
      *same = spec;  // the last key with this content decides its flags
    }
  }
  return out;
}

std::int64_t read_max_length(const FolderFiles& files) {
  if (!files.tokenizer_config || !files.tokenizer_config->contains("model_max_length")) return 77;
  const Json& value = files.tokenizer_config->at("model_max_length");
  int length = 0;
  if (!config::decode(value, length) || length < 2 || length > 1'000'000) {
    throw Error(files.path("tokenizer_config.json").string(), field_key("model_max_length"),
                "expected an integer from 2 to 1000000 (CLIP uses 77), found " + config::describe_json(value));
  }
  return length;
}

}  // namespace

CLIPTokenizer CLIPTokenizer::from_folder(const std::filesystem::path& tokenizer_dir) {
  auto impl = std::make_shared<Impl>();
  FolderFiles files;
  files.dir = tokenizer_dir;
  if (!std::filesystem::is_directory(tokenizer_dir)) {
    throw Error(tokenizer_dir.string(), "not a directory (expected a tokenizer folder with vocab.json and merges.txt)");
  }
  const auto vocab_path = files.path("vocab.json");
  impl->vocab = read_vocab(vocab_path);
  find_byte_symbols(vocab_path, *impl);
  read_merges(files.path("merges.txt"), *impl);
  files.tokenizer_config = read_optional_object(files.path("tokenizer_config.json"));
  files.special_tokens_map = read_optional_object(files.path("special_tokens_map.json"));
  impl->max_length = read_max_length(files);

  const ResolvedSpecials specials = resolve_specials(files);
  auto id_of = [&](const TokenSpec& spec) -> std::int64_t {
    const auto it = impl->vocab.find(spec.content);
    if (it == impl->vocab.end()) {
      const std::string origin = spec.file.empty() ? "CLIPTokenizer's default" : "from " + spec.file;
      throw Error(vocab_path.string(), fmt::format("special token {} = {} ({}) is not in the vocabulary", spec.key,
                                                   json_quoted(spec.content), origin));
    }
    return it->second;
  };
  for (const TokenSpec& spec : specials.matched) {
    const std::int64_t id = id_of(spec);
    impl->added.push_back({spec.content, id, spec.normalized});
    if (spec.normalized) {
      // Matched in normalised text, so its content is normalised too (as `tokenizers` does).
      impl->normalized_tokens.emplace_back(normalize(spec.content), id);
    } else {
      impl->raw_tokens.emplace_back(spec.content, id);
    }
  }
  bool have_bos = false, have_eos = false, have_pad = false;
  for (const auto& [key, spec] : specials.named) {
    if (key == "bos_token") impl->bos = id_of(spec), have_bos = true;
    if (key == "eos_token") impl->eos = id_of(spec), have_eos = true;
    if (key == "pad_token") impl->pad = id_of(spec), have_pad = true;
    if (key == "unk_token") impl->unk = id_of(spec);
  }
  if (!have_bos || !have_eos || !have_pad) {
    throw Error(files.path("tokenizer_config.json").string(),
                "bos_token, eos_token and pad_token must not be null (CLIP wraps and pads every prompt)");
  }
  return CLIPTokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::vector<std::int64_t> CLIPTokenizer::Impl::encode(const std::string& utf8, const std::string& label) const {
  validate_utf8(utf8, label);
  std::vector<std::int64_t> ids;
  encode_text(utf8, ids);
  return ids;
}

std::vector<std::int64_t> CLIPTokenizer::encode(const std::string& utf8) const { return impl_->encode(utf8, "prompt"); }

namespace {

// [bos] + content cut to max_length - 2 + [eos], padded to max_length; returns the unpadded length.
std::size_t wrap_and_pad(const std::vector<std::int64_t>& content, const CLIPTokenizer& tokenizer,
                         std::int64_t* row) {
  const auto length = static_cast<std::size_t>(tokenizer.max_length());
  const std::size_t keep = std::min(content.size(), length - 2);
  row[0] = tokenizer.bos_id();
  std::copy(content.begin(), content.begin() + static_cast<std::ptrdiff_t>(keep), row + 1);
  row[keep + 1] = tokenizer.eos_id();
  std::fill(row + keep + 2, row + length, tokenizer.pad_id());
  return keep + 2;
}

}  // namespace

std::vector<std::int64_t> CLIPTokenizer::encode_padded(const std::string& utf8) const {
  std::vector<std::int64_t> row(static_cast<std::size_t>(impl_->max_length));
  wrap_and_pad(encode(utf8), *this, row.data());
  return row;
}

CLIPTokenizerOutput CLIPTokenizer::tokenize(const std::vector<std::string>& prompts) const {
  const auto batch = static_cast<std::int64_t>(prompts.size());
  const std::int64_t length = impl_->max_length;
  auto ids = torch::empty({batch, length}, torch::kLong);
  auto mask = torch::zeros({batch, length}, torch::kLong);
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::string label = "prompt " + std::to_string(b);
    const std::size_t real = wrap_and_pad(impl_->encode(prompts[static_cast<std::size_t>(b)], label), *this,
                                          ids.data_ptr<std::int64_t>() + b * length);
    mask[b].narrow(/*dim=*/0, /*start=*/0, static_cast<std::int64_t>(real)).fill_(1);
  }
  return {ids, mask};
}

torch::Tensor CLIPTokenizer::encode_batch(const std::vector<std::string>& prompts) const {
  return tokenize(prompts).input_ids;
}

std::int64_t CLIPTokenizer::bos_id() const { return impl_->bos; }
std::int64_t CLIPTokenizer::eos_id() const { return impl_->eos; }
std::int64_t CLIPTokenizer::pad_id() const { return impl_->pad; }
std::int64_t CLIPTokenizer::unk_id() const { return impl_->unk; }
std::int64_t CLIPTokenizer::max_length() const { return impl_->max_length; }
std::int64_t CLIPTokenizer::vocab_size() const { return static_cast<std::int64_t>(impl_->vocab.size()); }
const std::vector<CLIPAddedToken>& CLIPTokenizer::added_tokens() const { return impl_->added; }

}  // namespace lisadiff::models
