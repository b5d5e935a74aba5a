"""The conditions beside diabetic retinopathy: flags, prevalence, co-occurrence, drawing, answers and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retina_vqa.questions import (
    ALL_QUADRANTS_ANSWER,
    CONDITION_NAMES,
    FINDINGS,
    HAEMORRHAGE_TYPES,
    LESION_TYPES,
    QUADRANTS,
    QUESTION_TYPES,
    count_haemorrhage_quadrants,
    haemorrhage_quadrant,
    split_answer_set,
)
from retina_vqa.synthetic import CONDITIONS, ConditionState, generate_dataset, render_eye, render_fundus
from retina_vqa.synthetic.__main__ import main
from retina_vqa.synthetic.build import condition_question_types, dataset_features
from retina_vqa.synthetic.conditions import CUP_TO_DISC, OTHER_CONDITIONS, parse_conditions, parse_prevalence
from retina_vqa.synthetic.export import preview_label_height, save_dataset
from retina_vqa.synthetic.signs import SIGN_LESION_TYPES

from .helpers import SIZE


def _per_image(rows: list[dict]) -> dict[str, dict]:
    return {r["image_id"]: r for r in rows}


def test_default_question_types_and_columns(multi_dd):
    types = condition_question_types(CONDITIONS)
    assert set(multi_dd["train"]["question_type"][:]) == set(types)
    # The DR-only notebook questions that would speak of DR alone are left out; the new ones all asked.
    assert "blindness" not in types and "cause" not in types and "diagnosis" in types
    assert {"findings_report", "diseases", "cup_to_disc", "haemorrhage_location", "rvo_stage"} <= set(types)
    assert multi_dd["train"].features == dataset_features(multidisease=True)
    assert condition_question_types(["dr"]) == list(QUESTION_TYPES)
    without_glaucoma = condition_question_types(["dr", "amd"])
    assert "amd_stage" in without_glaucoma and "glaucoma_stage" not in without_glaucoma
    assert "cup_to_disc" not in without_glaucoma and "rvo_presence" not in without_glaucoma


def test_prevalence_flags_turn_conditions_on_and_off():
    dd = generate_dataset(
        8,
        0,
        0,
        image_size=64,
        seed=2,
        conditions="dr,glaucoma,rvo",
        prevalence="glaucoma=1,rvo=0",
        question_types=["glaucoma_presence", "rvo_presence", "amd_presence", "diseases"],
        num_workers=1,
    )
    rows = dd["train"].remove_columns("image").to_dict()
    answers = dict.fromkeys(rows["question_type"])
    for qt in answers:
        answers[qt] = {a for a, t in zip(rows["answer"], rows["question_type"], strict=True) if t == qt}
    assert answers["glaucoma_presence"] == {"yes"}
    assert answers["rvo_presence"] == {"no"} and answers["amd_presence"] == {"no"}  # amd is not drawn at all
    for meta in rows["conditions"]:
        assert meta["glaucoma"] != "none" and meta["rvo"] == "none" and meta["amd"] == "none"
        assert meta["cup_to_disc"] >= 0.6


def test_conditions_co_occur_and_vary(multi_rows):
    images = _per_image(multi_rows)
    for condition in OTHER_CONDITIONS:
        stages = {r["conditions"][condition] for r in images.values()}
        assert "none" in stages and len(stages) >= 2, condition
    diseases = [r["conditions"]["diseases"] for r in images.values()]
    assert any("dr" in d and len(d) >= 2 for d in diseases)  # a diabetic with another condition
    assert any(d == [] for d in diseases) or any(len(d) == 1 for d in diseases)


def test_answers_match_metadata(multi_rows):
    for row in multi_rows:
        qt, answer, meta, grade = row["question_type"], row["answer"], row["conditions"], row["grade"]
        lesions = row["lesions"]
        condition = qt.rpartition("_")[0]
        if qt == "dr_presence":
            assert answer == ("yes" if grade > 0 else "no")
        elif qt.endswith("_presence"):
            assert answer == ("no" if meta[condition] == "none" else "yes")
        elif qt.endswith("_stage"):
            assert answer == meta[condition]
        elif qt == "cup_to_disc":
            assert answer == f"{meta['cup_to_disc']:.1f}"
            assert round(meta["cup_to_disc"], 1) in CUP_TO_DISC[meta["glaucoma"]]
        elif qt == "diseases":
            assert split_answer_set(answer) == [CONDITION_NAMES[c] for c in meta["diseases"]]
            assert ("dr" in meta["diseases"]) == (grade > 0)
        elif qt == "abnormality":
            assert answer == ("yes" if meta["diseases"] else "no")
        elif qt == "diagnosis":
            assert answer in ("healthy retina", "mild dr", "moderate dr", "severe dr", "proliferative dr")
        elif qt == "haemorrhage_location":
            items = QUADRANTS if answer == ALL_QUADRANTS_ANSWER else split_answer_set(answer)
            assert len(items) == count_haemorrhage_quadrants(lesions, SIZE, row["laterality"])
            if meta["rvo"] == "branch":
                assert meta["rvo_quadrant"] in items
        elif qt == "haemorrhages":
            has_blood = any(b["type"] in HAEMORRHAGE_TYPES for b in lesions)
            assert answer == ("yes" if has_blood else "no")
            if meta["rvo"] != "none" or meta["amd"] == "late wet" or meta["hypertensive"] in ("grade 3", "grade 4"):
                assert answer == "yes"


def test_findings_and_boxes_follow_the_stages(multi_rows):
    for row in _per_image(multi_rows).values():
        meta, findings = row["conditions"], set(row["conditions"]["findings"])
        kinds = {b["type"] for b in row["lesions"]}
        assert findings <= set(FINDINGS)
        assert kinds <= set(LESION_TYPES) | set(SIGN_LESION_TYPES)
        assert ("enlarged_cup" in findings) == (meta["glaucoma"] != "none")
        assert ("rim_thinning" in findings) == (meta["glaucoma"] in ("moderate", "advanced"))
        assert ("venous_beading" in findings) == (row["grade"] >= 3)
        assert ("arteriolar_narrowing" in findings) == (meta["hypertensive"] != "none")
        assert ("av_nicking" in findings) == (meta["hypertensive"] in ("grade 2", "grade 3", "grade 4"))
        assert ("dilated_tortuous_veins" in findings) == (meta["rvo"] != "none")
        assert ("geographic_atrophy" in findings) == (meta["amd"] == "late dry") == ("geographic_atrophy" in kinds)
        wet = meta["amd"] == "late wet"
        assert ("choroidal_neovascularisation" in findings) == wet == ("choroidal_neovascularisation" in kinds)
        assert ("intermediate_drusen" in findings) == (meta["amd"] == "early")
        assert ("large_drusen" in findings) == (meta["amd"] not in ("none", "early"))
        if meta["hypertensive"] == "grade 4":
            assert "disc_swelling" in findings and "disc_swelling" in kinds
        if meta["hypertensive"] in ("none", "grade 1", "grade 2") and meta["rvo"] == "none":
            assert "flame_haemorrhages" not in findings


def _sign_rngs(seed: int) -> dict[str, np.random.Generator]:
    return {c: np.random.default_rng([seed, i]) for i, c in enumerate(OTHER_CONDITIONS)}


def _eye(seed: int, grade: int = 2, **stages: str) -> tuple[np.ndarray, list[dict]]:
    state = ConditionState(enabled=CONDITIONS, cup_to_disc=stages.pop("cup_to_disc", 0.3), **stages)
    eye = render_eye(np.random.default_rng(seed), 128, grade, "right", "good", state, _sign_rngs(seed))
    return np.asarray(eye.image, dtype=np.float32), eye.lesions


def test_other_conditions_never_move_a_dr_draw():
    for seed, grade in ((0, 2), (1, 4), (2, 3)):
        _, dr_lesions = render_fundus(np.random.default_rng(seed), 128, grade, "left")
        state = ConditionState(
            enabled=CONDITIONS,
            glaucoma="advanced",
            cup_to_disc=0.9,
            amd="late wet",
            hypertensive="grade 4",
            rvo="central",
        )
        eye = render_eye(np.random.default_rng(seed), 128, grade, "left", "good", state, _sign_rngs(seed))
        assert eye.lesions[: len(dr_lesions)] == dr_lesions
        assert len(eye.lesions) > len(dr_lesions)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).sum(axis=2) > 6


def test_signs_change_the_right_part_of_the_image():
    healthy, _ = _eye(5, grade=0)
    # A larger cup changes the optic disc only (a right eye: on the right), and makes it paler.
    cupped, _ = _eye(5, grade=0, glaucoma="advanced", cup_to_disc=0.9)
    ys, xs = np.nonzero(_changed(healthy, cupped))
    assert len(xs) and xs.min() > 64 and xs.max() - xs.min() < 0.2 * 128
    assert cupped[ys, xs].mean() > healthy[ys, xs].mean()
    # Drusen: yellow (more green than the red-orange background) around the fovea, near the centre.
    drusen, _ = _eye(5, grade=0, amd="intermediate")
    ys, xs = np.nonzero(_changed(healthy, drusen))
    assert len(xs) and np.hypot(xs.mean() - 64, ys.mean() - 64) < 20
    assert drusen[ys, xs, 1].mean() > healthy[ys, xs, 1].mean() + 20
    # Narrowed arterioles: less vessel, so a brighter image, and vessel pixels everywhere change.
    narrow, _ = _eye(5, grade=0, hypertensive="grade 1")
    assert narrow.mean() > healthy.mean() and _changed(healthy, narrow).sum() > 200


def test_vein_occlusions_bleed_where_they_should():
    for seed in range(3):
        _, lesions = _eye(seed, grade=0, rvo="central")
        assert count_haemorrhage_quadrants(lesions, 128, "right") == 4
        for quadrant in ("superior-temporal", "inferior-temporal"):
            _, lesions = _eye(seed, grade=0, rvo="branch", rvo_quadrant=quadrant)
            blood = [b for b in lesions if b["type"] in HAEMORRHAGE_TYPES]
            assert len(blood) >= 4
            for b in blood:
                x, y = (b["x0"] + b["x1"]) / 2, (b["y0"] + b["y1"]) / 2
                assert haemorrhage_quadrant(x, y, 128, "right") == quadrant


def test_paraphrase_and_report_wording_keep_images_and_answers(multi_dd):
    from .helpers import MULTI

    plain = generate_dataset(**{**MULTI, "num_validation_images": 0, "num_test_images": 0}, seed=4, num_workers=1)
    plain_train, para_train = plain["train"], multi_dd["train"]
    assert plain_train.data.table.column("image").equals(para_train.data.table.column("image"))
    assert plain_train["answer"][:] == para_train["answer"][:]
    assert plain_train["question"][:] != para_train["question"][:]


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"conditions": "dr,cataract"}, "--conditions"),
        ({"conditions": "all", "prevalence": "glaucoma=2"}, "--prevalence"),
        ({"conditions": "dr,glaucoma", "prevalence": "amd=0.3"}, "--conditions"),
        ({"conditions": "all", "prevalence": "glaucoma"}, "--prevalence"),
        ({"conditions": "dr", "question_types": ["cup_to_disc"]}, "glaucoma"),
        ({"conditions": "all", "question_types": ["tumour_presence"]}, "--question_types"),
    ],
)
def test_bad_condition_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        generate_dataset(2, 0, 0, image_size=64, num_workers=1, **kwargs)


def test_flag_parsing():
    assert parse_conditions(None) == ("dr",) and parse_conditions("all") == CONDITIONS
    assert parse_conditions("amd, glaucoma") == ("dr", "glaucoma", "amd")  # dr always drawn, canonical order
    assert parse_prevalence("amd=0.1", ("dr", "amd", "rvo")) == {"amd": 0.1, "rvo": 0.25}


def test_cli_preview_and_card_of_a_multidisease_set(tmp_path, multi_dd):
    out = tmp_path / "preview.png"
    main(["--preview", str(out), "--conditions", "all", "--image_size", "64"])
    with Image.open(out) as im:
        assert im.size == (4 * 64, 4 * (64 + preview_label_height(64)))  # 16 tiles: each condition at 2+ stages
    main(["--preview", str(out), "--conditions", "dr,amd", "--image_size", "64"])
    with Image.open(out) as im:
        assert im.size == (4 * 64, 2 * (64 + preview_label_height(64)))  # healthy, 2 DR, 4 AMD stages
    save_dataset(multi_dd, tmp_path / "ds", command="python -m retina_vqa.synthetic --conditions all")
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "## Other conditions" in card and "| glaucoma | advanced |" in card
