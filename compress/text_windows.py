"""Texts longer than ``max_length`` tokens as several windows, and one prediction per text from its windows.

A tokenizer with truncation enabled keeps what does not fit as overflowing encodings, each post-processed
(``[CLS] ... [SEP]`` for BERT) and padded like the first: with stride 0 they are consecutive, non-overlapping
windows of ``max_length`` minus the special tokens. A text's prediction is the mean softmax of its windows.
On bbc-news, models fine-tuned on every window and averaged over all of them came within 2 points of TF-IDF on
whole texts, where the first window alone did not (benchmarks/results/text_windows.md)."""
from __future__ import annotations

import numpy as np

from compress.metrics import softmax


def encode_windows(tokenizer, texts: list[str], max_windows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, owners): int64 (R, 3, max_length) input_ids, attention_mask, token_type_ids of every window of
    every text in order (``tokenizer`` from text_data.configure_tokenizer), and the index of each row's text.
    ``max_windows`` > 0 keeps each text's first that many windows."""
    rows, owners = [], []
    for index, encoding in enumerate(tokenizer.encode_batch(texts)):
        windows = [encoding, *encoding.overflowing]
        for window in windows[:max_windows or None]:
            rows.append((window.ids, window.attention_mask, window.type_ids))
            owners.append(index)
    return np.asarray(rows, np.int64), np.asarray(owners, np.int64)


def window_positions(owners: np.ndarray) -> np.ndarray:
    """Each row's window number within its text (0 for the first); ``owners`` sorted as encode_windows makes them."""
    return np.arange(len(owners)) - np.searchsorted(owners, owners)


def text_probabilities(logits: np.ndarray, owners: np.ndarray, texts: int, max_windows: int = 0) -> np.ndarray:
    """(texts, classes): the mean softmax of each text's windows (its first ``max_windows`` when > 0)."""
    probabilities = softmax(logits)
    keep = window_positions(owners) < max_windows if max_windows else np.ones(len(owners), bool)
    summed = np.zeros((texts, logits.shape[1]))
    np.add.at(summed, owners[keep], probabilities[keep])
    counts = np.bincount(owners[keep], minlength=texts)
    if (counts == 0).any():
        raise ValueError(f"text {int(np.flatnonzero(counts == 0)[0])} has no window")
    return summed / counts[:, None]


def text_scores(logits: np.ndarray, owners: np.ndarray | None) -> np.ndarray:
    """Per-window logits as one score row per text, the log of its windows' mean softmax (so argmax and softmax
    give the text's prediction and probabilities); ``owners`` None: one row per text, returned as it is."""
    if owners is None:
        return logits
    texts = int(owners.max()) + 1 if len(owners) else 0
    return np.log(np.maximum(text_probabilities(logits, owners, texts), 1e-30))


def one_window_per_text(owners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one uniformly drawn window per text, in text order (an epoch's draw)."""
    texts = int(owners.max()) + 1 if len(owners) else 0
    starts = np.searchsorted(owners, np.arange(texts))
    return starts + rng.integers(0, np.bincount(owners, minlength=texts))


def draw_windows(owners: np.ndarray, per_text: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of ``per_text`` windows drawn without replacement from each text (all of a text's
    windows when it has fewer; ``per_text`` 0: every row): an epoch's training rows."""
    if per_text == 0:
        return np.arange(len(owners))
    if per_text == 1:
        return one_window_per_text(owners, rng)
    keys = rng.random(len(owners))
    order = np.lexsort((keys, owners))  # each text's rows in a random order
    rank = np.empty(len(owners), np.int64)
    rank[order] = window_positions(owners[order])
    return np.flatnonzero(rank < per_text)
