import io

import numpy as np
import pytest
from PIL import Image

from enrich.prepare import MAX_PIXELS, prepare_image


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), "RGB")


def test_good_jpeg_becomes_square_rgb(photo: Image.Image) -> None:
    p = prepare_image(_encode(photo, "JPEG"), size=225)
    assert p.ok and p.error is None
    assert (p.width, p.height) == (400, 300)
    assert p.pixels is not None and len(p.pixels) == 225 * 225 * 3


@pytest.mark.parametrize("data,reason", [
    (None, "no image member"),
    (b"", "zero-byte"),
    (b"<html><body>404</body></html>", "not an image"),
    (bytes(range(256)) * 8, "not an image"),
])
def test_rejections_have_specific_reasons(data: bytes | None, reason: str) -> None:
    p = prepare_image(data, size=225)
    assert not p.ok and p.pixels is None and reason in (p.error or "")


def test_truncated_jpeg_passes_open_but_is_rejected(photo: Image.Image) -> None:
    data = _encode(photo, "JPEG")
    Image.open(io.BytesIO(data[: len(data) // 2]))  # the header alone looks fine
    p = prepare_image(data[: len(data) // 2], size=225)
    assert not p.ok and "corrupt image data" in (p.error or "")


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    side = int(MAX_PIXELS ** 0.5) + 100
    data = _encode(Image.new("L", (side, side)), "PNG", optimize=True)
    p = prepare_image(data, size=225)
    assert not p.ok and "decompression bomb" in (p.error or "")


def test_modes_become_rgb() -> None:
    for img in (Image.new("CMYK", (50, 40), (10, 20, 30, 0)), Image.new("LA", (50, 40)),
                Image.new("I;16", (50, 40)), Image.new("P", (50, 40))):
        fmt = "TIFF" if img.mode in ("CMYK", "I;16") else "PNG"
        p = prepare_image(_encode(img, fmt), size=64)
        assert p.ok, (img.mode, p.error)
        assert len(p.pixels or b"") == 64 * 64 * 3


def test_draft_decode_stays_close_to_full_decode(photo: Image.Image) -> None:
    big = photo.resize((1600, 1200))
    data = _encode(big, "JPEG", quality=92)
    a = np.frombuffer(prepare_image(data, size=225, draft=True).pixels or b"", np.uint8)
    b = np.frombuffer(prepare_image(data, size=225, draft=False).pixels or b"", np.uint8)
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    psnr = 10 * np.log10(255**2 / max(mse, 1e-9))
    assert psnr >= 30, psnr  # benchmarks/preprocess.py reports it on realistic photos


def _quadrants(w: int, h: int) -> Image.Image:
    """Four coloured regions split unevenly (columns at a quarter of the width, rows at half the
    height): red top-left, green top-right, blue bottom-left, white bottom-right. A crop or a
    flip would move the split, a stretch keeps it at the same fractions."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 4] = (255, 0, 0)
    a[: h // 2, w // 4:] = (0, 255, 0)
    a[h // 2:, : w // 4] = (0, 0, 255)
    a[h // 2:, w // 4:] = (255, 255, 255)
    return Image.fromarray(a, "RGB")


def _at(pixels: bytes, size: int, points: list[tuple[float, float]]) -> list[tuple[int, ...]]:
    """The pixels at (x, y) fractions of the square."""
    a = np.frombuffer(pixels, np.uint8).reshape(size, size, 3)
    return [tuple(int(v) for v in a[int(y * size), int(x * size)]) for x, y in points]


RGBW = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def test_pixels_match_the_known_picture_stretched_to_the_square() -> None:
    """An independent oracle: a picture of known geometry (640x360, lossless PNG) comes out
    stretched to the 225x225 square, not cropped: its regions keep their fractions of the width
    and height, colours exact within 2."""
    p = prepare_image(_encode(_quadrants(640, 360), "PNG"), size=225)
    assert p.ok and (p.width, p.height) == (640, 360)
    got = _at(p.pixels or b"", 225, [(0.125, 0.25), (0.625, 0.25), (0.125, 0.75), (0.625, 0.75)])
    for g, want in zip(got, RGBW, strict=True):
        assert max(abs(a - b) for a, b in zip(g, want, strict=True)) <= 2, (got, RGBW)


def test_exif_orientation_is_applied_to_the_pixels() -> None:
    """EXIF orientation 6 (viewers rotate the stored picture 90 degrees clockwise): the stored
    left quarter (red over blue) becomes the top quarter (blue left of red). Reported width and
    height are as displayed."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_quadrants(400, 200), "JPEG", quality=95, exif=exif.tobytes())
    p = prepare_image(data, size=225)
    assert p.ok and (p.width, p.height) == (200, 400)
    got = _at(p.pixels or b"", 225, [(0.25, 0.125), (0.75, 0.125), (0.25, 0.625), (0.75, 0.625)])
    want = [RGBW[2], RGBW[0], RGBW[3], RGBW[1]]
    for g, w in zip(got, want, strict=True):
        assert max(abs(a - b) for a, b in zip(g, w, strict=True)) <= 12, (got, want)  # JPEG


def test_a_read_block_prepared_in_the_read_task_then_joined_to_the_chunk_rows(photo: Image.Image) -> None:
    """prepare_images gives, row for row, what prepare_image gives each image; engine_rows joins
    them to a chunk's rows: pending rows get their image (or become rejected with the reason),
    rows the driver already settled keep their status and get no image."""
    import pyarrow as pa

    from enrich.prepare import ENGINE_INPUT_SCHEMA, engine_rows, prepare_images

    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    good = buf.getvalue()
    images = [good, good[: len(good) // 2], None, b"not an image", good]
    prepared = prepare_images(pa.table({"image": pa.array(images, pa.binary())}), size=64)
    # what each row must be, said directly (not by calling the per-image function again): the
    # good photo a 64x64 RGB JPEG with its original size, the others rejected with their reason
    reject = prepared.column("reject").to_pylist()
    assert reject[0] is None and reject[4] is None
    assert reject[1].startswith("corrupt image data: ") and reject[2] == "no image member in sample"
    assert reject[3] == "not an image: unrecognised format"
    jpegs = prepared.column("image_jpeg").to_pylist()
    assert [j is None for j in jpegs] == [False, True, True, True, False]
    out = Image.open(io.BytesIO(jpegs[0]))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (64, 64)) and jpegs[4] == jpegs[0]
    widths = prepared.column("image_width").to_pylist()
    assert widths[0] == widths[4] == photo.size[0] and widths[2] is None and widths[3] is None

    rows = pa.table({"source_index": pa.array([10, 11, 12, 13, 14], pa.int64()),
                     "status": ["pending", "pending", "failed", "pending", "rejected"],
                     "error": pa.array([None, None, "shard error: x", None, "too big"], pa.string())})
    got = engine_rows(rows, prepared)
    assert got.schema == ENGINE_INPUT_SCHEMA
    assert got.column("source_index").to_pylist() == [10, 11, 12, 13, 14]
    assert got.column("status").to_pylist() == ["pending", "rejected", "failed",
                                                "rejected", "rejected"]
    assert got.column("error").to_pylist() == [None, reject[1], "shard error: x", reject[3],
                                               "too big"]
    joined = got.column("image_jpeg").to_pylist()
    assert joined[0] == jpegs[0] and joined[1:] == [None] * 4
    assert got.column("image_width").to_pylist()[0] == photo.width
    assert got.column("image_width").to_pylist()[2] is None and got.column("image_width").to_pylist()[4] is None
