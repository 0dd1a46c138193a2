"""The prepare step: validate an image by decoding it fully, then make the engine's input.

Pure core: :func:`prepare_image` (bytes in, a :class:`Prepared` out; never raises for bad
bytes). Ray adapters: :func:`prepare_images`, run inside each read task over the block it read,
so that only the small prepared images enter the object store; :func:`engine_rows`, which joins
a chunk's rows with them for the engine.

A bad image is data, not an exception: it comes back ``rejected`` with a specific reason.
``Image.open`` reads only the header (a truncated JPEG passes it), so validation means ``load()``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb guard, checked from the header before any pixel is decoded. 64 MP covers
# any real photo (a 8000x8000 scan); a bomb claims far more.
MAX_PIXELS = 64_000_000
# JPEG can decode at 1/2, 1/4, 1/8 scale inside the DCT (PIL ``draft``). We ask for at least
# DRAFT_FACTOR x the target side so the bicubic resize still has detail to work with.
# benchmarks/preprocess.py on web-photo sizes: 1x is 2.7x the tutorial's speed but its worst
# image falls to 34 dB PSNR against a full decode; 1.5x keeps ~2.4x and >= 39 dB; 2x ~2x, 42 dB.
DRAFT_FACTOR = 1.5


# The engine's input is the resized image as a JPEG at this quality: ~7x smaller than raw RGB
# (225x225x3 = 152 KB), which is what crosses Ray's object store and sits in its queues, and
# what vLLM takes anyway (a data URL). At 95 the difference from raw is invisible.
ENGINE_JPEG_QUALITY = 95


@dataclass(frozen=True)
class Prepared:
    ok: bool
    error: str | None
    width: int | None  # original size, after EXIF orientation
    height: int | None
    pixels: bytes | None  # RGB, image_size x image_size x 3, row-major (unless jpeg=True)
    jpeg: bytes | None = None  # the same image as a JPEG (when jpeg=True)


def _reject(reason: str, width: int | None = None, height: int | None = None) -> Prepared:
    return Prepared(False, reason, width, height, None)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grey: PIL's convert("RGB") clips instead of scaling; scale to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def prepare_image(data: bytes | None, *, size: int, draft: bool = True, jpeg: bool = False) -> Prepared:
    """Validate ``data`` by decoding it and return RGB ``size``x``size`` pixels, or a rejection."""
    if data is None:
        return _reject("no image member in sample")
    if len(data) == 0:
        return _reject("zero-byte image")
    img: Image.Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _reject("not an image: unrecognised format")
    except Image.DecompressionBombError as exc:
        return _reject(f"decompression bomb: {exc}")
    except Image.DecompressionBombWarning as exc:
        return _reject(f"decompression bomb: {exc}")
    except Exception as exc:  # noqa: BLE001 - any header parser failure is a bad image
        return _reject(f"unreadable image header: {type(exc).__name__}: {exc}")
    width, height = img.size
    if width * height > MAX_PIXELS:
        return _reject(f"decompression bomb: {width}x{height} exceeds {MAX_PIXELS} pixels",
                       width, height)
    try:
        if draft and img.format == "JPEG":
            target = int(size * DRAFT_FACTOR)
            img.draft("RGB", (target, target))
        img.load()  # full decode: truncated or corrupt data fails here
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
        resized = rgb.resize((size, size), Image.Resampling.BICUBIC)
        if jpeg:
            buf = io.BytesIO()
            resized.save(buf, "JPEG", quality=ENGINE_JPEG_QUALITY)
            return Prepared(True, None, width, height, None, buf.getvalue())
        pixels = resized.tobytes()
    except Image.DecompressionBombError as exc:
        return _reject(f"decompression bomb: {exc}", width, height)
    except (OSError, SyntaxError, ValueError) as exc:
        return _reject(f"corrupt image data: {exc}", None, None)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not end the run
        return _reject(f"undecodable image: {type(exc).__name__}: {exc}", None, None)
    return Prepared(True, None, width, height, pixels)


# Columns the prepare stage adds; the engine reads ``image_jpeg`` and passes the rest through.
PREPARED_FIELDS = [
    pa.field("image_jpeg", pa.binary()),
    pa.field("image_width", pa.int32()),
    pa.field("image_height", pa.int32()),
]
# What the engine takes: a row's number, status and error, and its prepared image.
ENGINE_INPUT_SCHEMA = pa.schema([pa.field("source_index", pa.int64()),
                                 pa.field("status", pa.string()),
                                 pa.field("error", pa.string()), *PREPARED_FIELDS])
# One read block's images once prepared (in the read task that read them: the raw bytes never
# enter the object store): the prepared image and original size, or why it was rejected.
PREPARED_SCHEMA = pa.schema([*PREPARED_FIELDS, pa.field("reject", pa.string())])


def prepare_images(images: pa.Table, *, size: int, draft: bool = True) -> pa.Table:
    """Ray adapter (inside a read task): a block's ``image`` bytes in, PREPARED_SCHEMA out, row
    for row. Samples without an image (a shard's error marker) get a reason too; the driver has
    already given those rows a status of their own."""
    pixels: list[bytes | None] = []
    widths: list[int | None] = []
    heights: list[int | None] = []
    rejects: list[str | None] = []
    for chunk in images.column("image").chunks:
        for i in range(len(chunk)):
            p = prepare_image(chunk[i].as_py(), size=size, draft=draft, jpeg=True)
            pixels.append(p.jpeg)
            widths.append(p.width)
            heights.append(p.height)
            rejects.append(None if p.ok else p.error)
    return pa.table([pa.array(pixels, pa.binary()), pa.array(widths, pa.int32()),
                     pa.array(heights, pa.int32()), pa.array(rejects, pa.string())],
                    schema=PREPARED_SCHEMA)


def engine_rows(rows: pa.Table, prepared: pa.Table) -> pa.Table:
    """A chunk's rows (``source_index``, ``status``, ``error``) joined row for row with their
    prepared images: what the engine takes. Only ``pending`` rows carry an image; a pending row
    whose image was rejected becomes ``rejected`` with the reason."""
    import pyarrow.compute as pc

    pending = pc.fill_null(pc.equal(rows.column("status"), "pending"), False)
    rejected = pc.and_(pending, pc.is_valid(prepared.column("reject")))
    status = pc.if_else(rejected, pa.scalar("rejected"), rows.column("status"))
    error = pc.if_else(rejected, prepared.column("reject"), rows.column("error"))
    # (a rejected image has no jpeg, and keeps the original size its header gave, if any)
    cols = [pc.if_else(pending, prepared.column(f.name), pa.scalar(None, f.type))
            for f in PREPARED_FIELDS]
    return pa.Table.from_arrays([rows.column("source_index"), status, error, *cols],
                                schema=ENGINE_INPUT_SCHEMA)
