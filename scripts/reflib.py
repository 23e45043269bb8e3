"""What the Python references of the recipe parity tests and benchmarks share
(scripts/ip2p_reference.py, dpo_reference.py, lcm_reference.py): the command line, the
settings and stored inputs, the latent size, LISA as lisadiff defines it, and the benchmark's
JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def reference_args(doc: str, bench_inputs, default_batch: int = 1):
    """Parses --pipeline --inputs --out (a parity run) or --bench METHOD --steps --batch
    --resolution --json (a benchmark run). Returns (args, settings, inputs): settings.json and
    inputs.safetensors of --inputs, or bench_inputs(args)'s."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--inputs")
    p.add_argument("--out")
    p.add_argument("--bench", choices=["lora", "lisa", "full"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=default_batch)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--json")
    args = p.parse_args()
    if args.bench:
        settings, inputs = bench_inputs(args)
    else:
        settings = json.loads((Path(args.inputs) / "settings.json").read_text())
        inputs = load_file(str(Path(args.inputs) / "inputs.safetensors"))
    return args, settings, inputs


def latent_size(pipeline: str, resolution: int) -> int:
    """The VAE's latent side for images of `resolution` pixels."""
    vae_cfg = json.loads((Path(pipeline) / "vae/config.json").read_text())
    return resolution // 2 ** (len(vae_cfg["block_out_channels"]) - 1)


class Lisa:
    """LISA as lisadiff defines it (docs/training.md): per optimizer step the recorded set of
    tensors trains (the others are frozen: no gradient, no decay); each active tensor has its
    own AdamW whose moments and step count start when it is activated and are dropped when it is
    frozen again; its gradient is clipped alone to max_grad_norm; the lr is the schedule's at
    the global step."""

    def __init__(self, model: torch.nn.Module, sets: list[list[str]], lr: float, hyper: dict):
        self.params = dict(model.named_parameters())
        self.sets, self.lr, self.hyper = sets, lr, hyper
        self.optimizers: dict[str, torch.optim.AdamW] = {}

    @staticmethod
    def bench_sets(model: torch.nn.Module, n: int | None, steps: int, rate: float = 0.25) -> list[list[str]]:
        """The benchmark's set, drawn once: the first and last tensor plus n others (or `rate`
        of the others)."""
        names = [name for name, _ in model.named_parameters()]
        g = torch.Generator().manual_seed(0)
        count = n if n is not None else int((len(names) - 2) * rate)
        drawn = torch.randperm(len(names) - 2, generator=g)[:count] + 1
        return [[names[0], names[-1]] + [names[i] for i in drawn.tolist()]] * steps

    def begin_step(self, step: int) -> None:
        active = set(self.sets[step])
        for name, param in self.params.items():
            param.requires_grad_(name in active)
        self.optimizers = {n: o for n, o in self.optimizers.items() if n in active}
        for n in active:
            if n not in self.optimizers:
                self.optimizers[n] = torch.optim.AdamW([self.params[n]], lr=self.lr, **self.hyper)

    def finish_step(self, lr: float, max_grad_norm: float) -> None:
        for n, opt in self.optimizers.items():
            torch.nn.utils.clip_grad_norm_([self.params[n]], max_grad_norm)
            opt.param_groups[0]["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)


def write_bench(path: str, step_seconds: list[float], losses: list[float]) -> None:
    """The benchmark's JSON: per-step wall-clock seconds, the losses, the threads and torch."""
    Path(path).write_text(json.dumps({"step_seconds": step_seconds, "losses": losses,
                                      "threads": torch.get_num_threads(), "torch": torch.__version__}))
