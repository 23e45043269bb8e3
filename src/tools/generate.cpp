#include "tools/generate.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/usage_error.h"
#include "data/image.h"
#include "io/atomic_file.h"
#include "io/image_grid.h"
#include "io/png.h"
#include "pipelines/generation.h"

namespace lisadiff::tools {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> read_prompts(const GenerateOptions& o) {
  if (!o.prompts.empty() && !o.prompts_file.empty()) throw Error("give prompts with --prompt or --prompts, not both");
  if (o.prompts_file.empty()) {
    if (o.prompts.empty()) throw Error("no prompt: give --prompt TEXT (repeatable) or --prompts FILE");
    return o.prompts;
  }
  std::ifstream in(o.prompts_file);
  if (!in) throw Error(o.prompts_file.string(), "cannot read the prompts file");
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) prompts.push_back(line);
  }
  if (prompts.empty()) throw Error(o.prompts_file.string(), "holds no prompt (one per line)");
  return prompts;
}

torch::ScalarType dtype_of(const std::string& name) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "fp16") return torch::kHalf;
  if (name == "bf16") return torch::kBFloat16;
  throw UsageError("--dtype: '" + name + "' is not one of fp32, fp16, bf16");
}

torch::Device device_of(const std::string& name) {
  try {
    const torch::Device device(name);
    if (device.is_cuda() && !torch::cuda::is_available()) throw Error("--device " + name + ": CUDA is not available here");
    if (!device.is_cpu() && !device.is_cuda()) throw Error("--device " + name + ": only cpu and cuda are supported");
    return device;
  } catch (const c10::Error&) {
    throw UsageError("--device: '" + name + "' is not a device (cpu, cuda, cuda:N)");
  }
}

void prepare_out(const GenerateOptions& o) {
  if (o.out.empty()) throw UsageError("--out: no output folder given");
  std::error_code ec;
  const auto status = fs::symlink_status(o.out, ec);
  if (fs::exists(status)) {
    if (!o.overwrite) {
      if (!fs::is_directory(status)) throw Error(o.out.string(), "exists and is not a folder (pass --overwrite)");
      if (!fs::is_empty(o.out, ec) || ec) throw Error(o.out.string(), "exists and is not empty (pass --overwrite)");
    } else {
      fs::remove_all(o.out, ec);
      if (ec) throw Error(o.out.string(), "cannot remove: " + ec.message());
    }
  }
  fs::create_directories(o.out, ec);
  if (ec) throw Error(o.out.string(), "cannot create: " + ec.message());
}

std::string number(double x) { return fmt::format("{}", x); }

}  // namespace

GenerateSummary generate(const GenerateOptions& o) {
  // Everything that can be wrong with the input is found before OUT is touched.
  const auto prompts = read_prompts(o);
  if (o.images_per_prompt < 1) throw UsageError("--images_per_prompt must be at least 1");
  if (o.steps && *o.steps < 1) throw UsageError("--steps must be at least 1");
  for (const auto& [flag, value] : {std::pair{"--height", o.height}, std::pair{"--width", o.width}}) {
    if (value && (*value <= 0 || *value % 8 != 0)) {
      throw UsageError(fmt::format("{} {}: expected a positive multiple of 8 (the VAE halves the image three times)",
                                   flag, *value));
    }
  }
  pipelines::PipelineLoadOptions lo;
  lo.dtype = dtype_of(o.dtype);
  lo.device = device_of(o.device);
  lo.variant = o.variant;
  lo.unet = o.unet;
  lo.lora = o.lora;
  lo.lora_scale = o.lora_scale;
  auto parts = pipelines::load_components(o.pipeline, lo);
  auto sampler = parts.sampler(o.scheduler);
  const bool edit = pipelines::is_edit_unet(parts);
  const bool lcm = parts.unet->config.time_cond_proj_dim.has_value();
  torch::Tensor source;
  if (edit) {
    if (o.image.empty()) {
      throw Error(fmt::format("{}: the UNet takes {} input channels (InstructPix2Pix): give the source image with --image",
                              (o.unet.empty() ? o.pipeline / "unet" : o.unet).string(), parts.unet->config.in_channels));
    }
    source = data::decode_image(io::read_file(o.image), o.image.string());
    const int f = parts.vae_scale_factor();
    if (source.size(0) % f != 0 || source.size(1) % f != 0) {
      throw Error(o.image.string(), fmt::format("is {} x {}; InstructPix2Pix needs sides that are multiples of {} "
                                                "(resize it first)",
                                                source.size(1), source.size(0), f));
    }
  } else if (!o.image.empty()) {
    throw Error(fmt::format("--image: the UNet takes {} input channels, a text-to-image UNet; --image needs an "
                            "InstructPix2Pix UNet (8 channels)",
                            parts.unet->config.in_channels));
  }
  (void)pipelines::negative_prompts_for(prompts, o.negative_prompts);  // the count is checked now
  const int steps = o.steps.value_or(edit ? 100 : lcm ? 4 : 50);
  prepare_out(o);

  const int total = static_cast<int>(prompts.size()) * o.images_per_prompt;
  std::string jsonl;
  std::vector<torch::Tensor> grid_images;
  std::vector<std::string> captions;
  GenerateSummary summary;
  summary.out = o.out;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < total; ++i) {
    const auto p = static_cast<std::size_t>(i / o.images_per_prompt);
    const auto negatives = pipelines::negative_prompts_for(prompts, o.negative_prompts);
    const uint64_t seed = o.seed + static_cast<uint64_t>(i);
    const auto t0 = std::chrono::steady_clock::now();
    pipelines::GenerationCall call;
    call.prompt = prompts[p];
    call.negative_prompt = negatives[p];
    if (edit) call.image = source;
    call.guidance_scale = o.guidance_scale;
    call.image_guidance_scale = o.image_guidance_scale;
    call.num_inference_steps = steps;
    call.height = o.height;
    call.width = o.width;
    call.eta = o.eta;
    call.seed = seed;
    const auto images = pipelines::generate(parts, *sampler, call);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto pixels = images.pixels[0];
    const std::string file = fmt::format("{:04d}.png", i);
    nlohmann::ordered_json record;
    record["file"] = file;
    record["prompt"] = prompts[p];
    record["negative_prompt"] = negatives[p];
    record["seed"] = seed;
    record["steps"] = steps;
    record["scheduler"] = sampler->class_name();
    record["guidance_scale"] = o.guidance_scale;
    if (edit) record["image_guidance_scale"] = o.image_guidance_scale;
    if (o.eta != 0) record["eta"] = o.eta;
    record["width"] = pixels.size(1);
    record["height"] = pixels.size(0);
    record["model"] = o.pipeline.string();
    if (!o.unet.empty()) record["unet"] = o.unet.string();
    if (!o.lora.empty()) {
      record["lora"] = o.lora.string();
      record["lora_scale"] = o.lora_scale;
    }
    if (edit) record["image"] = o.image.string();
    record["dtype"] = o.dtype;
    record["software"] = std::string("lisadiff ") + LISADIFF_VERSION;
    // "parameters": the block SD front ends write and read.
    std::ostringstream parameters;
    parameters << prompts[p] << "\n";
    if (!negatives[p].empty()) parameters << "Negative prompt: " << negatives[p] << "\n";
    parameters << fmt::format("Steps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}", steps,
                              sampler->class_name(), number(o.guidance_scale), seed, pixels.size(1), pixels.size(0),
                              o.pipeline.filename().string());
    if (edit) parameters << ", Image CFG scale: " << number(o.image_guidance_scale);
    if (!o.lora.empty()) parameters << ", LoRA: " << o.lora.filename().string() << ":" << number(o.lora_scale);
    io::PngText text{{"parameters", parameters.str()}};
    for (auto it = record.begin(); it != record.end(); ++it) {
      if (it.key() == "file") continue;
      text.emplace_back(it.key(), it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
    }
    io::write_png_with_text(o.out / file, pixels, text);
    grid_images.push_back(pixels.contiguous());
    captions.push_back(fmt::format("{} (seed {})", prompts[p], seed));
    record["seconds"] = seconds;
    jsonl += record.dump() + "\n";
    io::write_file_atomic(o.out / "images.jsonl", jsonl);
    spdlog::info("[generate] image {}/{}: {} ({} steps, seed {}) in {:.2f} s", i + 1, total, file, steps, seed, seconds);
    ++summary.images;
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // grid.png: every image with its prompt and seed, a row per prompt when there are several
  // images per prompt.
  std::vector<io::RgbView> views;
  for (const auto& image : grid_images) views.push_back(io::rgb_view(image));
  io::GridOptions grid;
  grid.header = fmt::format("{}: {} steps, {}, guidance {}", o.pipeline.filename().string(), steps,
                            sampler->class_name(), number(o.guidance_scale));
  const int columns = o.images_per_prompt > 1 ? o.images_per_prompt : std::min(total, 4);
  io::write_captioned_grid(o.out / "grid.png", views, captions, columns, grid);
  return summary;
}

}  // namespace lisadiff::tools
