#!/usr/bin/env python3
"""Reference fixtures for lisadiff's image decoding and transforms, made with PIL and
torchvision (Python is a tool here, never the product).

  make_data_fixtures.py [--out tests/fixtures/data]

writes transforms.safetensors and transforms.json:
  "img.<name>"                       uint8 [H, W, 3] test images (odd sizes, noise + gradients)
  "resize.<name>.<mode>"             torchvision Resize(R) (shorter side) on the CHW uint8 tensor
  "exact.<name>.<mode>"              torchvision Resize((R, R)) on the tensor (bilinear, bicubic)
  "pil.<name>.<mode>"                PIL's resize to the same size (what the scripts run), for the
                                     stated tolerance between the two resamplers (bilinear, bicubic)
  "center.<name>"                    CenterCrop(R) after the bilinear resize
  "pipeline.<name>"                  Resize(R, bilinear) + CenterCrop(R) + ToDtype + Normalize(0.5, 0.5)
  "ip2p.<name>"                      2 * (x / 255) - 1 of the exact bicubic resize
  "codec.<case>.bytes"               an encoded file (uint8) and "codec.<case>.pixels" PIL's decode,
                                     RGB uint8 [H, W, 3]
transforms.json lists the cases and the resolution.

Deterministic: seeded inputs, sorted JSON keys, safetensors metadata {"format": "pt"} only.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.transforms import InterpolationMode

REPO = Path(__file__).resolve().parent.parent
R = 24
MODES = {
    "bilinear": (InterpolationMode.BILINEAR, Image.BILINEAR),
    "bicubic": (InterpolationMode.BICUBIC, Image.BICUBIC),
    "nearest": (InterpolationMode.NEAREST, Image.NEAREST),
    "nearest_exact": (InterpolationMode.NEAREST_EXACT, None),
}


def test_image(h: int, w: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / max(w - 1, 1), y * 255.0 / max(h - 1, 1), (x + y) * 127.0 / max(h + w - 2, 1)], -1)
    noise = g.normal(0, 40, (h, w, 3))
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    img[h // 3 : h // 2, w // 4 : w // 2] = [250, 10, 30]  # a hard-edged block
    return img


def encode(img: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "data")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    images = {"wide": test_image(37, 61, 1), "tall": test_image(70, 31, 2), "square": test_image(48, 48, 3),
              "small": test_image(13, 19, 4)}
    t: dict[str, torch.Tensor] = {}
    for name, img in images.items():
        t[f"img.{name}"] = torch.from_numpy(img.copy())
        chw = torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous()
        for mode, (tv_mode, pil_mode) in MODES.items():
            resized = transforms.Resize(R, interpolation=tv_mode)(chw)
            t[f"resize.{name}.{mode}"] = resized.contiguous()
            if mode in ("bilinear", "bicubic"):
                t[f"exact.{name}.{mode}"] = transforms.Resize((R, R), interpolation=tv_mode)(chw).contiguous()
            if pil_mode is not None and mode != "nearest":  # PIL's nearest picks other pixels
                h, w = resized.shape[1:]
                pil = Image.fromarray(img).resize((w, h), pil_mode)
                t[f"pil.{name}.{mode}"] = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()
        bilinear = transforms.Resize(R, interpolation=InterpolationMode.BILINEAR)(chw)
        t[f"center.{name}"] = transforms.CenterCrop(R)(bilinear).contiguous()
        pipeline = transforms.Compose([
            transforms.Resize(R, interpolation=InterpolationMode.BILINEAR),
            transforms.CenterCrop(R),
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize([0.5], [0.5]),
        ])
        t[f"pipeline.{name}"] = pipeline(chw).contiguous()
        exact = transforms.Resize((R, R), interpolation=InterpolationMode.BICUBIC)(chw)
        t[f"ip2p.{name}"] = (2 * (exact / 255) - 1).contiguous()
    # Codecs: PIL's encoders make the files, PIL's decoders (libjpeg-turbo, libwebp) the pixels.
    src = test_image(45, 67, 9)
    gray = np.repeat(src[..., :1], 3, axis=-1)
    codecs = {
        "jpeg420": encode(src, "JPEG", quality=90),
        "jpeg444": encode(src, "JPEG", quality=95, subsampling=0),
        "jpeg_progressive": encode(src, "JPEG", quality=80, progressive=True),
        "png": encode(src, "PNG"),
        "png_rgba": None,
        "webp_lossy": encode(src, "WEBP", quality=80),
        "webp_lossless": encode(src, "WEBP", lossless=True),
        "bmp": encode(src, "BMP"),
    }
    buf = io.BytesIO()
    Image.fromarray(gray[..., 0]).save(buf, format="JPEG", quality=90)
    codecs["jpeg_gray"] = buf.getvalue()
    rgba = np.concatenate([src, np.full(src.shape[:2] + (1,), 128, np.uint8)], -1)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    codecs["png_rgba"] = buf.getvalue()
    for case, data in codecs.items():
        t[f"codec.{case}.bytes"] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
        t[f"codec.{case}.pixels"] = torch.from_numpy(decoded)
    save_file(t, str(a.out / "transforms.safetensors"), metadata={"format": "pt"})
    meta = {"resolution": R, "images": sorted(images), "modes": sorted(MODES), "codecs": sorted(codecs)}
    (a.out / "transforms.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}/transforms.safetensors ({(a.out / 'transforms.safetensors').stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
