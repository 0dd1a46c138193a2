"""Hostile inputs: one webdataset member (or shard) per kind of bad file seen in scraped data.

``build(dir)`` writes the shards and returns the expectations: for each (shard, key) the status
the row must end with and a fragment of its reason (for rejections).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import write_tar


@dataclass(frozen=True)
class Case:
    kind: str
    key: str
    members: tuple[tuple[str, bytes], ...]
    status: str  # captioned | rejected
    reason: str = ""  # fragment of the error for rejected rows


def _photo(w: int = 320, h: int = 240, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(base, "RGB").resize((w, h))


def _enc(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height grey pixels, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    raw = b""
    row = b"\x00" + b"\x00" * width
    for _ in range(min(height, 64)):
        raw += comp.compress(row)
    raw += comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    img = _photo(400, 200, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    return _enc(img, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_photo(120, 90, s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _palette_transparent() -> bytes:
    img = _photo(100, 80, 5).convert("P")
    img.info["transparency"] = 0
    return _enc(img, "PNG", transparency=0)


def _corrupt_exif() -> bytes:
    good = _enc(_photo(200, 150, 6), "JPEG")
    bad_app1 = b"\xff\xe1" + (20).to_bytes(2, "big") + b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xff" + b"\x00" * 4
    return good[:2] + bad_app1 + good[2:]


def cases() -> list[Case]:
    good = _enc(_photo(), "JPEG", quality=90)
    header_only = good[: good.index(b"\xff\xda")]  # everything up to the start of scan
    return [
        Case("truncated JPEG", "truncated", (("truncated.jpg", good[: len(good) // 2]),),
             "rejected", "corrupt image data"),
        Case("zero-byte JPEG", "zero", (("zero.jpg", b""),), "rejected", "zero-byte image"),
        Case("garbage bytes", "garbage", (("garbage.jpg", bytes(range(256)) * 16),), "rejected",
             "not an image"),
        Case("header-only JPEG", "headeronly", (("headeronly.jpg", header_only),), "rejected",
             "corrupt image data"),
        Case("HTML under .jpg", "html", (("html.jpg", b"<!doctype html><html><body>403 Forbidden"
                                                       b"</body></html>"),), "rejected", "not an image"),
        Case("PNG under .jpg", "png", (("png.jpg", _enc(_photo(seed=1), "PNG")),), "captioned"),
        Case("WebP under .jpg", "webp", (("webp.jpg", _enc(_photo(seed=2), "WEBP")),), "captioned"),
        Case("BMP under .jpg", "bmp", (("bmp.jpg", _enc(_photo(seed=3), "BMP")),), "captioned"),
        Case("TIFF under .jpg", "tiff", (("tiff.jpg", _enc(_photo(seed=4), "TIFF")),), "captioned"),
        Case("animated GIF under .jpg", "gif", (("gif.jpg", _animated_gif()),), "captioned"),
        Case("CMYK JPEG", "cmyk", (("cmyk.jpg", _enc(_photo(seed=5).convert("CMYK"), "JPEG")),),
             "captioned"),
        Case("16-bit greyscale PNG", "grey16",
             (("grey16.jpg", _enc(Image.fromarray((np.arange(120 * 90, dtype=np.uint16) * 7)
                                                  .reshape(90, 120)), "PNG")),), "captioned"),
        Case("palette PNG with transparency", "palette", (("palette.jpg", _palette_transparent()),),
             "captioned"),
        Case("LA (grey + alpha) PNG", "la", (("la.jpg", _enc(_photo(seed=6).convert("LA"), "PNG")),),
             "captioned"),
        Case("greyscale JPEG", "grey", (("grey.jpg", _enc(_photo(seed=7).convert("L"), "JPEG")),),
             "captioned"),
        Case("EXIF-rotated JPEG", "rotated", (("rotated.jpg", _exif_rotated()),), "captioned"),
        Case("JPEG with corrupt EXIF", "badexif", (("badexif.jpg", _corrupt_exif()),), "captioned"),
        Case("1x1 image", "tiny", (("tiny.jpg", _enc(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")),),
             "captioned"),
        Case("30000x10 image", "strip", (("strip.jpg", _enc(Image.new("RGB", (30000, 10), (200, 10, 10)),
                                                           "PNG")),), "captioned"),
        Case("decompression bomb (PNG, 20000x20000)", "bomb", (("bomb.jpg", _png_bomb(20000, 20000)),),
             "rejected", "decompression bomb"),
        Case("header claiming 100000x100000", "bomb2", (("bomb2.jpg", _png_bomb(100000, 100000)),),
             "rejected", "decompression bomb"),
        Case("huge valid JPEG (6000x4000)", "huge", (("huge.jpg", _enc(_photo(6000, 4000, 8), "JPEG",
                                                                     quality=70)),), "captioned"),
        Case("trailing garbage after a valid JPEG", "trailing",
             (("trailing.jpg", good + b"GARBAGE" * 500),), "captioned"),
        Case(".txt with no .jpg", "textonly", (("textonly.txt", b"a caption without an image"),),
             "rejected", "no image member"),
        Case("non-UTF-8 .txt beside a good .jpg", "latin1",
             (("latin1.jpg", good), ("latin1.txt", "café déjà vu".encode("latin-1"))), "captioned"),
        Case("SVG under .jpg", "svg", (("svg.jpg", b'<svg xmlns="http://www.w3.org/2000/svg" '
                                                   b'width="10" height="10"/>'),), "rejected",
             "not an image"),
    ]


@dataclass(frozen=True)
class ShardCase:
    kind: str
    shard: str
    good_rows: int  # rows that must come out of it besides the error marker
    error: str  # fragment of the shard-level error ("" = none)


def build(out: Path) -> tuple[list[Case], list[ShardCase]]:
    """00000.tar: every member-level case (plus a duplicate key); the other shards: shard-level
    cases, each followed by a good shard that must be unaffected."""
    out.mkdir(parents=True, exist_ok=True)
    member_cases = cases()
    members = [m for c in member_cases for m in c.members]
    good = _enc(_photo(seed=42), "JPEG")
    # duplicate keys in a shard: "dupkey" appears twice, apart: two rows, nothing overwritten
    members = [("dupkey.jpg", good)] + members + [("dupkey.jpg", _enc(_photo(seed=43), "JPEG"))]
    write_tar(out / "00000.tar", members)
    write_tar(out / "00001.tar", [])  # an empty shard
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i in range(4):
            data = _enc(_photo(seed=50 + i), "JPEG")
            info = tarfile.TarInfo(f"t{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = whole.getvalue()
    sizes = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            sizes.append((m.offset_data, m.size))
    cut = sizes[2][0] + sizes[2][1] // 2  # inside the third member's data
    (out / "00002.tar").write_bytes(raw[:cut])  # a truncated tar
    (out / "00003.tar").write_bytes(b"PK\x03\x04 this is a zip, not a tar" * 100)  # not a tar
    write_tar(out / "00004.tar", [(f"ok{i}.jpg", _enc(_photo(seed=60 + i), "JPEG")) for i in range(3)])
    shard_cases = [
        ShardCase("empty shard", "00001.tar", 0, ""),
        ShardCase("truncated tar", "00002.tar", 2, "truncated tar after 2 samples"),
        ShardCase("file that is not a tar", "00003.tar", 0, "not a tar file"),
        ShardCase("good shard after the broken ones", "00004.tar", 3, ""),
    ]
    return member_cases, shard_cases
