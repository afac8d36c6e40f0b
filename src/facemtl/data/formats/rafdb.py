"""RAF-DB basic emotions (Li et al., CVPR 2017), relabelled to FER2013's order.

Layout: ``EmoLabel/list_patition_label.txt`` (sic; ``list_partition_label.txt`` also accepted)
with lines ``train_00001.jpg 5``; images ``Image/aligned/<stem>_aligned.jpg`` (default) or
``Image/original/<name>`` (``aligned=False``). Split from the name prefix (train_/test_).

RAF-DB labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral are mapped
to FER2013's 0-based order (0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral):
1->5, 2->2, 3->1, 4->3, 5->4, 6->0, 7->6 (``RAF_TO_FER``). ``meta["raf_label"]`` keeps the original.
"""

from __future__ import annotations

from pathlib import Path

from facemtl.data.formats.common import (
    LazyDataset,
    annotation_lines,
    check_split,
    find_first,
    inside_root,
    line_error,
    need_dir,
    parse_int,
    split_existing,
)
from facemtl.data.images import read_image

DOWNLOAD = "RAF-DB basic (basic/EmoLabel, basic/Image)"
RAF_TO_FER = {1: 5, 2: 2, 3: 1, 4: 3, 5: 4, 6: 0, 7: 6}


def load(root, split: str = "train", aligned: bool = True, strict: bool = False, check_files: bool = True):
    """RAF-DB basic faces of ``split`` (train/test) as a lazy sequence of raw samples."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, ("train", "test"), "rafdb")
    ann = find_first(root, ("EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt"), DOWNLOAD)
    img_dir = find_first(root, ("Image/aligned",) if aligned else ("Image/original",), DOWNLOAD, kind="dir")
    records = []
    for lineno, line, fields in annotation_lines(ann):
        if len(fields) != 2:
            raise line_error(ann, lineno, "'<image name> <label 1..7>'", line)
        name = fields[0]
        label = parse_int(fields[1], ann, lineno, line, "label", 1, 7, at="in field 2")
        prefix = name.split("_", 1)[0]
        if prefix not in ("train", "test"):
            raise line_error(ann, lineno, "an image name starting with train_ or test_", line)
        if prefix != split:
            continue
        stem = name.rsplit(".", 1)[0]
        file = f"{stem}_aligned.jpg" if aligned else name
        inside_root(img_dir, file, ann, lineno)
        records.append({"file": file, "raf": label})
    records, missing = split_existing(records, lambda r: img_dir / r["file"], check_files)

    def read(r):
        return {"image": read_image(img_dir / r["file"]), "emotion": RAF_TO_FER[r["raf"]],
                "meta": {"dataset": "rafdb", "path": str(img_dir / r["file"]), "id": r["file"], "raf_label": r["raf"]}}

    return LazyDataset(f"rafdb/{split}", records, read, strict, missing)
