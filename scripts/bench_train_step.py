#!/usr/bin/env python3
"""The Python reference for bench/train_step.cpp (bench_train_step): the same UNet training
steps with diffusers + torch (+ peft), the same inputs, the same JSON.

    bench_train_step.py --pipeline DIR --regime lisa [--steps 5 --warmup 2 --batch 1 --latent 32]
                        [--threads N] [--lisa-active RESULT.json] [--json OUT]

Regimes (what a user of the Python tools would run):
  full-classic  torch.optim.AdamW over every parameter (CPU default: the single-tensor path),
                loss.backward(), optimizer.step(), optimizer.zero_grad(set_to_none=True)
  full-fused    the LISA-diffusion original's fused update over every parameter: one
                torch.optim.AdamW and one LambdaLR per parameter, stepped in a
                register_post_accumulate_grad_hook, gradient set to none right after
  lora          peft adapters (unet.add_adapter(LoraConfig(...)), peft's default init) on
                to_q/to_k/to_v/to_out.0, torch.optim.AdamW over the adapters, as diffusers'
                LoRA scripts do
  lisa          the original's single_lisa.py approach: freeze all, activate the first and
                the last tensor plus n drawn ones, per-parameter AdamW + LambdaLR in
                post-accumulate-grad hooks. Hooks go on every tensor (the original put them
                only on the tensors active at registration, lisa.md section 3). With
                --lisa-active the active set is read from a bench_train_step result
                ("active_names"), so that both sides train the same tensors.

Loss, inputs and their order, memory figures: as bench/train_step.cpp (seeded after loading,
so the first loss equals the C++ side's). Per-parameter gradient clipping is off on both
sides. Needs the project venv (diffusers, peft); Python is a tool here, never the product.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

REGIMES = ("full-classic", "full-fused", "lora", "lisa")
HYPER = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def proc_status_bytes(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class FusedPerParameter:
    """The original's layer-wise update: per-parameter AdamW and LR schedule, stepped as soon
    as the parameter's gradient is accumulated, gradient freed at once. Hooks on every
    parameter given; optimizers created on first use and dropped on deactivation."""

    def __init__(self, named_params):
        self.params = dict(named_params)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        for name, p in self.params.items():
            p.register_post_accumulate_grad_hook(self._hook(name))

    def _hook(self, name):
        def hook(p):
            if p.grad is None:
                return
            if name not in self.optimizers:
                self.optimizers[name] = torch.optim.AdamW([p], **HYPER)
                self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(self.optimizers[name], lambda s: 1.0)
            self.optimizers[name].step()
            self.optimizers[name].zero_grad(set_to_none=True)
            self.schedulers[name].step()
        return hook

    def drop(self, name):
        self.optimizers.pop(name, None)
        self.schedulers.pop(name, None)

    def state_bytes(self) -> int:
        return sum(state_bytes(o) for o in self.optimizers.values())


class LisaDiffusion:
    """single_lisa.py's LISADiffusion, with the hooks on every tensor (see the module doc)."""

    def __init__(self, model, n_active: int, seed: int, active_names=None, frozen_dtype=None):
        self.frozen_dtype = frozen_dtype
        self.named = list(model.named_parameters())
        self.total_layers = len(self.named)
        self.n = n_active if n_active >= 0 else int((self.total_layers - 2) * (8 / self.total_layers))
        self.rng = random.Random(seed)
        self.fused = FusedPerParameter(self.named)
        self.recall(active_names)

    def freeze_all_layers(self):
        for name, p in self.named:
            if p.requires_grad:
                p.requires_grad_(False)
                p.grad = None
                self.fused.drop(name)

    def recall(self, active_names=None):
        self.freeze_all_layers()
        if active_names is None:
            drawn = self.rng.sample(range(1, self.total_layers - 1), self.n)
            on = {0, self.total_layers - 1, *drawn}
            active_names = [n for i, (n, _) in enumerate(self.named) if i in on]
        wanted = set(active_names)
        for name, p in self.named:
            if name in wanted:
                p.requires_grad_(True)
        missing = wanted - {n for n, _ in self.named}
        if missing:
            sys.exit(f"bench_train_step.py: --lisa-active names tensors the UNet lacks: {sorted(missing)[:3]}")
        self.active_names = [n for n, p in self.named if p.requires_grad]
        if self.frozen_dtype is not None:  # the extended original's precision switch
            for name, p in self.named:
                if p.requires_grad:
                    p.data = p.data.float()
                elif "norm" not in name:
                    p.data = p.data.to(self.frozen_dtype)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for st in opt.state.values():
        for t in st.values():  # exp_avg, exp_avg_sq and the step (a float32 scalar), as FusedOptimizer counts
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", required=True, type=Path)
    ap.add_argument("--regime", choices=REGIMES, default="lisa")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--lisa-n", type=int, default=-1)
    ap.add_argument("--lisa-interval", type=int, default=20)
    ap.add_argument("--lisa-active", type=Path, help="a bench_train_step JSON result: train its active_names")
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--use-8bit-adam", action="store_true")
    ap.add_argument("--bf16-frozen", action="store_true",
                    help="bfloat16 autocast, frozen weights stored in bfloat16 (the original's precision switch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.use_8bit_adam:
        sys.exit("bench_train_step.py: --use-8bit-adam: the reference would be bitsandbytes' AdamW8bit, which is "
                 "not in the project venv (no CPU reference here); measure the C++ side alone")
    if not (a.pipeline / "unet" / "config.json").is_file():
        sys.exit(f"bench_train_step.py: {a.pipeline}: no unet/config.json (not a pipeline folder)")
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    from diffusers import UNet2DConditionModel

    r = dict(side="python", regime=a.regime, pipeline=str(a.pipeline), steps=a.steps, warmup=a.warmup, batch=a.batch,
             latent=a.latent, gradient_checkpointing=a.gradient_checkpointing, use_8bit_adam=a.use_8bit_adam,
             seed=a.seed, threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
             torch_version=torch.__version__.split("+")[0], rss_start_bytes=proc_status_bytes("VmRSS"))
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(a.pipeline / "unet")
    r["load_s"] = time.perf_counter() - t0
    unet.train()
    if a.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    malloc_trim()
    r["rss_loaded_bytes"] = proc_status_bytes("VmRSS")
    r["total_params"] = sum(p.numel() for p in unet.parameters())
    r["param_tensors"] = len(list(unet.parameters()))

    torch.manual_seed(a.seed)
    classic = fused = lisa = None
    if a.regime == "full-classic":
        classic = torch.optim.AdamW(unet.parameters(), **HYPER)
    elif a.regime == "full-fused":
        fused = FusedPerParameter(unet.named_parameters())
    elif a.regime == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=a.lora_rank, lora_alpha=a.lora_rank, init_lora_weights=True,
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        classic = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], **HYPER)
    else:
        active = json.loads(a.lisa_active.read_text())["active_names"] if a.lisa_active else None
        lisa = LisaDiffusion(unet, a.lisa_n, a.seed, active, torch.bfloat16 if a.bf16_frozen else None)
        r["active_names"] = lisa.active_names

    cfg = unet.config
    ctx_dim = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    batches = []
    for _ in range(a.warmup + a.steps):
        batches.append((torch.randn(a.batch, cfg.in_channels, a.latent, a.latent),
                        torch.randn(a.batch, cfg.out_channels, a.latent, a.latent),
                        torch.randint(0, 1000, (a.batch,), dtype=torch.long),
                        torch.randn(a.batch, 77, ctx_dim)))
    if a.bf16_frozen:
        if a.regime.startswith("full"):
            sys.exit("bench_train_step.py: --bf16-frozen needs a regime with frozen weights (lora, lisa)")
        for name, p in unet.named_parameters():  # norms stay float32 (CPU group_norm needs it)
            if not p.requires_grad and "norm" not in name:
                p.data = p.data.to(torch.bfloat16)
    r["bf16_frozen"] = a.bf16_frozen
    r["param_bytes"] = sum(p.numel() * p.element_size() for p in unet.parameters())
    r["trainable_params"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)

    malloc_trim()
    r["rss_before_train_bytes"] = proc_status_bytes("VmRSS")
    r["rss_anon_before_train_bytes"] = proc_status_bytes("RssAnon")
    r["rss_file_before_train_bytes"] = proc_status_bytes("RssFile")
    reset = reset_peak_rss()
    r["loadavg_start"] = os.getloadavg()[0]
    times, cpu_times, losses = [], [], []
    for k, (latents, noise, timesteps, context) in enumerate(batches):
        t0, c0 = time.perf_counter(), cpu_seconds()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16_frozen):
            pred = unet(latents + noise, timesteps, context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        if classic is not None:
            classic.step()
            classic.zero_grad(set_to_none=True)
        if lisa is not None and (k + 1) % a.lisa_interval == 0:
            lisa.recall()
        dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
        losses.append(loss.item())
        if k >= a.warmup:
            times.append(dt)
            cpu_times.append(dc)
        print(f"[bench_train_step.py] {a.regime} step {k + 1}/{len(batches)}{' (warmup)' if k < a.warmup else ''}: "
              f"{dt:.3f} s, loss {losses[-1]:.6f}", file=sys.stderr)
    r["train_peak_rss_bytes"] = proc_status_bytes("VmHWM") if reset else None
    r["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r["loadavg_end"] = os.getloadavg()[0]
    r["rss_anon_end_bytes"] = proc_status_bytes("RssAnon")
    r["rss_file_end_bytes"] = proc_status_bytes("RssFile")
    r["optimizer_state_bytes"] = (state_bytes(classic) if classic is not None else
                                  (lisa.fused if lisa is not None else fused).state_bytes())
    r["step_times_s"] = times
    r["losses"] = losses
    r["step_mean_s"] = statistics.fmean(times) if times else 0.0
    r["step_median_s"] = statistics.median(times) if times else 0.0
    r["step_min_s"] = min(times) if times else 0.0
    r["step_cpu_times_s"] = cpu_times
    r["step_cpu_median_s"] = statistics.median(cpu_times) if cpu_times else 0.0
    text = json.dumps(r, indent=2)
    print(text)
    if a.json:
        tmp = a.json.with_name(a.json.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
