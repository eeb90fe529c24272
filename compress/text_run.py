"""What the stages share for a text run: the tokenizer that travels beside every artifact.

Every text stage writes the run's ``tokenizer.json`` beside its outputs, and a stage given a model re-encodes
the data with the tokenizer found beside that model (a per-stage command may load the data with a freshly
trained tokenizer, or the teacher may bring its own: the model only understands the ids it was trained on)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from compress.data import Dataset

TOKENIZER_FILE = "tokenizer.json"


def is_text(data: Dataset) -> bool:
    return data.kind == "text"


def tokenizer_beside(model_path: Path) -> Path | None:
    """The tokenizer.json in a model file's folder (or in a save_pretrained folder), if there is one."""
    model_path = Path(model_path)
    candidate = (model_path if model_path.is_dir() else model_path.parent) / TOKENIZER_FILE
    return candidate if candidate.is_file() else None


def with_tokenizer_of(data: Dataset, model_path: Path) -> Dataset:
    """``data`` encoded by the tokenizer beside ``model_path`` (unchanged when it is the same one, or there is none)."""
    from compress.text_data import encode_dataset, load_tokenizer

    path = tokenizer_beside(model_path)
    if path is None:
        return data
    tokenizer = load_tokenizer(path)
    if _sha(tokenizer.to_str()) == _sha(data.tokenizer_json):
        return data
    encoded = encode_dataset(data, tokenizer)
    return data if _sha(encoded.tokenizer_json) == _sha(data.tokenizer_json) else encoded


def write_tokenizer(data: Dataset, out_dir: Path) -> Path:
    """The data's tokenizer (with its truncation and padding) as ``out_dir/tokenizer.json``."""
    from compress.text_data import save_tokenizer

    path = Path(out_dir) / TOKENIZER_FILE
    save_tokenizer(data, path)
    return path


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def samples(split, names: list[str] | None = None, count: int | None = None) -> dict:
    """A text split's packed (N, 3, L) array as the named input arrays an ONNX model takes."""
    from compress.text_onnx import TEXT_INPUTS

    x = split.x[:count]
    arrays = {name: x[:, i] for i, name in enumerate(TEXT_INPUTS)}
    return {name: arrays[name] for name in (names or TEXT_INPUTS)}


def export_inputs(model, data: Dataset, count: int | None = None) -> dict:
    """Test samples (real tokenized texts) for the inputs ``model``'s forward takes."""
    from compress.text_onnx import model_input_names

    return samples(data.test, model_input_names(model), count)
