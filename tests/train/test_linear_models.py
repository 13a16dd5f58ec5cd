"""The linear family's TF-IDF model: its features are scikit-learn's, computed from token ids."""

import numpy as np
import pytest
import torch

from medray.train.models import PAD_TOKEN_ID, InputSpec, bigram_buckets, build_model
from medray.train.modalities.text import document_frequencies

VOCAB, LENGTH, MIN_DOCUMENTS = 40, 24, 2


def _documents(rng, n):
    """Token id rows (ids 1..VOCAB-1, some [UNK] = 1), different lengths, PAD at the end."""
    rows = np.full((n, LENGTH), PAD_TOKEN_ID, dtype=np.int64)
    for row in rows:
        length = rng.integers(3, LENGTH + 1)
        high = 12 if rng.random() < 0.5 else VOCAB  # some documents of common words only: bigrams recur
        row[:length] = rng.integers(1, high, size=length)
    return rows


def _fitted(rows, num_classes=3):
    model = build_model("linear", "tfidf", InputSpec("text", (LENGTH,), VOCAB), num_classes=num_classes)
    documents = [[int(t) for t in row if t != PAD_TOKEN_ID] for row in rows]
    model.fit_document_frequencies(document_frequencies(documents, VOCAB, MIN_DOCUMENTS))
    return model


def _sklearn_terms(row, buckets):
    """The row's terms as the model counts them: word ids (not [UNK]) and bigram buckets."""
    ids = [int(t) for t in row if t != PAD_TOKEN_ID]
    words = [f"u{t}" for t in ids if t > 1]
    pairs = [(a, b) for a, b in zip(ids, ids[1:]) if a > 1 and b > 1]
    return words + [f"b{int(bigram_buckets(torch.tensor(a), torch.tensor(b), buckets))}" for a, b in pairs]


def test_the_logits_are_a_linear_model_on_scikit_learns_tfidf_features():
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(0)
    train, test = _documents(rng, 60), _documents(rng, 12)
    model = _fitted(train)
    buckets = model.config.ngram_buckets
    vectorizer = TfidfVectorizer(analyzer=lambda row: _sklearn_terms(row, buckets), min_df=MIN_DOCUMENTS,
                                 sublinear_tf=True)
    vectorizer.fit(list(train))
    features = vectorizer.transform(list(test)).toarray()
    with torch.no_grad():
        model.unigram_weights.weight.normal_()
        model.bigram_weights.weight.normal_()
        model.bias.normal_()
    weights = np.stack([
        (model.unigram_weights.weight[int(term[1:])] if term[0] == "u" else model.bigram_weights.weight[int(term[1:])])
        .detach().double().numpy() for term in vectorizer.get_feature_names_out()])
    expected = features @ weights + model.bias.detach().double().numpy()
    with torch.no_grad():
        logits = model(torch.from_numpy(test).float()).double().numpy()
        parts, again = model.features_and_logits(torch.from_numpy(test).float())
    assert any(name[0] == "b" for name in vectorizer.get_feature_names_out())  # bigrams were kept
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    np.testing.assert_allclose(again.numpy(), logits, atol=1e-6)
    assert parts.shape == (12, 8)
    np.testing.assert_allclose((parts[:, :3] + parts[:, 3:6]).numpy() + model.bias.detach().numpy(), logits,
                               atol=1e-5)
    # The shares of known language: terms among the tokens, bigrams in the squared norm.
    terms = [[t for t in row if t != PAD_TOKEN_ID] for row in test]
    np.testing.assert_allclose(parts[:, 6].numpy(), [np.mean([model.unigram_idf[t] > 0 for t in row]) for row in terms],
                               atol=1e-6)
    names = vectorizer.get_feature_names_out()
    bigram_share = (features[:, [n[0] == "b" for n in names]] ** 2).sum(1)
    np.testing.assert_allclose(parts[:, 7].numpy(), bigram_share, atol=1e-5)


def test_rare_terms_unk_and_padding_weigh_nothing():
    rng = np.random.default_rng(1)
    train = _documents(rng, 40)
    model = _fitted(train)
    assert model.unigram_idf[:2].tolist() == [0.0, 0.0]
    frequencies = document_frequencies([[int(t) for t in r if t] for r in train], VOCAB, MIN_DOCUMENTS)
    rare = [t for t, n in enumerate(frequencies["tokens"]) if 1 < t and n < MIN_DOCUMENTS]
    assert all(model.unigram_idf[t] == 0 for t in rare) and (model.unigram_idf[2:] > 0).sum() > 0
    with torch.no_grad():
        model.unigram_weights.weight.normal_()
        model.bigram_weights.weight.normal_()
    row = torch.tensor([[5.0, 7.0, 5.0, 0.0, 0.0, *[0.0] * (LENGTH - 5)]])
    padded_differently = torch.tensor([[5.0, 7.0, 5.0, *[0.0] * (LENGTH - 3)]])
    with_unk = torch.tensor([[5.0, 1.0, 7.0, 5.0, *[0.0] * (LENGTH - 4)]])  # [UNK] adds no term, breaks a bigram
    with torch.no_grad():
        torch.testing.assert_close(model(row), model(padded_differently))
        empty = model(torch.zeros(1, LENGTH))
        only_unk = model(torch.tensor([[1.0] * LENGTH]))
    torch.testing.assert_close(empty, model.bias[None].detach())  # nothing to weigh: the prior
    torch.testing.assert_close(only_unk, empty)
    assert not torch.allclose(model(with_unk), model(row))


def test_training_data_fills_the_idf_and_a_state_dict_carries_it():
    rng = np.random.default_rng(2)
    model = _fitted(_documents(rng, 30))
    fresh = build_model("linear", "tfidf", InputSpec("text", (LENGTH,), VOCAB), num_classes=3)
    assert fresh.unigram_idf.abs().sum() == 0  # built from its config alone: no idf yet
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.unigram_idf, model.unigram_idf)
    torch.testing.assert_close(fresh.bigram_idf, model.bigram_idf)
    with pytest.raises(ValueError, match="document frequencies for 5 token ids, the model holds 40"):
        model.fit_document_frequencies({"documents": 3, "min_documents": 1, "tokens": [1] * 5, "bigrams": []})


def test_gradient_x_input_is_each_words_share_of_the_predicted_score():
    from medray.train.modalities.text import token_attributions

    rng = np.random.default_rng(3)
    model = _fitted(_documents(rng, 50))
    with torch.no_grad():
        model.unigram_weights.weight.normal_()
        model.bigram_weights.weight.zero_()
    x = torch.from_numpy(_documents(rng, 4)).float()
    weights = token_attributions(model, x)
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1)
    # With no bigram weights, a prediction's score is its words' shares plus the bias.
    np.testing.assert_allclose(weights.sum(1), (logits.gather(1, predicted[:, None])[:, 0]
                                               - model.bias[predicted]).detach().double().numpy(), atol=1e-5)
    assert (weights[x.numpy() == PAD_TOKEN_ID] == 0).all()


def _nb_ratios(features, labels, classes):
    """NBSVM's log-count ratios from a (documents, terms) matrix: each class against the
    rest, add-one smoothed over the terms, by the document counts of a binarised matrix."""
    present = features > 0
    ratios = []
    for c in range(classes):
        p = present[labels == c].sum(0) + 1.0
        q = present[labels != c].sum(0) + 1.0
        ratios.append(np.log(p / p.sum()) - np.log(q / q.sum()))
    return np.stack(ratios, axis=1)


def test_naive_bayes_weights_are_the_terms_log_count_ratios_by_class():
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(4)
    train, test = _documents(rng, 60), _documents(rng, 12)
    labels = rng.integers(0, 3, size=len(train))
    model = build_model("linear", "nb_tfidf", InputSpec("text", (LENGTH,), VOCAB), num_classes=3)
    documents = [[int(t) for t in row if t != PAD_TOKEN_ID] for row in train]
    model.fit_document_frequencies(document_frequencies(documents, VOCAB, MIN_DOCUMENTS, labels))
    buckets = model.config.ngram_buckets
    vectorizer = TfidfVectorizer(analyzer=lambda row: _sklearn_terms(row, buckets), min_df=MIN_DOCUMENTS,
                                 sublinear_tf=True)
    train_features = vectorizer.fit_transform(list(train)).toarray()
    ratios = _nb_ratios(train_features, labels, 3)
    names = vectorizer.get_feature_names_out()
    with torch.no_grad():
        model.unigram_weights.weight.normal_()
        model.bigram_weights.weight.normal_()
    weights = np.stack([
        (model.unigram_weights.weight[int(term[1:])] if term[0] == "u" else model.bigram_weights.weight[int(term[1:])])
        .detach().double().numpy() for term in names])
    expected = vectorizer.transform(list(test)).toarray() @ (weights * ratios) + model.bias.detach().double().numpy()
    with torch.no_grad():
        logits = model(torch.from_numpy(test).float()).double().numpy()
    assert np.abs(ratios).max() > 0.5  # the classes' counts differ: the scaling is not ~1
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="needs the document frequencies by class"):
        model.fit_document_frequencies(document_frequencies(documents, VOCAB, MIN_DOCUMENTS))
    with pytest.raises(ValueError, match="by class for 2 classes, the model has 3"):
        model.fit_document_frequencies(document_frequencies(documents, VOCAB, MIN_DOCUMENTS, labels % 2))


def test_character_ngrams_are_a_second_tfidf_block_and_every_token_gets_its_share():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from medray.train.modalities.text import char_ngrams
    from medray.train.modalities.text import token_attributions

    rng = np.random.default_rng(5)
    # Words that share stems and endings, so their n-grams recur across token ids.
    stems, endings = ["card", "neur", "gast", "pulm"], ["iac", "itis", "ology", "al", "o"]
    words = ["[PAD]", "[UNK]"] + [stems[i % 4] + endings[(i // 4) % 5] + "xyz"[: i % 3] for i in range(VOCAB - 2)]
    grams = [[] if i < 2 else char_ngrams(w) for i, w in enumerate(words)]
    train, test = _documents(rng, 60), _documents(rng, 12)
    documents = [[int(t) for t in row if t != PAD_TOKEN_ID] for row in train]
    model = build_model("linear", "tfidf_chars", InputSpec("text", (LENGTH,), VOCAB), num_classes=3)
    model.fit_document_frequencies(document_frequencies(documents, VOCAB, MIN_DOCUMENTS, words=words), grams)
    buckets = model.config.ngram_buckets
    word_block = TfidfVectorizer(analyzer=lambda row: _sklearn_terms(row, buckets), min_df=MIN_DOCUMENTS,
                                 sublinear_tf=True).fit(list(train))
    char_block = TfidfVectorizer(analyzer=lambda row: [g for t in row if t > 1 for g in grams[int(t)]],
                                 min_df=MIN_DOCUMENTS, sublinear_tf=True).fit(list(train))
    with torch.no_grad():
        for weights in (model.unigram_weights, model.bigram_weights, model.char_weights, model.bias):
            getattr(weights, "weight", weights).normal_()
    from medray.train.models.linear import char_bucket

    def weight_of(term):
        table = model.unigram_weights if term[0] == "u" else model.bigram_weights
        return table.weight[int(term[1:])].detach().double().numpy()

    word_weights = np.stack([weight_of(t) for t in word_block.get_feature_names_out()])
    char_weights = np.stack([model.char_weights.weight[char_bucket(g, model.config.char_buckets)].detach().double().numpy()
                             for g in char_block.get_feature_names_out()])
    assert len(char_block.get_feature_names_out()) > 20
    expected = (word_block.transform(list(test)).toarray() @ word_weights
                + char_block.transform(list(test)).toarray() @ char_weights + model.bias.detach().double().numpy())
    x = torch.from_numpy(test).float()
    with torch.no_grad():
        logits = model(x)
        features, again = model.features_and_logits(x)
    np.testing.assert_allclose(logits.double().numpy(), expected, atol=1e-4)
    assert features.shape == (12, 3 * 3 + 2)
    torch.testing.assert_close(again, logits)
    # Every block's share goes to the tokens: attributions sum to the score less the bias.
    weights = token_attributions(model, x)
    predicted = logits.argmax(1)
    np.testing.assert_allclose(weights.sum(1), (logits.gather(1, predicted[:, None])[:, 0] - model.bias[predicted])
                               .detach().double().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="needs the document frequencies of character n-grams"):
        model.fit_document_frequencies(document_frequencies(documents, VOCAB, MIN_DOCUMENTS), grams)
