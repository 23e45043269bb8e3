// 8-bit AdamW (src/train/adamw8bit.h): bitsandbytes' code books and update steps (fixtures
// made with bitsandbytes by scripts/make_adam8bit_fixtures.py), the quantisation error bound,
// parity with torch::optim::AdamW below 4096 elements, convergence next to fp32 AdamW on toy
// problems, checkpoint round trips, memory, and bad input.
#include "train/adamw8bit.h"

#include <cmath>
#include <functional>

#include "io/safetensors.h"
#include "test_util.h"

namespace lisadiff::train {
namespace {

using lisadiff::testing::close_tensor;
using lisadiff::testing::fixtures_dir;
using lisadiff::testing::read_json;
using lisadiff::testing::same_tensor;
using lisadiff::testing::TempDir;

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

torch::Tensor floats_from_json(const nlohmann::ordered_json& values) {
  std::vector<float> out;
  for (const auto& v : values) out.push_back(static_cast<float>(v.get<double>()));
  return torch::tensor(out, torch::dtype(torch::kFloat32));
}

torch::optim::AdamW torch_adamw(std::vector<torch::Tensor> params, const AdamWHyper& h) {
  return torch::optim::AdamW(std::move(params), torch::optim::AdamWOptions(h.lr)
                                                    .betas({h.beta1, h.beta2})
                                                    .eps(h.eps)
                                                    .weight_decay(h.weight_decay));
}

// ---------------------------------------------------------------------------------------
// The code books

TEST(DynamicMap, MatchesBitsandbytesBitForBit) {
  const auto fixture = read_json(fixtures_dir() / "train" / "bnb_dynamic_maps.json");
  EXPECT_TRUE(same_tensor(dynamic_quant_map(true), floats_from_json(fixture["signed"])));
  EXPECT_TRUE(same_tensor(dynamic_quant_map(false), floats_from_json(fixture["unsigned"])));
}

TEST(DynamicMap, Shape) {
  for (const bool is_signed : {true, false}) {
    const auto map = dynamic_quant_map(is_signed);
    ASSERT_EQ(map.numel(), 256);
    EXPECT_TRUE(map.slice(0, 1).gt(map.slice(0, 0, 255)).all().item<bool>()) << "sorted, no duplicates";
    EXPECT_EQ(map[255].item<float>(), 1.0f);
    EXPECT_EQ(map.eq(0).sum().item<int64_t>(), 1);
    if (is_signed) {
      // 127 negative codes mirroring the 127 positive ones below 1; no -1.
      EXPECT_EQ(map[127].item<float>(), 0.0f);
      EXPECT_TRUE(same_tensor(map.slice(0, 0, 127).flip(0), -map.slice(0, 128, 255)));
      EXPECT_GT(map[0].item<float>(), -1.0f);
    } else {
      EXPECT_EQ(map[0].item<float>(), 0.0f);
    }
  }
}

// Values from the construction, computed here in double: for exponent step i = 0..6 the
// midpoints of linspace(0.1, 1, k + 1) times 10^(i - 6), k = 2^i (signed) or 2^(i+1).
TEST(DynamicMap, ValuesFromTheConstruction) {
  auto mean = [](int k, int j) { const double w = 0.9 / k; return 0.1 + w * j + w / 2; };
  const auto s = dynamic_quant_map(true);
  const auto u = dynamic_quant_map(false);
  const double rel = 1e-6;  // the maps are float32 values of float32 arithmetic
  EXPECT_NEAR(s[128].item<float>(), 1e-6 * mean(1, 0), 1e-6 * rel);      // smallest positive: 5.5e-7
  EXPECT_NEAR(s[126].item<float>(), -1e-6 * mean(1, 0), 1e-6 * rel);
  EXPECT_NEAR(s[129].item<float>(), 1e-5 * mean(2, 0), 1e-5 * rel);      // 3.25e-6
  EXPECT_NEAR(s[254].item<float>(), mean(64, 63), rel);                  // 0.99296875
  EXPECT_NEAR(s[0].item<float>(), -mean(64, 63), rel);
  EXPECT_NEAR(s[253].item<float>(), mean(64, 62), rel);                  // 0.97890625
  EXPECT_NEAR(u[1].item<float>(), 1e-6 * mean(2, 0), 1e-6 * rel);        // 3.25e-7
  EXPECT_NEAR(u[2].item<float>(), 1e-6 * mean(2, 1), 1e-6 * rel);        // 7.75e-7
  EXPECT_NEAR(u[254].item<float>(), mean(128, 127), rel);                // 0.996484375
  EXPECT_NEAR(u[126].item<float>(), 0.1 * mean(64, 63), 0.1 * rel);      // top of the 0.1 decade
  EXPECT_NEAR(u[127].item<float>(), mean(128, 0), rel);                  // bottom of the top one
}

// ---------------------------------------------------------------------------------------
// Quantisation

// Values whose blocks differ in scale by orders of magnitude, with a short last block.
torch::Tensor multiscale(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t blocks = (n + 255) / 256;
  const auto scales = torch::pow(10.0, -6.0 * torch::rand({blocks})).repeat_interleave(256).slice(0, 0, n);
  return torch::randn({n}) * scales;
}

double max_gap(const torch::Tensor& map) { return (map.slice(0, 1) - map.slice(0, 0, 255)).max().item<double>(); }

TEST(Quantize, LargestGapsBetweenCodes) {
  // The top decade [0.1, 1] holds the widest spacing: 0.9 / 64 signed, 0.9 / 128 unsigned.
  EXPECT_NEAR(max_gap(dynamic_quant_map(true)), 0.9 / 64, 1e-6);
  EXPECT_NEAR(max_gap(dynamic_quant_map(false)), 0.9 / 128, 1e-6);
}

TEST(Quantize, AbsmaxPerBlockAndNearestCode) {
  const int64_t n = 256 * 20 + 77;
  for (const bool is_signed : {true, false}) {
    const auto map = dynamic_quant_map(is_signed);
    const auto x = is_signed ? multiscale(n, 3) : multiscale(n, 3).abs();
    const auto q = quantize_blockwise(x, map);
    ASSERT_EQ(q.codes.scalar_type(), torch::kUInt8);
    ASSERT_EQ(q.codes.sizes(), torch::IntArrayRef({n}));
    ASSERT_EQ(q.absmax.sizes(), torch::IntArrayRef({21}));
    for (int64_t b = 0; b < 21; ++b) {
      const auto block = x.slice(0, b * 256, std::min(n, (b + 1) * 256));
      EXPECT_EQ(q.absmax[b].item<float>(), block.abs().max().item<float>()) << "block " << b;
    }
    // The chosen code is the nearest one: brute force over all 256 codes.
    const auto absmax_per_element = q.absmax.repeat_interleave(256).slice(0, 0, n);
    const auto scaled = x / absmax_per_element;
    const auto chosen = (scaled - map.index_select(0, q.codes.to(torch::kLong))).abs();
    const auto best = (scaled.unsqueeze(1) - map.unsqueeze(0)).abs().amin(/*dim=*/1);
    // 1e-7: midpoint comparison against distance comparison can disagree by float rounding.
    EXPECT_LE((chosen - best).max().item<double>(), 1e-7) << (is_signed ? "signed" : "unsigned");
  }
}

// Round trip bound: value = map[code] * absmax and the code is the nearest, so per element
// |dequantised - x| <= absmax_of_block * g / 2, with g the largest gap between neighbouring
// codes (0.9/64 = 0.0140625 signed, 0.9/128 = 0.00703125 unsigned: the top decade's spacing),
// i.e. at most 0.70 % (signed) or 0.35 % (unsigned) of the block's absmax, plus float32
// rounding of the division and the product (a few 2^-24 of absmax). Near zero the relative
// error is larger; the dynamic map keeps it bounded per decade down to 1e-6 * absmax.
TEST(Quantize, RoundTripErrorBound) {
  const int64_t n = 256 * 40 + 5;
  for (const bool is_signed : {true, false}) {
    const auto map = dynamic_quant_map(is_signed);
    const auto x = is_signed ? multiscale(n, 4) : multiscale(n, 4).abs();
    const auto q = quantize_blockwise(x, map);
    const auto y = dequantize_blockwise(q, map, {n});
    const auto absmax_per_element = q.absmax.repeat_interleave(256).slice(0, 0, n);
    const auto bound = absmax_per_element * (max_gap(map) / 2 + 4 * std::ldexp(1.0, -24));
    const auto err = (y - x).abs();
    EXPECT_TRUE(err.le(bound).all().item<bool>())
        << "worst error / absmax = " << (err / absmax_per_element).max().item<double>();
    // The bound is tight: some element comes within 10 % of it.
    EXPECT_GT((err / absmax_per_element).max().item<double>(), 0.9 * max_gap(map) / 2);
    // Relative error in the top decade (|x| >= 0.1 absmax): at most g / 2 / 0.1.
    const auto top = (x.abs() >= 0.1 * absmax_per_element);
    EXPECT_TRUE((err / x.abs()).masked_select(top).le(max_gap(map) / 2 / 0.1 + 1e-6).all().item<bool>());
  }
}

TEST(Quantize, ZeroBlockAndKeepNegative) {
  auto x = torch::zeros({600});
  x[256] = 1.0f;
  x[257] = -1e-9f;  // nearest code 0 (map[127]); the smallest negative code with keep_negative
  x[258] = 1e-9f;
  const auto map = dynamic_quant_map(true);
  const auto plain = quantize_blockwise(x, map);
  const auto kept = quantize_blockwise(x, map, /*keep_negative=*/true);
  EXPECT_EQ(plain.absmax[0].item<float>(), 0.0f) << "all-zero block";
  EXPECT_EQ(plain.codes[0].item<uint8_t>(), 127);
  EXPECT_EQ(plain.codes[257].item<uint8_t>(), 127);
  EXPECT_EQ(kept.codes[257].item<uint8_t>(), 126);
  EXPECT_LT(map[126].item<float>(), 0.0f);
  EXPECT_EQ(kept.codes[258].item<uint8_t>(), 127);
  EXPECT_EQ(kept.codes[256].item<uint8_t>(), 255);
  EXPECT_TRUE(same_tensor(kept.codes.slice(0, 259), plain.codes.slice(0, 259)));
  const auto y = dequantize_blockwise(kept, map, {600});
  EXPECT_TRUE(y.slice(0, 0, 256).eq(0).all().item<bool>());
  EXPECT_LT(y[257].item<float>(), 0.0f);
}

// ---------------------------------------------------------------------------------------
// Steps against bitsandbytes' reference update (tests/fixtures/train/bnb_adamw8bit_steps.*)

class BitsandbytesSteps : public ::testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(BitsandbytesSteps, MatchReference) {
  const std::string name = GetParam().first;
  const int steps = GetParam().second;
  const auto path = fixtures_dir() / "train" / "bnb_adamw8bit_steps.safetensors";
  const io::SafetensorsReader file(path);
  auto get = [&](const std::string& key, int t) { return file.tensor(name + "/" + key + std::to_string(t)); };
  const AdamWHyper hyper{1e-2, 0.9, 0.999, 1e-8, 1e-2};  // the fixture's metadata "reference"
  int64_t kept_negative = 0;
  for (int t = 1; t <= steps; ++t) {
    SCOPED_TRACE(name + " step " + std::to_string(t));
    auto param = get("p", t - 1).clone();
    auto state = t == 1 ? AdamW8bitState(param)
                        : AdamW8bitState::from_state_tensors(param,
                                                             {{"m_codes", get("m_codes", t - 1)},
                                                              {"m_absmax", get("m_absmax", t - 1)},
                                                              {"v_codes", get("v_codes", t - 1)},
                                                              {"v_absmax", get("v_absmax", t - 1)}},
                                                             path.string());
    ASSERT_TRUE(state.quantized());
    state.step(param, get("g", t), hyper, t);
    // Same ATen ops in the same order on the same values: bit for bit.
    EXPECT_TRUE(same_tensor(param, get("p", t)));

    const auto ours = state.state_tensors();
    EXPECT_TRUE(same_tensor(ours[2].second, get("v_codes", t)));
    // The reference stores absmax 1.0 for an all-zero block (its codes decode to 0 either way).
    const auto v_absmax = ours[3].second;
    EXPECT_TRUE(same_tensor(torch::where(v_absmax == 0, torch::ones_like(v_absmax), v_absmax), get("v_absmax", t)));
    const auto m_absmax = ours[1].second;
    EXPECT_TRUE(same_tensor(torch::where(m_absmax == 0, torch::ones_like(m_absmax), m_absmax), get("m_absmax", t)));
    // First moment: the nearest code everywhere, except that a negative value whose nearest
    // code is 0 (index 127) keeps the smallest negative code (126), as bitsandbytes' CUDA
    // kernel does; the fixture's block 5 has such values (tiny next to its absmax).
    const auto m_codes = ours[0].second.to(torch::kInt32);
    const auto ref_codes = get("m_codes", t).to(torch::kInt32);
    const auto differ = m_codes.ne(ref_codes);
    EXPECT_TRUE(ref_codes.masked_select(differ).eq(127).all().item<bool>());
    EXPECT_TRUE(m_codes.masked_select(differ).eq(126).all().item<bool>());
    EXPECT_TRUE(differ.slice(0, 0, 5 * 256).logical_not().all().item<bool>());
    EXPECT_TRUE(differ.slice(0, 6 * 256).logical_not().all().item<bool>());
    kept_negative += differ.sum().item<int64_t>();
  }
  EXPECT_GT(kept_negative, 0) << "the fixture exercises the kept negative codes";
}

INSTANTIATE_TEST_SUITE_P(Cases, BitsandbytesSteps,
                         ::testing::Values(std::make_pair(std::string("fp32"), 3), std::make_pair(std::string("bf16"), 2)),
                         [](const auto& info) { return info.param.first; });

// ---------------------------------------------------------------------------------------
// Below 4096 elements: fp32 moments, torch::optim::AdamW bit for bit

TEST(AdamW8bit, SmallTensorsMatchTorchAdamWBitForBit) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{32, 64}, {4095}, {7}, {}}) {
    for (const double wd : {1e-2, 0.0}) {
      torch::manual_seed(5);
      const AdamWHyper hyper{3e-3, 0.9, 0.999, 1e-8, wd};
      auto ours = torch::randn(shape);
      auto theirs = ours.clone().requires_grad_(true);
      auto optimizer = torch_adamw({theirs}, hyper);
      AdamW8bitState state(ours);
      EXPECT_FALSE(state.quantized());
      for (int t = 1; t <= 30; ++t) {
        const auto grad = torch::randn(shape) * (t % 3 == 0 ? 1e-3 : 1.0);
        theirs.mutable_grad() = grad.clone();
        optimizer.step();
        state.step(ours, grad, hyper, t);
        ASSERT_TRUE(same_tensor(ours, theirs.detach())) << "numel " << ours.numel() << " wd " << wd << " step " << t;
      }
    }
  }
}

TEST(AdamW8bit, QuantizedFrom4096Elements) {
  EXPECT_FALSE(AdamW8bitState(torch::zeros({4095})).quantized());
  EXPECT_TRUE(AdamW8bitState(torch::zeros({64, 64})).quantized());
}

// bf16 parameters are computed in fp32 and written back: the same as fp32 AdamW on an fp32
// copy that is rounded to bf16 after every step.
TEST(AdamW8bit, HalfPrecisionParamsComputeInFp32) {
  for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    torch::manual_seed(6);
    const AdamWHyper hyper{1e-2};
    auto ours = torch::randn({40, 30}).to(dtype);
    auto master = ours.to(torch::kFloat32).requires_grad_(true);
    auto optimizer = torch_adamw({master}, hyper);
    AdamW8bitState state(ours);
    for (int t = 1; t <= 10; ++t) {
      const auto grad = torch::randn({40, 30}).to(dtype);
      master.mutable_grad() = grad.to(torch::kFloat32);
      optimizer.step();
      {
        torch::NoGradGuard no_grad;
        master.copy_(master.to(dtype).to(torch::kFloat32));
      }
      state.step(ours, grad, hyper, t);
      ASSERT_EQ(ours.scalar_type(), dtype);
      ASSERT_TRUE(same_tensor(ours, master.detach().to(dtype))) << "step " << t;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Above 4096 elements: convergence next to fp32 AdamW

struct Trained {
  double loss = 0;
  std::vector<torch::Tensor> params;
};

// 100 full-batch steps on `loss_of` from the parameters `init`, with torch::optim::AdamW or
// with one AdamW8bitState per parameter.
Trained train(const std::vector<torch::Tensor>& init, const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& loss_of,
              const AdamWHyper& hyper, bool eight_bit) {
  std::vector<torch::Tensor> params;
  for (const auto& p : init) params.push_back(p.clone().requires_grad_(true));
  auto optimizer = torch_adamw(params, hyper);
  std::vector<AdamW8bitState> states;
  for (const auto& p : params) states.emplace_back(p);
  for (int t = 1; t <= 100; ++t) {
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    loss_of(params).backward();
    if (!eight_bit) {
      optimizer.step();
    } else {
      for (std::size_t i = 0; i < params.size(); ++i) states[i].step(params[i], params[i].grad(), hyper, t);
    }
  }
  torch::NoGradGuard no_grad;
  return {loss_of(params).item<double>(), params};
}

double relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

// Linear least squares, W [64, 128] (8192 elements: 8-bit moments) and b [64] (fp32 ones),
// lr 1e-2, 100 full-batch steps. Measured (CPU, seed 7): loss 1.053 -> fp32 9.001e-5, 8-bit
// 8.923e-5 (-0.86 %); ||W8 - W32|| / ||W32|| = 0.15 %. Margins: 2 % on the loss, 1 % on W.
TEST(AdamW8bit, LeastSquaresConvergesLikeFp32) {
  torch::manual_seed(7);
  const auto x = torch::randn({512, 128});
  const auto w_true = torch::randn({64, 128}) / std::sqrt(128.0);
  const auto y = x.matmul(w_true.t()) + 0.01 * torch::randn({512, 64});
  const std::vector<torch::Tensor> init{0.02 * torch::randn({64, 128}), torch::zeros({64})};
  auto loss_of = [&](const std::vector<torch::Tensor>& p) {
    return (torch::addmm(p[1], x, p[0].t()) - y).pow(2).mean();
  };
  const AdamWHyper hyper{1e-2};
  const auto initial = loss_of(init).item<double>();
  const auto full = train(init, loss_of, hyper, false);
  const auto eight = train(init, loss_of, hyper, true);
  std::printf("least squares: initial %.6g, fp32 %.6g, 8-bit %.6g (%+.3f %%), weight rel diff %.4g\n", initial,
              full.loss, eight.loss, 100 * (eight.loss / full.loss - 1), relative_difference(eight.params[0], full.params[0]));
  EXPECT_LT(full.loss, 1e-3 * initial);
  EXPECT_LT(std::abs(eight.loss / full.loss - 1), 0.02);
  EXPECT_LT(relative_difference(eight.params[0], full.params[0]), 0.01);
}

// A small MLP (64 -> 128 -> 64 -> 8, tanh) fitted to a random teacher: two 8192-element
// weights with 8-bit moments, the biases and the last layer (512) with fp32 ones; lr 1e-2,
// 100 full-batch steps. Measured (CPU, seed 8): loss 2.508 -> fp32 2.2219e-5, 8-bit 2.2202e-5
// (-0.08 %); worst ||p8 - p32|| / ||p32|| over the six tensors 2.8 %. Margins: 5 % on both.
// At lr 1e-3 and 3e-3, where the loss is still falling steeply at step 100, the 8-bit run ends
// 8 % and 20 % *lower* (ahead of fp32, mostly from the quantised v); docs/adamw8bit.md.
TEST(AdamW8bit, MlpConvergesLikeFp32) {
  torch::manual_seed(8);
  const auto x = torch::randn({256, 64});
  auto mlp = [](const torch::Tensor& in, const std::vector<torch::Tensor>& p) {
    auto h = torch::tanh(torch::addmm(p[1], in, p[0].t()));
    h = torch::tanh(torch::addmm(p[3], h, p[2].t()));
    return torch::addmm(p[5], h, p[4].t());
  };
  auto layer = [](int64_t out, int64_t in) {
    return std::vector<torch::Tensor>{torch::randn({out, in}) / std::sqrt(static_cast<double>(in)), torch::zeros({out})};
  };
  std::vector<torch::Tensor> teacher, init;
  for (const auto& [o, i] : std::vector<std::pair<int64_t, int64_t>>{{128, 64}, {64, 128}, {8, 64}}) {
    for (auto& t : layer(o, i)) teacher.push_back(2.0 * t);
  }
  for (const auto& [o, i] : std::vector<std::pair<int64_t, int64_t>>{{128, 64}, {64, 128}, {8, 64}}) {
    for (auto& t : layer(o, i)) init.push_back(t);
  }
  const auto y = mlp(x, teacher);
  auto loss_of = [&](const std::vector<torch::Tensor>& p) { return (mlp(x, p) - y).pow(2).mean(); };
  const AdamWHyper hyper{1e-2};
  const auto initial = loss_of(init).item<double>();
  const auto full = train(init, loss_of, hyper, false);
  const auto eight = train(init, loss_of, hyper, true);
  double worst = 0;
  for (std::size_t i = 0; i < init.size(); ++i) worst = std::max(worst, relative_difference(eight.params[i], full.params[i]));
  std::printf("mlp: initial %.6g, fp32 %.6g, 8-bit %.6g (%+.3f %%), worst param rel diff %.4g\n", initial, full.loss,
              eight.loss, 100 * (eight.loss / full.loss - 1), worst);
  EXPECT_LT(full.loss, 1e-3 * initial);
  EXPECT_LT(std::abs(eight.loss / full.loss - 1), 0.05);
  EXPECT_LT(worst, 0.05);
}

// ---------------------------------------------------------------------------------------
// Checkpoints and memory

TEST(AdamW8bit, CheckpointRoundTripContinuesBitIdentically) {
  const TempDir dir;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{70, 100}, {50}}) {
    torch::manual_seed(9);
    const AdamWHyper hyper{1e-2};
    const auto init = torch::randn(shape);
    std::vector<torch::Tensor> grads;
    for (int t = 0; t < 10; ++t) grads.push_back(torch::randn(shape));

    auto straight = init.clone();
    AdamW8bitState straight_state(straight);
    for (int t = 1; t <= 10; ++t) straight_state.step(straight, grads[t - 1], hyper, t);

    auto resumed = init.clone();
    {
      AdamW8bitState first(resumed);
      for (int t = 1; t <= 5; ++t) first.step(resumed, grads[t - 1], hyper, t);
      io::NamedTensors tensors;
      for (const auto& [name, tensor] : first.state_tensors()) tensors.emplace_back("w." + name, tensor);
      io::write_safetensors(dir / "optimizer.safetensors", tensors);
    }
    const io::SafetensorsReader file(dir / "optimizer.safetensors");
    NamedTensors loaded;
    for (const auto& entry : file.entries()) loaded.emplace_back(entry.name.substr(2), file.tensor(entry.name));
    auto state = AdamW8bitState::from_state_tensors(resumed, loaded, file.path().string(), "w");
    for (int t = 6; t <= 10; ++t) state.step(resumed, grads[t - 1], hyper, t);

    EXPECT_TRUE(same_tensor(resumed, straight));
    const auto a = state.state_tensors();
    const auto b = straight_state.state_tensors();
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(same_tensor(a[i].second, b[i].second)) << a[i].first;
    }
  }
}

TEST(AdamW8bit, StateBytesAboutTwoPerElement) {
  const int64_t n = 1000 * 1000;
  auto param = torch::zeros({1000, 1000});
  AdamW8bitState state(param);
  const int64_t expected = 2 * n + 2 * 4 * ((n + 255) / 256);  // codes + absmax, m and v
  EXPECT_EQ(state.state_bytes(), expected);
  state.step(param, torch::randn({1000, 1000}), AdamWHyper{1e-3}, 1);
  EXPECT_EQ(state.state_bytes(), expected) << "a step replaces the state with one of the same size";

  // fp32 AdamW keeps two fp32 moments: 8 bytes per element.
  auto reference = torch::zeros({1000, 1000}).requires_grad_(true);
  auto optimizer = torch_adamw({reference}, AdamWHyper{1e-3});
  reference.mutable_grad() = torch::randn({1000, 1000});
  optimizer.step();
  int64_t fp32_bytes = 0;
  for (const auto& [key, s] : optimizer.state()) {
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*s);
    fp32_bytes += adam.exp_avg().nbytes() + adam.exp_avg_sq().nbytes();
  }
  EXPECT_EQ(fp32_bytes, 8 * n);
  EXPECT_NEAR(static_cast<double>(state.state_bytes()) / fp32_bytes, 2.03125 / 8, 1e-4);  // 25.4 %

  EXPECT_EQ(AdamW8bitState(torch::zeros({100})).state_bytes(), 800) << "fp32 moments below 4096 elements";
}

// ---------------------------------------------------------------------------------------
// Bad input

TEST(AdamW8bit, RejectsBadInput) {
  EXPECT_THROW_WITH(AdamW8bitState(torch::zeros({8}, torch::kLong), "layer.weight"), "layer.weight", "Long",
                    "not supported");
  EXPECT_THROW_WITH(AdamW8bitState(torch::zeros({8}, torch::kDouble)), "Double", "not supported");

  auto param = torch::zeros({4, 3});
  AdamW8bitState state(param, "proj.weight");
  const AdamWHyper hyper{1e-3};
  EXPECT_THROW_WITH(state.step(param, torch::zeros({3, 4}), hyper, 1), "proj.weight",
                    "gradient has shape [3, 4], parameter has [4, 3]");
  EXPECT_THROW_WITH(state.step(param, torch::zeros({4, 3}, torch::device(torch::kMeta)), hyper, 1),
                    "gradient is on meta, parameter on cpu");
  EXPECT_THROW_WITH(state.step(param, torch::zeros({4, 3}, torch::kLong), hyper, 1), "not floating point");
  EXPECT_THROW_WITH(state.step(param, torch::zeros({4, 3}), hyper, 0), "t = 0", "counts from 1");
  auto other = torch::zeros({12});
  EXPECT_THROW_WITH(state.step(other, torch::zeros({12}), hyper, 1), "parameter has shape [12]", "made for [4, 3]");
  auto meta = torch::zeros({4, 3}, torch::device(torch::kMeta));
  EXPECT_THROW_WITH(state.step(meta, torch::zeros({4, 3}, torch::device(torch::kMeta)), hyper, 1),
                    "parameter is on meta, the state on cpu");
  EXPECT_TRUE(param.eq(0).all().item<bool>()) << "nothing was stepped";
}

TEST(AdamW8bit, RejectsBadCheckpointState) {
  auto big = torch::zeros({70, 100});
  const auto good = AdamW8bitState(big).state_tensors();
  auto with = [&](const std::string& name, const torch::Tensor& replacement) {
    NamedTensors out;
    for (const auto& [n, t] : good) out.emplace_back(n, n == name ? replacement : t);
    return out;
  };
  const std::string src = "ckpt/optimizer.safetensors";
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(big, {good[0], good[1], good[2]}, src, "w"), src, "'w'",
                    "missing tensor 'v_absmax'");
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(big, {{"m", torch::zeros({70, 100})}}, src), src,
                    "unexpected tensor 'm'", "8-bit");
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(big, with("m_codes", torch::zeros({7000})), src), src,
                    "tensor 'm_codes' is Float [7000], expected Byte [7000]");
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(big, with("v_absmax", torch::zeros({27})), src), src,
                    "tensor 'v_absmax' is Float [27], expected Float [28]");
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(big, with("m_absmax", -torch::ones({28})), src), src,
                    "'m_absmax' has negative or non-finite values");
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(big, with("v_absmax", torch::full({28}, NAN)), src), src,
                    "'v_absmax' has negative or non-finite values");

  auto small = torch::zeros({10});
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(small, good, src), src, "unexpected tensor 'm_codes'", "fp32");
  EXPECT_THROW_WITH(AdamW8bitState::from_state_tensors(small, {{"m", torch::zeros({10})}, {"v", torch::zeros({11})}},
                                                       src),
                    "tensor 'v' is Float [11], expected Float [10]");
}

// ---------------------------------------------------------------------------------------
// CUDA: the same ATen ops on the GPU (skipped on machines without one)

TEST(AdamW8bit, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(10);
  const AdamWHyper hyper{1e-2};
  auto cpu = torch::randn({70, 100});
  auto gpu = cpu.to(torch::kCUDA);
  AdamW8bitState cpu_state(cpu), gpu_state(gpu);
  for (int t = 1; t <= 5; ++t) {
    const auto grad = multiscale(7000, 100 + t).view({70, 100});
    cpu_state.step(cpu, grad, hyper, t);
    gpu_state.step(gpu, grad.to(torch::kCUDA), hyper, t);
  }
  // Different sqrt/division rounding on the GPU may move a value across a code midpoint.
  EXPECT_TRUE(close_tensor("param", gpu.cpu(), cpu, 1e-6, 1e-5));
  EXPECT_TRUE(close_tensor("m", gpu_state.exp_avg().cpu(), cpu_state.exp_avg(), 1e-7, 1e-2));
  const auto codes_gpu = gpu_state.state_tensors()[0].second.cpu();
  const auto codes_cpu = cpu_state.state_tensors()[0].second;
  EXPECT_LT(codes_gpu.ne(codes_cpu).sum().item<int64_t>(), 10);
}

}  // namespace
}  // namespace lisadiff::train
