"""Text classifiers: Hugging Face sequence classifiers behind one small wrapper, a BERT-style teacher
trained here (optionally after a short masked-language-model pre-training), and DistilBERT-style students
initialised from their teacher.

``TextClassifier.forward(input_ids, attention_mask, token_type_ids) -> logits``; it also takes one packed
int64 (B, 3, L) tensor, the form text splits store (see compress.text_data), so compress's training loop,
``predict_logits`` and ``model_stats`` work unchanged. Models are built with eager attention: exported
with SDPA, onnxruntime's transformer optimizer fuses no Attention node.

Checkpoints: ``compress_spec = {"builder": "hf", "config": <config dict>}``; ``checkpoint.save_model`` adds
what pruning changed (head counts, FFN widths) and the weights as safetensors, no pickle."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.data import Dataset
from compress.errors import CompressError, first_line
from compress.train import TrainConfig, TrainResult, seed_everything

BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


@dataclass(frozen=True)
class Layout:
    """Where a model family keeps its transformer layers' parts (paths below the base model / one layer)."""

    layers: str  # the nn.ModuleList of layers, below the base model
    attention: str  # the module holding the head count
    heads_attr: str  # its attribute with the head count
    query: str
    key: str
    value: str
    attention_out: str  # the projection after attention (its input: the heads' outputs side by side)
    ffn_in: str  # FFN up-projection
    ffn_out: str  # FFN down-projection


LAYOUTS = {
    **{name: Layout("encoder.layer", "attention.self", "num_attention_heads", "attention.self.query",
                    "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense",
                    "output.dense") for name in BERT_LIKE},
    "distilbert": Layout("transformer.layer", "attention", "n_heads", "attention.q_lin", "attention.k_lin",
                         "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
}


@dataclass
class BertShape:
    """The size of a BERT-style teacher trained here (defaults: BERT-mini, 4 x 256)."""

    layers: int = 4  # transformer layers
    hidden: int = 256  # hidden size
    heads: int = 4  # attention heads per layer (hidden must be a multiple)
    intermediate: int = 1024  # FFN inner size
    dropout: float = 0.1  # hidden and attention dropout

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.heads, self.intermediate) < 1:
            raise ValueError(f"the BERT shape needs positive sizes, got {self}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of the head count {self.heads}")


def text_train_config(epochs: int = 4, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
                      windows_per_text: int = 1) -> TrainConfig:
    """Fine-tuning settings for text: AdamW, linear warm-up and decay, no image augmentation."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=0.01,
                       schedule="linear", augment=False, grad_clip=1.0, seed=seed, windows_per_text=windows_per_text)


class TextClassifier(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> logits around any AutoModelForSequenceClassification."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.takes_token_types = self.model_type != "distilbert"

    @property
    def model_type(self) -> str:
        return self.hf.config.model_type

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "token_type_ids"] if self.takes_token_types else ["input_ids", "attention_mask"]

    @property
    def layout(self) -> Layout:
        if self.model_type not in LAYOUTS:
            raise CompressError(f"{self.model_type} models cannot be pruned or shrunk here yet (supported: "
                                f"{', '.join(sorted(LAYOUTS))})")
        return LAYOUTS[self.model_type]

    def layers(self) -> nn.ModuleList:
        return self.hf.base_model.get_submodule(self.layout.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.hf(**self._inputs(input_ids, attention_mask, token_type_ids)).logits

    def internals(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple]:
        """logits, hidden states (embeddings, then every layer's output), attention probabilities per layer."""
        out = self.hf(**self._inputs(x, None, None), output_hidden_states=True, output_attentions=True)
        return out.logits, out.hidden_states, out.attentions

    def _inputs(self, input_ids, attention_mask, token_type_ids) -> dict:
        if input_ids.dim() == 3:  # packed (B, 3, L), as text splits store it
            packed = input_ids.long()
            input_ids, attention_mask, token_type_ids = packed[:, 0], packed[:, 1], packed[:, 2]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.takes_token_types and token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return inputs


def _offline() -> None:
    from compress.text_data import require

    require("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def config_from_dict(config: dict):
    _offline()
    from transformers import AutoConfig

    values = dict(config)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise CompressError("a text model config lacks its model_type: re-run the stage that made it")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as exc:
        raise CompressError(f"unknown text model type {model_type!r} ({first_line(exc)})") from exc


def build_classifier(config) -> TextClassifier:
    """A freshly initialised classifier of ``config`` (a transformers config or its dict), eager attention."""
    _offline()
    from transformers import AutoModelForSequenceClassification

    if isinstance(config, dict):
        config = config_from_dict(config)
    hf_model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    return _wrap(hf_model)


def _wrap(hf_model: nn.Module) -> TextClassifier:
    model = TextClassifier(hf_model)
    config = hf_model.config.to_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "_attn_implementation_autoset"):
        config.pop(key, None)
    model.compress_spec = {"builder": "hf", "config": config}
    return model.eval()


def load_hf_classifier(path: str | Path) -> TextClassifier:
    """A user's ``save_pretrained`` sequence classifier (BERT, DistilBERT, RoBERTa, ...), read offline."""
    _offline()
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not path.is_dir():
        raise CompressError(f"teacher {str(path)!r} is not a local folder, and compress makes no downloads: save the "
                            "model with model.save_pretrained(DIR) (and its tokenizer with tokenizer.save_pretrained(DIR)) "
                            "and give DIR")
    if not (path / "config.json").is_file():
        raise CompressError(f"{path} has no config.json: give a folder written by save_pretrained")
    try:
        hf_model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True,
                                                                      attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        raise CompressError(f"cannot load a sequence classifier from {path} ({first_line(exc)})") from exc
    return _wrap(hf_model)


def teacher_tokenizer(path: str | Path) -> Path:
    """The tokenizer.json a teacher folder brings: the teacher only understands the token ids it was trained on."""
    candidate = Path(path) / "tokenizer.json"
    if not candidate.is_file():
        raise CompressError(f"teacher folder {path} has no tokenizer.json: save the teacher's (fast) tokenizer there "
                            "with tokenizer.save_pretrained(DIR)")
    return candidate


def check_inputs(model: TextClassifier, data: Dataset) -> None:
    """Refuse a dataset whose token ids, sequence length or class count the model cannot take."""
    config = model.hf.config
    largest = int(data.train.x[:, 0].max(initial=0))
    if largest >= config.vocab_size:
        raise CompressError(f"the data has token id {largest} but the model's vocabulary has {config.vocab_size} tokens: "
                            "encode the data with the model's own tokenizer (data.tokenizer = DIR/tokenizer.json)")
    length = data.train.x.shape[-1]
    if length > getattr(config, "max_position_embeddings", length):
        raise CompressError(f"data.max_length {length} exceeds the model's {config.max_position_embeddings} positions: "
                            "lower data.max_length")
    if config.num_labels != data.num_classes:
        raise CompressError(f"the model has {config.num_labels} classes but the data {data.num_classes} "
                            f"({', '.join(data.class_names[:6])}): give a classifier trained on these classes")


def bert_config(data: Dataset, shape: BertShape):
    """A BertConfig for ``data`` (its vocabulary, sequence length and classes) at ``shape``."""
    _offline()
    import json

    from transformers import BertConfig

    vocab_size = len(json.loads(data.tokenizer_json)["model"]["vocab"])
    return BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                      hidden_dropout_prob=shape.dropout, attention_probs_dropout_prob=shape.dropout,
                      max_position_embeddings=max(512, data.train.x.shape[-1]), type_vocab_size=2,
                      num_labels=data.num_classes, pad_token_id=0,
                      id2label=dict(enumerate(data.class_names)), label2id={n: i for i, n in enumerate(data.class_names)})


def random_bert(vocab_size: int, num_labels: int, shape: BertShape, max_positions: int, seed: int = 0,
                attention: str = "eager") -> TextClassifier:
    """An untrained BertForSequenceClassification of ``shape`` (weights from ``seed``) behind TextClassifier, for
    tests and latency benchmarks; ``attention="sdpa"`` builds the form onnxruntime's optimizer cannot fuse."""
    _offline()
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                        hidden_dropout_prob=shape.dropout, attention_probs_dropout_prob=shape.dropout,
                        max_position_embeddings=max_positions, num_labels=num_labels)
    config._attn_implementation = attention
    return TextClassifier(BertForSequenceClassification(config)).eval()


def build_teacher(data: Dataset, shape: BertShape | None = None, seed: int = 0) -> TextClassifier:
    seed_everything(seed)
    return build_classifier(bert_config(data, shape or BertShape()))


def train_teacher(data: Dataset, shape: BertShape | None = None, train: TrainConfig | None = None,
                  mlm_epochs: int = 0, mlm_lr: float = 5e-4,
                  windows_train: TrainConfig | None = None) -> tuple[TextClassifier, TrainResult]:
    """A BERT-style teacher: ``mlm_epochs`` of masked-LM pre-training (when > 0) and the ``train`` fine-tune, both
    on each train text's first window, then, when texts run past one window, the ``windows_train`` fine-tune on
    their windows (``windows_train.windows_per_text``; None or 0 epochs: none). From scratch, one random window
    per text and epoch learned far slower than first windows then all windows (docs/text.md)."""
    from compress.distillation import train_supervised

    train = train or text_train_config()
    first = replace(data, train=data.train.first_windows(), val=data.val.first_windows(),
                                test=data.test.first_windows())
    model = build_teacher(data, shape, train.seed)
    if mlm_epochs:
        pretrain_mlm(model, first, mlm_epochs, mlm_lr, train.batch_size, train.seed)
    result = train_supervised(model, first, train, "teacher")
    if windows_train is not None and windows_train.epochs and len(data.train) > data.train.num_samples:
        windows = train_supervised(model, data, windows_train, "teacher windows")
        result = replace(windows, history=result.history + windows.history,
                                     wall_s=result.wall_s + windows.wall_s)
    return model.eval(), result


def pretrain_mlm(model: TextClassifier, data: Dataset, epochs: int, lr: float, batch_size: int = 32,
                 seed: int = 0, mask_share: float = 0.15) -> list[float]:
    """BERT's masked-LM objective (15% of tokens: 80% [MASK], 10% random, 10% kept) on every row of the train
    split, trained into ``model``'s encoder in place. Returns the mean loss per epoch."""
    from transformers import AutoModelForMaskedLM

    vocab = _vocab(data)
    mask_id, special = vocab.get("[MASK]"), {vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]") if t in vocab}
    if mask_id is None:
        raise CompressError("masked-LM pre-training needs a [MASK] token in the tokenizer: turn it off or train a tokenizer here")
    seed_everything(seed)
    mlm = AutoModelForMaskedLM.from_config(model.hf.config, attn_implementation="eager")
    prefix = model.hf.base_model_prefix
    mlm.get_submodule(prefix).load_state_dict(model.hf.get_submodule(prefix).state_dict(), strict=False)
    optimizer = torch.optim.AdamW(mlm.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(data.train) / batch_size)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    rng = np.random.default_rng(seed)
    special_arr = np.array(sorted(special))
    losses = []
    mlm.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        order = rng.permutation(len(data.train))
        for start in range(0, len(order), batch_size):
            batch = data.train.x[order[start:start + batch_size]]
            ids, attention, types = batch[:, 0].copy(), batch[:, 1], batch[:, 2]
            candidates = (attention == 1) & ~np.isin(ids, special_arr)
            chosen = candidates & (rng.random(ids.shape) < mask_share)
            labels = np.where(chosen, ids, -100)
            roll = rng.random(ids.shape)
            ids[chosen & (roll < 0.8)] = mask_id
            random_tokens = chosen & (roll >= 0.8) & (roll < 0.9)
            ids[random_tokens] = rng.integers(len(special) + 1, len(vocab), int(random_tokens.sum()))
            out = mlm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attention),
                      token_type_ids=torch.from_numpy(types), labels=torch.from_numpy(labels))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += out.loss.item() * len(batch)
            count += len(batch)
        losses.append(total / max(count, 1))
    model.hf.get_submodule(prefix).load_state_dict(mlm.get_submodule(prefix).state_dict(), strict=False)
    return losses


def _vocab(data: Dataset) -> dict[str, int]:
    import json

    return json.loads(data.tokenizer_json)["model"]["vocab"]


def student_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a student starts from, evenly spaced from the first (4 -> 2: layers 0 and 2)."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def make_student(teacher: TextClassifier, layers: int | None = None, hidden: int | None = None,
                 init: str = "teacher", heads: int | None = None, ffn: int | None = None) -> tuple[TextClassifier, str]:
    """A DistilBERT-style student: ``layers`` (default half the teacher's) at ``hidden`` size, ``heads`` attention
    heads and ``ffn`` FFN inner size (defaults: the teacher's). ``init`` "teacher" copies the embeddings and every
    other layer (and, when narrower, the teacher's most important hidden dimensions and FFN neurons; another head
    count splits the same projections into that many heads); "random" starts from scratch. Returns (student, what
    was done)."""
    if init not in ("teacher", "random"):
        raise CompressError(f"student init must be 'teacher' or 'random', got {init!r}")
    config = config_from_dict(teacher.compress_spec["config"])
    teacher_layers, teacher_heads = config.num_hidden_layers, config.num_attention_heads
    ffn_key = "intermediate_size" if hasattr(config, "intermediate_size") else "hidden_dim"  # DistilBERT's name
    teacher_hidden, teacher_ffn = config.hidden_size, getattr(config, ffn_key)
    layers = layers or max(1, teacher_layers // 2)
    hidden, heads, ffn = hidden or teacher_hidden, heads or teacher_heads, ffn or teacher_ffn
    if not 1 <= layers <= teacher_layers:
        raise CompressError(f"the student needs 1 to {teacher_layers} layers (the teacher's count), got {layers}")
    if _pruned(teacher):
        raise CompressError("make the student from an unpruned teacher (its heads or FFN were pruned)")
    if hidden > teacher_hidden or ffn > teacher_ffn or heads > teacher_heads:
        raise CompressError(f"the student (hidden {hidden}, {heads} heads, FFN {ffn}) must be at most the teacher's "
                            f"sizes (hidden {teacher_hidden}, {teacher_heads} heads, FFN {teacher_ffn})")
    if hidden % heads:
        raise CompressError(f"student hidden size {hidden} is not a multiple of its head count {heads}: choose a "
                            "hidden size that the heads divide")
    config.num_hidden_layers, config.hidden_size = layers, hidden
    config.num_attention_heads = heads
    setattr(config, ffn_key, ffn)
    student = build_classifier(config)
    if init == "random":
        return student, "random init"
    mapping = student_layer_map(teacher_layers, layers)
    prefix = f"{teacher.layout.layers}."
    base = teacher.hf.base_model_prefix
    renamed = {}
    for key, value in teacher.state_dict().items():
        marker = f"hf.{base}.{prefix}"
        if key.startswith(marker):
            index, _, rest = key[len(marker):].partition(".")
            if int(index) not in mapping:
                continue
            key = f"{marker}{mapping.index(int(index))}.{rest}"
        renamed[key] = value
    note = f"teacher layers {mapping} and embeddings"
    if (hidden, ffn) != (teacher_hidden, teacher_ffn):
        if teacher.model_type not in BERT_LIKE:
            return student, f"random init (narrowing {teacher.model_type} is not supported)"
        renamed = _narrow(renamed, student, teacher_heads)
        if hidden != teacher_hidden:
            note += f", teacher's {hidden} most important of {teacher_hidden} hidden dimensions"
        if ffn != teacher_ffn:
            note += f", its {ffn} largest of {teacher_ffn} FFN neurons per layer"
    if heads != teacher_heads:
        note += f", attention projections split into {heads} instead of {teacher_heads} heads"
    student.load_state_dict(renamed, strict=True)
    return student, note


def _pruned(model: TextClassifier) -> bool:
    fresh = build_classifier(model.compress_spec["config"]).state_dict()
    return any(fresh[k].shape != v.shape for k, v in model.state_dict().items() if k in fresh)


def _narrow(state: dict, student: TextClassifier, teacher_heads: int) -> dict:
    """Select the hidden dimensions with the largest LayerNorm gains and embedding norms (the residual
    stream's most used); per teacher head the dimensions whose query/key/value/output weights are largest (over
    all heads at once when the student's width does not split evenly into the teacher's heads); per layer the FFN
    neurons whose input and output weights are largest."""
    config = student.hf.config
    hidden = config.hidden_size
    teacher_hidden = next(v for k, v in state.items() if k.endswith("word_embeddings.weight")).shape[1]
    score = torch.zeros(teacher_hidden)
    for key, value in state.items():
        if "LayerNorm.weight" in key:
            score += value.abs()
        elif key.endswith("word_embeddings.weight"):
            score += value.norm(dim=0) / value.norm(dim=0).mean()
    kept = torch.sort(torch.topk(score, hidden).indices).values
    inner: dict[str, torch.Tensor] = {}
    neurons: dict[str, torch.Tensor] = {}
    for key in state:
        if key.endswith("attention.self.query.weight"):
            layer = key.rsplit("attention.self.", 1)[0]
            rows = sum(state[f"{layer}attention.self.{n}.weight"].pow(2).sum(1) for n in ("query", "key", "value"))
            rows = rows + state[f"{layer}attention.output.dense.weight"].pow(2).sum(0)
            if hidden % teacher_heads == 0:
                per_head = rows.view(teacher_heads, teacher_hidden // teacher_heads)
                top = torch.sort(torch.topk(per_head, hidden // teacher_heads, dim=1).indices, dim=1).values
                inner[layer] = (top + torch.arange(teacher_heads)[:, None] * (teacher_hidden // teacher_heads)).flatten()
            else:
                inner[layer] = torch.sort(torch.topk(rows, hidden).indices).values
            usage = state[f"{layer}intermediate.dense.weight"].pow(2).sum(1) + state[f"{layer}output.dense.weight"].pow(2).sum(0)
            neurons[layer] = torch.sort(torch.topk(usage, config.intermediate_size).indices).values
    target = student.state_dict()
    result = {}
    for key, value in state.items():
        want = target[key].shape
        layer = next((p for p in inner if key.startswith(p)), None)
        for axis in range(value.dim()):
            if value.shape[axis] == want[axis]:
                continue
            if layer is not None and (".attention.self." in key and axis == 0
                                      or key.startswith(f"{layer}attention.output.dense.weight") and axis == 1):
                index = inner[layer]
            elif layer is not None and (key.startswith(f"{layer}intermediate.dense.") and axis == 0
                                        or key == f"{layer}output.dense.weight" and axis == 1):
                index = neurons[layer]
            else:
                index = kept
            value = value.index_select(axis, index)
        result[key] = value.clone()
    return result


def distill_text(student: TextClassifier, teacher: TextClassifier | None, data: Dataset, train: TrainConfig,
                 temperature: float = 4.0, alpha: float = 0.9, hidden_weight: float = 0.0,
                 attention_weight: float = 0.0, desc: str = "distill") -> TrainResult:
    """Train ``student`` in place: Hinton KD on the logits (``distillation.distillation_loss``) plus, when their
    weights are > 0, TinyBERT's hidden-state MSE (through a learned projection) and attention-map MSE on
    mapped layers. ``teacher`` None trains the same student on the labels alone (the no-KD baseline)."""
    from compress.distillation import distillation_loss, train_supervised
    from compress.train import fit

    if teacher is None:
        return train_supervised(student, data, train, desc)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    intermediate = hidden_weight > 0 or attention_weight > 0
    s_layers = student.hf.config.num_hidden_layers
    t_layers = teacher.hf.config.num_hidden_layers
    # student layer i imitates the last teacher layer of its block (TinyBERT's uniform mapping)
    mapping = [(i + 1) * t_layers // s_layers - 1 for i in range(s_layers)]
    s_hidden, t_hidden = student.hf.config.hidden_size, teacher.hf.config.hidden_size
    projections = nn.ModuleList(nn.Linear(s_hidden, t_hidden) for _ in range(s_layers + 1)) if hidden_weight > 0 else None

    def loss_fn(x: torch.Tensor, y: torch.Tensor):
        if not intermediate:
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = student(x)
            return distillation_loss(logits, teacher_logits, y, temperature, alpha), logits
        with torch.no_grad():
            teacher_logits, t_states, t_attentions = teacher.internals(x)
        logits, s_states, s_attentions = student.internals(x)
        loss = distillation_loss(logits, teacher_logits, y, temperature, alpha)
        mask = x[:, 1].to(logits.dtype)
        if projections is not None:
            pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(mapping)]
            loss = loss + hidden_weight * sum(_masked_mse(projections[k](s_states[i]), t_states[j], mask)
                                              for k, (i, j) in enumerate(pairs)) / len(pairs)
        if attention_weight > 0:
            loss = loss + attention_weight * sum(_attention_mse(s_attentions[i], t_attentions[j], mask)
                                                 for i, j in enumerate(mapping)) / len(mapping)
        return loss, logits

    return fit(student, data, train, loss_fn, desc, extra_modules=[projections] if projections is not None else [],
               frozen_modules=[teacher])


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens only: (B, L, H) tensors, (B, L) mask."""
    squared = (student - teacher).pow(2).mean(-1)
    return (squared * mask).sum() / mask.sum().clamp(min=1)


def _attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of attention probabilities (B, heads, L, L) over real query/key pairs; head-averaged when the
    head counts differ (after head pruning)."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    pair_mask = (mask[:, :, None] * mask[:, None, :])[:, None]
    squared = (student - teacher).pow(2) * pair_mask
    return squared.sum() / (pair_mask.sum() * student.shape[1]).clamp(min=1)
