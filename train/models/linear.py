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

import zlib
from collections.abc import Mapping, Sequence
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
    # Character n-grams of the vocabulary's words: some tens of thousands in 5+ documents.
    "tfidf_chars": {"ngram_buckets": 2**16, "naive_bayes": False, "char_buckets": 2**16},
}
PRESET_MODALITIES = {"tfidf": ("text",), "nb_tfidf": ("text",), "tfidf_chars": ("text",)}
CHAR_GRAMS_PER_WORD = 96
"""The n-grams a token id holds at most: all of a word of up to 33 characters; a longer
word keeps its 3- and 4-grams and its first 5-grams."""
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
    """Scale each word term's class weights by its Naive Bayes log-count ratios (nb_tfidf)."""
    char_buckets: int | None = None
    """tfidf_chars: hash buckets of the character n-gram weights (`char_bucket`)."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_input_sizes(self, PRESET_MODALITIES, SHAPE_FIELDS)
        check_positive_ints(self, "vocab_size", "ngram_buckets", "char_buckets")
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
        if config.char_buckets:
            self.char_weights = nn.Embedding(config.char_buckets, classes)
            nn.init.zeros_(self.char_weights.weight)
            self.register_buffer("char_grams", torch.full((config.vocab_size, CHAR_GRAMS_PER_WORD), -1,
                                                          dtype=torch.int32))
            self.register_buffer("char_idf", torch.zeros(config.char_buckets))

    def fit_document_frequencies(self, frequencies: Mapping[str, Any],
                                 token_char_ngrams: Sequence[Sequence[str]] | None = None) -> None:
        """Set the idf buffers from the training split's document frequencies: `documents`
        (n), `min_documents`, `tokens` (df per token id) and `bigrams` ([first id, second
        id, df] for the pairs in at least min_documents documents); with naive_bayes, also
        their counts by class (`tokens_by_class`, `bigrams_by_class`) for the ratios. Two
        pairs that share a bucket share its weight and take the rarer pair's idf and ratios.
        `token_char_ngrams`, each token id's character n-grams (tfidf_chars)."""
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
        if self.config.char_buckets:
            if token_char_ngrams is None:
                raise ValueError(f"preset {self.config.preset!r} needs each token's character n-grams")
            self.fit_char_ngrams(token_char_ngrams, frequencies)

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

    def fit_char_ngrams(self, token_char_ngrams: Sequence[Sequence[str]], frequencies: Mapping[str, Any]) -> None:
        """Set the character n-gram buffers: each token id's n-grams (the text modality's
        `char_ngrams` of its word) that at least min_documents training documents hold, as
        hash buckets, and their idf from `frequencies["char_ngrams"]` ([gram, df] pairs)."""
        if len(token_char_ngrams) != self.config.vocab_size:
            raise ValueError(f"character n-grams of {len(token_char_ngrams)} tokens for a model of "
                             f"{self.config.vocab_size} token ids")
        if "char_ngrams" not in frequencies:
            raise ValueError(f"preset {self.config.preset!r} needs the document frequencies of character "
                             "n-grams: the text preprocessing counts them for data.text.tokenizer words")
        n, buckets = int(frequencies["documents"]), self.config.char_buckets
        kept = {gram: int(df) for gram, df in frequencies["char_ngrams"]}
        # The rarest gram of a shared bucket gives it its idf, as for bigrams.
        idf = torch.zeros(buckets, dtype=torch.float64)
        for gram, df in kept.items():
            bucket = char_bucket(gram, buckets)
            idf[bucket] = max(float(idf[bucket]), float(_idf(torch.tensor(float(df)), n)))
        table = torch.full(self.char_grams.shape, -1, dtype=torch.int32)
        for token_id, token_grams in enumerate(token_char_ngrams):
            if token_id <= UNK_TOKEN_ID:
                continue
            grams = [char_bucket(g, buckets) for g in token_grams if g in kept][: table.shape[1]]
            table[token_id, : len(grams)] = torch.tensor(grams, dtype=torch.int32)
        with torch.no_grad():
            self.char_grams.copy_(table)
            self.char_idf.copy_(idf.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts, _ = self._parts(x)
        return sum(parts) + self.bias

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, blocks * num_classes + 2) features, logits). The features are what the
        head sums, the unigram, the bigram and (tfidf_chars) the character n-gram part of
        each logit, and two shares that say how much of the input is language the model
        knows: of its tokens, those that are weighted terms, and of its word TF-IDF norm,
        the bigrams' part. A linear model has no hidden layer to measure, and without
        these a page of random vocabulary words was not told from an abstract
        (Mahalanobis AUROC 0.48)."""
        parts, shares = self._parts(x)
        return torch.cat([*parts, shares], dim=1), sum(parts) + self.bias

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Each token's share of every logit, (B, L, num_classes): its occurrence's part
        of its word's term, of the term of the bigram it starts, and of its character
        n-grams' terms. With the bias they sum to the logits
        (`logits_from_embeddings`), so gradient x input on them is each token's exact
        share of the predicted score, every feature block included."""
        ids = x.long()
        unigram_coefficient, bigram_coefficient, buckets, _ = self._word_coefficients(ids)
        shares = (unigram_coefficient[..., None] * self._unigram_weights(ids)
                  + bigram_coefficient[..., None] * self._bigram_weights(buckets))
        if self.config.char_buckets:
            grams = self.char_grams[ids].long()  # (B, L, grams per word), -1 where none
            value, tf, norm = self._char_values(grams)
            coefficient = torch.where(tf > 0, value / tf.clamp_min(1.0), torch.zeros_like(value)) / norm
            per_gram = coefficient.gather(1, grams.clamp_min(0).flatten(1)).view(grams.shape) * (grams >= 0)
            shares = shares + (per_gram[..., None] * self.char_weights(grams.clamp_min(0))).sum(2)
        return shares

    def logits_from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The logits for the tokens' shares `embedded` (`embed_tokens`): their sum and
        the bias; forward(x) is logits_from_embeddings(embed_tokens(x), x)."""
        return embedded.sum(1) + self.bias

    def _unigram_weights(self, ids: torch.Tensor) -> torch.Tensor:
        return self.unigram_weights(ids) * self.unigram_ratio[ids]

    def _bigram_weights(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.bigram_weights(buckets) * self.bigram_ratio[buckets]

    def _parts(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([unigram part of the logits, bigram part, character n-gram part (tfidf_chars)],
        (B, 2) shares: terms among the real tokens, bigrams in the words' squared norm)."""
        ids = x.long()
        unigram_coefficient, bigram_coefficient, buckets, shares = self._word_coefficients(ids)
        parts = [(unigram_coefficient[..., None] * self._unigram_weights(ids)).sum(1),
                 (bigram_coefficient[..., None] * self._bigram_weights(buckets)).sum(1)]
        if self.config.char_buckets:
            value, _, norm = self._char_values(self.char_grams[ids].long())
            parts.append((value / norm) @ self.char_weights.weight)
        return parts, shares.to(parts[0].dtype)

    def _word_coefficients(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per position of (B, L) ids: (the coefficient of its unigram's weights, of the
        weights of the bigram it starts, that bigram's bucket) in the L2-normalised word
        TF-IDF, and the (B, 2) shares of `_parts`."""
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
        real = (ids != PAD_TOKEN_ID).sum(1).clamp_min(1)
        shares = torch.stack([(unigram_tf > 0).sum(1) / real, 1.0 - unigram_squared / squared], dim=1)
        return unigram_share / norm, bigram_share / norm, buckets, shares

    def _char_values(self, grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From each position's n-gram buckets (B, L, K; -1: none): the document's
        (B, char_buckets) TF-IDF values (1 + ln tf) * idf, its counts tf, and the (B, 1)
        L2 norm of the values (the block is normalised on its own, as scikit-learn's
        union of two vectorizers is)."""
        flat = grams.flatten(1)
        tf = torch.zeros(grams.shape[0], self.config.char_buckets, dtype=self.char_idf.dtype, device=grams.device)
        tf.scatter_add_(1, flat.clamp_min(0), (flat >= 0).to(tf.dtype))
        value = torch.where(tf > 0, (1.0 + torch.log(tf.clamp_min(1.0))) * self.char_idf, torch.zeros_like(tf))
        return value, tf, value.norm(dim=1, keepdim=True).clamp_min(1e-6)


def char_bucket(gram: str, buckets: int) -> int:
    """A character n-gram's hash bucket: CRC-32 of its UTF-8 bytes, the same in every process."""
    return zlib.crc32(gram.encode()) % buckets


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

