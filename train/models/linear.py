"""Linear models: the classical reference, trained, checkpointed, calibrated and served as
every other medray model is.

"tfidf": logistic regression on TF-IDF features of a text's unigrams and hashed bigrams,
computed inside the model from its (B, L) token ids (padded with PAD_TOKEN_ID at the
end), as scikit-learn's `TfidfVectorizer(sublinear_tf=True)` computes them: each term's
value is (1 + ln tf) * idf, idf = ln((1 + n) / (1 + df)) + 1 over the n training
documents, and the document's vector is L2-normalised. On a few thousand documents
trained from scratch this is the model to beat (Medical Abstracts: every neural preset
here fell short of it), so medray ships it as a preset rather than only as a baseline.

"nb_tfidf": the same model with each term's weight for a class scaled by the term's
Naive Bayes log-count ratio for that class, r = ln((p / |p|) / (q / |q|)) where p and q
are 1 + the number of training documents of the class and of the other classes that hold
the term (Wang & Manning 2012, "Baselines and bigrams", NBSVM, here as one multinomial
model rather than one per class). The L2 penalty then pulls each weight towards what the
term's class counts alone say rather than towards 0: a prior that helps where documents
are few (Medical Abstracts, validation macro-F1 0.671 against 0.657 for plain TF-IDF at
their best strength, in scikit-learn-equal features).

The document frequencies are the training split's, held as buffers (in the state_dict,
so a checkpoint carries them) and filled once before training by
`fit_document_frequencies` from the text modality's fitted statistics
(`medray.train.modalities.text`): a model built from its config alone gives bias-only
logits until then. Terms in fewer than `min_documents` training documents, [PAD] and
[UNK] get idf 0, so they weigh nothing and stay out of the norm, as the vocabulary's
rare words do.

Output: logits (B, num_classes). `features_and_logits` gives the unigram and the bigram
parts of the logits (what the head sums with the bias) and two shares of known language
(see there), (B, 2 * num_classes + 2): what out-of-distribution detection measures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medray.train.models import (
    PAD_TOKEN_ID,
    UNK_TOKEN_ID,
    ModelConfigError,
    apply_preset,
    bigram_buckets,
    check_input_sizes,
    check_num_classes,
    check_positive_ints,
    input_shape_fields,
)

PRESETS: dict[str, dict[str, object]] = {
    # 2**16 buckets hold the few tens of thousands of bigrams in 5+ documents of a
    # hospital's note collection with few collisions.
    "tfidf": {"ngram_buckets": 2**16, "naive_bayes": False},
    "nb_tfidf": {"ngram_buckets": 2**16, "naive_bayes": True},
}
PRESET_MODALITIES = {"tfidf": ("text",), "nb_tfidf": ("text",)}
AXIS_FIELDS = {"tokens": "seq_len"}
SHAPE_FIELDS = input_shape_fields(PRESET_MODALITIES, AXIS_FIELDS)


@dataclass
class LinearConfig:
    preset: str
    """Architecture: a key of PRESETS ("tfidf")."""
    num_classes: int
    """Number of logits."""
    seq_len: int | None = None
    """Text: tokens per document the model was built for (longer inputs are accepted)."""
    vocab_size: int | None = None
    """Text: token ids the unigram weights hold."""
    ngram_buckets: int | None = None
    """tfidf: hash buckets of the bigram weights (`bigram_buckets`)."""
    naive_bayes: bool | None = None
    """Scale each term's class weights by its Naive Bayes log-count ratios (nb_tfidf)."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_input_sizes(self, PRESET_MODALITIES, SHAPE_FIELDS)
        check_positive_ints(self, "vocab_size", "ngram_buckets")
        if self.vocab_size is None:
            raise ModelConfigError(f"LinearConfig: preset {self.preset!r} needs vocab_size")
        check_num_classes(self)


class LinearModel(nn.Module):
    """Logistic regression on TF-IDF features of unigrams and hashed bigrams, optionally
    with Naive Bayes scaled weights."""

    def __init__(self, config: LinearConfig) -> None:
        super().__init__()
        self.config = config
        classes = config.num_classes
        # Zero weights: the convex problem's usual start, and every class equally likely.
        self.unigram_weights = nn.Embedding(config.vocab_size, classes)
        self.bigram_weights = nn.Embedding(config.ngram_buckets, classes)
        nn.init.zeros_(self.unigram_weights.weight)
        nn.init.zeros_(self.bigram_weights.weight)
        self.bias = nn.Parameter(torch.zeros(classes))
        self.register_buffer("unigram_idf", torch.zeros(config.vocab_size))
        self.register_buffer("bigram_idf", torch.zeros(config.ngram_buckets))
        # Effective weight = weight * ratio: all ones (plain logistic regression) unless
        # naive_bayes, where fit_document_frequencies sets them.
        self.register_buffer("unigram_ratio", torch.ones(config.vocab_size, classes))
        self.register_buffer("bigram_ratio", torch.ones(config.ngram_buckets, classes))

    def fit_document_frequencies(self, frequencies: Mapping[str, Any]) -> None:
        """Set the idf buffers from the training split's document frequencies: `documents`
        (n), `min_documents`, `tokens` (df per token id) and `bigrams` ([first id, second
        id, df] for the pairs in at least min_documents documents); with naive_bayes, also
        their counts by class (`tokens_by_class`, `bigrams_by_class`) for the ratios. Two
        pairs that share a bucket share its weight and take the rarer pair's idf and ratios."""
        n, least = int(frequencies["documents"]), int(frequencies["min_documents"])
        df = torch.as_tensor(frequencies["tokens"], dtype=torch.float64)
        if df.shape != self.unigram_idf.shape:
            raise ValueError(f"document frequencies for {df.shape[0]} token ids, the model holds "
                             f"{self.unigram_idf.shape[0]}")
        unigram_idf = torch.where(df >= least, _idf(df, n), torch.zeros_like(df))
        unigram_idf[:UNK_TOKEN_ID + 1] = 0.0  # [PAD] and [UNK]: no term
        bigram_idf = torch.zeros(self.bigram_idf.shape, dtype=torch.float64)
        pairs = torch.as_tensor(frequencies["bigrams"], dtype=torch.long).reshape(-1, 3)
        if len(pairs):
            buckets = bigram_buckets(pairs[:, 0], pairs[:, 1], self.config.ngram_buckets)
            bigram_idf.scatter_reduce_(0, buckets, _idf(pairs[:, 2].double(), n), reduce="amax")
        with torch.no_grad():
            self.unigram_idf.copy_(unigram_idf.float())
            self.bigram_idf.copy_(bigram_idf.float())
        if self.config.naive_bayes:
            self._fit_ratios(frequencies, unigram_idf > 0, pairs)

    def _fit_ratios(self, frequencies: Mapping[str, Any], is_term: torch.Tensor, pairs: torch.Tensor) -> None:
        """The Naive Bayes log-count ratios of the weighted terms (idf > 0), every class
        against the rest, with add-one smoothing over all those terms together."""
        if "tokens_by_class" not in frequencies:
            raise ValueError("preset nb_tfidf needs the document frequencies by class: the text "
                             "preprocessing was fitted without the train split's labels")
        classes = self.config.num_classes
        by_class = torch.as_tensor(frequencies["tokens_by_class"], dtype=torch.float64).reshape(-1, is_term.shape[0]).T
        if by_class.shape[1] != classes:
            raise ValueError(f"document frequencies by class for {by_class.shape[1]} classes, the model "
                             f"has {classes}")
        bigram_by_class = torch.as_tensor(frequencies["bigrams_by_class"], dtype=torch.float64)
        unigram_in = by_class[is_term]  # (terms, classes): documents of each class holding it
        counts = torch.cat([unigram_in, bigram_by_class.reshape(len(pairs), classes)])
        p = counts + 1.0
        q = counts.sum(1, keepdim=True) - counts + 1.0
        ratios = torch.log(p / p.sum(0)) - torch.log(q / q.sum(0))
        unigram_ratio = torch.ones(self.unigram_ratio.shape, dtype=torch.float64)
        unigram_ratio[is_term] = ratios[: len(unigram_in)]
        bigram_ratio = torch.ones(self.bigram_ratio.shape, dtype=torch.float64)
        if len(pairs):
            buckets = bigram_buckets(pairs[:, 0], pairs[:, 1], self.config.ngram_buckets)
            # Rarest pair first (a stable sort), then each bucket's first: the pair whose
            # idf the bucket holds.
            order = torch.sort(pairs[:, 2], stable=True).indices
            first = {}
            for index in order.tolist():
                first.setdefault(int(buckets[index]), index)
            chosen = torch.tensor(list(first.values()), dtype=torch.long)
            bigram_ratio[buckets[chosen]] = ratios[len(unigram_in):][chosen]
        with torch.no_grad():
            self.unigram_ratio.copy_(unigram_ratio.float())
            self.bigram_ratio.copy_(bigram_ratio.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.embed_tokens(x), x)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, 2 * num_classes + 2) features, logits). The features are what the head
        sums, the unigram then the bigram part of each logit, and two shares that say
        how much of the input is language the model knows: of its tokens, those that are
        weighted terms, and of its TF-IDF norm, the bigrams' part. A linear model has no
        hidden layer to measure, and without these a page of random vocabulary words
        was not told from an abstract (Mahalanobis AUROC 0.48)."""
        unigram, bigram, shares = self._parts(self.embed_tokens(x), x)
        return torch.cat([unigram, bigram, shares], dim=1), unigram + bigram + self.bias

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Each token id's effective class weights, (B, L, num_classes): gradient x input
        on these is each occurrence's exact share of its unigram's term in the logit."""
        ids = x.long()
        return self.unigram_weights(ids) * self.unigram_ratio[ids]

    def logits_from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The logits for unigram weights `embedded` of the ids `x`; forward(x) is
        logits_from_embeddings(embed_tokens(x), x)."""
        unigram, bigram, _ = self._parts(embedded, x)
        return unigram + bigram + self.bias

    def _parts(self, embedded: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unigram part of the logits, bigram part, (B, 2) shares: terms among the real
        tokens, bigrams in the squared norm)."""
        ids = x.long()
        following = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), PAD_TOKEN_ID)], dim=1)
        is_bigram = (ids > UNK_TOKEN_ID) & (following > UNK_TOKEN_ID)  # two words
        buckets = bigram_buckets(ids, following, self.config.ngram_buckets)
        unigram_share, unigram_tf = _occurrence_shares(ids, self.unigram_idf[ids])
        bigram_share, bigram_tf = _occurrence_shares(
            torch.where(is_bigram, buckets, -1), self.bigram_idf[buckets] * is_bigram)
        # Each occurrence carries value / tf of its term, so a term's occurrences sum to
        # its value, and share^2 * tf summed over them to value^2: the squared norm.
        unigram_squared = (unigram_share ** 2 * unigram_tf).sum(1)
        squared = (unigram_squared + (bigram_share ** 2 * bigram_tf).sum(1)).clamp_min(1e-12)
        norm = squared.sqrt()[:, None]
        unigram = ((unigram_share / norm)[..., None] * embedded).sum(1)
        bigram_weights = self.bigram_weights(buckets) * self.bigram_ratio[buckets]
        bigram = ((bigram_share / norm)[..., None] * bigram_weights).sum(1)
        real = (ids != PAD_TOKEN_ID).sum(1).clamp_min(1)
        shares = torch.stack([(unigram_tf > 0).sum(1) / real, 1.0 - unigram_squared / squared], dim=1)
        return unigram, bigram, shares.to(unigram.dtype)


def _idf(df: torch.Tensor, documents: int) -> torch.Tensor:
    """scikit-learn's smoothed idf: ln((1 + n) / (1 + df)) + 1."""
    return torch.log((1.0 + documents) / (1.0 + df)) + 1.0


def _occurrence_shares(terms: torch.Tensor, idf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of (B, L) `terms` (-1: none) with its term's `idf` (0: no feature):
    (the occurrence's share of its term's value (1 + ln tf) * idf, that is value / tf;
    tf, the term's count in the row, where the term has a feature, else 0)."""
    counts = (terms[:, :, None] == terms[:, None, :]).sum(-1).to(idf.dtype)
    present = idf > 0
    tf = torch.where(present, counts, torch.zeros_like(counts))
    value = (1.0 + torch.log(counts)) * idf
    share = torch.where(present, value / counts, torch.zeros_like(value))
    return share, tf

