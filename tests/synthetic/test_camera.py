"""Tests for the camera and site profiles (retina_vqa.synthetic.camera, generate_dataset(camera=...), --camera)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retina_vqa.synthetic import generate_dataset, render_preview
from retina_vqa.synthetic.__main__ import main
from retina_vqa.synthetic.build import render_example, with_camera
from retina_vqa.synthetic.camera import CAMERAS, DEFAULT_CAMERA, CameraProfile, apply_camera, parse_camera

from .test_default_unchanged import SMALL_DEFAULT_SHA256, _table_digest

SIZE = 96
# Good-quality images (no defect) of every grade: the camera alone differs between them.
TASKS = [(0, "train", i, i % 5, SIZE, 0.0) for i in range(6)]


def _pixels(example: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(example["image_bytes"])).convert("RGB"), np.float32)


def _stack(camera: str) -> np.ndarray:
    return np.stack([_pixels(render_example(with_camera(t, camera))) for t in TASKS])


@pytest.fixture(scope="module")
def photographs() -> dict[str, np.ndarray]:
    return {camera: _stack(camera) for camera in CAMERAS}


def _field_fraction(images: np.ndarray) -> float:
    """Share of pixels that are not black surround."""
    return float((images.max(axis=-1) > 12).mean())


def test_there_are_at_least_three_profiles_besides_the_default_and_each_is_described():
    others = [name for name in CAMERAS if name != DEFAULT_CAMERA]
    assert len(others) >= 3
    assert all(len(CAMERAS[name].description) > 40 for name in CAMERAS)
    assert CAMERAS[DEFAULT_CAMERA] == CameraProfile(CAMERAS[DEFAULT_CAMERA].description)  # every setting neutral


def test_default_camera_is_byte_identical_and_named_explicitly():
    dd = generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1, camera="default")
    assert _table_digest(dd) == SMALL_DEFAULT_SHA256
    task = TASKS[0]
    assert with_camera(task, DEFAULT_CAMERA) == task
    assert render_example(task)["image_bytes"].startswith(b"\x89PNG")


def test_every_other_camera_changes_the_pixels_but_not_the_eye(photographs):
    for camera in CAMERAS:
        if camera == DEFAULT_CAMERA:
            continue
        assert np.abs(photographs[camera] - photographs[DEFAULT_CAMERA]).mean() > 5, camera
        default, other = render_example(TASKS[3]), render_example(with_camera(TASKS[3], camera))
        for key in ("image_id", "grade", "laterality", "quality"):
            assert other[key] == default[key]
        assert [b["type"] for b in other["lesions"]] == [b["type"] for b in default["lesions"]]


def test_jpeg_cameras_store_jpeg_at_their_quality():
    for camera, profile in CAMERAS.items():
        data = render_example(with_camera(TASKS[1], camera))["image_bytes"]
        if profile.jpeg_quality is None:
            assert data.startswith(b"\x89PNG"), camera
        else:
            assert data.startswith(b"\xff\xd8\xff"), camera
            assert Image.open(io.BytesIO(data)).format == "JPEG"
    # The handheld camera's low quality makes smaller files than the desktop camera's, same images otherwise alike.
    handheld = len(render_example(with_camera(TASKS[1], "handheld"))["image_bytes"])
    desktop = len(render_example(with_camera(TASKS[1], "desktop_45"))["image_bytes"])
    assert handheld < desktop


def test_narrower_field_and_smaller_retina_leave_less_field_in_the_frame(photographs):
    default = _field_fraction(photographs[DEFAULT_CAMERA])
    # handheld: field radius 0.88 -> about 0.77 of the area; widefield: retina at 0.82 scale -> about 0.67.
    assert _field_fraction(photographs["handheld"]) < 0.85 * default
    assert _field_fraction(photographs["widefield"]) < 0.75 * default
    # desktop_45: only the clipped top and bottom are lost.
    assert 0.85 * default < _field_fraction(photographs["desktop_45"]) < default


def test_desktop_mask_is_clipped_flat_at_top_and_bottom(photographs):
    band = int(CAMERAS["desktop_45"].clip_top_bottom * SIZE)
    top_rows = slice(0, band - 2)  # JPEG rings a pixel or two next to the edge
    assert photographs["desktop_45"][:, top_rows].max() < 10
    assert photographs[DEFAULT_CAMERA][:, top_rows].max() > 50  # the default circle reaches into those rows


def test_handheld_mask_has_a_notch_at_three_o_clock():
    profile = CAMERAS["handheld"]
    without = CameraProfile("no notch", **{k: v for k, v in vars(profile).items() if k not in ("description", "notch")})
    size = 256
    image = Image.new("RGB", (size, size), (200, 100, 50))
    notched, _ = apply_camera(profile, image, [], np.random.default_rng(0))
    plain, _ = apply_camera(without, image, [], np.random.default_rng(0))

    def lit(photo: Image.Image, columns: slice) -> int:  # field pixels along the middle row
        return int((np.asarray(photo)[size // 2, columns].max(axis=-1) > 12).sum())

    right, left = slice(size // 2, size), slice(0, size // 2)
    assert lit(notched, right) <= lit(plain, right) - 8  # 0.12 of the field's radius: ~12 px at 256 px
    assert lit(notched, left) == lit(plain, left)


def test_colour_casts_shift_the_channel_means_their_way(photographs):
    def ratio(images: np.ndarray, channel: int) -> float:
        field = images.max(axis=-1) > 12
        means = [images[..., c][field].mean() for c in range(3)]
        return means[channel] / means[1]

    base_red, base_blue = ratio(photographs[DEFAULT_CAMERA], 0), ratio(photographs[DEFAULT_CAMERA], 2)
    assert ratio(photographs["desktop_45"], 0) > base_red * 1.05  # warm: more red against green
    assert ratio(photographs["handheld"], 0) < base_red * 0.95  # green-yellow: less red against green
    assert ratio(photographs["widefield"], 2) > base_blue * 1.05  # cool: more blue against green


def test_lower_resolution_loses_fine_detail(photographs):
    def detail(images: np.ndarray) -> float:
        return float(np.abs(np.diff(images, axis=2)).mean())

    assert detail(photographs["handheld"]) < 0.7 * detail(photographs[DEFAULT_CAMERA])


def test_widefield_lesion_boxes_follow_the_smaller_retina():
    task = (0, "train", 2, 4, SIZE, 0.0)  # proliferative: plenty of lesions
    default, wide = render_example(task), render_example(with_camera(task, "widefield"))
    assert default["lesions"]
    scale, centre = CAMERAS["widefield"].retina_scale, SIZE / 2
    for a, b in zip(default["lesions"], wide["lesions"], strict=True):
        assert abs(b["x0"] - (centre + (a["x0"] - centre) * scale)) <= 1
        assert abs(b["y1"] - (centre + (a["y1"] - centre) * scale)) <= 1


def test_camera_images_are_deterministic_and_vary_per_image():
    task = with_camera(TASKS[0], "handheld")
    assert render_example(task)["image_bytes"] == render_example(task)["image_bytes"]
    # The same drawn image through the same camera with two generators: the per-image jitter differs.
    image = Image.open(io.BytesIO(render_example(TASKS[0])["image_bytes"])).convert("RGB")
    one, _ = apply_camera(CAMERAS["handheld"], image, [], np.random.default_rng(1))
    two, _ = apply_camera(CAMERAS["handheld"], image, [], np.random.default_rng(2))
    assert not np.array_equal(np.asarray(one), np.asarray(two))


def test_generate_dataset_with_a_camera_keeps_the_rows_and_changes_fingerprint_and_images():
    default = generate_dataset(3, 1, 1, image_size=64, seed=0, num_workers=1)
    handheld = generate_dataset(3, 1, 1, image_size=64, seed=0, num_workers=1, camera="handheld")
    for split in default:
        assert default[split]._fingerprint != handheld[split]._fingerprint
        columns = [c for c in default[split].column_names if c not in ("image", "lesions")]
        assert default[split].select_columns(columns).to_dict() == handheld[split].select_columns(columns).to_dict()
    image = handheld["train"].cast_column("image", type(handheld["train"].features["image"])(decode=False))[0]
    assert image["image"]["bytes"].startswith(b"\xff\xd8\xff")


def test_unknown_camera_is_refused_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="desktop_45, handheld, widefield"):
        parse_camera("fundus_cam")
    with pytest.raises(ValueError, match="--camera 'nope'"):
        generate_dataset(1, 0, 0, image_size=64, num_workers=1, camera="nope")
    with pytest.raises(SystemExit) as exc:
        main(["--output_dir", str(tmp_path / "a"), "--camera", "nope"])
    error = capsys.readouterr().err
    assert exc.value.code == 2 and "--camera" in error and "handheld" in error
    assert not (tmp_path / "a").exists()


def test_cli_writes_a_camera_dataset_whose_card_names_the_camera(tmp_path):
    out = tmp_path / "handheld"
    main(["--output_dir", str(out), "--num_train_images", "2", "--num_validation_images", "0", "--num_test_images",
          "0", "--image_size", "64", "--num_workers", "1", "--camera", "handheld"])  # fmt: skip
    card = (out / "README.md").read_text()
    assert "## Camera" in card and "`handheld`" in card and "JPEG" in card
    default = tmp_path / "default"
    main(["--output_dir", str(default), "--num_train_images", "2", "--num_validation_images", "0",
          "--num_test_images", "0", "--image_size", "64", "--num_workers", "1"])  # fmt: skip
    assert "## Camera" not in (default / "README.md").read_text()


def test_imagefolder_files_of_a_jpeg_camera_are_jpg(tmp_path):
    out = tmp_path / "folder"
    main(["--output_dir", str(out), "--num_train_images", "2", "--num_validation_images", "0", "--num_test_images",
          "0", "--image_size", "64", "--num_workers", "1", "--camera", "widefield",
          "--format", "imagefolder"])  # fmt: skip
    files = sorted(p.name for p in (out / "train").iterdir() if p.suffix != ".jsonl")
    assert files == ["train-00000.jpg", "train-00001.jpg"]


def test_preview_takes_a_camera(tmp_path):
    default = render_preview(64, seed=1, quality_defect_rate=0.0)
    handheld = render_preview(64, seed=1, quality_defect_rate=0.0, camera="handheld")
    assert default.size == handheld.size
    assert not np.array_equal(np.asarray(default), np.asarray(handheld))
    multi = render_preview(64, seed=1, conditions="all", camera="widefield")
    assert multi.size[0] == 4 * 64
    out = tmp_path / "preview.png"
    main(["--preview", str(out), "--image_size", "64", "--camera", "desktop_45"])
    assert Image.open(out).size[0] == 4 * 64
