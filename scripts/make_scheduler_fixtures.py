#!/usr/bin/env python3
"""Reference fixtures for lisadiff's noise schedulers, made with diffusers (Python is a tool
here, never the product).

  make_scheduler_fixtures.py [--out tests/fixtures/schedulers]

writes
  ddpm.json           the cases: a scheduler config each (diffusers' DDPMScheduler keys)
  ddpm.safetensors    per case "<case>.betas", "<case>.alphas_cumprod" (float32, as diffusers
                      builds them), and the forward process on seeded inputs:
                      "<case>.x0", "<case>.noise", "<case>.t" (int64), "<case>.noisy"
                      (add_noise), "<case>.velocity" (get_velocity), in float32, plus
                      "<case>.fp16.noisy" / "<case>.fp16.velocity" from float16 inputs.

Deterministic: seeded inputs, sorted JSON keys, safetensors metadata {"format": "pt"} only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CASES = {
    # SD1.5's scheduler/scheduler_config.json, as the scripts read it (recipes.md 6.1).
    "sd15": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon"),
    "ddpm_default": dict(),
    "cosine_v": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    "zero_snr": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
                     prediction_type="v_prediction"),
    "trained_16": dict(num_train_timesteps=16, trained_betas=[round(0.01 + 0.02 * i, 6) for i in range(16)]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "schedulers")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, cfg in CASES.items():
        s = DDPMScheduler(**cfg)
        n = s.config.num_train_timesteps
        tensors[f"{name}.betas"] = s.betas.clone()
        tensors[f"{name}.alphas_cumprod"] = s.alphas_cumprod.clone()
        g = torch.Generator().manual_seed(len(name))
        x0 = torch.randn(5, 4, 3, 3, generator=g)
        noise = torch.randn(5, 4, 3, 3, generator=g)
        t = torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (3,), generator=g)])
        tensors[f"{name}.x0"], tensors[f"{name}.noise"], tensors[f"{name}.t"] = x0, noise, t
        tensors[f"{name}.noisy"] = s.add_noise(x0, noise, t)
        tensors[f"{name}.velocity"] = s.get_velocity(x0, noise, t)
        tensors[f"{name}.fp16.noisy"] = s.add_noise(x0.half(), noise.half(), t)
        tensors[f"{name}.fp16.velocity"] = s.get_velocity(x0.half(), noise.half(), t)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(a.out / "ddpm.safetensors"),
              metadata={"format": "pt"})
    (a.out / "ddpm.json").write_text(json.dumps({"cases": CASES}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}/ddpm.json and ddpm.safetensors ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
