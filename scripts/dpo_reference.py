#!/usr/bin/env python3
"""A Python reference of the Diffusion-DPO training loop of diffusers' train_diffusion_dpo.py
(../shared/spec/recipes.md sections 4.3-4.4), written for lisadiff's parity test
(tests/recipes/test_diffusion_dpo_parity.cpp, label python): diffusers components, peft LoRA,
torch.optim.AdamW, clip_grad_norm_, diffusers' get_scheduler, fed the random draws the test
stored, so that both sides see the same numbers.

    dpo_reference.py --pipeline DIR --inputs DIR --out FILE.safetensors
    dpo_reference.py --pipeline DIR --bench lora|lisa|full --steps N --batch B --resolution R --json FILE

--bench (scripts/bench_dpo.py's Python side) draws its own inputs (seeded) instead of reading
them and writes the wall-clock seconds of every optimizer step instead of weights; LISA trains
the first and last tensor plus 25% of the others (the fork's rate), drawn once.

DIR (inputs) holds inputs.safetensors (for micro-batch i: preferred.i, rejected.i [B,3,R,R] in
[-1, 1], latent_noise.i [2B,4,h,w] preferred first, noise.i [B,4,h,w], timesteps.i [B] int64)
and settings.json (method lora, lisa or full; with lisa the active parameter names of every
optimizer step in `sets`; steps, accumulation, learning_rate, lr_scheduler, lr_warmup_steps,
max_grad_norm, adam_*, loss_type, beta_dpo, rank, seed, texts: one list per micro-batch).

Writes per micro-batch loss, implicit_acc, raw_model_loss and ref_loss ([M] each), the
logits ([M, B]) and the
trained tensors: unet.<name> (lisa, full) or the peft adapters lora.<peft name> (lora).

The step, as the script: images stacked [all preferred, all rejected]; latents =
vae.encode(x).latent_dist.sample() (here mean + std * the stored noise) * scaling_factor;
noise shared by a pair (the stored [B] noise repeated); timesteps repeated; the caption
embedding repeated; per-sample float32 MSE of the policy and of the reference (lora: the same
UNet with its adapters disabled; lisa/full: a frozen copy of the pretrained UNet);
logits = ref_diff - model_diff; sigmoid / hinge / ipo loss with beta_dpo (ipo as the script
intends it: mean((logits - 1/(2 beta))^2)); backward of loss / A; at the end of a window
clip_grad_norm_ over the trained tensors (LISA: per tensor), AdamW step, scheduler step.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reflib import Lisa, latent_size, reference_args, write_bench  # noqa: E402


def bench_inputs(args):
    """Settings and seeded random inputs of the benchmark (the script's defaults otherwise)."""
    g = torch.Generator().manual_seed(0)
    h = latent_size(args.pipeline, args.resolution)
    inputs = {}
    b, r = args.batch, args.resolution
    for i in range(args.steps):
        inputs[f"preferred.{i}"] = torch.rand(b, 3, r, r, generator=g) * 2 - 1
        inputs[f"rejected.{i}"] = torch.rand(b, 3, r, r, generator=g) * 2 - 1
        inputs[f"latent_noise.{i}"] = torch.randn(2 * b, 4, h, h, generator=g)
        inputs[f"noise.{i}"] = torch.randn(b, 4, h, h, generator=g)
        inputs[f"timesteps.{i}"] = torch.randint(0, 1000, (b,), generator=g)
    settings = dict(method=args.bench, steps=args.steps, accumulation=1, learning_rate=5e-5, lr_scheduler="constant",
                    lr_warmup_steps=0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2,
                    adam_epsilon=1e-8, loss_type="sigmoid", beta_dpo=2500, rank=4, seed=0,
                    texts=[["a red circle on a blue background"] * b] * args.steps)
    return settings, inputs


def main() -> None:
    args, s, inputs = reference_args(__doc__, bench_inputs)
    base = args.pipeline
    method = s["method"]

    torch.manual_seed(s["seed"])
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)

    reference = None
    if method == "lora":
        # The script: the UNet frozen, then peft adapters (r = alpha = rank, gaussian init) on
        # the attention projections.
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=s["rank"], lora_alpha=s["rank"], init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    else:
        reference = copy.deepcopy(unet).requires_grad_(False).eval()
    unet.train()

    hyper = dict(betas=(s["adam_beta1"], s["adam_beta2"]), weight_decay=s["adam_weight_decay"], eps=s["adam_epsilon"])
    trained = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=s["learning_rate"], **hyper)
    lr_scheduler = get_scheduler(s["lr_scheduler"], optimizer=optimizer, num_warmup_steps=s["lr_warmup_steps"],
                                 num_training_steps=s["steps"])
    lisa = None
    if method == "lisa":
        sets = Lisa.bench_sets(unet, None, s["steps"]) if args.bench else s["sets"]
        lisa = Lisa(unet, sets, s["learning_rate"], hyper)

    def embed(texts):
        ids = tokenizer(texts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids)[0]

    beta = s["beta_dpo"]
    logs = {"losses": [], "implicit_acc": [], "raw_model_loss": [], "ref_loss": []}
    all_logits = []
    step_seconds = []
    A = s["accumulation"]
    for step in range(s["steps"]):
        t0 = time.perf_counter()
        if lisa:
            lisa.begin_step(step)
        for k in range(A):
            i = step * A + k
            with torch.no_grad():
                feed = torch.cat([inputs[f"preferred.{i}"], inputs[f"rejected.{i}"]])
                dist = vae.encode(feed).latent_dist
                latents = (dist.mean + dist.std * inputs[f"latent_noise.{i}"]) * vae.config.scaling_factor
                noise = inputs[f"noise.{i}"].repeat(2, 1, 1, 1)
                timesteps = inputs[f"timesteps.{i}"].long().repeat(2)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = embed(s["texts"][i]).repeat(2, 1, 1)
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, timesteps)
            model_pred = unet(noisy, timesteps, encoder_hidden_states).sample
            model_losses = F.mse_loss(model_pred.float(), target.float(), reduction="none")
            model_losses = model_losses.mean(dim=list(range(1, len(model_losses.shape))))
            model_losses_w, model_losses_l = model_losses.chunk(2)
            raw_model_loss = 0.5 * (model_losses_w.mean() + model_losses_l.mean())
            model_diff = model_losses_w - model_losses_l
            with torch.no_grad():
                if reference is None:
                    unet.disable_adapters()
                    ref_preds = unet(noisy, timesteps, encoder_hidden_states).sample.detach()
                    unet.enable_adapters()
                else:
                    ref_preds = reference(noisy, timesteps, encoder_hidden_states).sample
                ref_loss = F.mse_loss(ref_preds.float(), target.float(), reduction="none")
                ref_loss = ref_loss.mean(dim=list(range(1, len(ref_loss.shape))))
                ref_losses_w, ref_losses_l = ref_loss.chunk(2)
                ref_diff = ref_losses_w - ref_losses_l
                raw_ref_loss = ref_loss.mean()
            logits = ref_diff - model_diff
            if s["loss_type"] == "sigmoid":
                loss = -1 * F.logsigmoid(beta * logits).mean()
            elif s["loss_type"] == "hinge":
                loss = torch.relu(1 - beta * logits).mean()
            elif s["loss_type"] == "ipo":
                loss = ((logits - 1 / (2 * beta)) ** 2).mean()
            else:
                raise ValueError(s["loss_type"])
            all_logits.append(logits.detach().clone())
            implicit_acc = (logits > 0).sum().float() / logits.size(0)
            implicit_acc += 0.5 * (logits == 0).sum().float() / logits.size(0)
            for key, value in (("losses", loss), ("implicit_acc", implicit_acc), ("raw_model_loss", raw_model_loss),
                               ("ref_loss", raw_ref_loss)):
                logs[key].append(value.item())
            (loss / A).backward()
        if lisa:
            lisa.finish_step(lr_scheduler.get_last_lr()[0], s["max_grad_norm"])
        else:
            torch.nn.utils.clip_grad_norm_(trained, s["max_grad_norm"])
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - t0)

    if args.bench:
        write_bench(args.json, step_seconds, logs["losses"])
        return
    out = {k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}
    out["logits"] = torch.stack(all_logits)
    if method == "lora":
        from peft.utils import get_peft_model_state_dict

        for name, value in get_peft_model_state_dict(unet).items():
            out[f"lora.{name}"] = value.detach().contiguous()
    else:
        for name, value in unet.named_parameters():
            out[f"unet.{name}"] = value.detach().contiguous()
    save_file(out, args.out)


if __name__ == "__main__":
    main()
