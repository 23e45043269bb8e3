#!/usr/bin/env python3
"""Reference data for lisadiff's 8-bit AdamW (src/train/adamw8bit.h), made with bitsandbytes.

    make_adam8bit_fixtures.py [--out tests/fixtures/train] [--wheel-dir DIR]

Run it with the project venv's python (~/.cache/lisadiff/venv-*/bin/python). bitsandbytes is
not a dependency of lisadiff and is never installed into the venv: the pinned wheel below is
downloaded with `pip download --no-deps` (or taken from --wheel-dir), unpacked into a temporary
folder and imported from there, on the CPU, with the venv's torch. Writes into --out:

  bnb_dynamic_maps.json
      bitsandbytes.functional.create_dynamic_map(signed=True) and (signed=False): the code
      books of AdamW8bit's first (signed) and second (unsigned) moment, 256 fp32 values each,
      written as the exact decimal of each float32.

  bnb_adamw8bit_steps.safetensors
      A few 8-bit AdamW steps of bitsandbytes' pure-PyTorch reference update
      (bitsandbytes.backends.triton.kernels_optim.optimizer_update_8bit_blockwise_pytorch,
      optimizer "adam" with weight decay, i.e. AdamW8bit) on one tensor of 4200 elements
      (16 blocks of 256 and a short one of 104), for an fp32 and a bf16 parameter. Names, for
      case C in {fp32, bf16} and step t = 1..T:
        C/p0, C/p<t>                  the parameter before the first step and after step t
        C/g<t>                        the gradient of step t
        C/m_codes<t>, C/m_absmax<t>   the first moment after step t (uint8 [n], fp32 [blocks])
        C/v_codes<t>, C/v_absmax<t>   the second moment after step t
      The state before step 1 is all zero (codes and absmax), as bitsandbytes initialises it.
      The hyper-parameters are in the metadata (key "reference", a JSON object). The gradients are chosen so that the blocks
      span several orders of magnitude, one block is all zero at step 1 (the reference stores
      absmax 1.0 for it, lisadiff 0; both dequantise to 0), and one block holds values that
      are tiny next to the block's absmax and negative (where bitsandbytes' CUDA kernel, and
      lisadiff, keep a negative first-moment code that the nearest-code reference rounds to 0).

Regenerating with the pinned versions gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# torch.compile wraps the reference helpers; eager execution is what we want on the CPU.
os.environ["TORCHDYNAMO_DISABLE"] = "1"

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

BNB_VERSION = "0.50.2"
REPO = Path(__file__).resolve().parent.parent

HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2}
SHAPE = (42, 100)  # 4200 elements: above bitsandbytes' min_8bit_size (4096), last block short
BLOCK = 256


def import_bitsandbytes(wheel_dir: Path | None, tmp: Path):
    if wheel_dir is None:
        wheel_dir = tmp / "wheel"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "-d", str(wheel_dir), f"bitsandbytes=={BNB_VERSION}"],
            check=True,
        )
    wheels = sorted(wheel_dir.glob(f"bitsandbytes-{BNB_VERSION}-*.whl"))
    if not wheels:
        sys.exit(f"no bitsandbytes-{BNB_VERSION} wheel in {wheel_dir}")
    site = tmp / "site"
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(site)
    sys.path.insert(0, str(site))
    import bitsandbytes
    import bitsandbytes.functional
    from bitsandbytes.backends.triton import kernels_optim

    if bitsandbytes.__version__ != BNB_VERSION:
        sys.exit(f"imported bitsandbytes {bitsandbytes.__version__}, expected {BNB_VERSION}")
    return bitsandbytes, kernels_optim


def gradients(steps: int, n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    blocks = -(-n // BLOCK)
    out = []
    for t in range(1, steps + 1):
        g = torch.randn(n, generator=gen)
        # Per-block scales from 1e-4 to 1: the dynamic range the per-block absmax has to absorb.
        scales = 10.0 ** (-4.0 * torch.rand(blocks, generator=gen))
        g = g * scales.repeat_interleave(BLOCK)[:n]
        if t == 1:
            g[2 * BLOCK:3 * BLOCK] = 0.0  # an all-zero block
        # Block 5: one large value, the rest tiny, about half of them negative.
        g[5 * BLOCK:6 * BLOCK] *= 1e-9
        g[5 * BLOCK] = 1.0
        out.append(g.reshape(SHAPE))
    return out


def run_case(kernels_optim, bnb_functional, dtype: torch.dtype, steps: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0 if dtype == torch.float32 else 2)
    p = (0.1 * torch.randn(SHAPE, generator=gen)).to(dtype)
    n = p.numel()
    blocks = -(-n // BLOCK)
    state1 = torch.zeros(SHAPE, dtype=torch.uint8)
    state2 = torch.zeros(SHAPE, dtype=torch.uint8)
    absmax1 = torch.zeros(blocks, dtype=torch.float32)
    absmax2 = torch.zeros(blocks, dtype=torch.float32)
    qmap1 = bnb_functional.create_dynamic_map(signed=True)
    qmap2 = bnb_functional.create_dynamic_map(signed=False)
    out = {"p0": p.clone()}
    for t, g in enumerate(gradients(steps, n), start=1):
        g = g.to(dtype)
        kernels_optim.optimizer_update_8bit_blockwise_pytorch(
            p, g, state1, state2, HYPER["beta1"], HYPER["beta2"], 0.0, 0.0, HYPER["eps"], t, HYPER["lr"],
            qmap1, qmap2, absmax1, absmax2, HYPER["weight_decay"], 1.0, False, optimizer_name="adam",
        )
        out[f"g{t}"] = g.clone()
        out[f"p{t}"] = p.clone()
        out[f"m_codes{t}"] = state1.reshape(-1).clone()
        out[f"m_absmax{t}"] = absmax1.clone()
        out[f"v_codes{t}"] = state2.reshape(-1).clone()
        out[f"v_absmax{t}"] = absmax2.clone()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "tests/fixtures/train")
    parser.add_argument("--wheel-dir", type=Path, help=f"folder holding bitsandbytes-{BNB_VERSION}-*.whl")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        bnb, kernels_optim = import_bitsandbytes(args.wheel_dir, Path(tmp))
        functional = bnb.functional
        command = "scripts/make_adam8bit_fixtures.py --out tests/fixtures/train"
        versions = {"bitsandbytes": bnb.__version__, "torch": torch.__version__}

        maps = {
            "command": command,
            "versions": versions,
            "function": "bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)",
            "signed": functional.create_dynamic_map(signed=True).tolist(),
            "unsigned": functional.create_dynamic_map(signed=False).tolist(),
        }
        (args.out / "bnb_dynamic_maps.json").write_text(json.dumps(maps, indent=1) + "\n")

        tensors = {}
        for name, dtype, steps in (("fp32", torch.float32, 3), ("bf16", torch.bfloat16, 2)):
            for key, value in run_case(kernels_optim, functional, dtype, steps).items():
                tensors[f"{name}/{key}"] = value.contiguous()
        # One metadata key: the safetensors writer orders several keys differently from run to
        # run, and the file should be byte-identical when regenerated.
        metadata = {"reference": json.dumps({
            "command": command,
            "versions": versions,
            "function": "bitsandbytes.backends.triton.kernels_optim.optimizer_update_8bit_blockwise_pytorch"
                        " (optimizer_name='adam', gnorm_scale=1)",
            "hyper": HYPER,
            "steps": {"fp32": 3, "bf16": 2},
        })}
        save_file(tensors, str(args.out / "bnb_adamw8bit_steps.safetensors"), metadata=metadata)
    print(f"wrote {args.out}/bnb_dynamic_maps.json and bnb_adamw8bit_steps.safetensors")


if __name__ == "__main__":
    main()
