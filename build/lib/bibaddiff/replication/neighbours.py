"""Exact nearest neighbours and near-duplicate groups of unit-norm embeddings (cosine similarity = dot product)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError

# float32 embeddings normalised in float64 keep norms within ~1e-6 of 1; 1e-3 still catches unnormalised input.
_NORM_TOLERANCE = 1e-3


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, k: int = 1,
                       batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours: similarities and indices, both (Nq, k), most similar first.

    Equal similarities are ordered by the lower reference index. Queries go in batches of ``batch_size``, so
    memory is ``batch_size * len(references)`` floats.
    """
    queries = check_embeddings(queries, "queries")
    references = check_embeddings(references, "references")
    if queries.shape[1] != references.shape[1]:
        raise BibaddiffError(f"queries have {queries.shape[1]} dimensions but references have {references.shape[1]}")
    k = check_int(k, "k", 1)
    if k > len(references):
        raise BibaddiffError(f"k={k} exceeds the number of references ({len(references)})")
    batch_size = check_int(batch_size, "batch_size", 1)
    similarities = np.empty((len(queries), k), np.float32)
    indices = np.empty((len(queries), k), np.int64)
    for start in tqdm(range(0, len(queries), batch_size), desc="nearest neighbours", unit="batch",
                      disable=len(queries) <= batch_size, mininterval=2):
        scores = queries[start:start + batch_size] @ references.T
        top = _top_k_lowest_index_first(scores, k)
        indices[start:start + len(scores)] = top
        similarities[start:start + len(scores)] = np.take_along_axis(scores, top, axis=1)
    # Rounding can push a self-similarity a hair above 1; cosine lies in [-1, 1].
    np.clip(similarities, -1.0, 1.0, out=similarities)
    return similarities, indices


def _top_k_lowest_index_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, descending, ties by lower index.

    argpartition finds the k-th largest value in linear time; everything at least that large is a candidate.
    Candidates come out of ``nonzero`` in ascending index order, so a stable sort by score keeps ties in
    index order. Rows with more than k candidates (ties at the k-th value) are rare and sorted one by one.
    """
    n = scores.shape[1]
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]  # argmax returns the first (lowest) index among equal maxima
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth_largest = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    candidate = scores >= kth_largest
    counts = candidate.sum(axis=1)
    top = np.empty((len(scores), k), np.int64)
    exact = np.flatnonzero(counts == k)
    if len(exact):
        columns = np.nonzero(candidate[exact])[1].reshape(len(exact), k)
        order = np.argsort(-np.take_along_axis(scores[exact], columns, axis=1), axis=1, kind="stable")
        top[exact] = np.take_along_axis(columns, order, axis=1)
    for row in np.flatnonzero(counts != k):
        columns = np.flatnonzero(candidate[row])
        top[row] = columns[np.argsort(-scores[row, columns], kind="stable")[:k]]
    return top


def check_embeddings(embeddings: np.ndarray, name: str) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] == 0 or not np.issubdtype(embeddings.dtype, np.floating):
        raise BibaddiffError(f"{name} must be a float array (N, D) of embeddings; got {embeddings.dtype} {embeddings.shape}")
    embeddings = embeddings.astype(np.float32, copy=False)
    if not np.all(np.isfinite(embeddings)):
        raise BibaddiffError(f"{name} contain NaN or infinite values")
    if len(embeddings):
        deviation = np.abs(np.linalg.norm(embeddings, axis=1) - 1.0)
        worst = int(np.argmax(deviation))
        if deviation[worst] > _NORM_TOLERANCE:
            raise BibaddiffError(
                f"{name} must have unit L2 norm (use l2_normalise); row {worst} has norm "
                f"{np.linalg.norm(embeddings[worst]):.6g}"
            )
    return embeddings


def near_duplicate_groups(embeddings: np.ndarray, threshold: float, batch_size: int = 512) -> list[list[int]]:
    """Groups (size >= 2) of images linked by chains of pairwise similarity >= ``threshold``.

    Exact: every pair is compared, in batches of rows. Components are merged batch by batch with scipy's
    connected components over the previous components (each node linked to its component's lowest index) plus
    the batch's edges, so memory stays bounded by one batch. A threshold of 1 is read as 1 - 1e-6, so that
    exact duplicates count despite float rounding. Each group is sorted; groups are ordered by first index.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    embeddings = check_embeddings(embeddings, "embeddings")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not -1.0 < threshold <= 1.0:
        raise BibaddiffError(f"threshold must lie in (-1, 1]; got {threshold!r}")
    batch_size = check_int(batch_size, "batch_size", 1)
    n = len(embeddings)
    # Clipping to 1 matters for threshold 1.0 (exact duplicates) whose self-products round just below or above.
    threshold_f32 = np.float32(min(float(threshold), 1.0 - 1e-6))
    representative = np.arange(n)  # lowest index of each image's component so far
    for start in tqdm(range(0, n, batch_size), desc="near duplicates", unit="batch",
                      disable=n <= batch_size, mininterval=2):
        stop = min(start + batch_size, n)
        # Only pairs (i, j) with j > i: compare the batch against itself and everything after it.
        scores = embeddings[start:stop] @ embeddings[start:].T
        rows, cols = np.nonzero(scores >= threshold_f32)
        keep = cols > rows
        if not keep.any():
            continue
        sources = np.concatenate([np.arange(n), rows[keep] + start])
        targets = np.concatenate([representative, cols[keep] + start])
        graph = coo_matrix((np.ones(len(sources), np.int8), (sources, targets)), shape=(n, n))
        num_components, labels = connected_components(graph, directed=False)
        lowest = np.full(num_components, n, np.int64)
        np.minimum.at(lowest, labels, np.arange(n))
        representative = lowest[labels]
    order = np.argsort(representative, kind="stable")
    boundaries = np.flatnonzero(np.diff(representative[order])) + 1
    groups = [members.tolist() for members in np.split(order, boundaries) if len(members) >= 2]
    return sorted(groups, key=lambda members: members[0])
