"""CelebAMask-HQ (Lee et al., CVPR 2020): 19-class parsing, mapped to Helen's 11 classes.

Layout: ``CelebA-HQ-img/{id}.jpg`` (1024x1024), ``CelebAMask-HQ-mask-anno/{id // 2000}/{id:05d}_{class}.png``
(512x512, only classes present), ``CelebA-HQ-to-CelebA-mapping.txt`` (header line, then
``idx orig_idx orig_file``). Splits come from CelebA's ``list_eval_partition.txt`` (looked for
in ``root`` or given as ``partition_file``) through the mapping's ``orig_file``.

The 19 official classes are painted in class order (later classes win where masks overlap)
into ``parsing19`` (kept in the sample), then mapped to Helen's 11 classes as ``parsing``:

=========  ============  =========================================
19-class   Helen class   why
=========  ============  =========================================
skin       1 skin
nose       6 nose
eye_g      1 skin        glasses lie on the face; the eyes (painted later) stay eyes
l_eye      4 left eye    l/r taken as the same side convention as Helen (unconfirmed)
r_eye      5 right eye
l_brow     2 left brow
r_brow     3 right brow
mouth      8 inner mouth
u_lip      7 upper lip
l_lip      9 lower lip
hair       10 hair
l_ear, r_ear, ear_r, hat, neck_l, neck, cloth -> 0 background (Helen labels none of them)
=========  ============  =========================================

Masks are resized to the image (nearest neighbour) so labels share the image's pixel grid;
``image_size=512`` instead downsizes the image to the mask resolution (faster, area filter).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facemtl.data.formats.common import (
    LazyDataset,
    annotation_lines,
    check_split,
    find_first,
    line_error,
    need_dir,
    need_file,
    split_existing,
)
from facemtl.data.images import read_gray, read_image
from facemtl.errors import FacemtlError

DOWNLOAD = "CelebAMask-HQ (CelebAMask-HQ.zip)"
CLASSES19 = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
             "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
TO_HELEN = np.array([0, 1, 6, 1, 4, 5, 2, 3, 0, 0, 8, 7, 9, 10, 0, 0, 0, 0, 0], np.uint8)
SPLITS = {"train": 0, "val": 1, "test": 2}


def read_mapping(path: Path) -> dict[int, str]:
    out = {}
    for lineno, line, fields in annotation_lines(path):
        if lineno == 1:
            continue  # header
        if len(fields) != 3 or not fields[0].isdigit():
            raise line_error(path, lineno, "'idx orig_idx orig_file'", line)
        out[int(fields[0])] = fields[2]
    return out


def read_partition(path: Path) -> dict[str, int]:
    out = {}
    for lineno, line, fields in annotation_lines(path):
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise line_error(path, lineno, "'<image> <0|1|2>'", line)
        out[fields[0]] = int(fields[1])
    return out


def load(root, split: str = "train", partition_file=None, image_size: int | None = None, strict: bool = False,
         check_files: bool = True):
    """CelebAMask-HQ images of ``split`` (train/val/test/all) with ``parsing`` and ``parsing19``."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, (*SPLITS, "all"), "celebamask-hq")
    images = need_dir(root / "CelebA-HQ-img", DOWNLOAD)
    anno = need_dir(root / "CelebAMask-HQ-mask-anno", DOWNLOAD)
    mapping = read_mapping(need_file(root / "CelebA-HQ-to-CelebA-mapping.txt", DOWNLOAD))
    ids = sorted(mapping)
    if split != "all":
        part_path = (need_file(Path(partition_file), "CelebA (Eval/list_eval_partition.txt)") if partition_file
                     else find_first(root, ("list_eval_partition.txt", "Eval/list_eval_partition.txt"),
                                     "CelebA (Eval/list_eval_partition.txt; or pass partition_file=)"))
        part = read_partition(part_path)
        missing_part = [mapping[i] for i in ids if mapping[i] not in part]
        if missing_part:
            raise FacemtlError(f"{part_path}: no partition for {len(missing_part)} mapped CelebA image(s), "
                               f"e.g. {missing_part[0]}")
        ids = [i for i in ids if part[mapping[i]] == SPLITS[split]]
    ids, missing = split_existing(ids, lambda i: images / f"{i}.jpg", check_files)

    def read(i):
        image = read_image(images / f"{i}.jpg")
        folder = anno / str(i // 2000)
        m19 = None
        for c in range(1, len(CLASSES19)):
            p = folder / f"{i:05d}_{CLASSES19[c]}.png"
            if not p.is_file():
                continue
            m = read_gray(p)
            if m19 is None:
                m19 = np.zeros(m.shape, np.uint8)
            m19[m > 127] = c
        if m19 is None:
            raise FacemtlError(f"no mask files {folder}/{i:05d}_<class>.png for image {i} "
                               f"(official {DOWNLOAD} download)")
        if image_size is not None:
            image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
        if m19.shape != image.shape[:2]:
            m19 = cv2.resize(m19, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return {"image": image, "parsing": TO_HELEN[m19], "parsing19": m19,
                "meta": {"dataset": "celebamask-hq", "path": str(images / f"{i}.jpg"), "id": i,
                         "celeba_file": mapping[i], "classes19": CLASSES19}}

    return LazyDataset(f"celebamask-hq/{split}", ids, read, strict, missing)
