"""Pure evaluation maths used by the monitoring callbacks, usable without a Trainer.

* :func:`weighted_knn_predict` / :func:`knn_accuracy` — the weighted k-NN classifier of the
  CNN-JEPA / lightly / Wu et al. (2018) protocol: cosine similarity, the ``k`` most similar
  bank entries vote with weight ``exp(sim / τ)`` (k = 200, τ = 0.1 by default).
* :func:`rankme` — RankMe (Garrido et al., 2023), the smooth effective rank of an embedding
  matrix.
* :func:`feature_std` — mean per-dimension standard deviation of L2-normalised embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _knn_scores(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    query_chunk: int,
    bank_chunk: int,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, scores)`` with class scores ``(q, C)`` for each chunk of queries."""
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected (Q, D) and (N, D) features, got {queries.shape}, {bank.shape}")
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError("bank and bank_labels differ in length")
    if bank.shape[0] == 0:
        raise ValueError("the k-NN feature bank is empty")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank, dim=1)  # (N, D)
    bank_labels = bank_labels.to(bank.device).long()
    for start in range(0, queries.shape[0], query_chunk):
        q = F.normalize(queries[start : start + query_chunk].to(bank), dim=1)  # (q, D)
        # Running top-k, kept sorted by (similarity desc, bank index asc): every bank chunk
        # holds larger indices than the kept entries, so a stable sort of [kept, chunk]
        # breaks similarity ties towards the lower bank index, independently of chunking.
        top_sim = q.new_empty((q.shape[0], 0))  # (q, <=k)
        top_idx = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for b0 in range(0, bank.shape[0], bank_chunk):
            sim = q @ bank[b0 : b0 + bank_chunk].T  # (q, b)
            idx = torch.arange(b0, b0 + sim.shape[1], device=q.device).expand_as(sim)
            sim = torch.cat([top_sim, sim], dim=1)  # (q, <=k + b)
            idx = torch.cat([top_idx, idx], dim=1)
            order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
            top_sim, top_idx = sim.gather(1, order), idx.gather(1, order)  # (q, k)
        weights = (top_sim / temperature).exp()  # (q, k)
        scores = q.new_zeros((q.shape[0], num_classes))  # (q, C)
        scores.scatter_add_(1, bank_labels[top_idx], weights)
        yield start, scores


@torch.no_grad()
def weighted_knn_predict(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    num_predictions: int = 5,
    query_chunk: int = 1024,
    bank_chunk: int = 16384,
) -> Tensor:
    """Weighted k-NN class ranking.

    Queries and bank are L2-normalised; each query's ``min(k, N)`` most cosine-similar bank
    entries vote for their class with weight ``exp(sim / temperature)``. Ties are broken
    deterministically: equal similarities prefer the lower bank index, equal class scores the
    lower class index (lightly's ``knn_predict`` computes the same scores but breaks ties
    arbitrarily and builds the full ``(Q, N)`` similarity matrix).

    Memory beyond the inputs is bounded, whatever ``Q`` and ``N``: one bank-chunk step holds
    ``query_chunk × (k + bank_chunk)`` candidates at about 28 bytes each (similarities,
    int64 bank indices and their sorted copies; ≈ 0.5 GB at the defaults), plus
    ``query_chunk × num_classes`` scores and an L2-normalised copy of the bank — never the
    full ``(Q, N)`` matrix.

    Args:
        queries: Query features ``(Q, D)``.
        bank: Labelled bank features ``(N, D)``; computation runs on its device and dtype.
        bank_labels: Integer labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        k: Number of neighbours (clipped to ``N``).
        temperature: Softmax-like temperature ``τ`` of the vote weights.
        num_predictions: How many top classes to return per query (clipped to ``C``).
        query_chunk: Queries processed at once.
        bank_chunk: Bank entries compared at once.

    Returns:
        Class indices ``(Q, min(num_predictions, C))``, most likely first.
    """
    m = min(num_predictions, num_classes)
    out = torch.empty((queries.shape[0], m), dtype=torch.long, device=bank.device)
    for start, scores in _knn_scores(
        queries, bank, bank_labels, num_classes, k, temperature, query_chunk, bank_chunk
    ):
        ranking = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :m]
        out[start : start + scores.shape[0]] = ranking
    return out


@torch.no_grad()
def knn_accuracy(
    queries: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    topk: Sequence[int] = (1, 5),
    query_chunk: int = 1024,
    bank_chunk: int = 16384,
) -> dict[int, float]:
    """Top-``t`` accuracy of :func:`weighted_knn_predict` for every ``t`` in ``topk``.

    ``t`` larger than ``num_classes`` is clipped (top-5 of a 3-class problem is 1.0).

    Returns:
        ``{t: accuracy in [0, 1]}``.
    """
    if queries.shape[0] == 0:
        raise ValueError("no query features")
    predictions = weighted_knn_predict(
        queries, bank, bank_labels, num_classes, k, temperature, max(topk), query_chunk, bank_chunk
    )  # (Q, m)
    hits = predictions == query_labels.to(predictions.device).long()[:, None]  # (Q, m)
    return {t: hits[:, :t].any(dim=1).double().mean().item() for t in topk}


@torch.no_grad()
def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): ``exp(−Σ p_i log p_i)`` with ``p_i = σ_i / Σσ + eps``.

    ``σ`` are the singular values of the ``(N, D)`` embedding matrix (not centred, as in the
    paper). Ranges from about 1 (rank-1 / collapsed) to ``min(N, D)`` (isotropic).
    """
    s = torch.linalg.svdvals(embeddings.float())  # (min(N, D),)
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny) + eps
    return torch.exp(-(p * p.log()).sum()).item()


@torch.no_grad()
def feature_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised ``(N, D)`` embeddings.

    0 for complete collapse; about ``1/√D`` for embeddings spread uniformly on the sphere.
    """
    return F.normalize(embeddings.float(), dim=1).std(dim=0).mean().item()


@torch.no_grad()
def target_shares(position_mean: Tensor) -> dict[str, float]:
    """Split the squared norm of per-cell L2-normalised target vectors into three parts.

    With ``t̂`` the unit target vector of image ``b`` at cell ``p``, ``μ_p`` its mean over images
    and ``μ`` the mean of ``μ_p`` over cells, the mean of ``‖t̂‖² = 1`` splits orthogonally into
    ``‖μ‖²`` (``batch_mean``: the same for every image and cell), ``mean_p ‖μ_p − μ‖²``
    (``position``: predictable from the cell's position alone) and ``mean ‖t̂ − μ_p‖²``
    (``image``: what depends on the image). A predictor can match the first two without looking
    at the image; a large, growing ``batch_mean`` share is the shortcut that precedes collapse.

    Args:
        position_mean: ``(C, h, w)`` — ``μ_p``, the mean over images of the unit target vectors.

    Returns:
        ``batch_mean``, ``position`` and ``image`` shares, summing to 1.
    """
    mu_p = position_mean.float()  # (C, h, w)
    mu = mu_p.mean(dim=(1, 2))  # (C,)
    batch_mean = float((mu**2).sum())
    position = float(((mu_p - mu[:, None, None]) ** 2).sum(dim=0).mean())
    return {"batch_mean": batch_mean, "position": position, "image": 1.0 - batch_mean - position}


@torch.no_grad()
def target_decomposition(maps: Tensor) -> dict[str, float]:
    """:func:`target_shares` of a batch of ``(B, C, h, w)`` target maps."""
    return target_shares(F.normalize(maps.float(), dim=1).mean(dim=0))
