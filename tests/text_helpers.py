"""Tiny text classifiers built in the tests: a WordPiece tokenizer trained on a synthetic three-topic corpus
and a 2-layer BERT (hidden 64) trained on it for a few seconds, with a helper that prunes attention heads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.text_models import BertShape, TextClassifier, random_bert

TOPICS = {
    "sport": "match goal team coach league score player season win referee stadium",
    "food": "recipe bread soup cheese garlic oven dinner spicy sauce bake flavour",
    "tech": "software laptop chip network server code cloud phone battery update",
}
FILLER = "the a of and to in is it was for on with as this that very today".split()
LABELS = list(TOPICS)


def corpus(count: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Sentences of filler words with a few topic words mixed in; the label is the topic."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for index in range(count):
        label = index % len(LABELS)
        words = list(rng.choice(FILLER, size=rng.integers(4, 10)))
        topic = TOPICS[LABELS[label]].split()
        for _ in range(rng.integers(2, 4)):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(topic)))
        text = " ".join(words)
        texts.append(text.capitalize() + rng.choice([".", "!", "?", ""]))
        labels.append(label)
    return texts, np.array(labels)


def train_tokenizer(texts: list[str], vocab_size: int = 200, lowercase: bool = True, strip_accents: bool | None = True):
    """BERT-style WordPiece: lowercase + accent strip, punctuation split, [CLS] x [SEP] post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


class NoTokenTypes(torch.nn.Module):
    """A DistilBERT-like signature: forward(input_ids, attention_mask)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def tiny_bert(vocab_size: int, attention: str = "eager", layers: int = 2, hidden: int = 64, heads: int = 4,
              seed: int = 0) -> TextClassifier:
    """An untrained BERT for the three topics: 2 layers, hidden 64, FFN 128, 128 positions."""
    return random_bert(vocab_size, len(LABELS), BertShape(layers, hidden, heads, 2 * hidden), 128, seed, attention)


def train(model: torch.nn.Module, samples: dict, labels: np.ndarray, epochs: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    names = ("input_ids", "attention_mask", "token_type_ids")
    tensors = [torch.from_numpy(samples[n]) for n in names]
    y = torch.from_numpy(labels)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 32):
            batch = order[start:start + 32]
            loss = torch.nn.functional.cross_entropy(model(*(t[batch] for t in tensors)), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def prune_heads(classifier: TextClassifier, layer: int, keep: list[int]) -> None:
    """Keep only heads ``keep`` of encoder layer ``layer``: slice Q/K/V rows and the output projection's columns."""
    attention = classifier.hf.bert.encoder.layer[layer].attention
    size = attention.self.attention_head_size
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
    for name in ("query", "key", "value"):
        old = getattr(attention.self, name)
        new = torch.nn.Linear(old.in_features, len(index))
        new.weight.data, new.bias.data = old.weight.data[index].clone(), old.bias.data[index].clone()
        setattr(attention.self, name, new)
    old = attention.output.dense
    new = torch.nn.Linear(len(index), old.out_features)
    new.weight.data, new.bias.data = old.weight.data[:, index].clone(), old.bias.data.clone()
    attention.output.dense = new
    attention.self.num_attention_heads = len(keep)
    attention.self.all_head_size = len(index)


def trained_tiny_bert(root: Path, test_count: int, test_seed: int, max_length: int) -> dict:
    """The text tests' model: a tokenizer trained on 300 corpus sentences (saved as root/tokenizer.json) and a
    tiny_bert trained on them, with the tokenized train split and ``test_count`` test sentences (``test_seed``)."""
    from compress.text_onnx import encode_texts

    train_texts, train_labels = corpus(300, seed=0)
    test_texts, test_labels = corpus(test_count, seed=test_seed)
    tokenizer = train_tokenizer(train_texts)
    tokenizer_path = root / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    train_set = encode_texts(tokenizer, train_texts, max_length)
    model = train(tiny_bert(tokenizer.get_vocab_size()), train_set, train_labels)
    return {"tokenizer": tokenizer, "tokenizer_path": tokenizer_path, "model": model, "train": train_set,
            "train_labels": train_labels, "test": encode_texts(tokenizer, test_texts, max_length),
            "test_texts": test_texts, "test_labels": test_labels}
