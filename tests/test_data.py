"""compress/data.py: deterministic stratified splits, train-only normalization, image folders and .npz files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from compress.data import DataConfig, load_dataset, stratified_split
from compress.errors import CompressError


def _labels(counts):
    return np.concatenate([np.full(n, label) for label, n in enumerate(counts)])


def test_split_is_deterministic_for_a_seed():
    y = _labels([50, 80, 30])
    first, again = stratified_split(y, 0.1, 0.2, seed=7), stratified_split(y, 0.1, 0.2, seed=7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = stratified_split(y, 0.1, 0.2, seed=8)
    assert not np.array_equal(first[2], other[2])


def test_split_is_a_stratified_partition():
    counts = [50, 80, 30]
    y = _labels(counts)
    train, val, test = stratified_split(y, 0.1, 0.2, seed=0)
    everything = np.concatenate([train, val, test])
    assert len(everything) == len(y) and len(np.unique(everything)) == len(y)  # disjoint and complete
    for label, n in enumerate(counts):  # every class keeps its share in every split
        assert (y[test] == label).sum() == round(n * 0.2)
        assert (y[val] == label).sum() == round(n * 0.1)
        assert (y[train] == label).sum() == n - round(n * 0.2) - round(n * 0.1)


def test_tiny_class_cannot_be_split():
    with pytest.raises(CompressError, match="class 1 has only 2 samples"):
        stratified_split(_labels([10, 2]), 0.1, 0.1, seed=0)


def test_digits_split_sizes_and_balance(digits):
    assert digits.name == "digits" and digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    per_class = np.bincount(digits.test.y, minlength=10)
    assert per_class.min() >= 17 and per_class.max() <= 19  # about 10% of each class's ~180 samples
    assert digits.train.x.dtype == np.float32 and digits.train.y.dtype == np.int64


def test_same_seed_same_data_and_another_seed_another_split():
    a, b = load_dataset(DataConfig(source="digits", seed=5)), load_dataset(DataConfig(source="digits", seed=5))
    np.testing.assert_array_equal(a.test.x, b.test.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    c = load_dataset(DataConfig(source="digits", seed=6))
    assert not np.array_equal(a.test.x, c.test.x)


def test_normalization_statistics_come_from_the_train_split_only(digits):
    raw = load_dataset(DataConfig(source="digits", normalize=False))
    np.testing.assert_allclose(digits.mean, [raw.train.x.mean()], rtol=1e-5)
    np.testing.assert_allclose(digits.std, [raw.train.x.std()], rtol=1e-5)
    all_raw = np.concatenate([raw.train.x, raw.val.x, raw.test.x])
    assert abs(all_raw.mean() - raw.train.x.mean()) > 1e-5  # so the check above can tell the two apart
    # The same statistics are applied to every split and recorded for apps (preprocessing metadata).
    np.testing.assert_allclose(digits.test.x, (raw.test.x - digits.mean[0]) / digits.std[0], atol=1e-5)
    assert abs(float(digits.train.x.mean())) < 1e-4 and abs(float(digits.train.x.std()) - 1) < 1e-3
    pre = digits.preprocessing()
    assert pre["mean"] == digits.mean and pre["std"] == digits.std and pre["pixel_scale"] == 16.0
    assert pre["layout"] == "NCHW" and pre["input_shape"] == [1, 8, 8]


def _image_folder(root, classes=("cat", "dog", "owl"), per_class=6, size=(10, 12), mode="L"):
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 60, shape) + 60 * label  # each class has its own brightness
            Image.fromarray(pixels.astype(np.uint8), mode=mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_grayscale(tmp_path):
    data = load_dataset(DataConfig(source=str(_image_folder(tmp_path / "pets")), val_fraction=0.2, test_fraction=0.2))
    assert data.name == "pets" and data.class_names == ["cat", "dog", "owl"]
    assert data.input_shape == (1, 12, 10)  # C, H, W of 10-wide, 12-high images
    assert len(data.train) + len(data.val) + len(data.test) == 18
    assert sorted(np.bincount(data.test.y, minlength=3)) == [1, 1, 1]
    assert data.pixel_scale == 255.0 and len(data.mean) == 1


def test_image_folder_rgb_and_resize(tmp_path):
    root = _image_folder(tmp_path / "rgb", mode="RGB")
    data = load_dataset(DataConfig(source=str(root), image_size=6, val_fraction=0.2, test_fraction=0.2))
    assert data.input_shape == (3, 6, 6) and len(data.mean) == 3 and len(data.std) == 3


def test_image_folder_with_mixed_sizes_needs_image_size(tmp_path):
    root = _image_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((20, 20), np.uint8), mode="L").save(root / "cat" / "big.png")
    with pytest.raises(CompressError, match="mixed sizes .* set data.image_size"):
        load_dataset(DataConfig(source=str(root)))
    data = load_dataset(DataConfig(source=str(root), image_size=8, val_fraction=0.2, test_fraction=0.2))
    assert data.input_shape == (1, 8, 8) and len(data.train) + len(data.val) + len(data.test) == 19


def test_npz_images_in_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    nhw = rng.integers(0, 255, (30, 9, 9)).astype(np.uint8)
    np.savez(tmp_path / "nhw.npz", x=nhw, y=y)
    np.savez(tmp_path / "nhwc.npz", x=rng.random((30, 9, 9, 3)).astype(np.float32), y=y)
    np.savez(tmp_path / "nchw.npz", x=rng.random((30, 3, 9, 9)).astype(np.float32), y=y,
             class_names=np.array(["a", "b", "c"]))
    gray = load_dataset(DataConfig(source=str(tmp_path / "nhw.npz"), val_fraction=0.2, test_fraction=0.2))
    assert gray.name == "nhw" and gray.input_shape == (1, 9, 9) and gray.pixel_scale == 255.0
    assert gray.class_names == ["0", "1", "2"] and sorted(np.bincount(gray.test.y)) == [2, 2, 2]
    assert load_dataset(DataConfig(source=str(tmp_path / "nhwc.npz"))).input_shape == (3, 9, 9)
    named = load_dataset(DataConfig(source=str(tmp_path / "nchw.npz")))
    assert named.input_shape == (3, 9, 9) and named.class_names == ["a", "b", "c"] and named.pixel_scale == 1.0


def test_npz_feature_rows(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "rows.npz", x=rng.normal(5.0, 2.0, (40, 6)), y=np.repeat([0, 1], 20))
    data = load_dataset(DataConfig(source=str(tmp_path / "rows.npz")))
    assert data.input_shape == (6,) and data.preprocessing()["layout"] == "ND"
    assert data.train.x.dtype == np.float32 and abs(float(data.train.x.mean())) < 1e-5


def test_npz_needs_x_and_y(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 2)))
    with pytest.raises(CompressError, match=r"lacks array\(s\) x, y"):
        load_dataset(DataConfig(source=str(tmp_path / "bad.npz")))


def test_unknown_and_missing_sources(tmp_path):
    with pytest.raises(CompressError, match="unknown dataset 'cifar': use one of mnist, digits"):
        load_dataset(DataConfig(source="cifar"))
    with pytest.raises(CompressError, match="dataset not found"):
        load_dataset(DataConfig(source=str(tmp_path / "missing.npz")))
