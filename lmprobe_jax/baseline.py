"""``BaselineProbe``: text baselines that tell whether a probe beats surface features (lmprobe's API).

A probe that reads "truth" from layer 13 is only interesting if the prompts' words alone do not give the
answer away. Methods (``method=``):

* ``"bow"`` / ``"tfidf"``: word counts / TF-IDF (scikit-learn's vectorizers; ``max_features``,
  ``ngram_range``), then the classifier;
* ``"sentence_length"``: characters and words per prompt;
* ``"perplexity"``: the model's own per-token perplexity, ``[mean, min, max]`` over each prompt's
  next-token predictions (needs ``model``);
* ``"random"`` / ``"majority"``: chance and majority-class predictions (scikit-learn's DummyClassifier);
* ``"shuffled_labels"``: ``base_method``'s features with the training labels permuted (a sanity check:
  about chance accuracy);
* ``"sentence_transformers"``: off-the-shelf sentence embeddings (needs the ``sentence-transformers``
  package).

Classifiers come from :mod:`lmprobe_jax.classifiers` (the batched JAX estimators on dense features).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.dummy import DummyClassifier

from .classifiers import build_classifier
from .exceptions import NotFittedError
from .probe._labels import check_labels, check_prompts, split_fit_args

METHODS = (
    "bow",
    "tfidf",
    "random",
    "majority",
    "sentence_length",
    "perplexity",
    "sentence_transformers",
    "shuffled_labels",
)


def perplexity_features(
    model: Any, prompts: list[str], *, device: str = "auto", batch_size: int = 8
) -> np.ndarray:
    """``(N, 3)``: mean, min and max per-token perplexity ``exp(-log p(token | prefix))`` over each
    prompt's next-token predictions (real tokens only; a one-token prompt gets 1s), from one forward pass
    per batch of the causal LM ``model``."""
    import torch

    from lmprobe_jax_extract._source import resolve_source

    source = resolve_source(model)
    tokenizer = source.load_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = source.load_model(None, None if device == "auto" else device)
    out = np.ones((len(prompts), 3), np.float32)
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            batch = {k: v.to(lm.device) for k, v in batch.items()}
            mask = batch["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # correct under left padding too
            logits = lm(**batch, position_ids=positions).logits[:, :-1].float()
            nll = -torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            real = (mask[:, 1:] * mask[:, :-1]).bool()
            for row in range(nll.shape[0]):
                ppl = torch.exp(nll[row][real[row]])
                if ppl.numel():
                    out[start + row] = [ppl.mean(), ppl.min(), ppl.max()]
    return out


class PromptClassifier(BaseEstimator):
    """What the baselines share: a fitted ``classifier_`` over features of prompts, ``classes_``, the
    unfitted check, the classifier built from a name or cloned, and ``score`` (accuracy)."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "classifier_"):
            raise NotFittedError(f"This {type(self).__name__} has not been fitted yet: call fit first.")

    def _new_classifier(self) -> BaseEstimator:
        if isinstance(self.classifier, str):
            return build_classifier(self.classifier, self.random_state)
        return clone(self.classifier)

    def score(self, prompts: list[str], labels: Any) -> float:
        pred = self.predict(prompts)
        return float(np.mean(pred == check_labels(labels, len(pred), task="classification", training=False)))


class BaselineProbe(PromptClassifier):
    """A text baseline with lmprobe's parameters (module doc). ``fit(positive, negative)`` or
    ``fit(prompts, labels)``; ``predict``, ``predict_proba``, ``score`` on prompts.

    Attributes after ``fit``: ``classifier_``, ``classes_``, ``vectorizer_`` (bow / tfidf), ``features_``
    (the name of the feature method used).
    """

    VALID_METHODS = METHODS

    def __init__(
        self,
        method: str = "tfidf",
        classifier: str | BaseEstimator = "logistic_regression",
        random_state: int | None = None,
        max_features: int | None = 10000,
        ngram_range: tuple[int, int] = (1, 1),
        base_method: str = "tfidf",
        model: Any = None,
        device: str = "auto",
        remote: bool = False,
    ):
        self.method = method
        self.classifier = classifier
        self.random_state = random_state
        self.max_features = max_features
        self.ngram_range = ngram_range
        self.base_method = base_method
        self.model = model
        self.device = device
        self.remote = remote
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose from {METHODS}.")
        if base_method not in METHODS or base_method in ("random", "majority", "shuffled_labels"):
            raise ValueError(f"Unknown base_method {base_method!r}: choose a feature method of {METHODS}.")
        if "perplexity" in (method, method == "shuffled_labels" and base_method) and model is None:
            raise ValueError("method='perplexity' requires the 'model' parameter: pass model=... .")

    @property
    def _feature_method(self) -> str:
        return self.base_method if self.method == "shuffled_labels" else self.method

    def _features(self, prompts: list[str], *, fit: bool) -> Any:
        method = self._feature_method
        if method in ("bow", "tfidf", "random", "majority"):
            if method in ("random", "majority"):
                return np.zeros((len(prompts), 1), np.float32)
            if fit:
                from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

                cls = CountVectorizer if method == "bow" else TfidfVectorizer
                self.vectorizer_ = cls(max_features=self.max_features, ngram_range=tuple(self.ngram_range))
                return self.vectorizer_.fit_transform(prompts).astype(np.float32).toarray()
            return self.vectorizer_.transform(prompts).astype(np.float32).toarray()
        if method == "sentence_length":
            return np.array([[len(p), len(p.split())] for p in prompts], np.float32)
        if method == "perplexity":
            return perplexity_features(self.model, prompts, device=self.device)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(
                "sentence-transformers is required for method='sentence_transformers': "
                "pip install sentence-transformers"
            ) from None
        if fit:
            self._encoder = SentenceTransformer(self.model or "all-MiniLM-L6-v2")
        return np.asarray(self._encoder.encode(prompts), np.float32)

    def fit(self, positive_prompts: Any, negative_prompts: Any = None) -> BaselineProbe:
        prompts, y, _ = split_fit_args(positive_prompts, negative_prompts)
        y = check_labels(y, len(prompts), task="classification", training=True)
        self.vectorizer_ = None
        X = self._features(prompts, fit=True)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if self.method == "shuffled_labels":
            codes = np.random.default_rng(self.random_state).permutation(codes)
        if self.method in ("random", "majority"):
            strategy = "uniform" if self.method == "random" else "most_frequent"
            self.classifier_ = DummyClassifier(strategy=strategy, random_state=self.random_state)
        else:
            self.classifier_ = self._new_classifier()
        self.classifier_.fit(X, codes)
        self.features_ = self._feature_method
        return self

    def predict(self, prompts: list[str]) -> np.ndarray:
        self._check_fitted()
        return self.classes_[
            np.asarray(self.classifier_.predict(self._features(check_prompts(prompts), fit=False)))
        ]

    def predict_proba(self, prompts: list[str]) -> np.ndarray:
        self._check_fitted()
        if not hasattr(self.classifier_, "predict_proba"):
            raise AttributeError(f"{type(self.classifier_).__name__} does not support predict_proba.")
        return np.asarray(self.classifier_.predict_proba(self._features(check_prompts(prompts), fit=False)))

    def get_feature_names(self) -> list[str] | None:
        """The vocabulary (bow / tfidf), else None."""
        self._check_fitted()
        return (
            None if self.vectorizer_ is None else [str(f) for f in self.vectorizer_.get_feature_names_out()]
        )

    def get_top_features(self, n: int = 20) -> dict[str, list[tuple[str, float]]] | None:
        """The ``n`` words with the largest positive and negative weights of a linear binary classifier
        (``{"positive": [(word, weight), ...], "negative": [...]}``), else None."""
        names = self.get_feature_names()
        coef = getattr(self.classifier_, "coef_", None)
        if names is None or coef is None or len(self.classes_) != 2:
            return None
        w = np.asarray(coef, np.float64).reshape(-1)
        order = np.argsort(w)
        return {
            "positive": [(names[i], float(w[i])) for i in order[::-1][:n] if w[i] > 0],
            "negative": [(names[i], float(w[i])) for i in order[:n] if w[i] < 0],
        }
