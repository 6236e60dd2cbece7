"""DSF, center and LGM losses: hand-computed values, special cases, gradients and margins."""
import math

import pytest
import torch
import torch.nn.functional as F

from hsbs_lib.losses.center import CenterLoss
from hsbs_lib.losses.dsf import DeepSmoothFeatureLoss
from hsbs_lib.losses.lgm import LGMLoss


def _set(parameter, values):
    with torch.no_grad():
        parameter.copy_(torch.as_tensor(values, dtype=torch.float32))


def test_dsf_matches_hand_computation():
    loss = DeepSmoothFeatureLoss(3, 2, eps=0.3, mu=0.5, margin=2.0)
    _set(loss.centers, [[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    features = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    labels = torch.tensor([0, 2])
    # q(label 0) = (0.8, 0.1, 0.1) -> c^ = (0.1, 0.3), ||x - c^||^2 = 0.81 + 0.49 = 1.30
    # q(label 2) = (0.1, 0.1, 0.8) -> c^ = (0.1, 2.4), ||x - c^||^2 = 0.01 + 5.76 = 5.77
    pull = 0.5 * (1.30 + 5.77) / 2
    # centre distances 1, 3, sqrt(10); only the pair at distance 1 is inside m = 2: (2 - 1)^2 twice in 6
    separation = 2 * (2.0 - 1.0) ** 2 / 6
    assert loss.pull(features, labels).item() == pytest.approx(pull, rel=1e-6)
    assert loss.separation().item() == pytest.approx(separation, rel=1e-6)
    assert loss(features, labels).item() == pytest.approx(pull + 0.5 * separation, rel=1e-6)


def test_dsf_without_smoothing_and_margin_is_center_loss():
    torch.manual_seed(0)
    dsf = DeepSmoothFeatureLoss(5, 8, eps=0.0, mu=0.0)
    center = CenterLoss(5, 8)
    _set(center.centers, torch.randn(5, 8))
    _set(dsf.centers, center.centers.detach())
    features = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 4, 4, 2, 3])
    dsf_value, center_value = dsf(features, labels), center(features, labels)
    assert dsf_value.item() == pytest.approx(center_value.item(), rel=1e-6)
    dsf_value.backward()
    center_value.backward()
    torch.testing.assert_close(dsf.centers.grad, center.centers.grad)


def test_dsf_smoothing_changes_value_and_accepts_label_distributions():
    torch.manual_seed(1)
    features, labels = torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    sharp = DeepSmoothFeatureLoss(3, 6, eps=0.0, mu=0.0)
    smooth = DeepSmoothFeatureLoss(3, 6, eps=0.3, mu=0.0)
    _set(smooth.centers, sharp.centers.detach() + torch.randn(3, 6))
    _set(sharp.centers, smooth.centers.detach())
    assert smooth(features, labels).item() != pytest.approx(sharp(features, labels).item(), rel=1e-3)
    one_hot = F.one_hot(labels, 3).float()
    assert smooth(features, one_hot).item() == pytest.approx(smooth(features, labels).item(), rel=1e-6)
    with pytest.raises(ValueError, match="features of shape"):
        smooth(torch.randn(4, 5), labels)


def test_dsf_margin_pushes_close_centres_apart_and_ignores_far_ones():
    loss = DeepSmoothFeatureLoss(2, 2, mu=1.0, margin=2.0)
    _set(loss.centers, [[0.0, 0.0], [4.0, 0.0]])
    assert loss.separation().item() == 0.0
    _set(loss.centers, [[0.0, 0.0], [0.5, 0.0]])
    separation = loss.separation()
    assert separation.item() == pytest.approx(1.5 ** 2)
    separation.backward()
    with torch.no_grad():
        stepped = loss.centers - 0.1 * loss.centers.grad
    assert (stepped[0] - stepped[1]).norm() > 0.5  # a gradient step moves the centres apart


def test_center_loss_is_zero_on_the_centres_and_pulls_centres_to_features():
    torch.manual_seed(2)
    loss = CenterLoss(4, 3)
    labels = torch.tensor([3, 0, 0, 2])
    on_centres = loss.centers.detach()[labels].clone()
    assert loss(on_centres, labels).item() == 0.0
    features = on_centres + torch.randn(4, 3)
    value = loss(features, labels)
    assert value.item() > 0
    value.backward()
    assert loss.centers.grad[1].abs().sum() == 0  # class 1 is absent from the batch
    with torch.no_grad():
        stepped = loss.centers - 0.5 * loss.centers.grad
    before = (features[0] - loss.centers[3]).norm()
    after = (features[0] - stepped[3]).norm()
    assert after < before


def test_lgm_logits_favour_the_nearer_mean():
    loss = LGMLoss(2, 2, alpha=0.0)
    _set(loss.means, [[0.0, 0.0], [5.0, 5.0]])
    features = torch.tensor([[1.0, 1.0], [4.0, 3.5]])
    logits = loss.logits(features)
    assert logits.argmax(dim=1).tolist() == [0, 1]
    # with unit variances the logit is minus half the squared distance
    torch.testing.assert_close(logits[0], torch.tensor([-1.0, -16.0]))


def test_lgm_margin_penalises_the_true_class_only():
    loss = LGMLoss(3, 2, alpha=0.5)
    _set(loss.means, [[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    features = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    labels = torch.tensor([0, 1])
    plain, margin = loss.logits(features), loss.logits(features, labels)
    distances = loss.half_distances(features)
    rows = torch.arange(2)
    torch.testing.assert_close(margin[rows, labels], plain[rows, labels] - 0.5 * distances[rows, labels])
    other = torch.ones_like(plain, dtype=torch.bool)
    other[rows, labels] = False
    torch.testing.assert_close(margin[other], plain[other])
    no_margin = LGMLoss(3, 2, alpha=0.0, lambda_=0.0)
    _set(no_margin.means, loss.means.detach())
    with_margin = LGMLoss(3, 2, alpha=0.5, lambda_=0.0)
    _set(with_margin.means, loss.means.detach())
    assert with_margin(features, labels) > no_margin(features, labels)


def test_lgm_terms_combine_and_train_means_and_variances():
    torch.manual_seed(3)
    loss = LGMLoss(4, 5, alpha=0.1, lambda_=0.25)
    features, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    parts = loss.terms(features, labels)
    torch.testing.assert_close(parts["classification"], F.cross_entropy(loss.logits(features, labels), labels))
    expected_likelihood = loss.half_distances(features)[torch.arange(6), labels].mean()  # log|Sigma| = 0
    torch.testing.assert_close(parts["likelihood"], expected_likelihood)
    total = loss(features, labels)
    torch.testing.assert_close(total, parts["classification"] + 0.25 * parts["likelihood"])
    total.backward()
    assert loss.means.grad.abs().sum() > 0
    assert loss.log_variances.grad.abs().sum() > 0
    fixed = LGMLoss(4, 5, learn_covariance=False)
    assert "log_variances" not in dict(fixed.named_parameters())
    on_means = fixed.means.detach()[labels].clone()
    assert fixed.terms(on_means, labels)["likelihood"].item() == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(fixed(on_means, labels).item())
