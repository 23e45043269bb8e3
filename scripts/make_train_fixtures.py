#!/usr/bin/env python3
"""Reference fixtures for lisadiff's training utilities (LR schedules and EMA), made with
diffusers (Python is a tool here, never the product).

  make_train_fixtures.py [--out tests/fixtures/train]

writes
  lr_schedules.json   for every schedule and several (W, T, cycles, power, lr) cases, the lr
                      that diffusers' get_scheduler(...) puts into param_groups[0]["lr"] before
                      each scheduler.step(), for s = 0 .. T+5 (entry s = the lr of update s+1).
  ema.json            the EMA cases: EMAModel settings, which tensors require grad at each
                      step, and the decay diffusers used at each step.
  ema.safetensors     inputs and results of those cases: "<case>.init.<name>" (the tracked
                      parameters at construction), "<case>.param.<k>.<name>" (the parameters
                      passed to the k-th step(), k = 1..), "<case>.shadow.<k>.<name>" (the
                      shadow after it); plus the LCM target update (update_ema of
                      train_lcm_distill_sd_wds.py) as "lcm.target.<k>.<name>".
  ema_unet/config.json
                      what EMAModel.save_pretrained writes for the micro-sd UNet (UNet config
                      plus decay, optimization_step, ...); the weights it writes are the
                      committed micro-sd UNet file, byte for byte.

The output is deterministic: seeded inputs, JSON written with sorted keys, and safetensors
metadata limited to {"format": "pt"} (more than one key would make the bytes vary).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------
# LR schedules

# (name, warmup W, total T, num_cycles, power, learning rate). Chosen to reach every branch:
# no warmup, warmup, W == T, W > T (constant_with_warmup), several cycles, power != 1, and
# polynomial's s > T tail. Runs are short so that the file stays small.
SCHEDULE_CASES = [
    ("constant", 20, 50, 1, 1.0, 1e-4),
    ("constant", 0, 30, 1, 1.0, 5e-4),
    ("constant_with_warmup", 0, 40, 1, 1.0, 1e-4),
    ("constant_with_warmup", 7, 40, 1, 1.0, 1e-4),
    ("constant_with_warmup", 50, 40, 1, 1.0, 5e-5),
    ("linear", 0, 60, 1, 1.0, 1e-4),
    ("linear", 10, 60, 1, 1.0, 1e-4),
    ("linear", 60, 60, 1, 1.0, 1e-4),
    ("linear", 50, 100, 1, 1.0, 1e-4),
    ("cosine", 0, 100, 1, 1.0, 1e-4),
    ("cosine", 13, 97, 1, 1.0, 3e-4),
    ("cosine", 50, 100, 1, 1.0, 1e-4),
    ("cosine_with_restarts", 0, 100, 1, 1.0, 1e-4),
    ("cosine_with_restarts", 10, 110, 2, 1.0, 1e-4),
    ("cosine_with_restarts", 5, 123, 3, 1.0, 5e-5),
    ("polynomial", 0, 100, 1, 1.0, 1e-4),
    ("polynomial", 10, 80, 1, 2.0, 1e-4),
    ("polynomial", 7, 90, 1, 0.5, 5e-5),
    ("polynomial", 30, 100, 1, 3.0, 1e-6),
]


def schedule_values(name: str, warmup: int, total: int, cycles: int, power: float, lr: float) -> list[float]:
    from diffusers.optimization import get_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=lr)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                              num_cycles=cycles, power=power)
    values = []
    for _ in range(total + 6):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # keeps torch from warning that the scheduler stepped first
        scheduler.step()
    return values


def write_schedules(path: Path) -> None:
    cases = []
    for name, warmup, total, cycles, power, lr in SCHEDULE_CASES:
        cases.append({
            "lr_scheduler": name, "learning_rate": lr, "lr_warmup_steps": warmup, "max_train_steps": total,
            "lr_num_cycles": cycles, "lr_power": power,
            "lr": schedule_values(name, warmup, total, cycles, power, lr),
        })
    path.write_text(json.dumps({"cases": cases}, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------
# EMA

# Small tensors of different ranks; the EMA tracks them in this order.
EMA_SHAPES = [("conv.weight", (3, 2, 2, 2)), ("conv.bias", (3,)), ("norm.weight", (5,)), ("proj.weight", (4, 6))]
EMA_STEPS = 12


def requires_grad_at(step: int, index: int) -> bool:
    """Which tensors train at step k: a LISA-like pattern (first and last always, the others
    in turns), so every tensor sees both the averaging and the plain-copy rule."""
    if index in (0, len(EMA_SHAPES) - 1):
        return True
    return (step + index) % 3 != 0


EMA_CASES = {
    # IP2P's EMAModel(unet.parameters()) with diffusers' defaults.
    "default": dict(),
    "default_foreach": dict(foreach=True),
    # The warmup formula with every branch within the run: the floor (min_decay) at s = 1,
    # the formula for s = 2..6, the cap (decay) from s = 7.
    "warmup": dict(use_ema_warmup=True, inv_gamma=10.0, power=0.75, decay=0.3, min_decay=0.1),
    "after_step": dict(update_after_step=3, decay=0.9, min_decay=0.05),
}


def ema_case(case: str, kwargs: dict, seed: int, tensors: dict, record: dict) -> None:
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for _, shape in EMA_SHAPES]
    for (name, _), p in zip(EMA_SHAPES, params):
        tensors[f"{case}.init.{name}"] = p.detach().clone()
    ema = EMAModel(params, **kwargs)
    grads, decays = [], []
    for k in range(1, EMA_STEPS + 1):
        with torch.no_grad():  # a stand-in for an optimizer update
            for p in params:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        flags = [requires_grad_at(k, i) for i in range(len(params))]
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        ema.step(params)
        grads.append(flags)
        decays.append(ema.cur_decay_value)
        for (name, _), p, s in zip(EMA_SHAPES, params, ema.shadow_params):
            tensors[f"{case}.param.{k}.{name}"] = p.detach().clone()
            tensors[f"{case}.shadow.{k}.{name}"] = s.detach().clone()
    record[case] = {"options": kwargs, "requires_grad": grads, "decay": decays,
                    "state": {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}}


def lcm_target_case(seed: int, tensors: dict, record: dict, rate: float = 0.95) -> None:
    """update_ema() of train_lcm_distill_sd_wds.py: targ.mul_(rate).add_(src, alpha=1 - rate)."""
    gen = torch.Generator().manual_seed(seed)
    target = [torch.randn(shape, generator=gen) for _, shape in EMA_SHAPES]
    source = [torch.randn(shape, generator=gen) for _, shape in EMA_SHAPES]
    for (name, _), t in zip(EMA_SHAPES, target):
        tensors[f"lcm.init.{name}"] = t.clone()
    for k in range(1, 6):
        for s in source:
            s.add_(0.1 * torch.randn(s.shape, generator=gen))
        for targ, src in zip(target, source):
            targ.detach().mul_(rate).add_(src, alpha=1 - rate)
        for (name, _), t, s in zip(EMA_SHAPES, target, source):
            tensors[f"lcm.source.{k}.{name}"] = s.clone()
            tensors[f"lcm.target.{k}.{name}"] = t.clone()
    record["lcm"] = {"rate": rate, "steps": 5}


def write_ema_folder(folder: Path) -> None:
    """EMAModel.save_pretrained's folder for the micro-sd UNet: config.json (the UNet config
    plus the EMA fields) is kept; its weights are the committed micro-sd UNet file, byte for
    byte (the EMA has taken no step), which the test copies beside it."""
    import shutil
    import tempfile

    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    unet_dir = Path("tests/fixtures/pipelines/micro-sd/unet")  # relative: config.json records it
    unet = UNet2DConditionModel.from_pretrained(REPO / unet_dir)
    unet.register_to_config(_name_or_path=str(unet_dir))
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, power=0.75,
                   model_cls=UNet2DConditionModel, model_config=unet.config)
    ema.load_state_dict({"optimization_step": 7})
    with tempfile.TemporaryDirectory() as tmp:
        ema.save_pretrained(tmp)
        weights = (Path(tmp) / "diffusion_pytorch_model.safetensors").read_bytes()
        if weights != (REPO / unet_dir / "diffusion_pytorch_model.safetensors").read_bytes():
            raise SystemExit("EMAModel.save_pretrained wrote other weights than micro-sd's UNet file")
        (folder / "ema_unet").mkdir(exist_ok=True)
        shutil.copy(Path(tmp) / "config.json", folder / "ema_unet" / "config.json")


def write_ema(folder: Path, seed: int) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    record: dict = {"names": [name for name, _ in EMA_SHAPES], "steps": EMA_STEPS, "cases": {}}
    for i, (case, kwargs) in enumerate(EMA_CASES.items()):
        ema_case(case, kwargs, seed + i, tensors, record["cases"])
    lcm_target_case(seed + 100, tensors, record)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "ema.safetensors", metadata={"format": "pt"})
    (folder / "ema.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    write_schedules(args.out / "lr_schedules.json")
    write_ema(args.out, args.seed)
    write_ema_folder(args.out)
    import diffusers
    print(json.dumps({"out": str(args.out), "torch": torch.__version__, "diffusers": diffusers.__version__}))


if __name__ == "__main__":
    main()
