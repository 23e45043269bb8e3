#!/usr/bin/env python3
"""Reference trajectories for lisadiff's fused optimizer and LISA (Python is a tool here).

Writes tests/fixtures/train/:
  adamw_mlp.safetensors   a small MLP trained 100 steps with torch.optim.AdamW (CPU default,
                          single-tensor path), a LambdaLR warmup + linear decay schedule and
                          per-parameter gradient clipping (LISA's semantics): initial weights,
                          data, the loss of every step and the final weights.
  lisa_unet.safetensors   10 optimizer steps on micro-sd's UNet with a plain denoising loss on
                          stored latents/noise/timesteps/text embeddings, for three regimes:
                          full fine-tuning, and LISA with stored active sets (re-drawn every 3
                          steps, per-tensor AdamW created on activation, state dropped on
                          deactivation, lr from the global step, per-tensor clipping, gradient
                          accumulation over 2 micro-batches). Losses and final weights.
  lora_unet.safetensors   peft's LoRA adapters on micro-sd's UNet (initialisation under both
                          schemes from a fixed seed) and 10 LoRA training steps.
Run: <venv>/bin/python scripts/make_optimizer_fixtures.py   (deterministic)
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import warnings  # noqa: E402

warnings.filterwarnings("ignore")
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "train"
HYPER = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def lr_lambda(step: int, warmup: int = 10, total: int = 100) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def mlp_reference() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = torch.randn(64, 1, generator=g)
    t = {f"init.{n}": p.detach().clone() for n, p in model.named_parameters()}
    t.update({"data.x": x, "data.y": y})
    opt = torch.optim.AdamW(model.parameters(), **HYPER)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():  # LISA's per-parameter clipping
            torch.nn.utils.clip_grad_norm_(p, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    t["losses"] = torch.tensor(losses, dtype=torch.float64)
    t.update({f"final.{n}": p.detach().clone() for n, p in model.named_parameters()})
    save_file(t, OUT / "adamw_mlp.safetensors", metadata={"format": "pt"})


def unet_reference() -> None:
    from diffusers import UNet2DConditionModel

    unet_dir = REPO / "tests" / "fixtures" / "pipelines" / "micro-sd" / "unet"
    g = torch.Generator().manual_seed(5)
    steps, accum, batch = 10, 2, 2
    data = {
        "data.latents": torch.randn(steps * accum, batch, 4, 8, 8, generator=g),
        "data.noise": torch.randn(steps * accum, batch, 4, 8, 8, generator=g),
        "data.timesteps": torch.randint(0, 1000, (steps * accum, batch), generator=g),
        "data.context": torch.randn(steps * accum, batch, 7, 8, generator=g),
    }
    names = [n for n, _ in UNet2DConditionModel.from_pretrained(unet_dir).named_parameters()]
    # Active sets for LISA: first and last tensor always, plus 12 drawn every 3 steps.
    rnd = random.Random(7)
    middle = list(range(1, len(names) - 1))
    draws = [sorted(rnd.sample(middle, 12)) for _ in range((steps + 2) // 3)]
    out = dict(data)
    meta = {"names": names, "draws": draws, "interval": 3, "accumulation": accum, "steps": steps,
            "hyper": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2}, "max_grad_norm": 1.0,
            "lr": "1e-3 * min(1, (step + 1) / 4)"}

    def lr_at(step: int) -> float:
        return 1e-3 * min(1.0, (step + 1) / 4)

    for regime in ("full", "lisa"):
        unet = UNet2DConditionModel.from_pretrained(unet_dir).train()
        params = dict(unet.named_parameters())
        states: dict[str, torch.optim.AdamW] = {}
        losses = []

        def activate(draw):
            on = {0, len(names) - 1, *draw}
            for i, n in enumerate(names):
                if i in on:
                    params[n].requires_grad_(True)
                else:
                    if params[n].requires_grad:
                        params[n].requires_grad_(False)
                        params[n].grad = None
                        states.pop(n, None)  # drop the optimizer state

        if regime == "lisa":
            activate(draws[0])
        for step in range(steps):
            for micro in range(accum):
                k = step * accum + micro
                noisy = data["data.latents"][k] + data["data.noise"][k]  # a plain denoising target
                pred = unet(noisy, data["data.timesteps"][k], data["data.context"][k]).sample
                loss = torch.nn.functional.mse_loss(pred, data["data.noise"][k])
                (loss / accum).backward()
                losses.append(loss.item())
            for n, p in params.items():
                if not p.requires_grad or p.grad is None:
                    continue
                torch.nn.utils.clip_grad_norm_(p, 1.0)
                if n not in states:
                    states[n] = torch.optim.AdamW([p], lr=lr_at(step), betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
                opt = states[n]
                opt.param_groups[0]["lr"] = lr_at(step)  # the global step's lr
                opt.step()
                p.grad = None
            if regime == "lisa" and (step + 1) % 3 == 0:
                activate(draws[(step + 1) // 3])
        out[f"{regime}.losses"] = torch.tensor(losses, dtype=torch.float64)
        out.update({f"{regime}.final.{n}": p.detach().clone() for n, p in unet.named_parameters()})
    save_file(out, OUT / "lisa_unet.safetensors", metadata={"format": "pt"})
    (OUT / "lisa_unet.json").write_text(json.dumps(meta, indent=1) + "\n")


def lora_reference() -> None:
    """peft's adapter initialisation (both schemes) and 10 LoRA training steps on micro-sd's
    UNet: per-tensor clipping, AdamW per adapter tensor, the same data and lr as above."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet_dir = REPO / "tests" / "fixtures" / "pipelines" / "micro-sd" / "unet"
    targets = ["to_k", "to_q", "to_v", "to_out.0"]
    out = {}
    for name, cfg in (("gaussian", dict(r=4, lora_alpha=4, init_lora_weights="gaussian")),
                      ("kaiming", dict(r=2, lora_alpha=4, init_lora_weights=True))):
        unet = UNet2DConditionModel.from_pretrained(unet_dir)
        torch.manual_seed(11)
        unet.add_adapter(LoraConfig(target_modules=targets, **cfg))
        out.update({f"init_{name}.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()})

    unet = UNet2DConditionModel.from_pretrained(unet_dir).train()
    unet.requires_grad_(False)
    torch.manual_seed(11)
    unet.add_adapter(LoraConfig(target_modules=targets, r=4, lora_alpha=4, init_lora_weights="gaussian"))
    lora = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(8)
    latents = torch.randn(10, 2, 4, 8, 8, generator=g)
    noise = torch.randn(10, 2, 4, 8, 8, generator=g)
    timesteps = torch.randint(0, 1000, (10, 2), generator=g)
    context = torch.randn(10, 2, 7, 8, generator=g)
    out.update({"data.latents": latents, "data.noise": noise, "data.timesteps": timesteps, "data.context": context})
    opts = {n: torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2) for n, p in lora}
    losses = []
    for step in range(10):
        pred = unet(latents[step] + noise[step], timesteps[step], context[step]).sample
        loss = torch.nn.functional.mse_loss(pred, noise[step])
        loss.backward()
        losses.append(loss.item())
        for n, p in lora:
            torch.nn.utils.clip_grad_norm_(p, 1.0)
            opts[n].param_groups[0]["lr"] = 1e-2 * min(1.0, (step + 1) / 4)
            opts[n].step()
            p.grad = None
    out["train.losses"] = torch.tensor(losses, dtype=torch.float64)
    out.update({f"train.final.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()})
    with torch.no_grad():
        out["train.probe_output"] = unet(latents[0], timesteps[0], context[0]).sample
    save_file(out, OUT / "lora_unet.safetensors", metadata={"format": "pt"})


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    mlp_reference()
    unet_reference()
    lora_reference()


if __name__ == "__main__":
    main()
