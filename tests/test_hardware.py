"""Issue 15: the fast featurisation gives exactly the old features on real data; threads follow KTT_THREADS."""
import re

import numpy as np
import pytest
import snowballstemmer
from snowballstemmer.english_stemmer import EnglishStemmer

from ktt import registry
from ktt.text import stem

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def stem_before(texts):
    """The implementation before issue 15: the pure-Python Snowball stemmer, word by word."""
    words = EnglishStemmer().stemWords
    return [" ".join(words(_TOKEN.findall(t.lower()))) for t in texts]


@pytest.fixture(scope="module")
def texts(bigbasket_df, clinc_df):
    return bigbasket_df.text.tolist() + clinc_df.text.tolist()


def test_the_c_stemmer_is_used():
    import Stemmer  # PyStemmer: snowballstemmer hands stemming to it when it is installed

    assert snowballstemmer.stemmer is Stemmer.Stemmer


def test_same_stems_as_the_pure_python_stemmer(texts):
    vocabulary = sorted({w for t in texts for w in _TOKEN.findall(t.lower())})
    assert len(vocabulary) > 10_000
    assert snowballstemmer.stemmer("english").stemWords(vocabulary) == EnglishStemmer().stemWords(vocabulary)
    assert stem(texts) == stem_before(texts)
    odd = ["Ünïcode café_au-lait 3x", "", "  ", "naïve résumé déjà-vu", "İstanbul ǅemal"]
    assert stem(odd) == stem_before(odd)


@pytest.mark.parametrize("params", [{}, {"ngram_max": 3, "min_df": 2}, {"ngram_max": 1}])
def test_same_tfidf_matrix_as_before(bigbasket, clinc_df, params):
    """Old path (pure-Python stems, then scikit-learn's transform) vs the model's own featurisation,
    on titles, on paragraphs of CLINC150 utterances, across chunk boundaries and on empty texts."""
    from ktt.tfidf import Featuriser

    model = registry.create("tfidf_hsgd", bigbasket.hierarchy, **params).fit(bigbasket.train)
    paragraphs = [" ".join(clinc_df.text[i:i + 8]) for i in range(0, 800, 8)]
    texts = bigbasket.test.texts + paragraphs + ["", "  ", "?!", "rice rice rice"]
    old = model.vectorizer_.transform(stem_before(texts))
    for new in (model.features(texts), Featuriser(model.vectorizer_, "english", chunk=97)(texts)):
        assert new.shape == old.shape and new.dtype == old.dtype and type(new) is type(old)
        assert (old != new).nnz == 0 and np.array_equal(old.indices, new.indices)
        assert np.array_equal(old.data, new.data)  # exactly, not approximately
    assert model.features([]).shape == (0, old.shape[1])


def test_threads_follow_ktt_threads(bb300, tiny_encoder, tmp_path, monkeypatch):
    """The server's onnxruntime sessions take KTT_THREADS (set by `ktt serve` and `ktt tune --workers`)."""
    from ktt.export import export_onnx
    from ktt.serving.runtime import Predictor

    # an encoder model: TF-IDF models are served from arrays, without onnxruntime
    model = registry.create("db_linear", bb300["train"].hierarchy, encoder=tiny_encoder, epochs=1,
                            classifier_lr=3e-3).fit(bb300["train"], bb300["val"])
    export_onnx(model, tmp_path)
    monkeypatch.setenv("KTT_THREADS", "1")
    pred = Predictor.from_dir(tmp_path)
    assert pred.encoder.get_session_options().intra_op_num_threads == 1
    assert pred.predict(bb300["test"].texts[:5]).paths == model.predict_paths(bb300["test"].texts[:5])


def test_words_ascii_route_is_the_regular_expression(texts):
    from hypothesis import given, strategies as st

    from ktt.text import words

    assert words(texts) == [_TOKEN.findall(t.lower()) for t in texts]

    @given(st.lists(st.text(alphabet=st.characters(max_codepoint=0x24F)), max_size=5))
    def same(batch):
        assert words(batch) == [_TOKEN.findall(t.lower()) for t in batch]
    same()


def test_length_buckets_by_hand(bigbasket):
    """Eight rows, batches of 2, one window: rows of neighbouring lengths share a batch."""
    import torch

    model = registry.create("db_bhcn", bigbasket.hierarchy, batch_size=2)
    lengths = torch.tensor([7, 1, 6, 2, 5, 3, 8, 4])
    batches = model._batches(8, 0, lengths)
    # sorted by length: rows 1,3 (1, 2), 5,7 (3, 4), 4,2 (5, 6), 0,6 (7, 8); batch order is shuffled
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 6], [1, 3], [2, 4], [5, 7]]
    assert [b.tolist() for b in batches] == [b.tolist() for b in model._batches(8, 0, lengths)]  # seeded
    plain = model._batches(8, 0)  # without buckets: the seeded shuffle cut in order, as before
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert [b.tolist() for b in plain] == [order[i:i + 2].tolist() for i in range(0, 8, 2)]
    # windows of 50 batches: a batch never mixes rows from two windows of the shuffle
    big = model._batches(300, 1, torch.arange(300) % 17)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    window = {int(r): i // 100 for i, r in enumerate(order)}
    assert sorted(int(r) for b in big for r in b) == list(range(300))
    assert all(len({window[int(r)] for r in b}) == 1 for b in big)
