"""Tests for retina_vqa.data.images: every odd image kind a user may have comes out as a correct RGB image."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from retina_vqa.data.images import ImageLoadError, image_sha1, load_image, probe_image, to_rgb

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def _gradient16(top: int = 65535) -> np.ndarray:
    """A 16x16 uint16 image whose pixel k (row-major) is round(k * top / 255), k = 0..255."""
    return np.rint(np.arange(256) * (top / 255)).astype(np.uint16).reshape(16, 16)


def _noise(size: tuple[int, int] = (128, 128), seed: int = 0) -> Image.Image:
    # Noise does not compress, so cutting a file in half really cuts into the pixel data.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------
# Formats and modes
# ---------------------------------------------------------------------------------------------------


def test_png_and_tiff_rgb_are_exact(tmp_path: Path) -> None:
    source = _noise((32, 24))
    for name in ("a.png", "a.tif"):
        out = load_image(_save(source, tmp_path / name))
        assert out.size == (32, 24)
        np.testing.assert_array_equal(_pixels(out), np.asarray(source))


def test_jpeg_rgb(tmp_path: Path) -> None:
    out = load_image(_save(Image.new("RGB", (40, 30), (200, 100, 50)), tmp_path / "a.jpg", quality=95))
    assert out.size == (40, 30)
    assert np.abs(_pixels(out) - (200, 100, 50)).max() <= 3


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16bit_full_range_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    image = Image.fromarray(_gradient16())
    assert image.mode == "I;16"
    out = load_image(_save(image, tmp_path / f"g16.{suffix}"))
    expected = np.arange(256).reshape(16, 16)
    for channel in range(3):
        np.testing.assert_array_equal(_pixels(out)[..., channel], expected)


def test_12bit_data_in_16bit_container_uses_12bit_range(tmp_path: Path) -> None:
    out = load_image(_save(Image.fromarray(_gradient16(top=4095)), tmp_path / "g12.png"))
    np.testing.assert_array_equal(_pixels(out)[..., 0], np.arange(256).reshape(16, 16))


def test_16bit_big_endian_mode(tmp_path: Path) -> None:
    data = _gradient16()
    image = Image.frombytes("I;16B", (16, 16), data.astype(">u2").tobytes())
    np.testing.assert_array_equal(_pixels(to_rgb(image))[..., 1], np.arange(256).reshape(16, 16))


def test_int32_mode_i_with_8bit_values_is_unchanged() -> None:
    image = Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16))
    assert image.mode == "I"
    np.testing.assert_array_equal(_pixels(to_rgb(image))[..., 2], np.arange(256).reshape(16, 16))


def test_grayscale_l(tmp_path: Path) -> None:
    out = load_image(_save(Image.new("L", (5, 4), 77), tmp_path / "l.png"))
    assert (_pixels(out) == 77).all()


def test_la_transparent_becomes_black(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1), (200, 255))
    image.putpixel((1, 0), (200, 0))
    out = _pixels(load_image(_save(image, tmp_path / "la.png")))
    assert tuple(out[0, 0]) == (200, 200, 200)
    assert tuple(out[0, 1]) == (0, 0, 0)


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 255, 255, *RED] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    path = _save(image, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = _pixels(load_image(path))
    assert tuple(out[0, 0]) == (0, 0, 0)  # transparent white -> black, not white
    assert tuple(out[0, 1]) == RED


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (1, 1), 0)
    image.putpalette([*BLUE] + [0] * 765)
    assert tuple(_pixels(load_image(_save(image, tmp_path / "p.png")))[0, 0]) == BLUE


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1), (255, 255, 255, 0))
    image.putpixel((1, 0), (10, 20, 30, 255))
    image.putpixel((2, 0), (200, 200, 200, 128))
    out = _pixels(load_image(_save(image, tmp_path / "rgba.png")))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == (10, 20, 30)
    assert np.abs(out[0, 2] - 100).max() <= 1


def test_cmyk_jpeg(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    path = _save(image, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert np.abs(_pixels(load_image(path)) - RED).max() <= 6


def test_bilevel(tmp_path: Path) -> None:
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    out = _pixels(load_image(_save(image, tmp_path / "b.png")))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    data = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    path = _save(Image.fromarray(data), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(_pixels(load_image(path))[..., 0], np.arange(256).reshape(16, 16))


def test_ycbcr_converts() -> None:
    out = to_rgb(Image.new("RGB", (4, 4), (30, 160, 90)).convert("YCbCr"))
    assert np.abs(_pixels(out) - (30, 160, 90)).max() <= 3


def _marked_jpeg(path: Path, orientation: int) -> Path:
    """A 40x20 blue JPEG with a red top-left corner block, tagged with the given EXIF orientation."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [(6, "top_right"), (8, "bottom_left")],  # 6: rotate 90 clockwise to display; 8: counter-clockwise
)
def test_exif_orientation_applied(tmp_path: Path, orientation: int, corner: str) -> None:
    path = _marked_jpeg(tmp_path / "rot.jpg", orientation)
    out = load_image(path)
    assert out.size == (20, 40)
    px = _pixels(out)
    red_at = {"top_right": px[2, 17], "bottom_left": px[37, 2]}[corner]
    assert np.abs(red_at - RED).max() <= 40
    assert np.abs(px[2, 2] - BLUE).max() <= 40  # the stored top-left corner moved away
    assert probe_image(path) == (20, 40, "RGB")


def test_max_side_on_large_jpeg_is_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (6000, 4000), (90, 40, 20)), tmp_path / "big.jpg", quality=80)
    decoded_sizes: list[tuple[int, int]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy_draft(self, mode, size):  # type: ignore[no-untyped-def]
        result = original_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    start = time.perf_counter()
    out = load_image(path, max_side=512)
    elapsed = time.perf_counter() - start
    assert out.size == (512, 341)
    assert np.abs(_pixels(out) - (90, 40, 20)).max() <= 4
    # The JPEG is decoded at 1/8 scale (750x500), never at full resolution.
    assert decoded_sizes == [(750, 500)]
    assert elapsed < 1.0  # loose bound for slow machines; typically a few tens of milliseconds


def test_max_side_on_png_and_no_upscaling(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (3000, 1000), (1, 2, 3)), tmp_path / "wide.png")
    assert load_image(path, max_side=300).size == (300, 100)
    assert load_image(path, max_side=5000).size == (3000, 1000)


# ---------------------------------------------------------------------------------------------------
# Source kinds
# ---------------------------------------------------------------------------------------------------


def test_bytes_filelike_and_datasets_dicts(tmp_path: Path) -> None:
    source = _noise((8, 6))
    path = _save(source, tmp_path / "a.png")
    data = path.read_bytes()
    expected = np.asarray(source)
    for src in (
        data,
        bytearray(data),
        io.BytesIO(data),
        str(path),
        {"bytes": data, "path": "elsewhere/a.png"},
        {"bytes": None, "path": str(path)},
    ):
        np.testing.assert_array_equal(_pixels(load_image(src)), expected)


def test_dict_without_bytes_or_path() -> None:
    with pytest.raises(ImageLoadError, match="neither 'bytes' nor 'path'"):
        load_image({"bytes": None, "path": None}, where="row 4 of split train, column image")


def test_pil_input_is_copied_not_mutated() -> None:
    image = Image.new("RGB", (4, 4), RED)
    out = load_image(image)
    assert out is not image
    out.putpixel((0, 0), BLUE)
    assert image.getpixel((0, 0)) == RED


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((3, 4), 50, np.uint8), (50, 50, 50)),
        (np.full((3, 4, 1), 50, np.uint8), (50, 50, 50)),
        (np.full((3, 4, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((3, 4, 4), (9, 8, 7, 255), np.uint8), (9, 8, 7)),
        (np.full((3, 4, 4), (9, 8, 7, 0), np.uint8), (0, 0, 0)),
        (np.full((3, 4, 3), (65535, 0, 257 * 100), np.uint16), (255, 0, 100)),
        (np.full((3, 4, 3), (1.0, 0.0, 0.5), np.float32), (255, 0, 128)),
        (np.ones((3, 4), bool), (255, 255, 255)),
    ],
)
def test_numpy_inputs(array: np.ndarray, expected: tuple[int, int, int]) -> None:
    out = load_image(array)
    assert out.size == (4, 3)
    assert (_pixels(out) == expected).all()


def test_numpy_channels_first_is_rejected_with_hint() -> None:
    with pytest.raises(ImageLoadError, match=r"transpose\(1, 2, 0\)"):
        load_image(np.zeros((3, 32, 32), np.float32))


def test_unsupported_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Unsupported image source type int"):
        load_image(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------


def test_truncated_images_are_not_loaded_silently() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "fundus_001.jpg"
    with pytest.raises(ImageLoadError) as info:
        load_image(missing)
    assert str(missing) in str(info.value)
    assert "image column" in str(info.value)
    with pytest.raises(ImageLoadError, match="fundus_001.jpg"):
        probe_image(str(missing))


def test_random_bytes() -> None:
    garbage = np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(garbage)
    with pytest.raises(ImageLoadError):
        probe_image(garbage)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    full = _save(_noise((256, 256)), tmp_path / f"full.{suffix}")
    data = full.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    # The header is intact, so the fast probe passes; the full load must not.
    assert probe_image(cut)[:2] == (256, 256)
    with pytest.raises(ImageLoadError) as info:
        load_image(cut)
    assert str(cut) in str(info.value)
    with pytest.raises(ImageLoadError):
        load_image(data[: len(data) // 2])


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_zero_size_images() -> None:
    with pytest.raises(ImageLoadError, match="zero size"):
        to_rgb(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10_000 pixels is over twice the limit
    with pytest.raises(ImageLoadError) as info:
        load_image(path, where="row 7 of split validation, column image")
    message = str(info.value)
    assert "MAX_IMAGE_PIXELS" in message and "trusted" in message
    assert "row 7 of split validation, column image" in message
    with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS"):
        probe_image(path)


def test_between_one_and_two_times_the_limit_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(path).size == (100, 100)
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_where_text_and_path_appear_in_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    where = "row 12 of split train, column image"
    with pytest.raises(ImageLoadError) as info:
        load_image(bad, where=where)
    assert where in str(info.value)
    assert str(bad) in str(info.value)
    assert info.value.source.startswith(where)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------------
# probe_image and image_sha1
# ---------------------------------------------------------------------------------------------------


def test_probe_reports_stored_mode_and_size(tmp_path: Path) -> None:
    assert probe_image(_save(Image.fromarray(_gradient16()), tmp_path / "g.png")) == (16, 16, "I;16")
    assert probe_image(Image.new("CMYK", (7, 3))) == (7, 3, "CMYK")
    assert probe_image(np.zeros((5, 9, 4), np.uint8)) == (9, 5, "RGBA")


def test_sha1_same_content_same_hash(tmp_path: Path) -> None:
    path = _save(_noise((8, 8)), tmp_path / "a.png")
    other = _save(_noise((8, 8), seed=1), tmp_path / "b.png")
    data = path.read_bytes()
    digests = {image_sha1(s) for s in (path, str(path), data, io.BytesIO(data), {"bytes": data, "path": None})}
    assert len(digests) == 1
    assert image_sha1(other) != image_sha1(path)

    stream = io.BytesIO(data)
    image_sha1(stream)
    assert stream.tell() == 0  # the caller's file can still be decoded afterwards
    assert load_image(stream).size == (8, 8)

    decoded = Image.open(path)
    assert image_sha1(decoded) == image_sha1(decoded.copy())
    assert image_sha1(decoded) != image_sha1(Image.open(other))
    assert image_sha1(np.zeros((2, 2), np.uint8)) != image_sha1(np.zeros((2, 2), np.uint16))
