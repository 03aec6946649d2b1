"""Readers and validation: every bad input gets one clear line naming the file, row, Id
and stain, exit code 1, and nothing written."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import invoke
from hpatk.core.classes import STAINS
from hpatk.core.data import (
    DataError,
    SampleRef,
    check_dataset,
    label_matrix,
    load_stains,
    multihot,
    parse_stains,
    read_external,
    read_kaggle,
    read_stain,
    safe_path,
)

SIZE = 16
IDS = ["a0", "b1", "c2"]


def _img(seed: int, size: int = SIZE, dtype=np.uint8) -> np.ndarray:
    hi = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, hi + 1, (size, size)).astype(dtype)


def _make(root: Path, rows: list[tuple[str, str]] | None = None) -> Path:
    """A tiny Kaggle-layout dataset: 3 train images (16 px), 1 test image."""
    rows = rows if rows is not None else [("a0", "0"), ("b1", "25 0"), ("c2", "27")]
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    for i, image_id in enumerate(IDS):
        for j, stain in enumerate(STAINS):
            cv2.imwrite(str(root / "train" / f"{image_id}_{stain}.png"), _img(10 * i + j))
    for j, stain in enumerate(STAINS):
        cv2.imwrite(str(root / "test" / f"t9_{stain}.png"), _img(100 + j))
    _csv(root / "train.csv", [("Id", "Target"), *rows])
    _csv(root / "sample_submission.csv", [("Id", "Predicted"), ("t9", "0")])
    return root


def _csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def kaggle(tmp_path) -> Path:
    return _make(tmp_path / "data")


# ---------------------------------------------------------------- good data
def test_read_kaggle_train_and_test(kaggle):
    refs = read_kaggle(kaggle)
    assert [r.id for r in refs] == IDS
    assert [r.labels for r in refs] == [(0,), (0, 25), (27,)]
    assert refs.skipped == []
    assert refs[0].paths(("green", "blue")) == [kaggle / "train" / "a0_green.png",
                                                kaggle / "train" / "a0_blue.png"]
    test = read_kaggle(kaggle, "test")
    assert [(r.id, r.labels) for r in test] == [("t9", ())]


def test_load_stains_matches_opencv(kaggle):
    ref = read_kaggle(kaggle)[1]
    img = load_stains(ref)
    assert img.shape == (4, SIZE, SIZE) and img.dtype == np.uint8
    for plane, stain in zip(img, STAINS, strict=True):
        ref_img = cv2.imread(str(kaggle / "train" / f"b1_{stain}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(plane, ref_img)
    sub = load_stains(ref, ("blue", "green"))
    np.testing.assert_array_equal(sub, img[[2, 0]])
    small = load_stains(ref, size=8)
    expected = cv2.resize(img[0], (8, 8), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small[0], expected)


def test_target_is_read_as_text(tmp_path):
    # A column of single labels must stay labels (pandas would make it an int column).
    root = _make(tmp_path / "d", [("a0", "5"), ("b1", "12"), ("c2", "0")])
    assert [r.labels for r in read_kaggle(root)] == [(5,), (12,), (0,)]


def test_multihot_and_label_matrix(kaggle):
    np.testing.assert_array_equal(np.flatnonzero(multihot([25, 0])), [0, 25])
    assert multihot([3]).dtype == np.uint8 and multihot([3]).shape == (28,)
    with pytest.raises(DataError, match="label 28 is outside 0..27"):
        multihot([28])
    m = label_matrix(read_kaggle(kaggle))
    assert m.shape == (3, 28) and m.sum() == 4 and m[1, 25] == 1


def test_parse_stains():
    assert parse_stains("green,red,blue") == ("green", "red", "blue")
    with pytest.raises(DataError, match="unknown stain 'purple'"):
        parse_stains("green,purple")
    with pytest.raises(DataError, match="twice"):
        parse_stains("green,green")


def test_check_command_on_good_data(synth_data):
    res = invoke("data", "check", str(synth_data), ok=False)
    assert res.exit_code == 0, res.output
    assert "train: 96 usable images of 96 rows, 64x64 px" in res.output
    assert "test: 9 usable images" in res.output and "problems: 0" in res.output
    with open(synth_data / "train.csv", newline="") as f:
        targets = [r["Target"].split() for r in csv.DictReader(f)]
    n0 = sum("0" in t for t in targets)
    assert f"   0 {'Nucleoplasm':<31} {n0:>7} {100 * n0 / 96:>6.1f}%" in res.output
    per_image = sum(map(len, targets)) / 96
    assert f"{per_image:.2f} labels/image" in res.output
    assert not (synth_data / "skipped.csv").exists()


# ---------------------------------------------------------------- bad CSVs and Ids
def _rewrite_csv(root: Path, text: str | bytes) -> None:
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(root / "train.csv", mode) as f:
        f.write(text)


CSV_CASES = {
    "traversal": ("Id,Target\n../../etc/passwd,0\nb1,0\nc2,0\n",
                  r"train.csv:2: Id '../../etc/passwd': invalid Id"),
    "slash": ("Id,Target\na0/x,0\nb1,0\nc2,0\n", r"train.csv:2: Id 'a0/x': invalid Id"),
    "label_range": ("Id,Target\na0,28\nb1,0\nc2,0\n",
                    r"train.csv:2: Id 'a0': label 28 is outside 0..27"),
    "label_text": ("Id,Target\na0,0 x\nb1,0\nc2,0\n",
                   r"train.csv:2: Id 'a0': label 'x' is not an integer"),
    "label_negative": ("Id,Target\na0,-1\nb1,0\nc2,0\n",
                       r"Id 'a0': label -1 is outside 0\.\.27"),
    "label_float": ("Id,Target\na0,1.0\nb1,0\nc2,0\n", r"label '1.0' is not an integer"),
    "label_repeat": ("Id,Target\na0,3 3\nb1,0\nc2,0\n", r"Id 'a0': a label is repeated"),
    "label_empty": ("Id,Target\na0,\nb1,0\nc2,0\n", r"Id 'a0': empty Target"),
    "duplicate": ("Id,Target\na0,0\nb1,0\na0,1\n",
                  r"train.csv:4: Id 'a0': duplicate Id \(first on line 2\)"),
    "fields": ("Id,Target\na0,0,7\nb1,0\nc2,0\n",
               r"train.csv:2: Id 'a0': 3 fields, the header has 2"),
    "empty": ("", r"train.csv: the file is empty"),
    "header_only": ("Id,Target\n", r"train.csv: has a header but no rows"),
    "missing_column": ("Id,Label\na0,0\n", r"train.csv: no 'Target' column \(header: Id,Label"),
    "not_utf8": (b"Id,Target\n\xff\xfe\x00a,0\n", r"train.csv: not UTF-8"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv(tmp_path, case):
    text, message = CSV_CASES[case]
    root = _make(tmp_path / "d")
    _rewrite_csv(root, text)
    before = _snapshot(root)
    with pytest.raises(DataError, match=message):
        read_kaggle(root)
    out = tmp_path / "folds.csv"
    res = invoke("data", "folds", str(root), "--out", str(out), ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "train.csv" in error[0]
    res = invoke("data", "check", str(root), ok=False)
    assert res.exit_code == 1 and "Error: " in res.output
    assert not out.exists() and _snapshot(root) == before  # nothing written


def test_traversal_refused_before_any_file_is_opened(tmp_path, monkeypatch):
    # load_stains on a hand-made ref: the Id is refused before np.fromfile/cv2 run.
    def no_open(*args, **kwargs):
        raise AssertionError("a file was opened")

    monkeypatch.setattr(np, "fromfile", no_open)
    monkeypatch.setattr(cv2, "imread", no_open)
    monkeypatch.setattr(cv2, "imdecode", no_open)
    ref = SampleRef("../../etc/passwd", (0,), tmp_path)
    with pytest.raises(DataError, match=r"Id '../../etc/passwd': invalid Id"):
        load_stains(ref)
    with pytest.raises(DataError, match="resolves outside the data folder"):
        safe_path(tmp_path / "train", "../../etc/passwd_green.png")
    assert safe_path(tmp_path, "a_green.png") == tmp_path / "a_green.png"


def test_missing_stain_file_named(kaggle):
    (kaggle / "train" / "b1_yellow.png").unlink()
    with pytest.raises(DataError) as err:
        read_kaggle(kaggle)
    msg = str(err.value)
    assert "b1_yellow.png: Id 'b1' stain yellow: stain file not found" in msg
    assert "train.csv line 3" in msg and "\n" not in msg
    # green, red, blue only (as in the paper): the missing yellow does not matter
    assert len(read_kaggle(kaggle, stains=("green", "red", "blue"))) == 3
    out = kaggle.parent / "folds.csv"
    res = invoke("data", "folds", str(kaggle), "--k", "2", "--out", str(out), ok=False)
    assert res.exit_code == 1 and "stain yellow: stain file not found" in res.output
    assert not out.exists()
    res = invoke("data", "folds", str(kaggle), "--k", "2", "--out", str(out),
                 "--stains", "green,red,blue", ok=False)
    assert res.exit_code == 0, res.output
    assert out.exists()


def test_missing_csv_and_folders(tmp_path, kaggle):
    with pytest.raises(DataError, match="not a folder"):
        read_kaggle(tmp_path / "nope")
    shutil.rmtree(kaggle / "test")
    with pytest.raises(DataError, match=r"test: image folder not found"):
        read_kaggle(kaggle, "test")
    (kaggle / "train.csv").unlink()
    with pytest.raises(DataError, match=r"train.csv: file not found"):
        read_kaggle(kaggle)
    with pytest.raises(DataError, match="unknown split 'val'"):
        read_kaggle(kaggle, "val")


def test_several_problems_one_line_with_a_count(tmp_path):
    root = _make(tmp_path / "d", [("a0", "28"), ("b1", "x"), ("c2", "0")])
    with pytest.raises(DataError) as err:
        read_kaggle(root)
    msg = str(err.value)
    assert "label 28" in msg and "and 1 more" in msg and "hpatk data check" in msg
    assert "\n" not in msg


def test_skip_bad_drops_and_reports(tmp_path):
    root = _make(tmp_path / "d", [("a0", "28"), ("b1", "0"), ("c2", "0")])
    refs = read_kaggle(root, skip_bad=True)
    assert [r.id for r in refs] == ["b1", "c2"]
    assert [(p.id, p.line) for p in refs.skipped] == [("a0", 2)]
    _rewrite_csv(root, "Id,Target\na0,99\n")
    with pytest.raises(DataError, match="no usable samples"):
        read_kaggle(root, skip_bad=True)


# ---------------------------------------------------------------- bad images
def _corrupt(root: Path, how: str) -> Path:
    path = root / "train" / "b1_red.png"
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "undecodable":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20 + b"\0\0\0\0IEND\xaeB`\x82")
    elif how == "not_an_image":
        path.write_bytes(b"hello, this is text")
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "rgb":
        rgb = np.stack([_img(1), _img(2), _img(3)], axis=-1)
        cv2.imwrite(str(path), rgb)
    elif how == "stain_size":
        cv2.imwrite(str(path), _img(1, SIZE + 4))
    elif how == "float":
        path = path.with_suffix(".png")
        ok, buf = cv2.imencode(".tiff", _img(1).astype(np.float32))
        path.write_bytes(buf.tobytes())
    return path


IMAGE_CASES = {
    "truncated": "truncated image",
    "undecodable": "cannot decode the image",
    "not_an_image": "cannot decode the image",
    "empty": "empty file",
    "rgb": "RGB image where a grayscale stain is expected",
    "stain_size": "size 20x20, the green stain has 16x16",
    "float": "unsupported pixel type float32",
}


@pytest.mark.parametrize("how", list(IMAGE_CASES))
def test_bad_image(tmp_path, how):
    root = _make(tmp_path / "d")
    path = _corrupt(root, how)
    before = _snapshot(root)
    ref = read_kaggle(root)[1]  # CSV-level checks pass: images are not opened there
    with pytest.raises(DataError) as err:
        load_stains(ref)
    msg = str(err.value)
    assert msg == f"{path}: Id 'b1' stain red: {IMAGE_CASES[how]}" or (
        msg.startswith(f"{path}: Id 'b1' stain red: ") and IMAGE_CASES[how] in msg)
    res = invoke("data", "check", str(root), ok=False)
    assert res.exit_code == 1
    assert f"problem: {path}: Id 'b1' stain red: {IMAGE_CASES[how]}" in res.output
    assert "problems: 1" in res.output and "Error: 1 problem(s)" in res.output
    assert _snapshot(root) == before  # nothing written (no skipped.csv without --skip-bad)


def test_truncated_jpeg_is_caught_although_opencv_decodes_it(tmp_path):
    path = tmp_path / "x_green.jpg"
    ok, buf = cv2.imencode(".jpg", _img(3, 64))
    path.write_bytes(buf.tobytes()[: len(buf) * 2 // 3])
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None  # OpenCV: no complaint
    with pytest.raises(DataError, match=r"x_green.jpg: stain green: truncated image"):
        read_stain(path, "green")


def test_wrong_image_size_across_the_dataset(tmp_path):
    root = _make(tmp_path / "d")
    for stain in STAINS:
        cv2.imwrite(str(root / "train" / f"c2_{stain}.png"), _img(5, 24))
    report = check_dataset(root)[0]
    assert report.shape == (SIZE, SIZE) and report.images == 2
    assert [str(p) for p in report.problems] == [
        f"{root / 'train' / 'c2_green.png'}: Id 'c2' stain green: size 24x24, expected 16x16"]
    assert len(check_dataset(root, expected_size=24)[0].problems) == 2


def test_sixteen_bit_is_scaled_not_clamped(tmp_path):
    img16 = _img(7, dtype=np.uint16)
    img16[0, :3] = [0, 65535, 4095]  # full scale, and a 12-bit camera's maximum
    path = tmp_path / "a_green.png"
    cv2.imwrite(str(path), img16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out = read_stain(path, "green")
    expected = np.rint(img16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert list(out[0, :3]) == [0, 255, 16]  # 4095 -> 16: scaled, never clipped to 255
    assert out.dtype == np.uint8


def test_gray_saved_as_rgb_is_accepted_losslessly(tmp_path):
    gray = _img(4)
    path = tmp_path / "a_blue.png"
    cv2.imwrite(str(path), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    np.testing.assert_array_equal(read_stain(path, "blue"), gray)


def test_external_rgb_takes_each_stains_channel(tmp_path):
    root = tmp_path / "ext"
    (root / "train").mkdir(parents=True)
    bgr = {s: np.stack([_img(3 * i), _img(3 * i + 1), _img(3 * i + 2)], -1).copy()
           for i, s in enumerate(STAINS)}
    for s in STAINS:
        big = cv2.resize(bgr[s], (64, 64), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / "train" / f"10580_1610_C1_1_{s}.png"), big)
    _csv(root / "HPAv18RBGY_wodpl.csv", [("Id", "Target"), ("10580_1610_C1_1", "0 2")])
    refs = read_external(root)
    assert refs[0].source == "external" and refs[0].labels == (0, 2)
    img = load_stains(refs[0])
    assert img.shape == (4, 64, 64)
    ref_bgr = {s: cv2.imread(str(root / "train" / f"10580_1610_C1_1_{s}.png")) for s in STAINS}
    np.testing.assert_array_equal(img[0], ref_bgr["green"][:, :, 1])  # G
    np.testing.assert_array_equal(img[1], ref_bgr["red"][:, :, 2])  # R
    np.testing.assert_array_equal(img[2], ref_bgr["blue"][:, :, 0])  # B
    y = ref_bgr["yellow"].astype(np.uint16)
    np.testing.assert_array_equal(img[3], ((y[:, :, 2] + y[:, :, 1] + 1) // 2).astype(np.uint8))
    small = load_stains(refs[0], size=16)  # explicit resize of the 2048-px style files
    np.testing.assert_array_equal(
        small[0], cv2.resize(img[0], (16, 16), interpolation=cv2.INTER_AREA))
    res = invoke("data", "check", str(root), "--layout", "external", ok=False)
    assert res.exit_code == 0, res.output
    assert "external: 1 usable images of 1 rows" in res.output and "problems: 0" in res.output


def test_external_jpeg_and_csv_choice(tmp_path):
    root = tmp_path / "ext"
    root.mkdir()
    for s in STAINS:
        cv2.imwrite(str(root / f"x1_{s}.jpg"), cv2.cvtColor(_img(1, 32), cv2.COLOR_GRAY2BGR))
    _csv(root / "a.csv", [("Id", "Target"), ("x1", "3")])
    assert read_external(root)[0].suffix == ".jpg"
    _csv(root / "b.csv", [("Id", "Target"), ("x1", "3")])
    with pytest.raises(DataError, match="expected one .csv file, found a.csv, b.csv"):
        read_external(root)
    assert read_external(root, "b.csv")[0].paths(["green"])[0] == root / "x1_green.jpg"


# ---------------------------------------------------------------- --skip-bad
def test_check_skip_bad_writes_the_skipped_list(tmp_path):
    root = _make(tmp_path / "d", [("a0", "0"), ("b1", "0"), ("c2", "99")])
    path = _corrupt(root, "truncated")
    res = invoke("data", "check", str(root), "--skip-bad", ok=False)
    assert res.exit_code == 0, res.output
    assert "train: 1 usable images of 3 rows" in res.output
    assert f"skipped 2 sample(s); list written to {root / 'skipped.csv'}" in res.output
    with open(root / "skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # an image's problem gives the CSV line listing its Id
    assert [(r["Id"], r["stain"], r["line"]) for r in rows] == [("c2", "", "4"),
                                                               ("b1", "red", "3")]
    assert rows[1]["path"] == str(path) and "truncated" in rows[1]["problem"]
    other = tmp_path / "elsewhere.csv"
    res = invoke("data", "check", str(root), "--skip-bad", "--skipped-out", str(other), ok=False)
    assert res.exit_code == 0 and other.exists()


def test_check_skip_bad_fails_when_nothing_is_usable(tmp_path):
    root = _make(tmp_path / "d")
    for image_id in IDS:
        (root / "train" / f"{image_id}_green.png").write_bytes(b"")
    res = invoke("data", "check", str(root), "--skip-bad", ok=False)
    assert res.exit_code == 1 and "no usable training images" in res.output
