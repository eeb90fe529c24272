"""Long texts as consecutive windows (compress.text_windows): the windows cover the text's tokens in order, each
is post-processed and padded like a normal encoding, and a text's prediction averages its windows."""
import numpy as np
import pytest

pytest.importorskip("tokenizers")

from compress.data import Split  # noqa: E402
from compress.text_data import configure_tokenizer, encode  # noqa: E402
from compress.text_windows import (  # noqa: E402
    draw_windows,
    encode_windows,
    one_window_per_text,
    text_probabilities,
    text_scores,
    window_positions,
)
from tests.text_helpers import corpus, train_tokenizer  # noqa: E402

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer():
    texts, _ = corpus(60, seed=0)
    return configure_tokenizer(train_tokenizer(texts), MAX_LENGTH)


def test_windows_cover_every_token_in_order_each_framed_and_padded(tokenizer):
    short = "goal team"
    long = " ".join(["match goal team coach league score player season"] * 5)  # 40 words: several windows
    rows, owners = encode_windows(tokenizer, [short, long])
    assert rows.shape[1:] == (3, MAX_LENGTH) and rows.dtype == np.int64
    body_length = MAX_LENGTH - 2
    untruncated = configure_tokenizer(tokenizer, MAX_LENGTH)
    untruncated.no_truncation()
    body = untruncated.encode(long, add_special_tokens=False).ids
    assert owners.tolist() == [0] + [1] * -(-len(body) // body_length)
    assert np.array_equal(rows[0], encode(tokenizer, [short], MAX_LENGTH)[0])  # one window: the usual encoding
    cls, sep, pad = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    joined = []
    for ids, mask in zip(rows[owners == 1, 0], rows[owners == 1, 1]):
        real = ids[mask == 1].tolist()
        assert real[0] == cls and real[-1] == sep and (ids[mask == 0] == pad).all()
        joined += real[1:-1]
    assert joined == body


def test_max_windows_keeps_the_first_windows(tokenizer):
    long = " ".join(["software laptop chip network server code cloud phone"] * 6)
    rows, owners = encode_windows(tokenizer, [long, long])
    first_two, first_owners = encode_windows(tokenizer, [long, long], max_windows=2)
    assert (np.bincount(owners) > 2).all() and np.bincount(first_owners).tolist() == [2, 2]
    assert np.array_equal(first_two[:2], rows[:2])
    assert window_positions(owners).tolist() == [*range(np.bincount(owners)[0]), *range(np.bincount(owners)[1])]


def test_text_probabilities_average_each_texts_windows():
    logits = np.log(np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]]))
    owners = np.array([0, 0, 0, 1])
    assert np.allclose(text_probabilities(logits, owners, 2), [[(0.9 + 0.3 + 0.2) / 3, (0.1 + 0.7 + 0.8) / 3], [0.6, 0.4]])
    assert np.allclose(text_probabilities(logits, owners, 2, max_windows=1), [[0.9, 0.1], [0.6, 0.4]])
    with pytest.raises(ValueError, match="text 2 has no window"):
        text_probabilities(logits, owners, 3)


def test_one_window_per_text_draws_each_texts_own_windows_reproducibly():
    owners = np.array([0, 0, 0, 1, 2, 2])
    draws = [one_window_per_text(owners, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*draws) and owners[draws[0]].tolist() == [0, 1, 2]
    seen = {int(i) for _ in range(50) for i in one_window_per_text(owners, np.random.default_rng(_))}
    assert seen == set(range(len(owners)))  # every window can be drawn


def test_draw_windows_takes_per_text_distinct_windows_of_each_text():
    owners = np.array([0, 0, 0, 1, 2, 2])
    assert draw_windows(owners, 0, np.random.default_rng(0)).tolist() == list(range(6))
    two = draw_windows(owners, 2, np.random.default_rng(3))
    assert np.array_equal(two, np.sort(two)) and np.bincount(owners[two]).tolist() == [2, 1, 2]
    assert np.array_equal(two, draw_windows(owners, 2, np.random.default_rng(3)))
    assert {tuple(draw_windows(owners, 2, np.random.default_rng(s))[:2]) for s in range(40)} == {(0, 1), (0, 2), (1, 2)}


def test_split_scores_and_subsets_per_sample():
    x = np.arange(6)[:, None, None] * np.ones((1, 3, 4), np.int64)
    split = Split(x, np.array([1, 1, 1, 0, 2, 2]), ["long", "short", "middle"], np.array([0, 0, 0, 1, 2, 2]))
    assert len(split) == 6 and split.num_samples == 3 and split.sample_y.tolist() == [1, 0, 2]
    logits = np.log(np.array([[0.1, 0.5, 0.4], [0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.9, 0.05, 0.05],
                              [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]))
    scores = split.sample_logits(logits)
    assert scores.shape == (3, 3) and scores.argmax(1).tolist() == [1, 0, 2]  # text 0: mean softmax, not its first window
    assert np.allclose(np.exp(scores).sum(1), 1)
    assert np.array_equal(text_scores(logits, None), logits)
    part = split.subset(np.array([2, 0]))
    assert part.texts == ["middle", "long"] and part.groups.tolist() == [0, 0, 1, 1, 1]
    assert part.x[:, 0, 0].tolist() == [4, 5, 0, 1, 2] and part.sample_y.tolist() == [2, 1]
    first = split.first_windows()
    assert first.x[:, 0, 0].tolist() == [0, 3, 4] and first.y.tolist() == [1, 0, 2] and first.groups.tolist() == [0, 1, 2]
    rows = Split(x, np.arange(6), [])
    assert rows.first_windows() is rows
    assert rows.num_samples == 6 and rows.subset(np.array([5, 1])).y.tolist() == [5, 1]
