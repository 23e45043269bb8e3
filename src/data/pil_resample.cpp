#include "data/pil_resample.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace lisadiff::data {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed point for 8-bit images
constexpr double kPi = 3.14159265358979323846;

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= kPi;
  return std::sin(x) / x;
}

struct Kernel {
  double support;
  double (*weight)(double);
};

Kernel kernel_of(PilFilter f) {
  switch (f) {
    case PilFilter::kBox:
      return {0.5, [](double x) { return x >= -0.5 && x < 0.5 ? 1.0 : 0.0; }};
    case PilFilter::kBilinear:
      return {1.0, [](double x) {
                x = std::fabs(x);
                return x < 1.0 ? 1.0 - x : 0.0;
              }};
    case PilFilter::kHamming:
      return {1.0, [](double x) {
                x = std::fabs(x);
                if (x == 0.0) return 1.0;
                if (x >= 1.0) return 0.0;
                x *= kPi;
                return std::sin(x) / x * (0.54 + 0.46 * std::cos(x));
              }};
    case PilFilter::kBicubic:
      return {2.0, [](double x) {
                constexpr double a = -0.5;
                x = std::fabs(x);
                if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
                if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
                return 0.0;
              }};
    case PilFilter::kLanczos:
      return {3.0, [](double x) { return x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0; }};
    case PilFilter::kNearest:
      break;
  }
  throw Error("pil_resize: nearest has no convolution kernel");
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input
// pixel, the count, and `ksize` fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int> weights;
};

Coefficients coefficients(int in_size, int out_size, const Kernel& kernel) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = kernel.support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<std::size_t>(out_size));
  c.count.resize(static_cast<std::size_t>(out_size));
  c.weights.assign(static_cast<std::size_t>(out_size) * static_cast<std::size_t>(c.ksize), 0);
  std::vector<double> k(static_cast<std::size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // C's truncating conversion
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = kernel.weight((x + xmin - center + 0.5) * ss);
      k[static_cast<std::size_t>(x)] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[static_cast<std::size_t>(x)] /= ww;
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = k[static_cast<std::size_t>(x)] * (1 << kPrecisionBits);
      c.weights[static_cast<std::size_t>(xx) * c.ksize + x] = static_cast<int>(v < 0 ? -0.5 + v : 0.5 + v);
    }
    c.first[static_cast<std::size_t>(xx)] = xmin;
    c.count[static_cast<std::size_t>(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int v) {
  const int shifted = v >> kPrecisionBits;  // arithmetic shift, as Pillow's lookup index
  return static_cast<uint8_t>(std::clamp(shifted, 0, 255));
}

// One pass along the last axis of a [rows, in] plane into [rows, out] (`stride` between
// consecutive inputs of a row, `row_stride` between rows; the output is dense).
void resample_rows(const uint8_t* in, int rows, std::ptrdiff_t stride, std::ptrdiff_t row_stride,
                   uint8_t* out, int out_size, std::ptrdiff_t out_stride, std::ptrdiff_t out_row_stride,
                   const Coefficients& c) {
  for (int r = 0; r < rows; ++r) {
    const uint8_t* src = in + r * row_stride;
    uint8_t* dst = out + r * out_row_stride;
    for (int xx = 0; xx < out_size; ++xx) {
      const int* k = c.weights.data() + static_cast<std::size_t>(xx) * c.ksize;
      const int xmin = c.first[static_cast<std::size_t>(xx)], n = c.count[static_cast<std::size_t>(xx)];
      int ss = 1 << (kPrecisionBits - 1);
      for (int x = 0; x < n; ++x) ss += static_cast<int>(src[(x + xmin) * stride]) * k[x];
      dst[xx * out_stride] = clip8(ss);
    }
  }
}

// Pillow's ImagingScaleAffine for nearest: the source index of each output pixel, found by
// adding the scale step by step from half a step (as Pillow accumulates it).
std::vector<int> nearest_index(int in_size, int out_size) {
  std::vector<int> index(static_cast<std::size_t>(out_size));
  const double a = static_cast<double>(in_size) / out_size;
  double o = a * 0.5;
  for (int x = 0; x < out_size; ++x) {
    const int i = o < 0.0 ? -1 : static_cast<int>(o);
    index[static_cast<std::size_t>(x)] = std::clamp(i, 0, in_size - 1);
    o += a;
  }
  return index;
}

}  // namespace

PilFilter parse_pil_filter(const std::string& name, const std::string& source) {
  // torchvision hands PIL images NEAREST for both nearest modes.
  if (name == "nearest" || name == "nearest_exact") return PilFilter::kNearest;
  if (name == "box") return PilFilter::kBox;
  if (name == "bilinear") return PilFilter::kBilinear;
  if (name == "hamming") return PilFilter::kHamming;
  if (name == "bicubic") return PilFilter::kBicubic;
  if (name == "lanczos") return PilFilter::kLanczos;
  throw Error(source, "unknown interpolation '" + name + "' (expected nearest, nearest_exact, box, bilinear, hamming, bicubic or lanczos)");
}

const char* pil_filter_name(PilFilter filter) {
  switch (filter) {
    case PilFilter::kNearest: return "nearest";
    case PilFilter::kBox: return "box";
    case PilFilter::kBilinear: return "bilinear";
    case PilFilter::kHamming: return "hamming";
    case PilFilter::kBicubic: return "bicubic";
    case PilFilter::kLanczos: return "lanczos";
  }
  return "?";
}

torch::Tensor pil_resize(const torch::Tensor& chw_uint8, std::int64_t height, std::int64_t width, PilFilter filter) {
  if (chw_uint8.dim() != 3 || chw_uint8.scalar_type() != torch::kUInt8) {
    throw Error("pil_resize: expected a uint8 [C, H, W] image");
  }
  if (height < 1 || width < 1) throw Error("pil_resize: the output size must be positive");
  const auto in = chw_uint8.contiguous().cpu();
  const int C = static_cast<int>(in.size(0)), H = static_cast<int>(in.size(1)), W = static_cast<int>(in.size(2));
  const int h = static_cast<int>(height), w = static_cast<int>(width);
  if (h == H && w == W) return in.clone();
  auto out = torch::empty({C, h, w}, torch::kUInt8);
  const uint8_t* src = in.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  if (filter == PilFilter::kNearest) {
    const auto xs = nearest_index(W, w), ys = nearest_index(H, h);
    for (int c = 0; c < C; ++c) {
      for (int y = 0; y < h; ++y) {
        for (int x = 0; x < w; ++x) {
          dst[(static_cast<std::ptrdiff_t>(c) * h + y) * w + x] =
              src[(static_cast<std::ptrdiff_t>(c) * H + ys[static_cast<std::size_t>(y)]) * W + xs[static_cast<std::size_t>(x)]];
        }
      }
    }
    return out;
  }
  const auto kernel = kernel_of(filter);
  // Horizontal first (when the width changes), into an 8-bit image, then vertical.
  torch::Tensor mid = in;
  if (w != W) {
    mid = torch::empty({C, H, w}, torch::kUInt8);
    const auto cx = coefficients(W, w, kernel);
    resample_rows(src, C * H, 1, W, mid.data_ptr<uint8_t>(), w, 1, w, cx);
  }
  if (h == H) return mid;
  const auto cy = coefficients(H, h, kernel);
  const uint8_t* m = mid.data_ptr<uint8_t>();
  for (int c = 0; c < C; ++c) {
    // Columns as rows: stride w between the inputs of a column, 1 between columns.
    resample_rows(m + static_cast<std::ptrdiff_t>(c) * H * w, w, w, 1, dst + static_cast<std::ptrdiff_t>(c) * h * w, h, w,
                  1, cy);
  }
  return out;
}

}  // namespace lisadiff::data
