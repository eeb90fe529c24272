"""Image data that stays on disk: decoded, resized, cropped and normalized one batch at a time.

``LazyImages`` is an array-like (``len``, ``shape``, ``dtype``, ``ndim``, indexing by an int, a slice
or an index array) over either the files of an image folder or the rows of an uncompressed ``.npz``
member mapped into memory. Code that reads ``split.x[idx]`` or ``split.x[i:i + n]`` works on it
unchanged; turning the whole of it into one array (``np.asarray``) is refused, so no code path
silently needs the RAM the data would take decoded.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.errors import CompressError

LAZY_AUTO_BYTES = 1 << 30  # data.lazy=auto streams a source whose decoded float32 size exceeds this
STATS_BATCH = 256  # images per batch while streaming the train-split statistics


@dataclass(frozen=True)
class ImageTransform:
    """What turns one file into a model input: colour mode, short-side resize, centre crop."""

    mode: str  # "L" or "RGB"
    resize: int | None  # short side in pixels; None keeps the file's size
    crop: int | None  # centre square crop in pixels; None keeps the resized image whole


def decode_image(file: Path, transform: ImageTransform) -> np.ndarray:
    """One image file -> (C, H, W) float32 in 0..255; an unreadable file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            image = img.convert(transform.mode)
    except Image.DecompressionBombError as exc:
        raise CompressError(f"image {file} is too large to decode safely ({exc}): resize it, or remove it "
                            "from the data") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise CompressError(f"cannot read image {file}: {exc}; remove or replace it") from exc
    image = resize_and_crop(image, transform.resize, transform.crop)
    arr = np.asarray(image, dtype=np.float32)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def resize_and_crop(image, resize: int | None, crop: int | None):
    """Short side to ``resize`` (aspect kept; a square image becomes resize x resize), then a centre crop."""
    from PIL import Image

    if resize is not None:
        width, height = image.size
        scale = resize / min(width, height)
        size = (resize, resize) if width == height else (max(resize, round(width * scale)), max(resize, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
    if crop is not None and image.size != (crop, crop):
        width, height = image.size
        if crop > min(width, height):
            raise CompressError(f"data.crop_size {crop} is larger than the resized image ({width}x{height}): "
                                "set data.crop_size <= data.image_size")
        left, top = (width - crop) // 2, (height - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
    return image


def normalize(batch: np.ndarray, pixel_scale: float, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """Raw values -> model inputs; the same float32 operations for in-RAM and streamed data."""
    batch = batch.astype(np.float32) / np.float32(pixel_scale)
    if mean is not None:
        batch = (batch - mean[None, :, None, None]) / std[None, :, None, None]
    return batch.astype(np.float32)


class FileReader:
    """Raw (n, C, H, W) float32 batches decoded from image files."""

    def __init__(self, files: Sequence[Path], transform: ImageTransform, sample_shape: tuple[int, ...]):
        self.files = list(files)
        self.transform = transform
        self.sample_shape = sample_shape

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.sample_shape), np.float32)
        for row, index in enumerate(indices):
            image = decode_image(self.files[int(index)], self.transform)
            if image.shape != self.sample_shape:
                raise CompressError(f"image {self.files[int(index)]} decodes to {image.shape[2]}x{image.shape[1]}, the "
                                    f"others to {self.sample_shape[2]}x{self.sample_shape[1]}: set data.image_size to "
                                    "resize them all to one size")
            out[row] = image
        return out


class ArrayReader:
    """Raw batches from an array on disk (a memory-mapped .npz member), NHWC turned to NCHW per batch."""

    def __init__(self, array: np.ndarray, layout: str):
        self.array = array
        self.layout = layout  # "NCHW", "NHWC", "NHW" or "ND": how the stored rows are laid out

    def __len__(self) -> int:
        return len(self.array)

    def __getstate__(self) -> dict:
        # Pickled for spawned DataLoader workers: a memmap would pickle all of its data; send where it lies instead.
        if isinstance(self.array, np.memmap) and self.array.filename:
            return {"layout": self.layout, "map": (self.array.filename, self.array.offset, self.array.dtype.str,
                                                   self.array.shape, "F" if np.isfortran(self.array) else "C")}
        return {"layout": self.layout, "array": self.array}

    def __setstate__(self, state: dict) -> None:
        self.layout = state["layout"]
        if "map" in state:
            filename, offset, dtype, shape, order = state["map"]
            self.array = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape, order=order)
        else:
            self.array = state["array"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = self.array.shape[1:]
        return {"NHWC": (shape[2], shape[0], shape[1]), "NHW": (1, *shape)}.get(self.layout, shape)

    def read(self, indices: np.ndarray) -> np.ndarray:
        order = np.argsort(indices, kind="stable")  # sorted reads walk the file forwards
        rows = np.empty((len(indices), *self.array.shape[1:]), self.array.dtype)
        rows[order] = self.array[np.asarray(indices)[order]]
        if self.layout == "NHWC":
            rows = rows.transpose(0, 3, 1, 2)
        elif self.layout == "NHW":
            rows = rows[:, None]
        return rows.astype(np.float32)


class LazyImages:
    """The samples ``indices`` of ``reader``, normalized on access. Behaves like a read-only float32 array."""

    dtype = np.dtype(np.float32)

    def __init__(self, reader: FileReader | ArrayReader, indices: np.ndarray, pixel_scale: float,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.pixel_scale = float(pixel_scale)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.reader.sample_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def subset(self, key) -> LazyImages:
        """Another lazy view (nothing decoded): ``key`` is a slice or index array into this one."""
        return LazyImages(self.reader, self.indices[key], self.pixel_scale, self.mean, self.std)

    def with_stats(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> LazyImages:
        return LazyImages(self.reader, self.indices, self.pixel_scale, mean, std)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice) or (isinstance(key, np.ndarray) and key.dtype == np.bool_):
            rows = self.indices[key]
        else:
            key = np.asarray(key)
            if key.dtype.kind not in "iu":
                raise TypeError(f"LazyImages takes an int, a slice or an integer index array, not {type(key).__name__}")
            rows = self.indices[key]
        return normalize(self.reader.read(rows), self.pixel_scale, self.mean, self.std)

    def batches(self, batch_size: int = STATS_BATCH):
        for start in range(0, len(self), batch_size):
            yield self[start:start + batch_size]

    def __array__(self, dtype=None, copy=None):
        raise CompressError(f"refusing to decode all {len(self)} lazily read images into one array "
                            f"({self.nbytes / 2**30:.1f} GiB): read it in batches (x[i:i + n]), or set data.lazy=false")

    def __iter__(self):
        raise TypeError("iterate a LazyImages in batches: for batch in x.batches(n)")


def is_lazy(x) -> bool:
    return isinstance(x, LazyImages)


def rows(x, key):
    """``x[key]`` for an in-RAM array; a lazy view (nothing decoded) for a LazyImages."""
    return x.subset(key) if is_lazy(x) else x[key]


def channel_stats(read: Callable[[np.ndarray], np.ndarray], indices: np.ndarray, pixel_scale: float,
                  batch_size: int = STATS_BATCH) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of samples ``indices`` (raw / pixel_scale) from running float64 sums, one
    batch of ``read(batch_indices)`` at a time: the same numbers for data in RAM and data streamed from disk."""
    total, squares, count = None, None, 0
    for start in range(0, len(indices), batch_size):
        batch = normalize(read(indices[start:start + batch_size]), pixel_scale, None, None)
        if not np.isfinite(batch).all():
            raise CompressError("the train split has NaN or inf values: clean or drop those samples")
        batch = batch.astype(np.float64)
        sums, sq = batch.sum(axis=(0, 2, 3)), np.square(batch).sum(axis=(0, 2, 3))
        total, squares = (sums, sq) if total is None else (total + sums, squares + sq)
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean.astype(np.float32).tolist(), np.maximum(std, 1e-6).astype(np.float32).tolist()


def npz_member(path: Path, name: str) -> tuple[np.ndarray | None, str]:
    """The array ``name`` of an .npz mapped read-only from disk (np.load's mmap_mode does not map .npz
    members), or (None, why) when it is stored compressed and cannot be mapped."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            return None, f"{path} has no member {name}.npy"
        if info.compress_type != zipfile.ZIP_STORED:
            return None, f"{path} stores {name} compressed (np.savez_compressed), which cannot be memory-mapped"
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if local[:4] != b"PK\x03\x04":
            return None, f"{path}: the zip entry of {name} is damaged"
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        handle.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        offset = handle.tell()
    if dtype.hasobject:
        return None, f"{path}: {name} holds Python objects"
    if int(np.prod(shape)) == 0:
        return None, f"{path}: {name} is empty"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"), ""


def note(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"note: {message}")
