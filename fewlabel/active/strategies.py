"""Which unlabelled images to label next: ranking strategies for a pool of images.

Every strategy is a pure function of what is known without the pool's labels: the current
model's probabilities for the pool images, the features of the pool and of the labelled
(training) images, and the training images' 0/1 targets. None of them takes the pool's labels,
so none can read them. All are deterministic for a ``seed`` (ties and random choices use
``numpy.random.default_rng(seed)``).

    ranking = rank_pool("rare_margin", pool_probabilities, pool_features, train_features,
                        train_targets, n=100, seed=0, classes=CLASSES)
    ranking.indices   # pool rows to label, most wanted first
    ranking.scores    # each chosen image's score (the strategy's own scale, higher = sooner)
    ranking.why       # per chosen image: the classes the model is unsure of, e.g. "cow 0.48, horse 0.31"

:func:`propose` runs one round end to end: fits the product's model on the labelled rows
(``fewlabel.model.svm.build_model``), predicts the other rows and ranks them.

Strategies (``STRATEGIES``; ``DEFAULT_STRATEGY`` is ``margin_diverse``):

``random``
    a uniform random order (the baseline).
``uncertainty``
    summed binary entropy over classes, most uncertain first.
``weighted_uncertainty``
    summed binary entropy with each class weighted by 1 / sqrt(its training positives) (weights
    of mean 1): doubt about a rare class counts more.
``rare_margin``
    per class, the image whose probability is nearest 0.5; classes take turns, rarest class
    (fewest training positives) first, so rare classes get their doubtful images early.
``margin_diverse``
    ``rare_margin``'s turns, but an image too similar (cosine of the power-normalised features
    above the pool's ``diversity_quantile``) to one already chosen in this batch is skipped.
``diverse_uncertainty``
    uncertainty + diversity (weighted k-means, Zhdanov 2019): the ``prefilter`` x n most
    uncertain images are clustered into n clusters (weights: entropy; on a seeded random
    projection to ``dims`` = 128 of the power-normalised features); the most uncertain image
    of each cluster is chosen.
``badge``
    BADGE (Ash et al. 2020) for one-vs-rest binary heads: k-means++ seeding on gradient
    embeddings ``(p_k - [p_k > 0.5]) * z`` per class (z: a seeded random projection of the
    power-normalised features to ``dims`` = 32 dimensions).
``coreset``
    pure diversity: greedy k-centre on the features (Sener & Savarese 2018), covering the pool
    points farthest from any labelled image first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewlabel.model.svm import signed_sqrt

STRATEGIES = ("random", "uncertainty", "weighted_uncertainty", "rare_margin", "margin_diverse", "diverse_uncertainty",
              "badge", "coreset")
# Measured on devdata (bench/active.py; 250 stratified + rounds of 100): the best mean gain over
# random rounds on both Lite0@352 (+0.80 mAP over 350..1000 labels, 5 seeds) and Lite2@384 (+0.63,
# 5 seeds), never below random on the mean at any budget, and the cheapest of the diverse ones.
DEFAULT_STRATEGY = "margin_diverse"
EPS = 1e-12


@dataclass
class Ranking:
    """The chosen pool rows (``indices``, most wanted first), their ``scores`` (higher = sooner,
    on the strategy's own scale), ``why`` (per chosen row: the classes in doubt, with their
    probabilities) and ``pool_scores`` (the strategy's per-image score for every pool row)."""
    strategy: str
    indices: np.ndarray
    scores: np.ndarray
    why: list[str]
    pool_scores: np.ndarray


# --------------------------------------------------------------------------- shared pieces

def binary_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Per cell binary entropy in bits (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = np.clip(np.asarray(probabilities, dtype=float), EPS, 1 - EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def embed(features: np.ndarray) -> np.ndarray:
    """Features as the classifier sees them for similarity: signed square root (the ``sqrt``
    scaler), then unit L2 norm per row (so dot products are cosines)."""
    x = signed_sqrt(np.asarray(features, dtype=np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def _project(x: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` (rows of unit norm) through a seeded Gaussian random projection to ``dims`` dimensions
    (Johnson-Lindenstrauss: distances kept up to a few per cent at 32-64 dims; a PCA of the
    1280-dim features took 15 s on the development CPU, this takes milliseconds)."""
    return x @ (rng.standard_normal((x.shape[1], dims)) / np.sqrt(dims))


def _order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score, ties broken at random (seeded)."""
    shuffle = rng.permutation(len(scores))
    return shuffle[np.argsort(-scores[shuffle], kind="stable")]


def doubt(probabilities: np.ndarray, classes=None, top: int = 3, band: tuple[float, float] = (0.1, 0.9)) -> str:
    """'cow 0.48, horse 0.31': up to ``top`` classes whose probability is inside ``band``,
    most uncertain (nearest 0.5) first; '' when the model is sure of every class."""
    p = np.asarray(probabilities, dtype=float)
    names = list(classes) if classes is not None else [str(c) for c in range(len(p))]
    inside = np.flatnonzero((p >= band[0]) & (p <= band[1]))
    inside = inside[np.argsort(np.abs(p[inside] - 0.5), kind="stable")][:top]
    return ", ".join(f"{names[c]} {p[c]:.2f}" for c in inside)


# --------------------------------------------------------------------------- strategies

def _random(n, p, rng, **_):
    scores = rng.random(len(p))
    return _order(scores, rng)[:n], scores


def _uncertainty(n, p, rng, **_):
    scores = binary_entropy(p).sum(axis=1)
    return _order(scores, rng)[:n], scores


def _weighted_uncertainty(n, p, rng, train_targets, **_):
    positives = np.maximum(np.asarray(train_targets).sum(axis=0), 1) if len(train_targets) else np.ones(p.shape[1])
    weights = 1 / np.sqrt(positives)
    scores = binary_entropy(p) @ (weights / weights.mean())
    return _order(scores, rng)[:n], scores


def _class_turns(train_targets: np.ndarray) -> np.ndarray:
    """Classes in turn order: fewest training positives first (ties: lower class index)."""
    return np.argsort(np.asarray(train_targets).sum(axis=0), kind="stable")


def _rare_margin(n, p, rng, train_targets, similarity=None, max_similarity=None, **_):
    margin = 1.0 - 2.0 * np.abs(p - 0.5)              # 1 at p = 0.5, 0 at p = 0 or 1
    per_class = [_order(margin[:, c], rng) for c in range(p.shape[1])]
    pointers = np.zeros(p.shape[1], dtype=int)
    taken = np.zeros(len(p), dtype=bool)
    chosen, chosen_scores, chosen_class = [], [], []
    turns = _class_turns(train_targets)
    skipped = np.zeros(len(p), dtype=bool)
    while len(chosen) < min(n, len(p)):
        progressed = False
        for c in turns:
            if len(chosen) >= min(n, len(p)):
                break
            order = per_class[c]
            while pointers[c] < len(order):
                row = order[pointers[c]]
                pointers[c] += 1
                if taken[row] or skipped[row]:
                    continue
                if similarity is not None and chosen and similarity(row, chosen) > max_similarity:
                    skipped[row] = True
                    continue
                taken[row] = True
                chosen.append(row)
                chosen_scores.append(margin[row, c])
                chosen_class.append(c)
                progressed = True
                break
        if not progressed:  # every class ran out (only skipped rows left): fill by margin, no diversity
            if similarity is None:
                break
            similarity = None
            pointers[:] = 0
            skipped[:] = False
    scores = margin.max(axis=1)
    return np.asarray(chosen, dtype=int), scores, np.asarray(chosen_class)


def _margin_diverse(n, p, rng, train_targets, pool_features, diversity_quantile=0.99, **_):
    z = embed(pool_features)
    sample = z[rng.permutation(len(z))[:1000]]
    pairs = (sample @ sample.T)[np.triu_indices(len(sample), k=1)]
    threshold = float(np.quantile(pairs, diversity_quantile)) if len(pairs) else np.inf  # one image: no pair

    def similarity(row, chosen):
        return float((z[chosen] @ z[row]).max())

    return _rare_margin(n, p, rng, train_targets, similarity=similarity, max_similarity=threshold)


def _diverse_uncertainty(n, p, rng, pool_features, prefilter=10, dims=128, **_):
    from sklearn.cluster import KMeans
    scores = binary_entropy(p).sum(axis=1)
    n = min(n, len(p))
    candidates = _order(scores, rng)[:min(len(p), prefilter * n)]
    zc = _project(embed(pool_features[candidates]), dims, rng)
    clusters = KMeans(n_clusters=n, n_init=1, random_state=int(rng.integers(2 ** 31 - 1))).fit_predict(
        zc, sample_weight=scores[candidates] + EPS)
    chosen = []
    for k in np.unique(clusters):
        members = candidates[clusters == k]
        chosen.append(members[np.argmax(scores[members])])
    chosen = np.asarray(chosen)
    chosen = chosen[_order(scores[chosen], rng)]
    return chosen[:n], scores


def _kmeans_pp(x: np.ndarray, n: int, rng: np.random.Generator, first: int) -> list[int]:
    """k-means++ seeding: the first centre given, then D² sampling."""
    chosen = [first]
    distance = ((x - x[first]) ** 2).sum(axis=1)
    while len(chosen) < n:
        total = distance.sum()
        if total <= 0:
            rest = np.setdiff1d(np.arange(len(x)), chosen)
            chosen.extend(rng.permutation(rest)[:n - len(chosen)].tolist())
            break
        row = int(rng.choice(len(x), p=distance / total))
        chosen.append(row)
        distance = np.minimum(distance, ((x - x[row]) ** 2).sum(axis=1))
    return chosen


def _badge(n, p, rng, pool_features, train_features, dims=32, **_):
    zp = _project(embed(pool_features), dims, rng)
    gradient = p - (p > 0.5)                                     # d loss / d logit, per class
    g = (gradient[:, :, None] * zp[:, None, :]).reshape(len(p), -1)
    norms = np.linalg.norm(g, axis=1)
    n = min(n, len(p))
    chosen = _kmeans_pp(g, n, rng, first=int(_order(norms, rng)[0]))
    return np.asarray(chosen), norms


def _coreset(n, p, rng, pool_features, train_features, **_):
    z = embed(pool_features)
    if len(train_features):
        t = embed(train_features)
        distance = np.full(len(z), np.inf)
        for start in range(0, len(t), 512):
            distance = np.minimum(distance, (2 - 2 * z @ t[start:start + 512].T).min(axis=1))
    else:
        distance = np.full(len(z), np.inf)
    scores = distance.copy()
    chosen = []
    for _ in range(min(n, len(z))):
        row = int(_order(distance, rng)[0]) if np.isinf(distance).all() else int(np.argmax(distance))
        chosen.append(row)
        distance = np.minimum(distance, 2 - 2 * z @ z[row])
        distance[row] = -np.inf
    return np.asarray(chosen), scores


_IMPLEMENTATIONS = {"random": _random, "uncertainty": _uncertainty,
                    "weighted_uncertainty": _weighted_uncertainty, "rare_margin": _rare_margin,
                    "margin_diverse": _margin_diverse, "diverse_uncertainty": _diverse_uncertainty,
                    "badge": _badge, "coreset": _coreset}


def rank_pool(strategy: str, pool_probabilities: np.ndarray, pool_features: np.ndarray,
              train_features: np.ndarray, train_targets: np.ndarray, n: int, seed: int = 0,
              classes=None, **options) -> Ranking:
    """The ``n`` pool images to label next by ``strategy`` (see the module doc), best first.

    ``pool_probabilities``: (m, C) the current model's probabilities for the pool images;
    ``pool_features``: (m, d); ``train_features`` / ``train_targets``: (k, d) / (k, C) 0/1 of the
    labelled images. ``options`` are passed to the strategy (``prefilter``, ``dims``,
    ``diversity_quantile``). Pure: the inputs are not modified; the pool's labels are not an input.
    """
    if strategy not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    p = np.asarray(pool_probabilities, dtype=float)
    if p.ndim != 2 or len(p) != len(pool_features):
        raise ValueError(f"pool_probabilities {p.shape} and pool_features {np.shape(pool_features)} disagree")
    if len(p) == 0 or n <= 0:  # nothing to rank (no pool configured, or all of it labelled)
        return Ranking(strategy, np.zeros(0, dtype=int), np.zeros(0), [], np.zeros(len(p)))
    rng = np.random.default_rng(seed)
    result = _IMPLEMENTATIONS[strategy](int(n), p, rng, pool_features=np.asarray(pool_features),
                                        train_features=np.asarray(train_features),
                                        train_targets=np.asarray(train_targets), **options)
    indices, pool_scores = np.asarray(result[0], dtype=int), np.asarray(result[1], dtype=float)
    names = list(classes) if classes is not None else [str(c) for c in range(p.shape[1])]
    if len(result) > 2:   # margin strategies: the class each image was chosen for leads its "why"
        why = []
        for row, c in zip(indices, result[2]):
            rest = doubt(np.where(np.arange(p.shape[1]) == c, -1.0, p[row]), names, top=2)
            why.append(f"{names[c]} {p[row, c]:.2f}" + (f"; also {rest}" if rest else ""))
    else:
        why = [doubt(p[row], names) for row in indices]
    return Ranking(strategy, indices, pool_scores[indices], why, pool_scores)


def propose(features: np.ndarray, targets: np.ndarray, labelled: np.ndarray, n: int, strategy: str,
            seed: int = 0, svm=None, classes=None, **options) -> Ranking:
    """One round: fit the product's model on the ``labelled`` rows (a boolean mask or indices) and
    rank the other rows by ``strategy``. ``targets`` of unlabelled rows are never read (they may
    hold anything). The returned ``indices`` are rows of ``features`` (not of the pool)."""
    from fewlabel.active.fitting import DEFAULT_SVM, fit_predict
    mask = np.zeros(len(features), dtype=bool)
    mask[labelled] = True
    pool = np.flatnonzero(~mask)
    train_targets = np.asarray(targets)[mask].astype(np.int8)
    pool_probabilities = fit_predict(features[mask], train_targets, [features[pool]], svm or DEFAULT_SVM)[0]
    ranking = rank_pool(strategy, pool_probabilities, features[pool], features[mask], train_targets, n, seed,
                        classes, **options)
    ranking.indices = pool[ranking.indices]
    pool_scores = np.full(len(features), np.nan)
    pool_scores[pool] = ranking.pool_scores
    ranking.pool_scores = pool_scores
    return ranking
