"""Write synthetic faces in real datasets' on-disk formats (MTFL, Helen, emotion folders).

Layouts written, as ``docs/datasets.md`` describes the real ones (``out`` is created; it must
be new or an empty folder):

* ``mtfl``: ``lfw_5590/synth_<index>.jpg`` (training) and ``AFLW/synth_<index>.jpg`` (testing),
  ``training.txt`` (first 80%, Windows backslash paths ``lfw_5590\\synth_000000.jpg``) and
  ``testing.txt`` (the rest, forward slashes). Line: ``path x1 .. x5 y1 .. y5 gender smile
  glasses pose`` with 1-based (Matlab) coordinates and 1-based attributes, as the real files.
* ``helen``: ``images/<name>.jpg``, ``labels/<name>/<name>_lbl00.png .. _lbl10.png`` (8-bit,
  255 inside the class, PNG so masks stay exact), and ``exemplars.txt`` / ``tuning.txt`` /
  ``testing.txt`` with lines ``<k> , <name>``; ``name = synth_<index>`` (6 digits).
  Split: 5% testing, 10% tuning (each at least 1 once N >= 3), the rest exemplars.
* ``emotion-folder``: ``<EmotionName>/S<subject:03d>_<index:05d>.png``, one folder per FER2013
  class name (Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral); the subject id is the
  ``S...`` prefix before the underscore (several images share one subject).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facemtl.data.synth import EMOTIONS, render_face
from facemtl.errors import FacemtlError

FORMATS: tuple[str, ...] = ("mtfl", "helen", "emotion-folder")


def prepare_out(out: Path) -> Path:
    """Create ``out`` (a new or empty folder) or raise FacemtlError saying why it cannot be used."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FacemtlError(f"output path {out} is an existing file; expected a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise FacemtlError(f"output folder {out} is not empty; choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".facemtl_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FacemtlError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return out


def _write(path: Path, rgb_or_grey: np.ndarray, jpeg_quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), img, params):
        raise FacemtlError(f"could not write image {path}")


def _mtfl_line(path: str, s: dict) -> str:
    lm = s["landmarks"].astype(np.float64) + 1.0  # Matlab-style 1-based
    xs = " ".join(f"{v:.3f}" for v in lm[:, 0])
    ys = " ".join(f"{v:.3f}" for v in lm[:, 1])
    return f"{path} {xs} {ys} {s['gender'] + 1} {s['smile'] + 1} {s['glasses'] + 1} {s['pose'] + 1}\n"


def export(fmt: str, out, n: int, style: str = "studio", seed: int = 0, size: int = 128,
           progress: bool = True) -> int:
    """Render faces ``0..n-1`` of ``(seed, style, size)`` into ``out`` in format ``fmt``; returns n."""
    if fmt not in FORMATS:
        raise FacemtlError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if int(n) < 1:
        raise FacemtlError(f"--n must be >= 1, got {n}")
    render_face(seed, 0, style, size)  # validates style/size/seed before touching the disk
    out = prepare_out(Path(out))
    n = int(n)
    bar = tqdm(range(n), desc=f"synth {fmt}", unit="face", disable=not progress)
    if fmt == "mtfl":
        n_train = n - n // 5
        with open(out / "training.txt", "w", newline="\n") as train, open(out / "testing.txt", "w", newline="\n") as test:
            for i in bar:
                s = render_face(seed, i, style, size)
                name = f"synth_{i:06d}.jpg"
                if i < n_train:
                    _write(out / "lfw_5590" / name, s["image"])
                    train.write(_mtfl_line(f"lfw_5590\\{name}", s))
                else:
                    _write(out / "AFLW" / name, s["image"])
                    test.write(_mtfl_line(f"AFLW/{name}", s))
    elif fmt == "helen":
        n_test = max(1, n // 20) if n >= 3 else 0
        n_tune = max(1, n // 10) if n >= 3 else 0
        lists = {"exemplars.txt": [], "tuning.txt": [], "testing.txt": []}
        for i in bar:
            s = render_face(seed, i, style, size)
            name = f"synth_{i:06d}"
            _write(out / "images" / f"{name}.jpg", s["image"])
            for c in range(11):
                _write(out / "labels" / name / f"{name}_lbl{c:02d}.png", np.where(s["parsing"] == c, 255, 0).astype(np.uint8))
            key = "testing.txt" if i >= n - n_test else "tuning.txt" if i >= n - n_test - n_tune else "exemplars.txt"
            lists[key].append(name)
        for fname, names in lists.items():
            with open(out / fname, "w", newline="\n") as f:
                f.writelines(f"{k} , {name}\n" for k, name in enumerate(names, 1))
    else:
        for name in EMOTIONS:
            (out / name).mkdir(exist_ok=True)
        for i in bar:
            s = render_face(seed, i, style, size)
            _write(out / EMOTIONS[s["emotion"]] / f"S{s['meta']['subject']:03d}_{i:05d}.png", s["image"])
    return n
