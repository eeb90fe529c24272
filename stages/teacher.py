"""The teacher stage: load the user's teacher, load the packaged default, or train one, then record
its accuracy and size like any other stage.

``python -m stages.teacher`` rebuilds the packaged default teacher (ResNet-14, width 1.0, on the default
mnist split) with this stage's own code and writes it, with the split and settings it used, to
compress/weights/; ``python -m stages.teacher --text`` does the same for the text default (BERT 4 x 256 on
the default bbc-news split, a folder with teacher.safetensors, tokenizer.json and meta.json).

Text data (``data.kind == "text"``): ``teacher.path`` is a Hugging Face ``save_pretrained`` folder (its
tokenizer.json re-encodes the data), else the packaged text teacher when it matches the split, else a BERT
is trained here; the run's tokenizer.json is written beside the teacher."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from compress import text_run
from compress.checkpoint import load_model, save_model
from compress.data import DataConfig, Dataset
from compress.errors import CompressError
from compress.manifest import StageResult
from compress.metrics import model_stats
from compress.text_models import BertShape, text_train_config
from compress.train import TrainConfig, evaluate, fit, seed_everything
from compress.zoo import ModelSpec, build_model, load_factory_model

SOURCES = ("auto", "pretrained", "train", "file")
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "compress" / "weights"


@dataclass
class TeacherConfig:
    """Where the teacher comes from."""

    source: str = "auto"  # auto: packaged weights when they match data and model, else train; or pretrained, train, file
    model: ModelSpec = field(default_factory=lambda: ModelSpec("resnet", 1.0, 14))  # architecture to train or load
    path: str = ""  # source=file: a compress checkpoint, a TorchScript file, or a state_dict (with factory)
    factory: str = ""  # source=file with a state_dict: 'package.module:function' that builds the model
    trust_pickle: bool = False  # source=file: allow a pickled whole module (unpickling can run arbitrary code)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=12))
    # Text data only (the image fields above are ignored for text, and these for images):
    text_model: BertShape = field(default_factory=BertShape)  # the BERT trained when no teacher is given (4 x 256)
    text_train: TrainConfig = field(default_factory=lambda: text_train_config(epochs=10, lr=1e-3))  # its fine-tune on each text's first window (AdamW, linear schedule)
    # Then, for texts longer than one window (docs/text.md, benchmarks/results/text_windows.md): 2 epochs on every
    # window took the teacher from 95.5% to 97.5% on bbc-news test; random windows from scratch reached 84%.
    text_windows_train: TrainConfig = field(default_factory=lambda: text_train_config(epochs=2, lr=5e-4, windows_per_text=0))  # the fine-tune on windows (0 epochs: none)
    # Measured on bbc-news (benchmarks/results/text_mlm.md): 4 MLM epochs lift test accuracy 0.901 -> 0.955.
    mlm_epochs: int = 4  # masked-LM pre-training epochs on the train texts before the fine-tune (0 = none)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"teacher.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "file" and not self.path:
            raise ValueError("teacher.source = 'file' needs teacher.path (a model file)")


def teacher_inputs(cfg: TeacherConfig, data_cfg: DataConfig) -> dict[str, Path]:
    """The files the teacher is made from: the user's file, or the packaged weights ``auto`` would use."""
    if is_text_source(data_cfg.source):
        return _text_teacher_inputs(cfg, data_cfg)
    if cfg.source == "file":
        return {"teacher_file": Path(cfg.path)} if Path(cfg.path).is_file() else {}
    if cfg.source in ("auto", "pretrained"):
        weights = pretrained_path(cfg.model, data_cfg)
        return {"pretrained": weights} if weights.is_file() else {}
    return {}


def pretrained_path(spec: ModelSpec, data_cfg: DataConfig) -> Path:
    depth = spec.depth if spec.depth is not None else ""
    return PRETRAINED_DIR / f"{data_cfg.source}_{spec.arch}{depth}_w{spec.width:g}_seed{data_cfg.seed}.pt"


def pretrained_matches(cfg: TeacherConfig, data_cfg: DataConfig) -> bool:
    """Packaged weights are only valid for the exact split they were trained on (else test data leaks)."""
    path = pretrained_path(cfg.model, data_cfg)
    if not path.is_file():
        return False
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    return meta["data"] == _split_identity(data_cfg)


def run(cfg: TeacherConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Load or train the teacher into ``out_dir/teacher.safetensors`` (``teacher.pt`` for TorchScript). ``inputs`` holds the files it is made from
    (``teacher_inputs``), so that a changed file reruns the stage."""
    if text_run.is_text(data):
        return run_text(cfg, data, out_dir)
    data_cfg = data.config
    out_dir.mkdir(parents=True, exist_ok=True)
    source = cfg.source
    if source == "auto":
        source = "pretrained" if pretrained_matches(cfg, data_cfg) else "train"
    metrics: dict = {"source": source}
    if source == "file":
        model = load_factory_model(cfg.factory, cfg.path) if cfg.factory else load_model(cfg.path, cfg.trust_pickle)
        _check_shapes(model, data)
        if not isinstance(model, torch.jit.ScriptModule) and getattr(model, "compress_spec", None) is None:
            # A trusted pickled module: compress cannot rebuild it from a spec, so it travels as traced TorchScript.
            model = torch.jit.trace(model.eval(), torch.from_numpy(data.val.x[:2]), check_trace=False)
            metrics["saved_as"] = "TorchScript (traced from the trusted pickled module)"
    elif source == "pretrained":
        model = load_pretrained(cfg.model, data_cfg, data)
        metrics["weights"] = str(pretrained_path(cfg.model, data_cfg).name)
    else:
        model, result = train_teacher(cfg, data)
        metrics.update({"best_epoch": result.best_epoch, "train_s": round(result.wall_s, 2), "history": result.history})
    metrics.update({"val_accuracy": evaluate(model, data.val), "test_accuracy": evaluate(model, data.test),
                    **model_stats(model, data.input_shape)})
    path = out_dir / ("teacher.pt" if isinstance(model, torch.jit.ScriptModule) else "teacher.safetensors")
    save_model(model, path)
    return StageResult({"teacher": path}, metrics)


def train_teacher(cfg: TeacherConfig, data: Dataset):
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)

    def loss_fn(x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return model, fit(model, data, cfg.train, loss_fn, "teacher")


def load_pretrained(spec: ModelSpec, data_cfg: DataConfig, data: Dataset) -> torch.nn.Module:
    path = pretrained_path(spec, data_cfg)
    if not path.is_file():
        raise CompressError(f"no packaged teacher for {data_cfg.source} / {spec.arch} width {spec.width:g}: "
                            "set teacher.source = 'train' (or 'auto')")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint["meta"]["data"] != _split_identity(data_cfg):
        raise CompressError(f"the packaged teacher was trained on split {checkpoint['meta']['data']}, not this one: "
                            "set teacher.source = 'train' (or 'auto')")
    model = build_model(spec, data.input_shape, data.num_classes)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def save_pretrained(model: torch.nn.Module, spec: ModelSpec, data_cfg: DataConfig, train_cfg: TrainConfig) -> Path:
    """Write packaged weights with what they were trained on (used by ``python -m stages.teacher``)."""
    from compress.fsutil import atomic_path

    path = pretrained_path(spec, data_cfg)
    meta = {"data": _split_identity(data_cfg), "model": asdict(spec), "train": asdict(train_cfg)}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    return path


def _split_identity(data_cfg: DataConfig) -> dict:
    return {"source": data_cfg.source, "seed": data_cfg.seed, "val_fraction": data_cfg.val_fraction,
            "test_fraction": data_cfg.test_fraction, "normalize": data_cfg.normalize}


def _check_shapes(model: torch.nn.Module, data: Dataset) -> None:
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(data.val.x[:2]))
    except RuntimeError as exc:
        raise CompressError(f"the teacher cannot take inputs of shape {tuple(data.val.x[:2].shape)}: {str(exc).splitlines()[0]}") from exc
    if logits.dim() != 2 or logits.shape[1] != data.num_classes:
        raise CompressError(f"the teacher outputs shape {tuple(logits.shape)}, expected (batch, {data.num_classes}) for this dataset")


def rebuild_packaged_teacher() -> None:
    from compress.data import load_dataset

    torch.set_num_threads(2)
    data_cfg, teacher_cfg = DataConfig(), TeacherConfig(source="train")
    data = load_dataset(data_cfg)
    model, result = train_teacher(teacher_cfg, data)
    path = save_pretrained(model, teacher_cfg.model, data_cfg, teacher_cfg.train)
    print(f"wrote {path}: val accuracy {result.best_val_accuracy:.4f}, test accuracy {evaluate(model, data.test):.4f}, "
          f"{result.wall_s:.0f} s")


# --- text ---

TEXT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")  # of a save_pretrained folder


def is_text_source(source: str) -> bool:
    from compress.text_data import is_text_source as text_source

    return text_source(source)


def text_pretrained_dir(cfg: TeacherConfig, data_cfg: DataConfig) -> Path:
    shape = cfg.text_model
    return PRETRAINED_DIR / f"{data_cfg.source}_bert{shape.layers}x{shape.hidden}_seed{data_cfg.seed}"


def _text_split_identity(data_cfg: DataConfig) -> dict:
    return {"source": data_cfg.source, "seed": data_cfg.seed, "val_fraction": data_cfg.val_fraction,
            "test_fraction": data_cfg.test_fraction, "max_length": data_cfg.max_length,
            "vocab_size": data_cfg.vocab_size, "tokenizer": data_cfg.tokenizer}


def text_pretrained_matches(cfg: TeacherConfig, data_cfg: DataConfig) -> bool:
    """The packaged text teacher fits only the split, sequence length and tokenizer settings it was trained on,
    and only the BERT shape asked for."""
    import json

    meta_path = text_pretrained_dir(cfg, data_cfg) / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta["data"] == _text_split_identity(data_cfg) and meta["model"] == asdict(cfg.text_model)


def _text_source(cfg: TeacherConfig, data_cfg: DataConfig) -> str:
    if cfg.source == "auto":
        return "pretrained" if text_pretrained_matches(cfg, data_cfg) else "train"
    return cfg.source


def _text_teacher_inputs(cfg: TeacherConfig, data_cfg: DataConfig) -> dict[str, Path]:
    source = _text_source(cfg, data_cfg)
    if source == "file":
        folder = Path(cfg.path)
        if not folder.is_dir():
            return {"teacher_file": folder} if folder.is_file() else {}
        return {f"teacher_{name}": folder / name for name in TEXT_FILES if (folder / name).is_file()}
    if source == "pretrained":
        folder = text_pretrained_dir(cfg, data_cfg)
        return {"pretrained": folder / "teacher.safetensors", "pretrained_tokenizer": folder / "tokenizer.json"} \
            if (folder / "teacher.safetensors").is_file() else {}
    return {}


def teacher_data(cfg: TeacherConfig, data: Dataset) -> Dataset:
    """The run's data, encoded by the tokenizer the teacher brings (a user's folder or the packaged teacher):
    every stage after the teacher must feed the ids it was trained on. Image data is returned unchanged."""
    if not text_run.is_text(data):
        return data
    source = _text_source(cfg, data.config)
    if source == "file":
        from compress.text_models import teacher_tokenizer

        path = Path(cfg.path)
        if path.is_dir():
            teacher_tokenizer(path)  # a folder without tokenizer.json is refused here, with the fix
        return text_run.with_tokenizer_of(data, path)
    if source == "pretrained":
        return text_run.with_tokenizer_of(data, text_pretrained_dir(cfg, data.config))
    return data


def run_text(cfg: TeacherConfig, data: Dataset, out_dir: Path) -> StageResult:
    from compress.text_models import check_inputs, load_hf_classifier
    from compress.text_models import train_teacher as train_text_teacher

    out_dir.mkdir(parents=True, exist_ok=True)
    source = _text_source(cfg, data.config)
    data = teacher_data(cfg, data)
    metrics: dict = {"source": source}
    if source == "file":
        path = Path(cfg.path)
        if path.is_dir():
            model = load_hf_classifier(path)
        else:
            model = load_model(path)
            if getattr(model, "compress_spec", {}).get("builder") != "hf":
                raise CompressError(f"teacher {path} is not a text classifier: give a save_pretrained folder")
        metrics["path"] = str(path)
    elif source == "pretrained":
        folder = text_pretrained_dir(cfg, data.config)
        if not text_pretrained_matches(cfg, data.config):
            raise CompressError(f"no packaged text teacher for this split and shape ({folder.name}): set "
                                "teacher.source = 'train' (or 'auto')")
        model = load_model(folder / "teacher.safetensors")
        metrics["weights"] = folder.name
    else:
        model, result = train_text_teacher(data, cfg.text_model, cfg.text_train, cfg.mlm_epochs,
                                          windows_train=cfg.text_windows_train)
        metrics.update({"best_epoch": result.best_epoch, "train_s": round(result.wall_s, 2), "history": result.history})
    check_inputs(model, data)
    metrics.update({"val_accuracy": evaluate(model, data.val), "test_accuracy": evaluate(model, data.test),
                    **model_stats(model, data.input_shape)})
    path = out_dir / "teacher.safetensors"
    save_model(model.eval(), path)
    return StageResult({"teacher": path, "tokenizer": text_run.write_tokenizer(data, out_dir)}, metrics)


def save_text_pretrained(model: torch.nn.Module, cfg: TeacherConfig, data: Dataset, notes: dict) -> Path:
    """Write a packaged text teacher (weights, the tokenizer it was trained with, and what it was trained on)."""
    import json

    from compress.fsutil import write_text

    folder = text_pretrained_dir(cfg, data.config)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / "teacher.safetensors")
    text_run.write_tokenizer(data, folder)
    meta = {"data": _text_split_identity(data.config), "model": asdict(cfg.text_model), "train": asdict(cfg.text_train),
            "windows_train": asdict(cfg.text_windows_train), "mlm_epochs": cfg.mlm_epochs, **notes}
    write_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def rebuild_packaged_text_teacher() -> None:
    from compress.data import load_dataset
    from compress.text_data import tfidf_baseline
    from compress.text_models import train_teacher as train_text_teacher

    torch.set_num_threads(2)
    data_cfg, cfg = DataConfig(source="bbc-news"), TeacherConfig(source="train")
    data = load_dataset(data_cfg)
    model, result = train_text_teacher(data, cfg.text_model, cfg.text_train, cfg.mlm_epochs,
                                          windows_train=cfg.text_windows_train)
    test_accuracy, baseline = evaluate(model, data.test), tfidf_baseline(data)["accuracy"]
    folder = save_text_pretrained(model, cfg, data, {
        "val_accuracy": result.best_val_accuracy, "test_accuracy": test_accuracy, "tfidf_test_accuracy": baseline,
        "train_s": round(result.wall_s, 1), "command": "python -m stages.teacher --text",
        "max_windows": data_cfg.max_windows, "train_windows": len(data.train), "test_windows": len(data.test)})
    print(f"wrote {folder}: val accuracy {result.best_val_accuracy:.4f}, test accuracy {test_accuracy:.4f} "
          f"(TF-IDF + LR {baseline:.4f}), {result.wall_s:.0f} s")


if __name__ == "__main__":
    import sys

    rebuild_packaged_text_teacher() if "--text" in sys.argv[1:] else rebuild_packaged_teacher()
