"""The teacher stage: load the user's teacher, load the packaged default, or train one, then record
its accuracy and size like any other stage.

``python -m stages.teacher`` rebuilds the packaged default teacher (ResNet-14, width 1.0, on the default
mnist split) with this stage's own code and writes it, with the split and settings it used, to
compress/weights/."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.checkpoint import load_model, save_model
from compress.data import DataConfig, Dataset
from compress.errors import CompressError
from compress.manifest import StageResult
from compress.metrics import model_stats
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

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"teacher.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "file" and not self.path:
            raise ValueError("teacher.source = 'file' needs teacher.path (a model file)")


def teacher_inputs(cfg: TeacherConfig, data_cfg: DataConfig) -> dict[str, Path]:
    """The files the teacher is made from: the user's file, or the packaged weights ``auto`` would use."""
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


if __name__ == "__main__":
    rebuild_packaged_teacher()
