#!/usr/bin/env python3
"""Python reference for bench_data_loader: a torch DataLoader over a make-dataset image folder
with the diffusers DPO script's preprocessing (PIL decode to RGB, Resize(R) bilinear,
RandomCrop(R), RandomHorizontalFlip, ToTensor, Normalize(0.5, 0.5)), worker processes, the
same batch size and counting. Prints the same JSON object as bench/data_loader.cpp:

  bench_data.py --data DIR [--resolution 512] [--workers 2] [--batch 8] [--images 400] [--warmup 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class Folder(Dataset):
    def __init__(self, root: Path, resolution: int):
        self.rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
        self.root = root
        self.tf = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.RandomCrop(resolution),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = Image.open(self.root / row["file_name"]).convert("RGB")
        return self.tf(image), row["text"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=16)
    a = ap.parse_args()
    torch.manual_seed(1)
    loader = DataLoader(Folder(a.data, a.resolution), batch_size=a.batch, shuffle=True, num_workers=a.workers,
                        persistent_workers=a.workers > 0, drop_last=False)

    def batches():
        while True:
            yield from loader

    it = batches()
    seen = 0
    while seen < a.warmup:
        seen += next(it)[0].shape[0]
    start = time.perf_counter()
    timed = 0
    while timed < a.images:
        timed += next(it)[0].shape[0]
    seconds = time.perf_counter() - start
    print(json.dumps({"impl": "python", "resolution": a.resolution, "workers": a.workers, "batch": a.batch,
                      "images": timed, "seconds": seconds, "images_per_s": timed / seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
