#!/usr/bin/env python3
"""Reference fixtures for lisadiff, made with diffusers/transformers (Python is a tool here).

Two uses:

  make_fixtures.py [--fixtures-dir tests/fixtures]
      Regenerates everything committed under tests/fixtures/: the small pipelines
      (micro-sd, lcm-micro) as real diffusers pipeline folders, the configs of every preset,
      safetensors files written by the Python package, diffusers' default configs, and
      manifest.json (library versions, seeds, the command, and the tensor and parameter
      counts that diffusers/transformers report for every component).

  make_fixtures.py --pipeline {micro-sd,lcm-micro,tiny-sd,sd15} --out DIR [--seed N]
      Writes one complete pipeline folder with random weights anywhere, e.g. the full-size
      SD1.5 architecture for benchmarks (about 4.3 GB in float32: never commit it).

The presets are the tiny configs of ../shared/spec/models.md section 7 (as diffusers' own
tests define them) and SD1.5 itself. Weights come from PyTorch's default initialisation
after torch.manual_seed(seed + k) for the k-th component, so the output is reproducible
byte for byte with the pinned versions in requirements.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import warnings  # noqa: E402

import torch  # noqa: E402

# diffusers' pipeline constructor upgrades old scheduler configs (steps_offset) with a
# FutureWarning; the fixtures keep diffusers' behaviour, the warning is only noise here.
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 0

# --------------------------------------------------------------------------------------
# Presets: component configs and the counts the spec states (checked after building).

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
SD15_SCHEDULER = ("PNDMScheduler", dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None))

MICRO_UNET = dict(
    block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=8, norm_num_groups=2,
)
MICRO_VAE = dict(
    block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2,
)
DDIM_TEST = ("DDIMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False))

PRESETS = {
    # ../shared/spec/models.md section 7, config B (diffusers' test_stable_diffusion.py).
    "micro-sd": dict(
        unet=MICRO_UNET, vae=MICRO_VAE,
        clip=dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2),
        scheduler=DDIM_TEST, committed=True,
        expect=dict(unet=(208, 16928), vae=(124, 11827), text_encoder=(36, 9832)),
    ),
    # Config C (test_latent_consistency_models.py): guidance embedding, LCM scheduler.
    "lcm-micro": dict(
        unet={**MICRO_UNET, "cross_attention_dim": 32, "time_cond_proj_dim": 32}, vae=MICRO_VAE,
        clip=dict(hidden_size=32, intermediate_size=64, num_attention_heads=8, num_hidden_layers=3),
        scheduler=("LCMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False)),
        committed=True,
        expect=dict(unet=(209, 18592), vae=(124, 11827), text_encoder=(52, 60160)),
    ),
    # Config A (test_stable_diffusion_instruction_pix2pix.py with in_channels 4): about 8.5 MB
    # of weights, so only its configs are committed.
    "tiny-sd": dict(
        unet=dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32),
        vae=dict(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                 latent_channels=4),
        clip=dict(hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                  num_hidden_layers=5),
        scheduler=("PNDMScheduler", dict(skip_prk_steps=True)), committed=False,
        expect=dict(unet=(304, 1427012), vae=(124, 658375), text_encoder=(84, 68473)),
    ),
    # Stable Diffusion 1.5's architecture (random weights; configs only are committed).
    "sd15": dict(
        unet=SD15_UNET, vae=SD15_VAE, clip=SD15_CLIP, scheduler=SD15_SCHEDULER, committed=False,
        expect=dict(unet=(686, 859520964), vae=(248, 83653863), text_encoder=(196, 123060480)),
    ),
}

# --------------------------------------------------------------------------------------
# A small CLIP-style BPE vocabulary for the tiny presets (the real one has 49,408 entries
# and does not fit a 1,000-row embedding). Same algorithm and file formats as CLIP's:
# byte symbols, the same with "</w>", learned merges, then the two special tokens last.

TINY_VOCAB_SIZE = 1000
TINY_CORPUS = """
a photo of a cat a photo of a dog a painting of a house a drawing of a tree an image of a car
a red circle on a blue background a green square on a yellow background a white triangle on a black
background an orange star on a purple background a pink heart on a gray background a brown cross
turn the red circle blue make the square green change the color of the triangle to white
make it orange replace the background with purple the best quality highly detailed sharp
small large big tiny bright dark light shape shapes color colors edit edited original image
sky water mountain river forest city street road beach sunset night day morning evening
person man woman child people face portrait landscape still life flower flowers garden
the and with in on at of to for from by over under next behind left right top bottom center
one two three four five six seven eight nine ten first second third many few some
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def train_tiny_bpe(vocab_size: int = TINY_VOCAB_SIZE) -> tuple[dict[str, int], list[str]]:
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    vocab_tokens = base + [c + "</w>" for c in base]
    words: dict[tuple[str, ...], int] = {}
    for word in re.findall(r"[a-z]+|[0-9]", TINY_CORPUS.lower()):
        symbols = tuple("".join(byte_map[b] for b in ch.encode("utf-8")) for ch in word)
        symbols = symbols[:-1] + (symbols[-1] + "</w>",)
        words[symbols] = words.get(symbols, 0) + 1
    merges: list[str] = []
    while len(vocab_tokens) < vocab_size - 2:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties by name: deterministic
        merges.append(f"{best[0]} {best[1]}")
        vocab_tokens.append(best[0] + best[1])
        merged: dict[tuple[str, ...], int] = {}
        for symbols, freq in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + freq
        words = merged
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_tokens)}, merges


def make_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = train_tiny_bpe()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    return tok, tmp


# --------------------------------------------------------------------------------------
# Building and saving pipelines.

def text_encoder_config(preset: dict, tokenizer) -> dict:
    from transformers import CLIPTextConfig

    cfg = dict(vocab_size=TINY_VOCAB_SIZE, bos_token_id=0, eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-05)
    cfg.update(preset["clip"])
    if cfg["vocab_size"] == TINY_VOCAB_SIZE:
        # The tiny vocabulary's special ids, so that the pooled output finds the real EOS.
        cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    return CLIPTextConfig(**cfg)


def build_components(preset: dict, seed: int, device: str = "cpu"):
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer, tok_dir = make_tokenizer()
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**preset["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**preset["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(text_encoder_config(preset, tokenizer))
    sched_cls, sched_kwargs = preset["scheduler"]
    scheduler = getattr(diffusers, sched_cls)(**sched_kwargs)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler), tok_dir


def component_counts(model) -> dict:
    state = model.state_dict()
    keys = list(state.keys())
    return {
        "class": type(model).__name__,
        "tensors": len(keys),
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_key": keys[0],
        "last_key": keys[-1],
    }


def file_order(path: Path) -> list[str]:
    """Tensor names in data order, read straight from the safetensors header."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"])


def save_pipeline(components: dict, tok_dir: Path, out: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # lisadiff's tokenizer reads vocab.json + merges.txt, the files SD1.5's folder ships.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok_dir / name, out / "tokenizer" / name)


def check_expected(name: str, counts: dict, expect: dict) -> None:
    for comp, (tensors, params) in expect.items():
        got = counts[comp]
        if (got["tensors"], got["parameters"]) != (tensors, params):
            sys.exit(f"{name}/{comp}: diffusers reports {got['tensors']} tensors, {got['parameters']} parameters; "
                     f"the spec says {tensors}, {params}")


def write_pipeline(name: str, out: Path, seed: int) -> dict:
    preset = PRESETS[name]
    components, tok_dir = build_components(preset, seed)
    counts = {k: component_counts(components[k]) for k in ("unet", "vae", "text_encoder")}
    check_expected(name, counts, preset["expect"])
    save_pipeline(components, tok_dir, out)
    for comp, sub in (("unet", "unet/diffusion_pytorch_model.safetensors"),
                      ("vae", "vae/diffusion_pytorch_model.safetensors"),
                      ("text_encoder", "text_encoder/model.safetensors")):
        order = file_order(out / sub)
        counts[comp].update(file=sub, file_first_tensor=order[0], file_last_tensor=order[-1])
    return counts


def write_configs(name: str, out: Path, seed: int) -> dict:
    """Configs only (no weights), built on the meta device: counts without memory."""
    preset = PRESETS[name]
    components, tok_dir = build_components(preset, seed, device="meta")
    counts = {k: component_counts(components[k]) for k in ("unet", "vae", "text_encoder")}
    check_expected(name, counts, preset["expect"])
    if out.exists():
        shutil.rmtree(out)
    components["unet"].save_config(out / "unet")
    components["vae"].save_config(out / "vae")
    components["text_encoder"].config.save_pretrained(out / "text_encoder")
    components["scheduler"].save_config(out / "scheduler")
    return counts


# --------------------------------------------------------------------------------------
# safetensors files written by the Python package, and diffusers' defaults.

def dtype_sample() -> dict[str, torch.Tensor]:
    """One tensor per dtype with values that tests/io recomputes in C++ (same formula)."""
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4) - 5
    types = {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
        "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32,
        "F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "U64": torch.uint64,
        "C64": torch.complex64, "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
        "F8_E8M0": torch.float8_e8m0fnu, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
        "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    }
    out = {}
    for name, dtype in types.items():
        if dtype == torch.bool:
            value = base.remainder(3) == 0
        elif name.startswith("U") or name == "F8_E8M0":
            value = (base + 5).to(dtype)  # non-negative
        elif dtype.is_floating_point or dtype.is_complex:
            value = (base * 0.25).to(dtype)
        else:
            value = base.to(dtype)
        out[name.lower()] = value
    out["scalar"] = torch.tensor(3.5, dtype=torch.float32)
    out["empty"] = torch.zeros(0, 3, dtype=torch.float32)
    return out


def write_safetensors_fixtures(folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(dtype_sample(), folder / "all_dtypes.safetensors", metadata={"format": "pt"})


def signature_defaults(cls) -> dict:
    import inspect

    out = {}
    for key, p in inspect.signature(cls.__init__).parameters.items():
        if key == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        value = p.default
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def write_defaults(path: Path) -> None:
    import diffusers
    from transformers import CLIPTextConfig

    defaults = {
        "UNet2DConditionModel": signature_defaults(diffusers.UNet2DConditionModel),
        "AutoencoderKL": signature_defaults(diffusers.AutoencoderKL),
        "CLIPTextConfig": {k: v for k, v in CLIPTextConfig().to_dict().items() if not k.startswith("_")},
        "schedulers": {name: signature_defaults(getattr(diffusers, name))
                       for name in ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                                    "LCMScheduler")},
    }
    path.write_text(json.dumps(defaults, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------
# Model parity fixtures: stored inputs, outputs and the gradient of a fixed scalar loss for
# every named parameter, computed by diffusers/transformers in float32 on the CPU. The loss
# is sum(output * probe) with a stored random probe, so every gradient is non-trivial.

# Model-only folders (config.json + weights) for features the committed pipelines lack:
# InstructPix2Pix's 8 input channels with LCM's guidance embedding, SD2's linear
# projections and per-block heads; and a CLIP text encoder with SD1.5's stale eos id 2.
MODEL_FOLDERS = {
    "unet-ip2p-lcm": ("unet", dict(MICRO_UNET, in_channels=8, time_cond_proj_dim=32, use_linear_projection=True,
                                   attention_head_dim=(2, 4), layers_per_block=2)),
    "clip-eos2": ("clip", dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=16, intermediate_size=24, num_attention_heads=2,
                               num_hidden_layers=2, bos_token_id=0, eos_token_id=2, pad_token_id=1)),
}


def write_model_folders(folder: Path, seed: int) -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = {}
    for k, (name, (kind, cfg)) in enumerate(sorted(MODEL_FOLDERS.items())):
        torch.manual_seed(seed + 10 + k)
        model = UNet2DConditionModel(**cfg) if kind == "unet" else CLIPTextModel(CLIPTextConfig(**cfg))
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        model.save_pretrained(target, safe_serialization=True)
        out[name] = component_counts(model)
    return out


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()}


def save_case(path: Path, tensors: dict[str, torch.Tensor], note: str) -> None:
    """`note` says what the case holds; it goes to stdout, not into the file: safetensors
    writes metadata from a hash map, so more than one key would make the bytes vary."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
    print(f"{path.name}: {note}")


def unet_case(unet_dir: Path, path: Path, seed: int, shape: tuple[int, ...], with_cond: bool) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_dir).train()
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    t = {
        "input.sample": torch.randn(shape, generator=g),
        "input.timesteps": torch.tensor([10, 999, 500, 1][:b], dtype=torch.int64),
        "input.encoder_hidden_states": torch.randn(b, 7, unet.config.cross_attention_dim, generator=g),
    }
    kwargs = {}
    if with_cond:
        w = torch.tensor([1.5, 7.0, 3.0, 12.0][:b])
        t["input.guidance"] = w
        # The distillation script's guidance_scale_embedding (LCM's w embedding).
        half = unet.config.time_cond_proj_dim // 2
        c = torch.log(torch.tensor(10000.0)) / (half - 1)
        f = torch.exp(torch.arange(half, dtype=torch.float32) * -c)
        e = (w * 1000.0)[:, None] * f[None, :]
        t["input.timestep_cond"] = torch.cat([torch.sin(e), torch.cos(e)], dim=1)
        kwargs["timestep_cond"] = t["input.timestep_cond"]
    out = unet(t["input.sample"], t["input.timesteps"], t["input.encoder_hidden_states"], **kwargs).sample
    t["output.sample"] = out.detach()
    t["probe"] = torch.randn(out.shape, generator=g)
    t.update(grads_of(unet, (out * t["probe"]).sum()))
    save_case(path, t, f"UNet2DConditionModel from {unet_dir.name}, train mode, loss = sum(sample * probe)")


def vae_case(vae_dir: Path, path: Path, seed: int) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).train()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 24, generator=g) * 2 - 1
    post = vae.encode(x).latent_dist
    noise = torch.randn(post.mean.shape, generator=g)
    z = post.mean + post.std * noise  # DiagonalGaussian.sample with the noise stored
    image = vae.decode(z).sample
    t = {"input.image": x, "input.noise": noise, "output.mean": post.mean.detach(), "output.logvar": post.logvar.detach(),
         "output.kl": post.kl().detach(), "output.decoded": image.detach()}
    t["probe"] = torch.randn(image.shape, generator=g)
    t.update(grads_of(vae, (image * t["probe"]).sum() + post.kl().sum()))
    save_case(path, t, f"AutoencoderKL from {vae_dir.name}: encode, sample with input.noise, decode; "
                       "loss = sum(decoded * probe) + sum(kl)")


def clip_case(te_dir: Path, tok_dir: Path, path: Path, seed: int) -> None:
    from transformers import CLIPTextModel, CLIPTokenizer

    model = CLIPTextModel.from_pretrained(te_dir).train()
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    prompts = ["a photo of a cat", "a red circle on a blue background, highly detailed", ""]
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    short = tok(prompts[:2], padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(seed)
    out = model(ids, output_hidden_states=True)
    masked = model(short.input_ids, attention_mask=short.attention_mask)
    t = {"input.ids": ids, "input.short_ids": short.input_ids, "input.short_mask": short.attention_mask,
         "output.last_hidden_state": out.last_hidden_state.detach(), "output.pooled": out.pooler_output.detach(),
         "output.penultimate": out.hidden_states[-2].detach(),
         "output.masked_last_hidden_state": masked.last_hidden_state.detach(),
         "output.masked_pooled": masked.pooler_output.detach()}
    t["probe"] = torch.randn(out.last_hidden_state.shape, generator=g)
    t["probe_pooled"] = torch.randn(out.pooler_output.shape, generator=g)
    loss = (out.last_hidden_state * t["probe"]).sum() + (out.pooler_output * t["probe_pooled"]).sum()
    t.update(grads_of(model, loss))
    save_case(path, t, f"CLIPTextModel from {te_dir.name}; loss = sum(last_hidden_state * probe) + "
                       "sum(pooled * probe_pooled)")


def write_key_orders(path: Path, seed: int) -> None:
    """named_parameters() order of every preset's components (meta device: no memory)."""
    orders = {}
    for name, preset in PRESETS.items():
        components, _ = build_components(preset, seed, device="meta")
        for comp in ("unet", "vae", "text_encoder"):
            model = components[comp]
            orders[f"{name}/{comp}"] = [[n, list(p.shape)] for n, p in model.named_parameters()]
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        for name, (kind, cfg) in sorted(MODEL_FOLDERS.items()):
            model = UNet2DConditionModel(**cfg) if kind == "unet" else CLIPTextModel(CLIPTextConfig(**cfg))
            orders[name] = [[n, list(p.shape)] for n, p in model.named_parameters()]
    path.write_text(json.dumps(orders, separators=(",", ":")) + "\n")


def write_model_fixtures(fixtures: Path, seed: int) -> dict:
    folder = fixtures / "models"
    folder.mkdir(parents=True, exist_ok=True)
    counts = write_model_folders(folder, seed)
    write_key_orders(folder / "parameter_order.json", seed)
    pipes = fixtures / "pipelines"
    unet_case(pipes / "micro-sd" / "unet", folder / "case-unet-micro.safetensors", seed + 100, (2, 4, 16, 16), False)
    # Odd sizes: the up blocks interpolate to the skip sizes (upsample_size).
    unet_case(pipes / "micro-sd" / "unet", folder / "case-unet-micro-odd.safetensors", seed + 101, (1, 4, 9, 14), False)
    unet_case(pipes / "lcm-micro" / "unet", folder / "case-unet-lcm.safetensors", seed + 102, (2, 4, 16, 16), True)
    unet_case(folder / "unet-ip2p-lcm", folder / "case-unet-ip2p-lcm.safetensors", seed + 103, (2, 8, 16, 16), True)
    vae_case(pipes / "micro-sd" / "vae", folder / "case-vae-micro.safetensors", seed + 104)
    clip_case(pipes / "micro-sd" / "text_encoder", pipes / "micro-sd" / "tokenizer",
              folder / "case-clip-micro.safetensors", seed + 105)
    clip_case(pipes / "lcm-micro" / "text_encoder", pipes / "lcm-micro" / "tokenizer",
              folder / "case-clip-lcm.safetensors", seed + 106)
    clip_case(folder / "clip-eos2", pipes / "micro-sd" / "tokenizer", folder / "case-clip-eos2.safetensors", seed + 107)
    return counts


def versions() -> dict:
    import diffusers
    import numpy
    import safetensors
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__}


def regenerate_all(fixtures: Path, seed: int) -> None:
    manifest = {
        "command": "scripts/make_fixtures.py --fixtures-dir tests/fixtures" + (f" --seed {seed}" if seed else ""),
        "versions": versions(),
        "seed": seed,
        "component_seeds": "unet: seed, vae: seed + 1, text_encoder: seed + 2 (torch.manual_seed before each)",
        "pipelines": {},
    }
    for name, preset in PRESETS.items():
        if preset["committed"]:
            counts = write_pipeline(name, fixtures / "pipelines" / name, seed)
            where = f"pipelines/{name}"
        else:
            counts = write_configs(name, fixtures / "configs" / name, seed)
            where = f"configs/{name}"
        manifest["pipelines"][name] = {"path": where, "weights_committed": preset["committed"], "components": counts}
        print(f"{name}: {where}", {k: (v['tensors'], v['parameters']) for k, v in counts.items()})
    write_safetensors_fixtures(fixtures / "safetensors")
    manifest["model_folders"] = write_model_fixtures(fixtures, seed)
    write_defaults(fixtures / "diffusers_defaults.json")
    (fixtures / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures-dir", type=Path, default=REPO / "tests" / "fixtures")
    parser.add_argument("--pipeline", choices=sorted(PRESETS), help="write one pipeline folder to --out")
    parser.add_argument("--out", type=Path, help="output folder for --pipeline")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.pipeline:
        if not args.out:
            parser.error("--pipeline needs --out")
        counts = write_pipeline(args.pipeline, args.out, args.seed)
        print(json.dumps({"pipeline": args.pipeline, "out": str(args.out), "components": counts}, indent=1))
    else:
        regenerate_all(args.fixtures_dir, args.seed)


if __name__ == "__main__":
    main()
