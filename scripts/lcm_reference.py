#!/usr/bin/env python3
"""A Python reference of the LCM distillation loop of diffusers' train_lcm_distill_sd_wds.py
(../shared/spec/recipes.md sections 2.3-2.6) and, for --method lora, of its LCM-LoRA sibling
train_lcm_distill_lora_sd_wds.py (section 5.6), written for lisadiff's parity test
(tests/recipes/test_lcm_distill_parity.cpp, label python): diffusers components, peft LoRA,
torch.optim.AdamW, clip_grad_norm_, diffusers' get_scheduler, fed the random draws the test
stored, so that both sides see the same numbers.

    lcm_reference.py --pipeline DIR --inputs DIR --out FILE.safetensors
    lcm_reference.py --pipeline DIR --bench lora|lisa|full --steps N --batch B --resolution R --json FILE

--bench (scripts/bench_lcm.py's Python side) draws its own inputs (seeded) instead of reading
them and writes the wall-clock seconds of every optimizer step instead of weights; LISA trains
the first and last tensor plus 25% of the others (the fork's rate), drawn once.

DIR (inputs) holds inputs.safetensors (for micro-batch i: images.i [B,3,R,R] in [-1, 1],
latent_noise.i [B,4,h,w], index.i [B] int64 DDIM grid indices, noise.i [B,4,h,w], w.i [B];
init.<name>: the student's initial values of tensors the test's side initialised at random,
i.e. the new time_embedding.cond_proj.weight (lisa, full) or the LoRA adapters by peft name
(lora)) and settings.json (method lora, lisa or full; with lisa the active parameter names of
every optimizer step in `sets`; steps, accumulation, learning_rate, lr_scheduler,
lr_warmup_steps, max_grad_norm, adam_*, loss_type, huber_c, w_min, w_max, num_ddim_timesteps,
timestep_scaling_factor, ema_decay, unet_time_cond_proj_dim, lora_rank, lora_alpha,
lora_target_modules, teacher_autocast (no, fp16, bf16), seed, texts: one list per micro-batch).

Writes the loss of every micro-batch (`losses`, [M]), the trained tensors (unet.<name>; lora:
lora.<peft name>), the target's tensors (target.<name>, lisa and full) and the values its own
seeded construction gave the randomly initialised tensors (seeded_init.<name>: the student
built by UNet2DConditionModel(**config) after torch.manual_seed(seed); peft's adapters after
the same seed), so that the test can check that the same seed gives the same initialisation.
"""
from __future__ import annotations

import contextlib
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

LCM_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


def boundary_scalings(t, scaling, sigma_data=0.5):
    s = scaling * t
    return sigma_data ** 2 / (s ** 2 + sigma_data ** 2), s / (s ** 2 + sigma_data ** 2) ** 0.5


def w_embedding(w, dim):
    """LCM's guidance-scale embedding: sin half first, frequencies exp(-i ln(1e4) / (h - 1))."""
    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    args = w.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def per_sample(x, ndim):
    return x.reshape(x.shape[0], *([1] * (ndim - 1)))


def x0_of(out, t, z, ptype, alphas, sigmas):
    a, s = per_sample(alphas[t], z.ndim), per_sample(sigmas[t], z.ndim)
    if ptype == "epsilon":
        return (z - s * out) / a
    if ptype == "sample":
        return out
    return a * z - s * out


def eps_of(out, t, z, ptype, alphas, sigmas):
    a, s = per_sample(alphas[t], z.ndim), per_sample(sigmas[t], z.ndim)
    if ptype == "epsilon":
        return out
    if ptype == "sample":
        return (z - a * out) / s
    return a * out + s * z


class Ddim:
    """The deterministic DDIM step on the coarse grid [k-1, 2k-1, ...], to the previous point."""

    def __init__(self, alphas_cumprod, n):
        k = len(alphas_cumprod) // n
        self.timesteps = torch.arange(1, n + 1, dtype=torch.int64) * k - 1
        prev = [alphas_cumprod[0].item()] + alphas_cumprod[self.timesteps[:-1]].tolist()
        self.prev = torch.tensor(prev, dtype=torch.float64)

    def step(self, x0, eps, index):
        a = per_sample(self.prev[index], x0.ndim)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def bench_inputs(args):
    """Settings and seeded random inputs of the benchmark (the script's defaults otherwise)."""
    g = torch.Generator().manual_seed(0)
    h = latent_size(args.pipeline, args.resolution)
    inputs = {}
    b, r = args.batch, args.resolution
    for i in range(args.steps):
        inputs[f"images.{i}"] = torch.rand(b, 3, r, r, generator=g) * 2 - 1
        inputs[f"latent_noise.{i}"] = torch.randn(b, 4, h, h, generator=g)
        inputs[f"index.{i}"] = torch.randint(0, 50, (b,), generator=g)
        inputs[f"noise.{i}"] = torch.randn(b, 4, h, h, generator=g)
        inputs[f"w.{i}"] = torch.rand(b, generator=g) * 10 + 5
    settings = dict(method=args.bench, steps=args.steps, accumulation=1, learning_rate=1e-5, lr_scheduler="constant",
                    lr_warmup_steps=0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0,
                    adam_epsilon=1e-8, loss_type="huber", huber_c=0.001, w_min=5.0, w_max=15.0,
                    num_ddim_timesteps=50, timestep_scaling_factor=10.0, ema_decay=0.95, unet_time_cond_proj_dim=256,
                    lora_rank=64, lora_alpha=64, lora_target_modules=LCM_LORA_TARGETS, teacher_autocast="no", seed=0,
                    texts=[["a red circle on a blue background"] * b] * args.steps)
    return settings, inputs


def main() -> None:
    args, s, inputs = reference_args(__doc__, bench_inputs)
    base = args.pipeline
    method = s["method"]
    seeded_init = {}

    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    ptype = noise_scheduler.config.prediction_type
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").requires_grad_(False)
    teacher = UNet2DConditionModel.from_pretrained(base, subfolder="unet").requires_grad_(False)
    alphas = noise_scheduler.alphas_cumprod.sqrt()
    sigmas = (1 - noise_scheduler.alphas_cumprod).sqrt()
    solver = Ddim(noise_scheduler.alphas_cumprod, s["num_ddim_timesteps"])
    topk = noise_scheduler.config.num_train_timesteps // s["num_ddim_timesteps"]

    target = None
    if method == "lora":
        # The LCM-LoRA script: the pretrained UNet with peft adapters, no w embedding; the
        # target is the same adapted UNet under no_grad.
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        unet.requires_grad_(False)
        torch.manual_seed(s["seed"])
        unet.add_adapter(LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                                    target_modules=s["lora_target_modules"]))
        for name, value in get_peft_model_state_dict(unet).items():
            seeded_init[name] = value.detach().clone()
        init = {k[len("init."):]: v for k, v in inputs.items() if k.startswith("init.")}
        if init:
            result = set_peft_model_state_dict(unet, init)
            assert not getattr(result, "unexpected_keys", None), result
        w_dim = None
    else:
        # The script: a student from the teacher's config with time_cond_proj_dim, the
        # teacher's weights loaded non-strictly (cond_proj keeps its initialisation), and a
        # target built from the student's config with the student's weights.
        config = dict(teacher.config)
        if config.get("time_cond_proj_dim") is None:
            config["time_cond_proj_dim"] = s["unet_time_cond_proj_dim"]
        torch.manual_seed(s["seed"])
        unet = UNet2DConditionModel(**config)
        seeded_init["time_embedding.cond_proj.weight"] = unet.time_embedding.cond_proj.weight.detach().clone()
        unet.load_state_dict(teacher.state_dict(), strict=False)
        if "init.time_embedding.cond_proj.weight" in inputs:
            with torch.no_grad():
                unet.time_embedding.cond_proj.weight.copy_(inputs["init.time_embedding.cond_proj.weight"])
        target = UNet2DConditionModel.from_config(unet.config)
        target.load_state_dict(unet.state_dict())
        target.requires_grad_(False)
        w_dim = unet.config.time_cond_proj_dim
    unet.train()

    hyper = dict(betas=(s["adam_beta1"], s["adam_beta2"]), weight_decay=s["adam_weight_decay"], eps=s["adam_epsilon"])
    trained = [q for q in unet.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=s["learning_rate"], **hyper)
    lr_scheduler = get_scheduler(s["lr_scheduler"], optimizer=optimizer, num_warmup_steps=s["lr_warmup_steps"],
                                 num_training_steps=s["steps"])
    lisa = None
    if method == "lisa":
        sets = Lisa.bench_sets(unet, None, s["steps"]) if args.bench else s["sets"]
        lisa = Lisa(unet, sets, s["learning_rate"], hyper)

    uncond_ids = tokenizer([""] * len(s["texts"][0]), max_length=tokenizer.model_max_length, padding="max_length",
                           return_tensors="pt").input_ids
    with torch.no_grad():
        uncond_embeds = text_encoder(uncond_ids)[0]
    teacher_cast = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[s["teacher_autocast"]]

    losses = []
    step_seconds = []
    A = s["accumulation"]
    for step in range(s["steps"]):
        t0 = time.perf_counter()
        if lisa:
            lisa.begin_step(step)
        for k in range(A):
            i = step * A + k
            with torch.no_grad():
                dist = vae.encode(inputs[f"images.{i}"]).latent_dist
                latents = (dist.mean + dist.std * inputs[f"latent_noise.{i}"]) * vae.config.scaling_factor
                index = inputs[f"index.{i}"].long()
                start_t = solver.timesteps[index]
                end_t = torch.clamp(start_t - topk, min=0)
                noise = inputs[f"noise.{i}"]
                noisy = noise_scheduler.add_noise(latents, noise, start_t)
                w = inputs[f"w.{i}"].float()
                w_emb = w_embedding(w, w_dim) if w_dim else None
                w = w.reshape(-1, 1, 1, 1)
                ids = tokenizer(s["texts"][i], max_length=tokenizer.model_max_length, padding="max_length",
                                truncation=True, return_tensors="pt").input_ids
                embeds = text_encoder(ids)[0]
            c_skip_start, c_out_start = [per_sample(x, 4) for x in boundary_scalings(start_t, s["timestep_scaling_factor"])]
            c_skip, c_out = [per_sample(x, 4) for x in boundary_scalings(end_t, s["timestep_scaling_factor"])]
            out = unet(noisy, start_t, timestep_cond=w_emb, encoder_hidden_states=embeds).sample
            model_pred = c_skip_start * noisy + c_out_start * x0_of(out, start_t, noisy, ptype, alphas, sigmas)
            with torch.no_grad():
                cast = torch.autocast("cpu", dtype=teacher_cast) if teacher_cast else contextlib.nullcontext()
                with cast:
                    cond = teacher(noisy, start_t, encoder_hidden_states=embeds).sample
                    uncond = teacher(noisy, start_t, encoder_hidden_states=uncond_embeds).sample
                    cx0, ceps = (f(cond, start_t, noisy, ptype, alphas, sigmas) for f in (x0_of, eps_of))
                    ux0, ueps = (f(uncond, start_t, noisy, ptype, alphas, sigmas) for f in (x0_of, eps_of))
                    x0 = cx0 + w * (cx0 - ux0)
                    eps = ceps + w * (ceps - ueps)
                    x_prev = solver.step(x0, eps, index)
                target_net = target if target is not None else unet
                t_out = target_net(x_prev.float(), end_t, timestep_cond=w_emb, encoder_hidden_states=embeds).sample
                target_pred = c_skip * x_prev + c_out * x0_of(t_out, end_t, x_prev, ptype, alphas, sigmas)
            if s["loss_type"] == "l2":
                loss = F.mse_loss(model_pred.float(), target_pred.float(), reduction="mean")
            else:
                c = s["huber_c"]
                loss = torch.mean(torch.sqrt((model_pred.float() - target_pred.float()) ** 2 + c ** 2) - c)
            losses.append(loss.item())
            (loss / A).backward()
        if lisa:
            lisa.finish_step(lr_scheduler.get_last_lr()[0], s["max_grad_norm"])
        else:
            torch.nn.utils.clip_grad_norm_(trained, s["max_grad_norm"])
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if target is not None:
            # The target's EMA after every optimizer step: targ <- mu targ + (1 - mu) src.
            with torch.no_grad():
                mu = s["ema_decay"]
                for targ, src in zip(target.parameters(), unet.parameters()):
                    targ.detach().mul_(mu).add_(src, alpha=1 - mu)
        step_seconds.append(time.perf_counter() - t0)

    if args.bench:
        write_bench(args.json, step_seconds, losses)
        return
    out = {"losses": torch.tensor(losses, dtype=torch.float64)}
    for name, value in seeded_init.items():
        out[f"seeded_init.{name}"] = value.contiguous()
    if method == "lora":
        from peft.utils import get_peft_model_state_dict

        for name, value in get_peft_model_state_dict(unet).items():
            out[f"lora.{name}"] = value.detach().contiguous()
    else:
        for name, value in unet.named_parameters():
            out[f"unet.{name}"] = value.detach().contiguous()
        for name, value in target.named_parameters():
            out[f"target.{name}"] = value.detach().contiguous()
    save_file(out, args.out)


if __name__ == "__main__":
    main()
