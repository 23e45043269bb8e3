#!/usr/bin/env python3
"""Round-trip test of scripts/convert_hf_dataset.py (ctest `convert_hf_dataset`, label python).

Builds small parquet datasets shaped like the real ones (pick-a-pic for dpo, instructpix2pix for
ip2p, an image/text table for t2i) from PNG bytes made here, converts them to both layouts, and
checks every metadata line, every image's bytes and every tar member against what the rows
hold. The checks are run once more on a tampered copy of each output, where they must fail,
so that a check that passes everything cannot go unnoticed. Exits non-zero on any failure.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parent / "convert_hf_dataset.py"


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour 8-bit RGB PNG."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


FAKE_JPEG = b"\xff\xd8\xff\xe0" + b"not decoded, only copied" * 3  # the converter never decodes folder images

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def convert(*args: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def convert_ok(*args: str) -> str:
    rc, output = convert(*args)
    expect(rc == 0, f"convert {' '.join(args)} failed ({rc}):\n{output}")
    return output


# ---------------------------------------------------------------------------------------------
# Checks of an output against the rows it came from
# ---------------------------------------------------------------------------------------------

def check_folder(out: Path, lines: list[dict], images: dict[str, bytes]) -> None:
    """metadata.jsonl has exactly `lines`; images/ holds exactly `images` (name -> bytes)."""
    text = (out / "metadata.jsonl").read_text(encoding="utf-8")
    got = [json.loads(line) for line in text.splitlines()]
    # Keys in docs/data.md's order too (dicts compare equal whatever their order).
    expect([list(g.items()) for g in got] == [list(e.items()) for e in lines],
           f"{out}/metadata.jsonl:\n  got      {got}\n  expected {lines}")
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expect(set(files) == set(images) | {"metadata.jsonl"}, f"{out}: files {sorted(files)}, expected {sorted(images)}")
    for name, data in images.items():
        expect(files[name] == data, f"{out}/{name}: bytes differ from the parquet row's")


def check_wds(out: Path, shards: list[list[tuple[str, bytes]]]) -> None:
    """The shards 00000.tar, ... hold exactly these (member name, bytes), in order."""
    names = sorted(p.name for p in out.iterdir())
    expect(names == [f"{i:05d}.tar" for i in range(len(shards))], f"{out}: files {names}")
    for i, expected in enumerate(shards):
        with tarfile.open(out / f"{i:05d}.tar") as tar:
            got = []
            for member in tar.getmembers():
                expect(member.isfile() and member.mtime == 0 and member.uid == 0 and member.gid == 0 and
                       member.mode == 0o644 and member.uname == "", f"{out}/{i:05d}.tar: {member.name}: header")
                got.append((member.name, tar.extractfile(member).read()))
        expect([n for n, _ in got] == [n for n, _ in expected],
               f"{out}/{i:05d}.tar: members {[n for n, _ in got]}, expected {[n for n, _ in expected]}")
        for (name, data), (_, want) in zip(got, expected):
            if name.endswith(".json"):
                expect(json.loads(data) == want, f"{out}/{i:05d}.tar: {name}: {data!r}, expected {want}")
            else:
                expect(data == want, f"{out}/{i:05d}.tar: {name}: bytes differ")


def must_fail(check, *args) -> None:
    """The negative control: `check` on a tampered output has to raise."""
    try:
        check(*args)
    except CheckFailed:
        return
    raise CheckFailed(f"{check.__name__} accepted a tampered output: {args[0]}")


def tampered_copy(out: Path, work: Path, edit) -> Path:
    copy = work / (out.name + "-tampered")
    shutil.copytree(out, copy)
    edit(copy)
    return copy


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# The three kinds
# ---------------------------------------------------------------------------------------------

def test_dpo_pickapic(work: Path) -> None:
    """Pick-a-pic v2's columns: raw JPEG/PNG bytes in jpg_0/jpg_1, label_0 in {0, 0.5, 1}."""
    rows = [
        ("a red circle", png(4, 3, (255, 0, 0)), png(4, 3, (0, 255, 0)), 1.0),
        ("a blue square", png(5, 5, (0, 0, 255)), FAKE_JPEG, 0.0),
        ("a tie", png(2, 2, (9, 9, 9)), png(2, 2, (8, 8, 8)), 0.5),
        ("in the second file", FAKE_JPEG, png(3, 3, (1, 2, 3)), 1.0),
        ("cut by --limit", png(1, 1, (0, 0, 0)), png(1, 1, (0, 0, 0)), 0.0),
    ]
    src = work / "pickapic" / "data"
    src.mkdir(parents=True)
    for part, chunk in enumerate([rows[:3], rows[3:]]):
        table = pa.table({
            "are_different": [True] * len(chunk),
            "caption": [r[0] for r in chunk],
            "jpg_0": pa.array([r[1] for r in chunk], pa.binary()),
            "jpg_1": pa.array([r[2] for r in chunk], pa.binary()),
            "label_0": pa.array([r[3] for r in chunk], pa.float64()),
            "label_1": pa.array([1 - r[3] for r in chunk], pa.float64()),
            "model_0": ["sd"] * len(chunk),
        })
        pq.write_table(table, src / f"train-{part:05d}-of-00002.parquet")
    kept = rows[:4]

    def ext(data: bytes) -> str:
        return "jpg" if data == FAKE_JPEG else "png"

    out = work / "dpo-folder"
    output = convert_ok("--kind", "dpo", "--format", "folder", "--limit", "4", "--out", str(out),
                        str(work / "pickapic"))
    expect("wrote 4 dpo examples (folder, 9 files, " in output, output)
    lines, images = [], {}
    for i, (caption, a, b, label) in enumerate(kept):
        na, nb = f"images/{i:09d}_0.{ext(a)}", f"images/{i:09d}_1.{ext(b)}"
        lines.append({"jpg_0_file_name": na, "jpg_1_file_name": nb, "label_0": label, "caption": caption})
        images[na], images[nb] = a, b
    check_folder(out, lines, images)
    must_fail(check_folder, tampered_copy(out, work, lambda d: flip_last_byte(d / "images/000000001_0.png")),
              lines, images)

    out = work / "dpo-wds"
    convert_ok("--kind", "dpo", "--format", "wds", "--shard-size", "3", "--limit", "4", "--out", str(out),
               str(work / "pickapic"))
    members = []
    for i, (caption, a, b, label) in enumerate(kept):
        k = f"{i:09d}"
        members.append([(f"{k}.jpg_0.{ext(a)}", a), (f"{k}.jpg_1.{ext(b)}", b),
                        (f"{k}.caption.txt", caption.encode()), (f"{k}.json", {"label_0": label})])
    shards = [sum(members[:3], []), members[3]]
    check_wds(out, shards)
    # The same input gives the same bytes.
    convert_ok("--kind", "dpo", "--format", "wds", "--shard-size", "3", "--limit", "4", "--out", str(work / "again"),
               str(work / "pickapic"))
    for name in ("00000.tar", "00001.tar"):
        expect((out / name).read_bytes() == (work / "again" / name).read_bytes(), f"{name}: not reproducible")

    def relabel(d: Path) -> None:  # a shard whose second sample says label_0 = 1
        with tarfile.open(d / "00000.tar") as tar:
            items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(d / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for m, data in items:
                if m.name == "000000001.json":
                    data = b'{"label_0":1.0}'
                    m.size = len(data)
                tar.addfile(m, io.BytesIO(data))

    must_fail(check_wds, tampered_copy(out, work, relabel), shards)


def test_ip2p_instructpix2pix(work: Path) -> None:
    """instructpix2pix-clip-filtered's columns: image structs, original_image instead of input_image."""
    src = work / "ip2p-src"
    (src / "files").mkdir(parents=True)
    on_disk = png(6, 2, (10, 20, 30))
    (src / "files" / "edited.png").write_bytes(on_disk)
    rows = [
        {"original_prompt": "a cat", "original_image": {"bytes": png(3, 3, (1, 1, 1)), "path": "a.png"},
         "edit_prompt": "make it a dog", "edited_prompt": "a dog",
         "edited_image": {"bytes": png(3, 3, (2, 2, 2)), "path": None}},
        {"original_prompt": "a house", "original_image": {"bytes": FAKE_JPEG, "path": None},
         "edit_prompt": "add snow ❄", "edited_prompt": "a snowy house",
         "edited_image": {"bytes": None, "path": "files/edited.png"}},  # read from the path
    ]
    table = pa.table({
        "original_prompt": [r["original_prompt"] for r in rows],
        "original_image": pa.array([r["original_image"] for r in rows], IMAGE_STRUCT),
        "edit_prompt": [r["edit_prompt"] for r in rows],
        "edited_prompt": [r["edited_prompt"] for r in rows],
        "edited_image": pa.array([r["edited_image"] for r in rows], IMAGE_STRUCT),
    })
    pq.write_table(table, src / "train.parquet")
    columns = "original_image_column=original_image"

    out = work / "ip2p-folder"
    convert_ok("--kind", "ip2p", "--format", "folder", "--columns", columns, "--out", str(out),
               str(src / "train.parquet"))
    lines = [
        {"input_image_file_name": "images/000000000_input.png", "edited_image_file_name": "images/000000000_edited.png",
         "edit_prompt": "make it a dog"},
        {"input_image_file_name": "images/000000001_input.jpg", "edited_image_file_name": "images/000000001_edited.png",
         "edit_prompt": "add snow ❄"},
    ]
    images = {"images/000000000_input.png": png(3, 3, (1, 1, 1)), "images/000000000_edited.png": png(3, 3, (2, 2, 2)),
              "images/000000001_input.jpg": FAKE_JPEG, "images/000000001_edited.png": on_disk}
    check_folder(out, lines, images)
    expect("❄" in (out / "metadata.jsonl").read_text(encoding="utf-8"), "metadata.jsonl: UTF-8 escaped")

    def drop_line(d: Path) -> None:
        text = (d / "metadata.jsonl").read_text(encoding="utf-8")
        (d / "metadata.jsonl").write_text(text.splitlines(keepends=True)[0], encoding="utf-8")

    must_fail(check_folder, tampered_copy(out, work, drop_line), lines, images)

    out = work / "ip2p-wds"
    convert_ok("--kind", "ip2p", "--format", "wds", "--columns", columns, "--out", str(out), str(src))
    shards = [[
        ("000000000.input_image.png", images["images/000000000_input.png"]),
        ("000000000.edited_image.png", images["images/000000000_edited.png"]),
        ("000000000.edit_prompt.txt", b"make it a dog"),
        ("000000001.input_image.jpg", FAKE_JPEG),
        ("000000001.edited_image.png", on_disk),
        ("000000001.edit_prompt.txt", "add snow ❄".encode()),
    ]]
    check_wds(out, shards)
    must_fail(check_wds, tampered_copy(out, work, lambda d: (d / "00000.tar").rename(d / "00001.tar")), shards)


def test_t2i(work: Path) -> None:
    """An image/text table: wds shards carry the image size (and --extra-columns) in KEY.json."""
    src = work / "t2i.parquet"
    sizes = [(4, 3), (2, 7), (5, 5), (1, 1)]
    pq.write_table(pa.table({
        "image": pa.array([{"bytes": png(w, h, (w, h, 0)), "path": None} for w, h in sizes], IMAGE_STRUCT),
        "text": [f"picture {i}" for i in range(4)],
        "aesthetic": [6.5, 5.25, 7.0, 4.0],
        "url": ["u0", "u1", "u2", "u3"],
    }), src)
    out = work / "t2i-wds"
    output = convert_ok("--kind", "t2i", "--format", "wds", "--shard-size", "2", "--limit", "3",
                        "--extra-columns", "aesthetic", "--out", str(out), str(src))
    expect("wrote 3 t2i examples (wds, 2 files, " in output, output)
    members = [[(f"{i:09d}.png", png(w, h, (w, h, 0))), (f"{i:09d}.txt", f"picture {i}".encode()),
                (f"{i:09d}.json", {"original_width": w, "original_height": h, "aesthetic": a})]
               for i, ((w, h), a) in enumerate(zip(sizes[:3], [6.5, 5.25, 7.0]))]
    check_wds(out, [members[0] + members[1], members[2]])
    must_fail(check_wds, out, [members[0] + members[1], members[1]])

    out = work / "t2i-folder"
    convert_ok("--kind", "t2i", "--format", "folder", "--extra-columns", "url", "--extra-columns", "aesthetic",
               "--out", str(out), str(src))
    aesthetic = [6.5, 5.25, 7.0, 4.0]
    check_folder(out, [{"file_name": f"images/{i:09d}.png", "text": f"picture {i}", "url": f"u{i}",
                        "aesthetic": aesthetic[i]} for i in range(4)],
                 {f"images/{i:09d}.png": png(w, h, (w, h, 0)) for i, (w, h) in enumerate(sizes)})


def test_errors(work: Path) -> None:
    work = work / "errors"
    work.mkdir()
    src = work / "t2i.parquet"
    pq.write_table(pa.table({"image": pa.array([png(2, 2, (0, 0, 0))], pa.binary()), "text": ["a"],
                             "aesthetic": [5.0]}), src)

    def fails(*args: str, says: list[str]) -> None:
        rc, output = convert(*args)
        expect(rc != 0, f"convert {' '.join(args)} succeeded:\n{output}")
        for text in says:
            expect(text in output, f"convert {' '.join(args)}: output lacks {text!r}:\n{output}")

    fails("--kind", "ip2p", "--format", "folder", "--out", str(work / "e1"), str(src),
          says=[str(src), "'input_image'", "--columns"])
    fails("--kind", "t2i", "--format", "folder", "--columns", "image_colum=x", "--out", str(work / "e2"), str(src),
          says=["'image_colum' is not a role"])
    fails("--kind", "t2i", "--format", "folder", "--columns", "caption_column=aesthetic", "--out", str(work / "e3"),
          str(src), says=["row 0: column 'aesthetic': expected a string"])
    bad = work / "bad.parquet"
    pq.write_table(pa.table({"image": pa.array([png(1, 1, (0, 0, 0)), b"GIF00 nope"], pa.binary()),
                             "text": ["ok", "bad image"]}), bad)
    fails("--kind", "t2i", "--format", "wds", "--out", str(work / "e4"), str(bad),
          says=[f"{bad}: row 1: column 'image': not a PNG, JPEG"])
    fails("--kind", "t2i", "--format", "wds", "--out", str(work / "e5"), str(work / "missing.parquet"),
          says=["no such file"])
    expect(sorted(p.name for p in work.iterdir()) == ["bad.parquet", "t2i.parquet"],
           f"{work}: a failed conversion left {sorted(p.name for p in work.iterdir())}")

    existing = work / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    fails("--kind", "t2i", "--format", "wds", "--out", str(existing), str(src), says=["exists and is not empty"])
    convert_ok("--kind", "t2i", "--format", "wds", "--out", str(existing), "--overwrite", str(src))
    expect(sorted(p.name for p in existing.iterdir()) == ["00000.tar"], f"{existing}: not replaced")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lisadiff-convert-") as tmp:
        work = Path(tmp)
        failures = 0
        for test in (test_dpo_pickapic, test_ip2p_instructpix2pix, test_t2i, test_errors):
            try:
                test(work)
                print(f"[ OK ] {test.__name__}")
            except CheckFailed as e:
                failures += 1
                print(f"[FAIL] {test.__name__}: {e}")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
