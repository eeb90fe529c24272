"""Checkpoints that carry no code: an architecture spec plus a safetensors state_dict.

A model compress builds carries its spec (``model.compress_spec``: a zoo architecture with its input
shape and class count, the user's ``package.module:function`` factory, or a Hugging Face text
classifier's config). ``save_model`` writes one
``.safetensors`` file holding the weights and, in its header, the spec and the model's *structure*:
every module attribute and tensor shape that differs from a freshly built model of that spec (what
structured pruning changed: channel counts, head counts, removed blocks). ``load_model`` rebuilds the
spec, applies the structure and loads the weights: loading never unpickles anything.

Inputs from users are also accepted: TorchScript files (their code is TorchScript, not Python), and
``torch.save`` state_dicts (read with ``weights_only=True``) next to a factory. A pickled whole module
can run arbitrary code when loaded, so it is read only with an explicit opt-in (``--trust-pickle``,
``teacher.trust_pickle``)."""
from __future__ import annotations

import contextlib
import contextvars
import json
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from compress.errors import CompressError, first_line
from compress.fsutil import atomic_path

FORMAT = "compress.checkpoint/1"
PICKLE_RISK = "unpickling it can run arbitrary code"
CONVERT_HINT = ("save its weights with torch.save(model.state_dict(), 'weights.pt') and pass a factory that builds the "
                "model (teacher.factory = 'package.module:function'), or, only if you trust the file, pass --trust-pickle "
                "(teacher.trust_pickle = true)")

_TRUSTED: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar("trusted_pickles", default=frozenset())


@contextlib.contextmanager
def trusting_pickles(paths) -> Iterator[None]:
    """Inside the block, ``load_model`` may unpickle these files (the user's explicit opt-in)."""
    token = _TRUSTED.set(_TRUSTED.get() | {Path(p).resolve() for p in paths})
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` as a compress checkpoint (or a TorchScript file, for TorchScript models)."""
    with atomic_path(path) as tmp:
        if isinstance(model, torch.jit.ScriptModule):
            # Through a file object: torch.jit.save names the archive's root folder after a path it is given (here
            # a random temporary name), which would make identical models hash differently.
            with open(tmp, "wb") as handle:
                torch.jit.save(model, handle)
            return
        spec = getattr(model, "compress_spec", None)
        if spec is None:
            raise CompressError(f"cannot save {type(model).__name__} to {path}: compress does not know how to rebuild it; "
                                "build it from the zoo, or pass a factory (teacher.factory = 'package.module:function')")
        structure = model_structure(model, build_from_spec(spec))
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        # One metadata key: safetensors writes a metadata map in no fixed order, and identical models must give
        # identical bytes (stage fingerprints hash the files).
        header = json.dumps({"format": FORMAT, "spec": spec, "structure": structure}, sort_keys=True)
        save_file(_untied(state), str(tmp), metadata={"compress": header})


def load_model(path: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Load a compress checkpoint, a TorchScript file, or (with ``trust_pickle`` or inside
    ``trusting_pickles``) a pickled whole module; always in eval mode on CPU."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"file not found: {path}")
    metadata = safetensors_metadata(path)
    if metadata is not None:
        return _load_checkpoint(path, metadata).eval()
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still supported
                return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises many types for a broken archive
            raise CompressError(f"{path} is not a valid TorchScript file ({first_line(exc)})") from exc
    return _load_torch_file(path, trust_pickle or path.resolve() in _TRUSTED.get()).eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.safetensors`` file or a ``torch.save`` file, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"file not found: {path}")
    if safetensors_metadata(path) is not None or path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CompressError(f"cannot read {path} as safetensors ({first_line(exc)})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a bad zip/pickle, or a whole pickled model, which weights_only refuses
        if not zipfile.is_zipfile(path):
            reason = "it is not a file written by torch.save"
        elif "weights only load failed" in str(exc).lower():
            reason = f"it holds Python objects besides tensors, e.g. a whole pickled model; {PICKLE_RISK}"
        else:
            reason = first_line(exc, 200)
        raise CompressError(f"cannot read {path} as a state_dict ({reason}): save it with "
                            "torch.save(model.state_dict(), path)") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CompressError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors: save it "
                            "with torch.save(model.state_dict(), path)")
    return state


def build_from_spec(spec: dict) -> nn.Module:
    """A freshly initialised model of ``spec`` (the zoo's or a factory's)."""
    from compress import zoo

    builder = spec.get("builder")
    if builder == "zoo":
        return zoo.build_model(zoo.ModelSpec(**spec["model"]), tuple(spec["input_shape"]), spec["num_classes"])
    if builder == "factory":
        return zoo.call_factory(spec["factory"])
    if builder == "hf":  # a Hugging Face sequence classifier: its config dict (see compress.text_models)
        from compress.text_models import build_classifier

        return build_classifier(spec["config"])
    raise CompressError(f"unknown model builder {builder!r} in a checkpoint: it was made by another version of compress; "
                        "re-run the stage that made it")


def model_structure(model: nn.Module, fresh: nn.Module) -> dict:
    """What differs between ``model`` and ``fresh`` (built from the same spec): modules ``fresh`` has and
    ``model`` dropped, plain attributes with other values, and tensors of other shapes."""
    modules, fresh_modules = dict(model.named_modules()), dict(fresh.named_modules())
    extra = [name for name in modules if name not in fresh_modules]
    if extra:
        raise CompressError(f"cannot save the model: it has module {extra[0]!r}, which its spec does not build; "
                            "build models from the zoo or a factory")
    removed = [name for name in fresh_modules if name not in modules and name.rsplit(".", 1)[0] in modules]
    attributes = {}
    for name, module in modules.items():
        changed = {key: value for key, value in _plain_attributes(module).items()
                   if _plain_attributes(fresh_modules[name]).get(key, _MISSING) != value}
        if changed:
            attributes[name] = changed
    fresh_state = fresh.state_dict()
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()
              if key not in fresh_state or fresh_state[key].shape != value.shape}
    return {"removed": removed, "attributes": attributes, "shapes": shapes}


def apply_structure(model: nn.Module, structure: dict) -> None:
    """Reshape a freshly built model into the saved structure (the inverse of ``model_structure``)."""
    for name in sorted(structure.get("removed", []), key=lambda n: -n.count(".")):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if child in parent._modules:
            del parent._modules[child]  # works for nn.Sequential's numbered children too
    for name, attributes in structure.get("attributes", {}).items():
        module = model.get_submodule(name) if name else model
        for key, value in attributes.items():
            setattr(module, key, tuple(value) if isinstance(getattr(module, key, None), tuple) else value)
    for key, shape in structure.get("shapes", {}).items():
        module_name, _, tensor_name = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if tensor_name in module._parameters:
            module._parameters[tensor_name] = nn.Parameter(torch.empty(shape),
                                                           requires_grad=module._parameters[tensor_name].requires_grad)
        elif tensor_name in module._buffers:
            module._buffers[tensor_name] = torch.empty(shape, dtype=module._buffers[tensor_name].dtype)
        else:
            raise CompressError(f"checkpoint tensor {key!r} belongs to no parameter or buffer of the rebuilt model: "
                                "it was made by another version of compress; re-run the stage that made it")


def safetensors_metadata(path: Path) -> dict | None:
    """The header metadata of a compress safetensors checkpoint, or None when ``path`` is not one."""
    try:
        with open(path, "rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                return None
            (size,) = struct.unpack("<Q", size_bytes)
            if size > 100 << 20:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or "compress" not in metadata:
        return None
    try:
        content = json.loads(metadata["compress"])
    except ValueError:
        return None
    return content if isinstance(content, dict) and content.get("format") == FORMAT else None


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry the model's code in a code/ folder; torch.save archives do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_checkpoint(path: Path, metadata: dict) -> nn.Module:
    try:
        spec, structure = metadata["spec"], metadata["structure"]
        state = load_file(str(path))
    except (KeyError, ValueError, SafetensorError, OSError) as exc:
        raise CompressError(f"{path} is a damaged compress checkpoint ({first_line(exc)}): re-run the stage that made it") from exc
    model = build_from_spec(spec)
    apply_structure(model, structure)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressError(f"{path} does not match the model its spec builds ({first_line(exc)}): re-run the stage "
                            "that made it") from exc
    model.compress_spec = spec
    return model


def _load_torch_file(path: Path, trust_pickle: bool) -> nn.Module:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled objects; other errors mean a broken file
        if not zipfile.is_zipfile(path):
            raise CompressError(f"{path} is not a model file compress can read ({first_line(exc)}): give a compress "
                                "checkpoint (.safetensors), a TorchScript file, or a state_dict with a factory") from exc
        if "weights only load failed" not in str(exc).lower():
            raise CompressError(f"{path} is not a model file compress can read ({first_line(exc)})") from exc
        if not trust_pickle:
            raise CompressError(f"{path} holds a pickled Python object (a whole module, or a checkpoint of an older "
                                f"compress), and {PICKLE_RISK}: refused. To use it, {CONVERT_HINT}") from None
        return _unpickle_trusted(path)
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CompressError(f"{path} is a state_dict (weights only): pass the factory that builds its model "
                            "(teacher.factory = 'package.module:function')")
    if isinstance(content, nn.Module):
        return content
    raise CompressError(f"{path} holds a {type(content).__name__}, not a model: give a compress checkpoint, a "
                        "TorchScript file, or a state_dict with a factory")


def _unpickle_trusted(path: Path) -> nn.Module:
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # whatever the pickle raises
        raise CompressError(f"cannot unpickle {path} ({first_line(exc)})") from exc
    if not isinstance(model, nn.Module):
        raise CompressError(f"{path} holds a {type(model).__name__}, not a model")
    return model


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): store each as its own copy."""
    seen, result = set(), {}
    for key, value in state.items():
        pointer = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        result[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return result


_MISSING = object()
_PLAIN = (int, float, bool, str)


def _plain_attributes(module: nn.Module) -> dict:
    """A module's configuration: its public attributes that are numbers, strings or tuples/lists of them."""
    result = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in ("training", "compress_spec"):
            continue
        if isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value)):
            result[key] = list(value) if isinstance(value, tuple) else value
    return result
