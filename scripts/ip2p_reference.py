#!/usr/bin/env python3
"""A Python reference of the InstructPix2Pix training loop of diffusers'
train_instruct_pix2pix.py (../shared/spec/recipes.md sections 3.3-3.5), written for lisadiff's
parity test (tests/recipes/test_instruct_pix2pix_parity.cpp, label python): diffusers
components, torch.optim.AdamW, clip_grad_norm_, diffusers' get_scheduler and EMAModel, fed the
random draws the test stored, so that both sides see the same numbers.

    ip2p_reference.py --pipeline DIR --inputs DIR --out FILE.safetensors
    ip2p_reference.py --pipeline DIR --bench full|lisa --steps N --batch B --resolution R [--json FILE]

--bench (scripts/bench_ip2p.py's Python side) draws its own inputs (seeded) instead of reading
them, LISA trains the first and last tensor plus 8 drawn ones (the fork's 8/P), LoRA trains
peft adapters of rank 4 and conv_in, and it writes the wall-clock seconds of every optimizer
step instead of weights.

DIR (inputs) holds inputs.safetensors (for micro-batch i: original.i, edited.i [B,3,R,R] in
[-1, 1], latent_noise.i, noise.i [B,4,h,w], timesteps.i [B] int64, dropout_r.i [B]) and
settings.json (method full or lisa, with lisa the active parameter names of every optimizer
step in `sets`, steps, accumulation, learning_rate, lr_scheduler, lr_warmup_steps,
max_grad_norm, adam_* , dropout_prob, use_ema, seed, texts: one list per micro-batch).

Writes the loss of every micro-batch (losses [M]), the final UNet weights (unet.<name>) and,
with use_ema, the EMA shadows (ema.<name>).

What the script does that this reference does too, step by step: seed, load the UNet, widen
conv_in to 8 channels (weight zero but the pretrained 4 channels, the fresh Conv2d's bias),
freeze the VAE and the text encoder; per micro-batch: latents = vae.encode(edited).sample()
(here mean + std * the stored noise) * scaling_factor, noisy = add_noise(latents, noise, t),
the text embedding, image latents = vae.encode(original).mode(), conditioning dropout with the
stored r (prompt -> the empty prompt's embedding when r < 2p; image latents x 0 when
p <= r < 3p), the UNet on [noisy, image latents], MSE in float32, backward of loss / A; at the
end of a window clip_grad_norm_ over all UNet parameters, AdamW step, scheduler step,
zero_grad, EMA step.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reflib import Lisa, latent_size, reference_args, write_bench  # noqa: E402


def bench_inputs(args):
    """Settings and seeded random inputs of the benchmark (the recipe's defaults otherwise)."""
    g = torch.Generator().manual_seed(0)
    h = latent_size(args.pipeline, args.resolution)
    inputs = {}
    for i in range(args.steps):
        b, r = args.batch, args.resolution
        inputs[f"original.{i}"] = torch.rand(b, 3, r, r, generator=g) * 2 - 1
        inputs[f"edited.{i}"] = torch.rand(b, 3, r, r, generator=g) * 2 - 1
        inputs[f"latent_noise.{i}"] = torch.randn(b, 4, h, h, generator=g)
        inputs[f"noise.{i}"] = torch.randn(b, 4, h, h, generator=g)
        inputs[f"timesteps.{i}"] = torch.randint(0, 1000, (b,), generator=g)
        inputs[f"dropout_r.{i}"] = torch.rand(b, generator=g)
    settings = dict(method=args.bench, steps=args.steps, accumulation=1, learning_rate=5e-5, lr_scheduler="constant",
                    lr_warmup_steps=0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2,
                    adam_epsilon=1e-8, dropout_prob=0.05, use_ema=False, seed=0,
                    texts=[["make it blue"] * args.batch] * args.steps)
    return settings, inputs


def main() -> None:
    args, s, inputs = reference_args(__doc__, bench_inputs, default_batch=2)
    base = args.pipeline

    # The script: set_seed(seed), then the models (from_pretrained draws nothing: its weights
    # are created empty), then the new conv_in right after. Checked here: the bias a Conv2d
    # draws right after the seed is the one it draws after loading.
    torch.manual_seed(s["seed"])
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    in_channels, out_channels = 8, unet.conv_in.out_channels
    unet.register_to_config(in_channels=in_channels)
    with torch.no_grad():
        new_conv_in = torch.nn.Conv2d(in_channels, out_channels, unet.conv_in.kernel_size, unet.conv_in.stride,
                                      unet.conv_in.padding)
        new_conv_in.weight.zero_()
        new_conv_in.weight[:, :4, :, :].copy_(unet.conv_in.weight)
        unet.conv_in = new_conv_in
    torch.manual_seed(s["seed"])
    check = torch.nn.Conv2d(in_channels, out_channels, new_conv_in.kernel_size, new_conv_in.stride,
                            new_conv_in.padding)
    assert torch.equal(check.bias, new_conv_in.bias), "loading drew from the generator before conv_in"
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()
    ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config) if s["use_ema"] else None

    hyper = dict(betas=(s["adam_beta1"], s["adam_beta2"]), weight_decay=s["adam_weight_decay"], eps=s["adam_epsilon"])
    if s.get("method") == "lora":
        # peft adapters on the attention projections (rank 4), as diffusers' LoRA scripts add
        # them, and conv_in trained in full (its image channels start at zero).
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        unet.conv_in.requires_grad_(True)
    trained = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=s["learning_rate"], **hyper)
    lr_scheduler = get_scheduler(s["lr_scheduler"], optimizer=optimizer, num_warmup_steps=s["lr_warmup_steps"],
                                 num_training_steps=s["steps"])
    # LISA (reflib.Lisa): the recorded sets, the lr read from the one schedule above, which
    # steps once per optimizer step.
    lisa = None
    if s.get("method") == "lisa":
        sets = Lisa.bench_sets(unet, 8, s["steps"]) if args.bench else s["sets"]
        lisa = Lisa(unet, sets, s["learning_rate"], hyper)

    def embed(texts):
        ids = tokenizer(texts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids)[0]

    p_drop = s["dropout_prob"]
    losses, step_seconds = [], []
    A = s["accumulation"]
    for step in range(s["steps"]):
        t0 = time.perf_counter()
        if lisa:
            lisa.begin_step(step)
        for k in range(A):
            i = step * A + k
            with torch.no_grad():
                dist = vae.encode(inputs[f"edited.{i}"]).latent_dist
                latents = (dist.mean + dist.std * inputs[f"latent_noise.{i}"]) * vae.config.scaling_factor
                noise = inputs[f"noise.{i}"]
                timesteps = inputs[f"timesteps.{i}"].long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = embed(s["texts"][i])
                original_image_embeds = vae.encode(inputs[f"original.{i}"]).latent_dist.mode()
            bsz = latents.shape[0]
            if p_drop is not None:
                random_p = inputs[f"dropout_r.{i}"]
                prompt_mask = (random_p < 2 * p_drop).reshape(bsz, 1, 1)
                with torch.no_grad():
                    null_conditioning = embed([""])
                encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
                image_mask_dtype = original_image_embeds.dtype
                image_mask = 1 - ((random_p >= p_drop).to(image_mask_dtype) * (random_p < 3 * p_drop).to(image_mask_dtype))
                original_image_embeds = image_mask.reshape(bsz, 1, 1, 1) * original_image_embeds
            concatenated = torch.cat([noisy_latents, original_image_embeds], dim=1)
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, timesteps)
            model_pred = unet(concatenated, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            losses.append(loss.item())
            (loss / A).backward()
        if lisa:
            lisa.finish_step(lr_scheduler.get_last_lr()[0], s["max_grad_norm"])
        else:
            torch.nn.utils.clip_grad_norm_(trained, s["max_grad_norm"])
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())
        step_seconds.append(time.perf_counter() - t0)

    if args.bench:
        write_bench(args.json, step_seconds, losses)
        return
    out = {"losses": torch.tensor(losses, dtype=torch.float64)}
    for name, value in unet.named_parameters():
        out[f"unet.{name}"] = value.detach().contiguous()
    if ema is not None:
        for (name, _), shadow in zip(unet.named_parameters(), ema.shadow_params):
            out[f"ema.{name}"] = shadow.detach().contiguous()
    save_file(out, args.out)


if __name__ == "__main__":
    main()
