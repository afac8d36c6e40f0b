"""benchmarks/scan_lines.py: the row/column second-difference ratio on hand-computed images,
the per-source grouping and the missing-photo message."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scan_lines as sl  # noqa: E402


def _grid(rows_step: float, cols_step: float, n: int = 40) -> np.ndarray:
    """Alternating rows and columns: |second difference| is 2 * step down / along them."""
    y = (np.arange(n) % 2)[:, None] * rows_step
    x = (np.arange(n) % 2)[None, :] * cols_step
    return 100.0 + y + x


def test_ratio_of_alternating_rows_and_columns():
    # rows alternate by 6, columns by 2: |second differences| 6 across rows, 2 along them
    assert sl.scan_line_ratio(_grid(6.0, 2.0)) == pytest.approx(3.0)
    assert sl.scan_line_ratio(_grid(2.0, 2.0)) == pytest.approx(1.0)
    assert sl.scan_line_ratio(_grid(0.0, 2.0)) == pytest.approx(0.0)


def test_ratio_reads_only_the_middle_half():
    image = _grid(2.0, 2.0)
    image[:10] = 0.0  # the top quarter (and a time stamp there) is cut away
    image[:, 30:] = 255.0
    assert sl.scan_line_ratio(image) == pytest.approx(1.0)


def test_a_ramp_has_no_second_differences_and_does_not_divide_by_zero():
    ramp = np.add.outer(np.arange(40.0), np.arange(40.0))
    assert sl.scan_line_ratio(ramp) == 0.0


def test_photo_ratios_group_by_source(tmp_path):
    for name, step in (("a/x.png", 6.0), ("a/y.png", 2.0), ("b/z.png", 2.0)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        grey = np.clip(_grid(step, 2.0), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / name), cv2.merge([grey, grey, grey]))
    ratios = sl.photo_ratios(tmp_path, ["a/x.png", "a/y.png", "b/z.png", "a/x.png"], "posed_expressions.py")
    assert {k: np.round(v, 6).tolist() for k, v in ratios.items()} == {"a": [3.0, 1.0], "b": [1.0]}


def test_missing_photo_names_the_fetch(tmp_path):
    with pytest.raises(SystemExit, match="run python benchmarks/real_faces.py --fetch"):
        sl.photo_ratios(tmp_path, ["src/none.jpg"], "real_faces.py")
