from __future__ import annotations

import math

import pytest
import torch

from dussss_monai.errors import ConfigError
from dussss_monai.losses.semantic_similarity import SemanticSimilaritySupervision, semantic_similarity_supervision


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_values_by_hand():
    # queries: s1 = [1, 0], mu1 = [0, 0], sigma1 = [1, 1]
    # keys:    k0: s = [0, 1],     mu = [3, 4], sigma = [1, 3]
    #          k1: s = [0.6, 0.8], mu = [0, 0], sigma = [1, 1]
    s1, mu1, sg1 = _t([1.0, 0.0]), _t([0.0, 0.0]), _t([1.0, 1.0])
    s2, mu2, sg2 = _t([0.0, 1.0], [0.6, 0.8]), _t([3.0, 4.0], [0.0, 0.0]), _t([1.0, 3.0], [1.0, 1.0])
    out = semantic_similarity_supervision(s1, s2, mu1, sg1, mu2, sg2, a=1 / 200, b=4.0, lam=0.2)
    # pair (q, k0): cos = 0; D_s = ||[1,-1]||^2 = 2
    #   D_2W = (3^2 + 4^2) + (0^2 + 2^2) = 25 + 4 = 29           (1)
    #   D_u = 29 / 200 + 4 = 4.145                               (2)
    #   D_u_hat = 4.145 / 2 = 2.0725                             (3)
    #   D_SSS = exp(-0.2 * 2.0725) = exp(-0.4145) = 0.660671...   (4)
    #   sim_hat = 1 - (1 - 0) * 0.660671 = 0.339329...            (5)
    # pair (q, k1): cos = 0.6; D_s = 0.4^2 + 0.8^2 = 0.8; D_2W = 0; D_u = 4; D_u_hat = 5
    #   D_SSS = exp(-1) = 0.367879...; sim_hat = 1 - 0.4 * 0.367879 = 0.852848...
    torch.testing.assert_close(out.cosine, _t([0.0, 0.6]))
    torch.testing.assert_close(out.d_2w, _t([29.0, 0.0]))
    torch.testing.assert_close(out.d_s, _t([2.0, 0.8]))
    torch.testing.assert_close(out.d_sss, _t([math.exp(-0.4145), math.exp(-1.0)]))
    torch.testing.assert_close(out.sim_hat, _t([1 - math.exp(-0.4145), 1 - 0.4 * math.exp(-1.0)]))
    assert abs(out.sim_hat[0, 0].item() - 0.339329) < 1e-6 and abs(out.sim_hat[0, 1].item() - 0.852848) < 1e-6

    # Euclidean D_s (paper's notation): pair (q, k0): D_s = sqrt(2); D_u_hat = 4.145 / 1.414214 = 2.930958
    #   D_SSS = exp(-0.586192) = 0.556442
    eu = semantic_similarity_supervision(s1, s2, mu1, sg1, mu2, sg2, squared_distance=False)
    assert abs(eu.d_s[0, 0].item() - math.sqrt(2)) < 1e-9
    assert abs(eu.d_sss[0, 0].item() - math.exp(-0.2 * 4.145 / math.sqrt(2))) < 1e-9
    assert abs(eu.d_sss[0, 0].item() - 0.556442) < 1e-6


def random_inputs(b1=5, b2=4, d=8, g=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s1 = torch.nn.functional.normalize(torch.randn(b1, d, generator=gen), dim=1)
    s2 = torch.nn.functional.normalize(torch.randn(b2, d, generator=gen), dim=1)
    mu1, mu2 = torch.randn(b1, g, generator=gen), torch.randn(b2, g, generator=gen)
    sg1, sg2 = torch.rand(b1, g, generator=gen) + 0.1, torch.rand(b2, g, generator=gen) + 0.1
    return s1, s2, mu1, sg1, mu2, sg2


@pytest.mark.parametrize("squared", [True, False])
def test_d_sss_in_unit_interval_and_pairwise_shapes(squared):
    out = semantic_similarity_supervision(*random_inputs(), squared_distance=squared)
    for m in out:
        assert m.shape == (5, 4)
    assert (out.d_sss > 0).all() and (out.d_sss <= 1).all()
    # sim_hat lies between cos and 1
    assert (out.sim_hat >= out.cosine - 1e-6).all() and (out.sim_hat <= 1 + 1e-6).all()


def test_lambda_zero_gives_cosine():
    out = semantic_similarity_supervision(*random_inputs(), lam=0.0)
    torch.testing.assert_close(out.d_sss, torch.ones(5, 4))
    torch.testing.assert_close(out.sim_hat, out.cosine)
    off = SemanticSimilaritySupervision(enabled=False)(*random_inputs())
    assert torch.equal(off.sim_hat, off.cosine) and torch.equal(off.d_sss, torch.ones(5, 4))


def test_growing_uncertainty_pulls_similarity_to_one():
    s1 = torch.tensor([[1.0, 0.0]])
    s2 = torch.tensor([[0.0, 1.0]])  # cos = 0
    mu = torch.zeros(1, 3)
    sims, d_sss = [], []
    for delta in [0.0, 5.0, 20.0, 60.0, 200.0]:
        out = semantic_similarity_supervision(s1, s2, mu, torch.ones(1, 3), mu, torch.ones(1, 3) + delta)
        sims.append(out.sim_hat.item())
        d_sss.append(out.d_sss.item())
    assert all(b > a for a, b in zip(sims, sims[1:]))  # strictly increasing with the sigma difference
    assert all(b < a for a, b in zip(d_sss, d_sss[1:]))
    assert sims[-1] > 0.999 and sims[0] < 0.4


def test_identical_embeddings_are_finite_with_finite_gradients():
    s = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    mu = torch.randn(3, 2, requires_grad=True)
    sigma = (torch.rand(3, 2) + 0.5).requires_grad_(True)
    for squared in (True, False):
        out = semantic_similarity_supervision(s, s, mu, sigma, mu, sigma, squared_distance=squared)
        assert torch.isfinite(out.sim_hat).all()
        torch.testing.assert_close(out.sim_hat.diagonal(), torch.ones(3))  # D_s = 0: sim_hat -> 1 = cos
        out.sim_hat.sum().backward()
        for t in (s, mu, sigma):
            assert torch.isfinite(t.grad).all()
            t.grad = None


def test_gradients_reach_the_gaussians():
    s1, s2, mu1, sg1, mu2, sg2 = (t.requires_grad_(True) for t in random_inputs())
    semantic_similarity_supervision(s1, s2, mu1, sg1, mu2, sg2).sim_hat.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (s1, s2, mu1, sg1, mu2, sg2))


def test_bad_arguments():
    s1, s2, mu1, sg1, mu2, sg2 = random_inputs()
    with pytest.raises(ConfigError, match=">= 0"):
        semantic_similarity_supervision(s1, s2, mu1, sg1, mu2, sg2, lam=-1)
    with pytest.raises(ConfigError, match="Gaussian"):
        semantic_similarity_supervision(s1, s2, mu1, sg1[:, :2], mu2, sg2)
    with pytest.raises(ConfigError, match="s1, s2"):
        semantic_similarity_supervision(s1, s2[:, :3], mu1, sg1, mu2, sg2)
