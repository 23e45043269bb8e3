#include "data/dataset.h"

#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "data/image.h"
#include "data/sources.h"
#include "io/atomic_file.h"

namespace lisadiff::data {
namespace {

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  const auto b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

bool is_image_field(const std::string& ext) {
  return ext == "jpg" || ext == "jpeg" || ext == "png" || ext == "webp" || ext == "bmp" || ext == "gif";
}

// Where one record's fields are looked up, with messages that name the file or sample.
class Fields {
 public:
  explicit Fields(const Record& r) : r_(r) {}

  // The encoded image of `column` and a description for messages; nullopt when absent.
  std::optional<std::pair<std::string, std::string>> image(const std::string& column) const {
    const auto file = r_.files.find(column);
    if (file != r_.files.end()) return std::pair{io::read_file(file->second), file->second.string()};
    const auto exact = r_.bytes.find(column);
    if (exact != r_.bytes.end()) return std::pair{exact->second, r_.where() + " member ." + column};
    for (const auto& [field, data] : r_.bytes) {
      if (field.size() > column.size() + 1 && field.compare(0, column.size() + 1, column + ".") == 0 &&
          is_image_field(field.substr(column.size() + 1))) {
        return std::pair{data, r_.where() + " member ." + field};
      }
    }
    return std::nullopt;
  }

  // A value column: a .txt member, a raw member, or the key of the .json / metadata line.
  std::optional<nlohmann::json> value(const std::string& column) const {
    for (const auto& name : {column + ".txt", column}) {
      const auto it = r_.bytes.find(name);
      if (it != r_.bytes.end()) return nlohmann::json(it->second);
    }
    if (r_.values.is_object() && r_.values.contains(column)) return r_.values.at(column);
    return std::nullopt;
  }

 private:
  const Record& r_;
};

struct BadSample : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string caption_of(const std::optional<nlohmann::json>& value, const std::string& column, TransformDraws& draws) {
  if (!value) throw BadSample("missing caption column '" + column + "'");
  std::string text;
  if (value->is_string()) {
    text = value->get<std::string>();
  } else if (value->is_array() && !value->empty()) {
    // A list of captions: one at random, as the LCM and text-to-image scripts do.
    const auto i = static_cast<std::size_t>(draws.uniform_int(static_cast<std::int64_t>(value->size()) - 1));
    if (!(*value)[i].is_string()) throw BadSample("caption column '" + column + "' holds a non-string list item");
    text = (*value)[i].get<std::string>();
  } else {
    throw BadSample("caption column '" + column + "' is " + std::string(value->type_name()) + ", not a string");
  }
  if (trim(text).empty()) throw BadSample("empty caption in column '" + column + "'");
  return text;
}

torch::Tensor load_image(const Fields& fields, const std::string& column, const ImageTransform& transform,
                         TransformDraws& draws) {
  const auto found = fields.image(column);
  if (!found) throw BadSample("missing image column '" + column + "'");
  return transform(decode_image(found->first, found->second), draws);
}

// The t2i image column: explicit, or the first of the LCM script's extensions.
std::string t2i_image_column(const Record& r, const Columns& c) {
  if (!c.t2i_defaults || r.files.count(c.image) != 0) return c.image;
  for (const char* ext : {"jpg", "png", "jpeg", "webp"}) {
    if (r.bytes.count(ext) != 0) return ext;
  }
  return c.image;
}

std::optional<nlohmann::json> t2i_caption(const Fields& fields, const Record& r, const Columns& c, std::string& column) {
  column = c.caption;
  if (c.t2i_defaults && r.files.empty()) {
    for (const char* key : {"text", "txt", "caption"}) {
      const auto it = r.bytes.find(key);
      if (it != r.bytes.end()) {
        column = key;
        return nlohmann::json(it->second);
      }
    }
  }
  return fields.value(c.caption);
}

std::optional<std::string> filtered_by(const nlohmann::json& values, const SampleFilters& f) {
  if (!f.active() || !values.is_object()) return std::nullopt;
  const auto number = [&](const char* key) -> std::optional<double> {
    const auto it = values.find(key);
    if (it == values.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  if (f.min_original_size > 0) {
    const auto w = number("original_width"), h = number("original_height");
    if ((w && *w < static_cast<double>(f.min_original_size)) || (h && *h < static_cast<double>(f.min_original_size))) {
      return "original size below " + std::to_string(f.min_original_size);
    }
  }
  if (f.max_pwatermark >= 0) {
    const auto p = number("pwatermark");
    if (p && *p > f.max_pwatermark) return "pwatermark above the limit";
  }
  if (f.min_aesthetic >= 0) {
    const auto a = number("aesthetic");
    if (a && *a < f.min_aesthetic) return "aesthetic score below the limit";
  }
  return std::nullopt;
}

}  // namespace

ExampleKind parse_example_kind(const std::string& name, const std::string& source) {
  if (name == "t2i") return ExampleKind::kT2i;
  if (name == "ip2p") return ExampleKind::kIp2p;
  if (name == "dpo") return ExampleKind::kDpo;
  throw Error(source + ": unknown dataset kind '" + name + "' (t2i, ip2p or dpo)");
}

const char* kind_name(ExampleKind kind) {
  switch (kind) {
    case ExampleKind::kT2i: return "t2i";
    case ExampleKind::kIp2p: return "ip2p";
    case ExampleKind::kDpo: return "dpo";
  }
  return "?";
}

void RecordSource::skip(std::int64_t n) {
  Record r;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!next(r)) return;
  }
}

DataOptions DataOptions::for_recipe(ExampleKind kind) {
  DataOptions o;
  o.kind = kind;
  auto& t = o.transform;
  switch (kind) {
    case ExampleKind::kT2i:
      t.resolution = 512;
      t.resize = ImageTransform::Resize::kShorterSide;
      t.interpolation = Interpolation::kBilinear;
      t.crop = ImageTransform::Crop::kRandom;
      t.random_flip = false;
      t.normalize = ImageTransform::Normalize::kMeanStd;
      o.resample_shards = true;
      o.drop_last = true;
      break;
    case ExampleKind::kIp2p:
      t.resolution = 256;
      t.resize = ImageTransform::Resize::kExact;
      t.interpolation = Interpolation::kBicubic;
      t.crop = ImageTransform::Crop::kCenter;
      t.random_flip = false;
      t.normalize = ImageTransform::Normalize::kIp2p;
      o.shared_pair_draws = true;
      break;
    case ExampleKind::kDpo:
      t.resolution = 512;
      t.resize = ImageTransform::Resize::kShorterSide;
      t.interpolation = Interpolation::kBilinear;
      t.crop = ImageTransform::Crop::kCenter;
      t.random_flip = true;
      t.normalize = ImageTransform::Normalize::kMeanStd;
      o.shared_pair_draws = false;
      break;
  }
  return o;
}

DataOptions DataOptions::for_text_to_image() {
  auto o = for_recipe(ExampleKind::kT2i);
  o.transform.pil_filter = PilFilter::kLanczos;
  o.transform.crop = ImageTransform::Crop::kRandom;
  o.transform.random_flip = false;
  o.resample_shards = false;
  o.drop_last = false;
  o.t2i_script_transforms = true;
  return o;
}

void DataOptions::read(config::FieldReader& f) {
  // An int64 field read as a JSON integer of int range, as every other integer key.
  const auto read_int64 = [&f](const char* key, std::int64_t& field) {
    int value = static_cast<int>(field);
    f(key, value);
    field = value;
  };
  f("train_data_dir", train_data_dir);
  f("train_shards_path_or_url", train_shards);
  read_int64("resolution", transform.resolution);
  std::string interpolation = interpolation_name(transform.interpolation);
  f("interpolation_type", interpolation);
  transform.interpolation = parse_interpolation(interpolation, f.source() + ": interpolation_type");
  f("dataloader_num_workers", num_workers);
  f("dataloader_prefetch_batches", prefetch_batches);
  read_int64("train_batch_size", batch_size);
  std::optional<int> seed_value;
  f("seed", seed_value);
  if (seed_value) seed = static_cast<std::uint64_t>(static_cast<std::int64_t>(*seed_value));
  std::optional<int> max_samples;
  f("max_train_samples", max_samples);
  if (max_samples) max_train_samples = *max_samples;
  read_int64("shuffle_buffer", shuffle_buffer);
  f("max_bad_share", max_bad_share);
  read_int64("max_unusable_in_a_row", max_unusable_in_a_row);
  read_int64("min_original_size", filters.min_original_size);
  f("max_pwatermark", filters.max_pwatermark);
  f("min_aesthetic", filters.min_aesthetic);
  f("resample_shards", resample_shards);
  // Columns and the recipe's crop/flip flags, with each script's meaning.
  switch (kind) {
    case ExampleKind::kT2i: {
      const auto image_before = columns.image, caption_before = columns.caption;
      f("image_column", columns.image);
      f("caption_column", columns.caption);
      if (columns.image != image_before || columns.caption != caption_before) columns.t2i_defaults = false;
      if (t2i_script_transforms) {
        bool center = transform.crop == ImageTransform::Crop::kCenter;
        f("center_crop", center);
        transform.crop = center ? ImageTransform::Crop::kCenter : ImageTransform::Crop::kRandom;
        f("random_flip", transform.random_flip);
        std::string mode = pil_filter_name(transform.pil_filter.value_or(PilFilter::kLanczos));
        f("image_interpolation_mode", mode);
        transform.pil_filter = parse_pil_filter(mode, f.source() + ": image_interpolation_mode");
        break;
      }
      // The LCM script defines these flags and never reads them (recipes.md 2.1).
      f.ignored("center_crop");
      f.ignored("random_flip");
      break;
    }
    case ExampleKind::kIp2p: {
      f("original_image_column", columns.original_image);
      f("edited_image_column", columns.edited_image);
      f("edit_prompt_column", columns.edit_prompt);
      bool center = transform.crop == ImageTransform::Crop::kCenter;
      f("center_crop", center);
      transform.crop = center ? ImageTransform::Crop::kCenter : ImageTransform::Crop::kRandom;
      f("random_flip", transform.random_flip);
      break;
    }
    case ExampleKind::kDpo: {
      bool random_crop = transform.crop == ImageTransform::Crop::kRandom;
      f("random_crop", random_crop);
      transform.crop = random_crop ? ImageTransform::Crop::kRandom : ImageTransform::Crop::kCenter;
      bool no_hflip = !transform.random_flip;
      f("no_hflip", no_hflip);
      transform.random_flip = !no_hflip;
      break;
    }
  }
  validate(f.source());
}

void DataOptions::validate(const std::string& source) const {
  const auto bad = [&](const std::string& key, const std::string& what) { throw Error(source + ": " + key + " " + what); };
  if (train_data_dir.empty() == train_shards.empty()) {
    bad("train_data_dir / train_shards_path_or_url", "exactly one must be set");
  }
  if (transform.resolution < 8 || transform.resolution > 8192 || transform.resolution % 8 != 0) {
    bad("resolution", "must be a multiple of 8 in [8, 8192], got " + std::to_string(transform.resolution));
  }
  if (batch_size < 1) bad("train_batch_size", "must be at least 1");
  if (num_workers < 0 || num_workers > 64) bad("dataloader_num_workers", "must be in [0, 64]");
  if (prefetch_batches < 1) bad("dataloader_prefetch_batches", "must be at least 1");
  if (shuffle_buffer < 1) bad("shuffle_buffer", "must be at least 1");
  if (!(max_bad_share >= 0 && max_bad_share <= 1)) bad("max_bad_share", "must be in [0, 1]");
  if (max_train_samples == 0 || max_train_samples < -1) bad("max_train_samples", "must be positive");
  if (max_unusable_in_a_row < 1) bad("max_unusable_in_a_row", "must be at least 1");
  if (world_size < 1 || rank < 0 || rank >= world_size) bad("rank", "must be in [0, world_size)");
}

std::string DataOptions::fingerprint() const {
  std::ostringstream s;
  s << kind_name(kind) << '|' << train_data_dir << '|' << train_shards << '|' << seed << '|' << batch_size << '|'
    << shuffle << '|' << drop_last << '|' << shuffle_buffer << '|' << resample_shards << '|' << max_train_samples << '|'
    << rank << '/' << world_size << '|' << filters.min_original_size << '|' << filters.max_pwatermark << '|'
    << filters.min_aesthetic;
  return s.str();
}

std::string DataOptions::order_fingerprint() const {
  std::ostringstream s;
  s << kind_name(kind) << '|' << train_data_dir << '|' << train_shards << '|' << seed << '|' << shuffle << '|'
    << drop_last << '|' << shuffle_buffer << '|' << resample_shards << '|' << max_train_samples << '|'
    << filters.min_original_size << '|' << filters.max_pwatermark << '|' << filters.min_aesthetic;
  return s.str();
}

Processed process_record(const Record& record, const DataOptions& options, std::uint64_t seed) {
  Processed out;
  out.example.key = record.key;
  out.example.source = record.source;
  const auto fail = [&](const std::string& problem) {
    out.status = Processed::Status::kBad;
    out.problem = problem;
    out.example.images.clear();
    return out;
  };
  if (!record.problem.empty()) return fail(record.problem);
  if (const auto why = filtered_by(record.values, options.filters)) {
    out.status = Processed::Status::kFiltered;
    out.problem = *why;
    return out;
  }
  const Fields fields(record);
  const auto& c = options.columns;
  const auto& t = options.transform;
  TransformDraws draws(seed);
  try {
    switch (options.kind) {
      case ExampleKind::kT2i: {
        std::string caption_column;
        const auto caption = t2i_caption(fields, record, c, caption_column);
        out.example.text = caption_of(caption, caption_column, draws);
        out.example.images.push_back(load_image(fields, t2i_image_column(record, c), t, draws));
        break;
      }
      case ExampleKind::kIp2p: {
        out.example.text = caption_of(fields.value(c.edit_prompt), c.edit_prompt, draws);
        // One set of draws for both images: the pair gets the same crop and flip.
        const auto pair_seed = draws.raw();
        TransformDraws first(pair_seed), second(options.shared_pair_draws ? pair_seed : draws.raw());
        out.example.images.push_back(load_image(fields, c.original_image, t, first));
        out.example.images.push_back(load_image(fields, c.edited_image, t, second));
        break;
      }
      case ExampleKind::kDpo: {
        out.example.text = caption_of(fields.value(c.dpo_caption), c.dpo_caption, draws);
        const auto label = fields.value(c.label);
        if (!label) throw BadSample("missing label column '" + c.label + "'");
        double value = 0;
        if (label->is_number()) {
          value = label->get<double>();
        } else if (label->is_string()) {
          try {
            value = std::stod(trim(label->get<std::string>()));
          } catch (const std::exception&) {
            throw BadSample("label column '" + c.label + "' is not a number");
          }
        } else {
          throw BadSample("label column '" + c.label + "' is not a number");
        }
        // Pick-a-Pic's labels: 1 (jpg_0 preferred), 0 (jpg_1 preferred), 0.5 (a tie). The
        // script would read any other value as "jpg_0 preferred"; here it is a bad sample.
        if (!(value == 0 || value == 0.5 || value == 1)) {
          throw BadSample(fmt::format("label column '{}' is {}, not 0, 0.5 or 1", c.label, label->dump()));
        }
        out.example.label = value;
        // Independent draws per image, as the DPO script transforms each image separately.
        auto a = load_image(fields, c.image_0, t, draws);
        auto b = load_image(fields, c.image_1, t, draws);
        // Preferred first: label_0 == 0 means jpg_1 won; anything else (1, a tie) keeps the order.
        if (value == 0) std::swap(a, b);
        out.example.images.push_back(std::move(a));
        out.example.images.push_back(std::move(b));
        break;
      }
    }
  } catch (const std::exception& e) {  // BadSample, a decoding Error, or a failing tensor op
    return fail(e.what());
  }
  return out;
}

std::unique_ptr<RecordSource> make_source(const DataOptions& options) {
  options.validate("data options");
  if (!options.train_data_dir.empty()) return std::make_unique<FolderSource>(options);
  return std::make_unique<WdsSource>(options);
}

}  // namespace lisadiff::data
