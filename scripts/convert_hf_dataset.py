#!/usr/bin/env python3
"""Converts a Hugging Face dataset stored as parquet files into the on-disk layouts lisadiff
reads (docs/data.md): an image folder (metadata.jsonl + images/) or webdataset tar shards.

    convert_hf_dataset.py --kind ip2p --format folder --out DIR PARQUET_OR_FOLDER ... \
        [--columns original_image_column=original_image,edit_prompt_column=edit_prompt] \
        [--limit N] [--shard-size N] [--extra-columns a,b] [--overwrite]

Inputs are .parquet files, or folders searched recursively for them (sorted by path), read in
the order given: the way `huggingface-cli download` leaves a dataset (data/train-0000*-of-*.parquet).
Rows become examples 000000000, 000000001, ...

Columns (--columns ROLE=COLUMN, comma-separated or repeated; the defaults are the diffusers
scripts' defaults):
    t2i   image_column=image, caption_column=text
    ip2p  original_image_column=input_image, edited_image_column=edited_image,
          edit_prompt_column=edit_prompt
    dpo   jpg_0_column=jpg_0, jpg_1_column=jpg_1, label_0_column=label_0, caption_column=caption
e.g. timbrooks/instructpix2pix-clip-filtered: --columns original_image_column=original_image;
yuvalkirstain/pickapic_v2 needs none. An image cell is an image struct {"bytes", "path"} (the
`datasets` Image feature; a null "bytes" reads "path", relative to the parquet file's folder)
or raw bytes. Images are written with their original bytes (never re-encoded), named by what
their leading bytes are (.png, .jpg, .webp, .gif, .bmp). The output uses docs/data.md's column
names whatever the input called them; --extra-columns copies further value columns (numbers,
strings, booleans) under their own names (folder: keys of the metadata line, wds: KEY.json).
For t2i shards KEY.json also holds original_width and original_height, read from the image
header with Pillow.

Like `lisadiff make-dataset`, it refuses a non-empty --out unless --overwrite, and writes under
a temporary folder beside --out that is renamed into place at the end. Shards have fixed tar
headers (mtime 0, uid/gid 0, mode 0644), so the same input gives the same bytes.
Python is a tool here: nothing lisadiff runs needs it (requirements.txt pins pyarrow).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq

MAX_EXAMPLES = 999_999_999  # keys have nine digits
MAX_SHARDS = 100_000  # shard names have five digits

# Per kind: the roles, their default input columns, and how each is written. Image roles
# carry (output column, folder file-name suffix); the output column names are docs/data.md's.
KINDS = {
    "t2i": {
        "images": [("image_column", "image", "image", "")],
        "texts": [("caption_column", "text", "text")],
        "label": None,
    },
    "ip2p": {
        "images": [
            ("original_image_column", "input_image", "input_image", "_input"),
            ("edited_image_column", "edited_image", "edited_image", "_edited"),
        ],
        "texts": [("edit_prompt_column", "edit_prompt", "edit_prompt")],
        "label": None,
    },
    "dpo": {
        "images": [("jpg_0_column", "jpg_0", "jpg_0", "_0"), ("jpg_1_column", "jpg_1", "jpg_1", "_1")],
        "texts": [("caption_column", "caption", "caption")],
        "label": ("label_0_column", "label_0", "label_0"),
    },
}


class ConvertError(Exception):
    """Bad input: the message says which file, row and column."""


def image_extension(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def parquet_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not found:
                raise ConvertError(f"{path}: no .parquet files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConvertError(f"{path}: no such file or folder")
    return files


def parse_columns(kind: str, specs: list[str]) -> dict[str, str]:
    spec = KINDS[kind]
    columns = {role: default for role, default, *_ in spec["images"] + spec["texts"]}
    if spec["label"]:
        columns[spec["label"][0]] = spec["label"][1]
    for item in (part for s in specs for part in s.split(",") if part):
        role, sep, column = item.partition("=")
        if not sep or not column:
            raise ConvertError(f"--columns: expected ROLE=COLUMN, got '{item}'")
        if role not in columns:
            raise ConvertError(f"--columns: '{role}' is not a role of --kind {kind} (roles: {', '.join(columns)})")
        columns[role] = column
    return columns


def image_bytes(cell, where: str, parquet: Path) -> bytes:
    """The bytes of an image cell: raw bytes, or a {"bytes", "path"} struct."""
    if isinstance(cell, (bytes, bytearray)):
        data = bytes(cell)
    elif isinstance(cell, dict):
        data = cell.get("bytes")
        if data is None:
            if not cell.get("path"):
                raise ConvertError(f"{where}: image struct has neither bytes nor a path")
            path = Path(cell["path"])
            if not path.is_absolute():
                path = parquet.parent / path
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ConvertError(f"{where}: cannot read the image's path {path}: {e.strerror}") from None
    elif cell is None:
        raise ConvertError(f"{where}: no image (null)")
    else:
        raise ConvertError(f"{where}: expected image bytes or an image struct, found {type(cell).__name__}")
    if image_extension(data) is None:
        raise ConvertError(f"{where}: not a PNG, JPEG, WebP, GIF or BMP image (leading bytes {data[:8].hex()})")
    return data


def text_value(cell, where: str) -> str:
    if not isinstance(cell, str):
        raise ConvertError(f"{where}: expected a string, found {'null' if cell is None else type(cell).__name__}")
    return cell


def label_value(cell, where: str) -> float:
    if isinstance(cell, bool) or not isinstance(cell, (int, float)) or not 0 <= cell <= 1:
        raise ConvertError(f"{where}: expected a number in [0, 1], found {cell!r}")
    return float(cell)


def extra_value(cell, where: str):
    if cell is not None and not isinstance(cell, (str, int, float, bool)):
        raise ConvertError(f"{where}: extra columns must hold numbers, strings or booleans, "
                           f"found {type(cell).__name__}")
    if isinstance(cell, float) and not math.isfinite(cell):
        return None  # as nlohmann::json writes NaN and inf
    return cell


def image_size(data: bytes, where: str) -> tuple[int, int]:
    from PIL import Image  # only t2i shards need it

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as e:  # noqa: BLE001: Pillow raises many types for bad headers
        raise ConvertError(f"{where}: cannot read the image size: {e}") from None


class Example:
    def __init__(self):
        self.images: list[tuple[str, str, bytes]] = []  # (output column, suffix, bytes)
        self.texts: list[tuple[str, str]] = []  # (output column, text)
        self.values: dict = {}  # label_0 and extra columns


def read_examples(files: list[Path], kind: str, columns: dict[str, str], extra: list[str], limit: int | None):
    spec = KINDS[kind]
    wanted = list(dict.fromkeys(list(columns.values()) + extra))
    count = 0
    for parquet in files:
        try:
            reader = pq.ParquetFile(parquet)
        except Exception as e:  # noqa: BLE001: pyarrow's errors are of several types
            raise ConvertError(f"{parquet}: not a readable parquet file: {e}") from None
        names = reader.schema_arrow.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ConvertError(f"{parquet}: no column {', '.join(repr(c) for c in missing)} "
                               f"(columns: {', '.join(names)}); name them with --columns ROLE=COLUMN")
        row = 0
        for batch in reader.iter_batches(batch_size=64, columns=wanted):
            for record in batch.to_pylist():
                if limit is not None and count >= limit:
                    return

                def where(column: str) -> str:
                    return f"{parquet}: row {row}: column '{column}'"

                ex = Example()
                for role, _, out_column, suffix in spec["images"]:
                    column = columns[role]
                    ex.images.append((out_column, suffix, image_bytes(record[column], where(column), parquet)))
                for role, _, out_column in spec["texts"]:
                    ex.texts.append((out_column, text_value(record[columns[role]], where(columns[role]))))
                if spec["label"]:
                    role, _, out_column = spec["label"]
                    ex.values[out_column] = label_value(record[columns[role]], where(columns[role]))
                for column in extra:
                    ex.values[column] = extra_value(record[column], where(column))
                yield ex
                count += 1
                row += 1


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class FolderWriter:
    """DIR/metadata.jsonl + DIR/images/KEY<suffix>.<ext> (make-dataset's names)."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True)
        self.lines: list[str] = []

    def add(self, key: str, ex: Example) -> None:
        line = {}
        for column, suffix, data in ex.images:
            name = f"images/{key}{suffix}.{image_extension(data)}"
            (self.root / name).write_bytes(data)
            # The single column named "image" uses the plain key, as `datasets` does.
            line["file_name" if column == "image" else f"{column}_file_name"] = name
        # docs/data.md's order: images, label_0, the text; extra columns last.
        if "label_0" in ex.values:
            line["label_0"] = ex.values["label_0"]
        line.update(dict(ex.texts))
        line.update({k: v for k, v in ex.values.items() if k not in line})
        self.lines.append(dumps(line) + "\n")

    def finish(self) -> None:
        (self.root / "metadata.jsonl").write_text("".join(self.lines), encoding="utf-8")


class WdsWriter:
    """DIR/00000.tar, ...: KEY.<field> members, fixed headers, each shard renamed into place."""

    def __init__(self, root: Path, shard_size: int, kind: str):
        root.mkdir(parents=True)
        self.root, self.shard_size, self.kind = root, shard_size, kind
        self.shard = 0
        self.in_shard = 0
        self.tar: tarfile.TarFile | None = None
        self.temp: Path | None = None

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def _close(self) -> None:
        self.tar.close()
        os.replace(self.temp, self.root / f"{self.shard:05d}.tar")
        self.tar = None
        self.shard += 1
        self.in_shard = 0

    def add(self, key: str, ex: Example) -> None:
        if self.tar is None:
            self.temp = self.root / f".{self.shard:05d}.tar.tmp"
            self.tar = tarfile.open(self.temp, "w", format=tarfile.USTAR_FORMAT)
        t2i = self.kind == "t2i"  # webdataset's plain fields (KEY.png, KEY.txt) for t2i
        for column, _, data in ex.images:
            ext = image_extension(data)
            self._member(f"{key}.{ext}" if t2i else f"{key}.{column}.{ext}", data)
        for column, text in ex.texts:
            self._member(f"{key}.txt" if t2i else f"{key}.{column}.txt", text.encode("utf-8"))
        info = dict(ex.values)
        if t2i:
            width, height = image_size(ex.images[0][2], f"example {key}")
            info = {"original_width": width, "original_height": height, **info}
        if info:
            self._member(f"{key}.json", dumps(info).encode("utf-8"))
        self.in_shard += 1
        if self.in_shard == self.shard_size:
            self._close()

    def finish(self) -> None:
        if self.tar is not None:
            self._close()


def prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() or out.is_symlink():
        if not out.is_dir() and not overwrite:
            raise ConvertError(f"{out}: exists and is not a folder (pass --overwrite to replace it)")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise ConvertError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.parent / f".{out.name}.tmp.{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    return temp


def move_into_place(temp: Path, out: Path) -> None:
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old.{os.getpid()}"
        out.rename(old)
    temp.rename(out)
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


def convert(args: argparse.Namespace) -> tuple[int, int, int]:
    """Returns (examples, files, bytes)."""
    columns = parse_columns(args.kind, args.columns)
    extra = [c for s in args.extra_columns for c in s.split(",") if c]
    files = parquet_files(args.inputs)
    out = Path(os.path.abspath(args.out))
    temp = prepare_out(out, args.overwrite)
    try:
        writer = WdsWriter(temp, args.shard_size, args.kind) if args.format == "wds" else FolderWriter(temp)
        n = 0
        for n, ex in enumerate(read_examples(files, args.kind, columns, extra, args.limit), start=1):
            if n > MAX_EXAMPLES:
                raise ConvertError(f"more than {MAX_EXAMPLES} examples (keys have nine digits): use --limit")
            if args.format == "wds" and math.ceil(n / args.shard_size) > MAX_SHARDS:
                raise ConvertError(f"more than {MAX_SHARDS} shards (names have five digits): raise --shard-size")
            writer.add(f"{n - 1:09d}", ex)
        if n == 0:
            raise ConvertError(f"{', '.join(str(f) for f in files)}: no rows to convert")
        writer.finish()
        written = [p.stat().st_size for p in temp.rglob("*") if p.is_file()]
        move_into_place(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return n, len(written), sum(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="parquet files, or folders holding them")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--format", required=True, choices=["folder", "wds"])
    parser.add_argument("--out", required=True, help="output folder (missing or empty unless --overwrite)")
    parser.add_argument("--columns", action="append", default=[], metavar="ROLE=COLUMN[,...]",
                        help="input column of a role, e.g. original_image_column=original_image")
    parser.add_argument("--extra-columns", action="append", default=[], metavar="NAME[,...]",
                        help="value columns to copy as they are")
    parser.add_argument("--limit", type=int, help="convert the first N rows only")
    parser.add_argument("--shard-size", type=int, default=1000, help="wds: examples per shard (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit: expected at least 1")
    if args.shard_size < 1:
        parser.error("--shard-size: expected at least 1")
    start = time.monotonic()
    try:
        examples, files, size = convert(args)
    except (ConvertError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {examples} {args.kind} examples ({args.format}, {files} files, {size} bytes) to {args.out} "
          f"in {time.monotonic() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
