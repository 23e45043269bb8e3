#!/usr/bin/env python3
"""lisadiff's TensorBoard event files, read by TensorBoard itself (ctest `tensorboard_events`,
label python).

Runs the test-only writer (tests/io/write_tensorboard_events.cpp, path given as the first
argument) into a temporary folder, loads the folder with TensorBoard's EventAccumulator (the
reader behind `tensorboard --logdir`; without TensorFlow it uses TensorBoard's own TFRecord
reader, which checks both CRCs of every record) and checks every scalar (tag, step, value,
wall time) and the image (size, PNG pixels) against the values the writer is documented to
write. The checks are run once more on a copy whose last record has one byte flipped, where
they must fail, so that checks that pass everything cannot go unnoticed. Exits non-zero on any
failure.

    python scripts/test_tensorboard_events.py build/tests/write_tensorboard_events
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expected_scalars() -> dict[str, list[tuple[int, float]]]:
    """What write_tensorboard_events.cpp writes, as float32 (TensorBoard's simple_value)."""
    steps = range(1, 6)
    return {
        "loss": [(s, float(np.float32(1.0 / s))) for s in steps],
        "lr": [(s, float(np.float32(1e-4 * s))) for s in steps],
        "train/grad_norm": [(s, float(np.float32(s * 0.5))) for s in steps],
    }


def expected_pixels() -> np.ndarray:
    y, x, c = np.meshgrid(np.arange(6), np.arange(4), np.arange(3), indexing="ij")
    return ((40 * y + 7 * x + 90 * c) % 256).astype(np.uint8)


def load(log_dir: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def check(log_dir: Path, started: float) -> None:
    acc = load(log_dir)
    tags = acc.Tags()
    want = expected_scalars()
    expect(sorted(tags["scalars"]) == sorted(want), f"scalar tags {tags['scalars']}, expected {sorted(want)}")
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        expect(got == points, f"{tag}: {got}, expected {points}")
        for e in acc.Scalars(tag):
            expect(started - 60 <= e.wall_time <= time.time() + 60, f"{tag}: wall time {e.wall_time}")
    expect(tags["images"] == ["validation/grid"], f"image tags {tags['images']}")
    images = acc.Images("validation/grid")
    expect(len(images) == 1 and images[0].step == 5, f"images {[(i.step, i.width, i.height) for i in images]}")
    image = images[0]
    expect((image.height, image.width) == (6, 4), f"image size {image.height} x {image.width}")
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    expect(np.array_equal(pixels, expected_pixels()), "image pixels differ from the written ones")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    writer = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp) / "logs"
        started = time.time()
        out = subprocess.run([str(writer), str(log_dir)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL: {writer} exited {out.returncode}: {out.stderr}", file=sys.stderr)
            return 1
        files = sorted(log_dir.glob("events.out.tfevents.*"))
        if len(files) != 1 or Path(out.stdout.strip()) != files[0]:
            print(f"FAIL: event files {files}, writer printed {out.stdout!r}", file=sys.stderr)
            return 1
        try:
            check(log_dir, started)
        except CheckFailed as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1

        # The same checks on a copy with one byte of the last record (the image's PNG) flipped:
        # TensorBoard's reader must reject that record by its CRC, so the checks must fail.
        tampered = Path(tmp) / "tampered"
        shutil.copytree(log_dir, tampered)
        file = tampered / files[0].name
        data = bytearray(file.read_bytes())
        data[-10] ^= 0x01
        file.write_bytes(bytes(data))
        try:
            check(tampered, started)
        except CheckFailed as e:
            print(f"tampered copy rejected as it must be: {e}")
        else:
            print("FAIL: the checks passed a file with a flipped byte", file=sys.stderr)
            return 1

        # A run resumed from a checkpoint at step 3 writes a second file (a second later, so
        # that it sorts after the first, as a real restart does) that starts with a SessionLog
        # START at step 4: TensorBoard must drop steps 4 and 5 of the first file, the image
        # at step 5 included, and show the resumed values there.
        time.sleep(1.1)
        out = subprocess.run([str(writer), str(log_dir), "3"], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL: {writer} (resume) exited {out.returncode}: {out.stderr}", file=sys.stderr)
            return 1
        acc = load(log_dir)
        want = expected_scalars()
        want["loss"] = want["loss"][:3] + [(4, 14.0), (5, 15.0)]
        try:
            for tag, points in want.items():
                got = [(e.step, e.value) for e in acc.Scalars(tag)]
                expect(got == points, f"after the resume, {tag}: {got}, expected {points}")
            images = acc.Images("validation/grid") if "validation/grid" in acc.Tags()["images"] else []
            expect(images == [], "after the resume, the image at step 5 is still shown")
        except CheckFailed as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
    print("ok: TensorBoard's EventAccumulator reads every scalar and the image back, and drops a resumed run's abandoned steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
