"""The pure evaluation maths: weighted k-NN against a brute-force NumPy reference, RankMe and
feature spread on embeddings whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightly.utils.benchmarking import knn_predict

from jepa_lightning.callbacks.metrics import (
    feature_std,
    knn_accuracy,
    rankme,
    weighted_knn_predict,
)


def reference_knn(
    queries: np.ndarray, bank: np.ndarray, labels: np.ndarray, c: int, k: int, tau: float
) -> np.ndarray:
    """Brute force: cosine similarity, the min(k, N) most similar vote exp(sim/τ); equal
    similarities prefer the lower bank index, equal scores the lower class. Returns the
    full class ranking (Q, C)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sim = q @ b.T
    k = min(k, len(bank))
    out = []
    for i in range(len(q)):
        neighbours = np.argsort(-sim[i], kind="stable")[:k]
        scores = np.zeros(c)
        for j in neighbours:
            scores[labels[j]] += np.exp(sim[i, j] / tau)
        out.append(np.argsort(-scores, kind="stable"))
    return np.stack(out)


def _ranking(q, b, y, c, k, tau=0.1, **chunks) -> np.ndarray:
    pred = weighted_knn_predict(
        torch.from_numpy(q), torch.from_numpy(b), torch.from_numpy(y), c, k, tau, c, **chunks
    )
    return pred.numpy()


@pytest.mark.parametrize("chunks", [{}, {"query_chunk": 7, "bank_chunk": 33}])
@pytest.mark.parametrize("k", [1, 20, 200])
def test_knn_matches_bruteforce_gaussian(chunks: dict, k: int) -> None:
    rng = np.random.default_rng(0)
    c = 10
    # unequal classes, several smaller than k, one with 2 members
    sizes = [2, 5, 10, 20, 40, 60, 80, 30, 3, 50]
    y = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    centres = rng.normal(size=(c, 16))
    b = centres[y] * 0.8 + rng.normal(size=(len(y), 16))
    q = centres[rng.integers(0, c, 60)] * 0.8 + rng.normal(size=(60, 16))
    expected = reference_knn(q, b, y, c, k, 0.1)
    np.testing.assert_array_equal(_ranking(q, b, y, c, k, **chunks), expected)


@pytest.mark.parametrize("chunks", [{}, {"query_chunk": 5, "bank_chunk": 16}])
def test_knn_matches_bruteforce_with_similarity_ties(chunks: dict) -> None:
    # ±1 vectors in 16-D normalise to ±1/4 exactly: similarities are exact multiples of 1/16,
    # so many neighbours tie at the k-th place and the tie rule decides who votes.
    rng = np.random.default_rng(1)
    b = rng.choice([-1.0, 1.0], size=(150, 16))
    b = np.concatenate([b, b[:40]])  # exact duplicates with other labels
    y = rng.integers(0, 7, len(b))
    q = rng.choice([-1.0, 1.0], size=(50, 16))
    for k in (3, 10, 64):
        expected = reference_knn(q, b, y, 7, k, 0.1)
        np.testing.assert_array_equal(_ranking(q, b, y, 7, k, **chunks), expected)


def test_knn_explicit_ties_and_k_above_bank_size() -> None:
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 2])
    query = torch.tensor([[2.0, 0.0]])
    # k=1: equal similarity -> the lower bank index (label 1) votes
    assert weighted_knn_predict(query, bank, labels, 3, k=1)[0, 0] == 1
    # k=2: classes 1 and 0 tie exactly -> the lower class wins
    assert weighted_knn_predict(query, bank, labels, 3, k=2)[0].tolist() == [0, 1, 2]
    # k larger than the bank uses all 3; the orthogonal vector's vote weighs exp(0)=1
    pred = weighted_knn_predict(query, bank, labels, 3, k=200)
    assert pred[0].tolist() == [0, 1, 2]
    one_far = weighted_knn_predict(torch.tensor([[0.0, 1.0]]), bank, labels, 3, k=200)
    assert one_far[0, 0] == 2


def test_knn_equals_lightly_top1_without_ties() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(500, 32, generator=g), dim=1)
    labels = torch.randint(0, 10, (500,), generator=g)
    q = torch.nn.functional.normalize(torch.randn(80, 32, generator=g), dim=1)
    ours = weighted_knn_predict(q, bank, labels, 10, k=200, temperature=0.1)[:, 0]
    theirs = knn_predict(q, bank.T.contiguous(), labels, 10, knn_k=200, knn_t=0.1)[:, 0]
    assert torch.equal(ours, theirs)


def test_knn_well_separated_clusters_are_perfect() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8) * 10
    y_bank = torch.arange(8).repeat(30)
    y_q = torch.arange(8).repeat(5)
    bank = centres[y_bank] + torch.randn(len(y_bank), 8, generator=g)
    q = centres[y_q] + torch.randn(len(y_q), 8, generator=g)
    acc = knn_accuracy(q, y_q, bank, y_bank, 8, k=200, temperature=0.1)
    assert acc == {1: 1.0, 5: 1.0}
    # top-5 counts the label anywhere in the first 5; random labels give ~5/8
    acc_random = knn_accuracy(q, y_q[torch.randperm(40, generator=g)], bank, y_bank, 8)
    assert acc_random[1] < 0.5 < acc_random[5]


def test_rankme_isotropic_and_rank_one() -> None:
    g = torch.Generator().manual_seed(0)
    d = 32
    iso = torch.randn(8192, d, generator=g)
    assert d * 0.97 < rankme(iso) <= d
    rank1 = torch.randn(8192, 1, generator=g) * torch.randn(1, d, generator=g)
    assert rankme(rank1) == pytest.approx(1.0, abs=0.01)
    rank4 = torch.randn(8192, 4, generator=g) @ torch.linalg.qr(torch.randn(d, d))[0][:4]
    assert rankme(rank4) == pytest.approx(4.0, rel=0.05)


def test_feature_std() -> None:
    g = torch.Generator().manual_seed(0)
    d = 64
    iso = torch.randn(20000, d, generator=g)
    assert feature_std(iso) == pytest.approx(d**-0.5, rel=0.02)
    collapsed = torch.randn(1, d, generator=g).expand(100, d) * torch.rand(100, 1, generator=g)
    assert feature_std(collapsed) < 1e-5
