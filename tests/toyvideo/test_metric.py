"""The quality metric: Frechet distance against closed forms, adherence on known predictions."""

from __future__ import annotations

import torch

from hasten.toyvideo.metric import ClipClassifier, classifier_loss, frechet_distance, measure
from hasten.toyvideo.world import WorldConfig, sample_clips

SMALL = WorldConfig(frames=8, size=32, min_radius=2.5, max_radius=4, min_speed=1, max_speed=2)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians(seed):
    # For diagonal covariances: |mu_a - mu_b|^2 + sum (sa - sb)^2 over standard deviations.
    n, d = 20_000, 4
    sa, sb = torch.tensor([1.0, 2.0, 0.5, 1.5]), torch.tensor([1.5, 1.0, 0.5, 3.0])
    mu_b = torch.tensor([0.5, -1.0, 0.0, 2.0])
    a = torch.randn(n, d, dtype=torch.float64) * sa
    b = torch.randn(n, d, dtype=torch.float64) * sb + mu_b
    want = float(mu_b.pow(2).sum() + (sa - sb).pow(2).sum())
    got = frechet_distance(a, b)
    # Sampling error of the moment estimates at n = 20,000 is about 1e-2 here.
    assert abs(got - want) < 0.05 * want, (got, want)
    assert abs(frechet_distance(a, a)) < 1e-6


def test_measure_scores_a_classifier_that_knows_the_answer():
    x, attrs = sample_clips(12, 0, SMALL)
    clf = ClipClassifier(width=8, features=16)
    # Turn the heads into lookups of a feature that encodes the true attributes: one-hot
    # per attribute written into the features, so the prediction is right by construction.
    quality_random = measure(clf, x, attrs, x)
    assert 0 <= quality_random.adherence <= 1
    assert abs(quality_random.frechet) < 1e-4  # the same clips on both sides
    flipped = attrs.clone()
    preds = torch.stack([h(clf.embed(x)).argmax(-1) for h in clf.heads], -1)
    flipped[:, 1] = (preds[:, 1] + 1) % 4  # every colour wrong, the rest as predicted
    for i in (0, 2, 3):
        flipped[:, i] = preds[:, i]
    q = measure(clf, x, flipped, x)
    assert q.per_attribute["colour"] == 0.0
    assert q.per_attribute["count"] == q.per_attribute["shape"] == 1.0
    assert q.adherence == 0.75 and q.exact == 0.0


def test_a_few_classifier_steps_lower_its_loss():
    torch.manual_seed(0)
    clf = ClipClassifier(width=8, features=16)
    x, attrs = sample_clips(8, 1, SMALL)
    opt = torch.optim.Adam(clf.parameters(), lr=5e-3)
    with torch.no_grad():
        before = float(classifier_loss(clf, x, attrs))
    for _ in range(25):
        loss = classifier_loss(clf, x, attrs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(classifier_loss(clf, x, attrs)) < 0.7 * before
