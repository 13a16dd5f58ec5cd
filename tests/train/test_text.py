"""The text modality: a tokenizer trained on train only and rebuilt id for id from the
checkpoint's JSON, request decoding that never echoes a document, token dropout,
explanations over the request's own tokens and the TF-IDF baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medray.cluster.config import DataConfig
from medray.cluster.errors import ConfigError, InputError
from medray.train.data.preprocess import Preprocessor
from medray.train.modalities import modality
from medray.train.modalities.text import (MAX_TEXT_CHARS, PAD_ID, UNK_ID, drop_tokens, tfidf_baseline,
                                          wordpiece_vocabulary)

CANARY = "Qzxjvwotherly"
TOPICS = {0: ["tumour", "carcinoma", "metastasis", "chemotherapy", "biopsy"],
          1: ["infarction", "arrhythmia", "stenosis", "hypertension", "angina"]}
FILLER = ["the", "patient", "was", "admitted", "with", "and", "of", "treated", "history", "showed"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    texts = []
    for label in labels:
        words = list(rng.choice(FILLER, size=20)) + list(rng.choice(TOPICS[int(label)], size=3))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
    return texts, labels


def fitted(texts: list[str], **text_options) -> Preprocessor:
    data = DataConfig(text={"vocab_size": 200, "max_tokens": 32, "min_documents": 3, **text_options})
    return Preprocessor.fit({"modality": "text", "schema": {"column": "text"}}, pd.DataFrame({"text": texts}), data)


@pytest.fixture(scope="module")
def trained():
    texts, labels = corpus(300)
    texts[0] += f" {CANARY}"  # one patient's name in two of their notes: below min_documents
    texts[1] += f" {CANARY}"
    return fitted(texts), texts, labels


def test_the_tokenizer_is_rebuilt_from_the_checkpoint_json_with_the_same_ids(trained):
    pre, texts, _ = trained
    stored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert pre.input_shape == [32] and pre.vocabulary == pre.stats["vocab_size"] <= 200
    np.testing.assert_array_equal(pre.transform({"text": texts[:50]}), stored.transform({"text": texts[:50]}))


def test_words_in_fewer_than_min_documents_never_enter_the_stored_vocabulary(trained):
    pre, _, _ = trained
    vocab = json.loads(pre.stats["tokenizer"])["model"]["vocab"]
    assert "tumour" in vocab and "infarction" in vocab
    assert CANARY.lower() not in vocab and CANARY.lower() not in pre.stats["tokenizer"]
    # A word it never kept is still read, as pieces or [UNK], never dropped silently.
    ids = pre.transform({"text": [f"{CANARY} tumour"]})[0]
    assert (ids != PAD_ID).sum() >= 2


def test_long_documents_keep_their_first_max_tokens_and_short_ones_are_padded(trained):
    pre, _, _ = trained
    long, short = " ".join(["tumour"] * 100), "tumour biopsy"
    ids = pre.transform(pd.DataFrame({"text": [long, short]}))
    assert ids.shape == (2, 32) and ids.dtype == np.float32
    assert (ids[0] != PAD_ID).all()
    assert (ids[1, :2] != PAD_ID).all() and (ids[1, 2:] == PAD_ID).all()
    assert pre.stats["truncation"] == "head" and 0 <= pre.stats["truncated_share"] < 0.05


def test_a_tampered_or_mismatched_tokenizer_is_refused(trained):
    pre, _, _ = trained
    tampered = Preprocessor.from_dict(pre.to_dict())
    tampered.stats = {**pre.stats, "tokenizer": pre.stats["tokenizer"].replace('"tumour"', '"tumor"')}
    with pytest.raises(ConfigError, match="does not match its recorded sha256"):
        tampered.transform({"text": ["tumour"]})
    resized = Preprocessor.from_dict(pre.to_dict())
    resized.stats = {**pre.stats, "vocab_size": pre.stats["vocab_size"] + 1}
    with pytest.raises(ConfigError, match="tokens, the model was trained on"):
        resized.transform({"text": ["tumour"]})


def test_wordpiece_merges_the_most_frequent_pair_first_and_breaks_ties_by_text():
    vocabulary = wordpiece_vocabulary({"low": 5, "lower": 2, "newest": 6, "widest": 3}, vocab_size=30)
    alphabet = sorted(set("lowernewestwidest"))
    assert vocabulary[:2] == ["[PAD]", "[UNK]"]
    assert vocabulary[2:2 + 2 * len(alphabet)] == alphabet + ["##" + c for c in alphabet]
    # (##e, ##s) and (##s, ##t) occur 9 times each: the first by text merges first, then
    # ##est (9); (##o, ##w) and (l, ##o) tie at 7 and "##o" sorts before "l".
    assert vocabulary[2 + 2 * len(alphabet):][:4] == ["##es", "##est", "##ow", "low"]
    assert len(vocabulary) == 30


_TRAIN_IN_A_NEW_PROCESS = """
import hashlib, json, sys
from medray.cluster.config import TextSection
from medray.train.modalities.text import train_tokenizer
texts = json.loads(sys.stdin.read())
for kind in ("wordpiece", "bpe"):
    tokenizer = train_tokenizer(texts, TextSection(tokenizer=kind, vocab_size=300, min_documents=2))
    print(kind, hashlib.sha256(tokenizer.to_str().encode()).hexdigest())
"""


def test_the_same_texts_give_the_same_tokenizers_in_every_process():
    # Ties between equally frequent merges abound in small corpora; the library's own
    # WordPiece trainer breaks them in hash-map order, different in each process.
    rng = np.random.default_rng(1)
    syllables = ["ka", "lo", "mi", "ne", "ru", "so", "ti", "va", "ze", "po", "qu", "ly"]
    words = ["".join(rng.choice(syllables, size=rng.integers(2, 5))) for _ in range(300)]
    texts = [" ".join(rng.choice(words, size=30)) for _ in range(200)]
    digests = {subprocess.run([sys.executable, "-c", _TRAIN_IN_A_NEW_PROCESS], input=json.dumps(texts),
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
               for seed in range(2)}
    assert len(digests) == 1 and len(digests.pop().split()) == 4


def test_bpe_and_case_are_options():
    texts, _ = corpus(200)
    pre = fitted(texts, tokenizer="bpe", lowercase=False)
    assert pre.stats["kind"] == "bpe" and pre.stats["lowercase"] is False
    upper, lower = pre.transform({"text": ["Tumour", "tumour"]})
    assert not np.array_equal(upper, lower)


@pytest.mark.parametrize("item, problem", [
    ({"text": ""}, "instances[0].text: is empty"),
    ({"text": " \n\t "}, "instances[0].text: is empty"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, f"instances[0].text: longer than {MAX_TEXT_CHARS:,} characters"),
    ({"text": 12}, "instances[0].text: must be a string"),
    ({"text": f"{CANARY} \ud800"}, "instances[0].text: holds characters that are not valid Unicode"),
    ({"text": CANARY, "patient": CANARY}, 'instances[0]: must be an object with one key, "text"'),
    (CANARY, 'instances[0]: must be an object with one key, "text"'),
])
def test_bad_requests_name_the_field_and_never_the_text(trained, item, problem):
    pre, _, _ = trained
    with pytest.raises(InputError) as refused:
        modality("text").decode(pre, [item])
    assert str(refused.value).startswith(problem) and CANARY not in str(refused.value)


def test_an_uploaded_file_must_be_utf8_text_within_the_limit(trained):
    pre, _, _ = trained
    kind = modality("text")
    batch = kind.decode_file(pre, "\ufeffTumour biopsy.".encode("utf-8"), "abstracts")
    assert list(batch["text"]) == ["Tumour biopsy."]  # a byte-order mark is not text
    with pytest.raises(InputError, match=r"file: not UTF-8 text \(invalid byte at offset 7\)"):
        kind.decode_file(pre, CANARY[:7].encode() + b"\xff\xfe", "abstracts")
    with pytest.raises(InputError, match="file: larger than"):
        kind.decode_file(pre, b"a" * (4 * MAX_TEXT_CHARS + 1), "abstracts")
    with pytest.raises(InputError, match="file: is empty"):
        kind.decode_file(pre, b"  \n", "abstracts")


def test_token_dropout_hides_about_its_share_of_real_tokens_and_keeps_padding():
    inputs = torch.full((64, 100), 7.0)
    inputs[:, 80:] = PAD_ID
    dropped = drop_tokens(inputs, torch.Generator().manual_seed(0), share=0.1)
    assert (dropped[:, 80:] == PAD_ID).all()
    hidden = (dropped[:, :80] == UNK_ID).float().mean().item()
    assert 0.08 < hidden < 0.12
    assert ((dropped == 7.0) | (dropped == UNK_ID) | (dropped == PAD_ID)).all()


class BagOfWords(nn.Module):
    """The explanation contract (embed_tokens / logits_from_embeddings), as the text presets have it."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 4, padding_idx=PAD_ID)
        self.head = nn.Linear(4, 2)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long())

    def logits_from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head(embedded.sum(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.embed_tokens(x), x)


def test_explanations_weigh_the_requests_own_tokens(trained):
    pre, _, _ = trained
    torch.manual_seed(0)
    model = BagOfWords(pre.vocabulary).eval()
    with torch.no_grad():  # only "carcinoma" moves the logits, towards class 1
        model.embedding.weight.zero_()
        carcinoma = json.loads(pre.stats["tokenizer"])["model"]["vocab"]["carcinoma"]
        model.embedding.weight[carcinoma] = torch.tensor([1.0, 0, 0, 0])
        model.head.weight.zero_()
        model.head.weight[1, 0] = 5.0
    batch = modality("text").decode(pre, [{"text": "The patient had carcinoma."}])
    inputs = torch.from_numpy(pre.transform(batch))
    (why,) = modality("text").explain(model, inputs, pre)
    tokens = [t["token"] for t in why["tokens"]]  # "had" is not in the corpus: spelled in pieces
    assert tokens[:2] == ["the", "patient"] and tokens[-2:] == ["carcinoma", "."]
    assert len(tokens) == int((inputs != PAD_ID).sum())
    assert why["top"][0] == {"token": "carcinoma", "weight": 5.0}
    assert all(t["weight"] == 0 for t in why["tokens"] if t["token"] != "carcinoma")
    assert why["method"] == "gradient_x_input" and why["truncated"] is False


def test_the_tfidf_baseline_is_fitted_on_train_and_scores_every_class():
    texts, labels = corpus(200, seed=1)
    test_texts, test_labels = corpus(100, seed=2)
    binary = tfidf_baseline(texts, labels, test_texts, seed=0)
    assert binary.scores.shape == (100,)
    assert ((binary.scores > 0.5) == test_labels).mean() > 0.95
    three = np.where(np.arange(200) % 3 == 0, 2, labels)
    multi = tfidf_baseline(texts, three, test_texts, seed=0)
    assert multi.scores.shape == (100, 3) and np.allclose(multi.scores.sum(axis=1), 1)


def test_ood_sets_are_seeded_and_in_stored_form(trained):
    pre, texts, _ = trained
    sets = modality("text").ood_sets(pre, pd.DataFrame({"text": texts[:20]}), np.random.default_rng(0))
    again = modality("text").ood_sets(pre, pd.DataFrame({"text": texts[:20]}), np.random.default_rng(0))
    assert {name: s.kind for name, s in sets.items()} == {"random_words": "far", "numbers": "far",
                                                        "shuffled_words": "near"}
    for name, ood in sets.items():
        assert list(ood.features["text"]) == list(again[name].features["text"]) and len(ood.features) == 20
        assert pre.transform(ood.features).shape == (20, 32)


def test_the_pad_id_is_the_one_the_models_mask():
    from medray.train.models import PAD_TOKEN_ID

    assert PAD_ID == PAD_TOKEN_ID


def test_a_stored_document_sent_as_a_request_transforms_as_in_training(trained):
    pre, texts, _ = trained
    kind, rows = modality("text"), pd.DataFrame({"text": texts[:10]})
    instances = [kind.request_instance(rows, row, {"column": "text"}) for row in range(10)]
    json.dumps(instances)
    np.testing.assert_array_equal(pre.transform(kind.decode(pre, instances)), pre.transform(rows))
