"""Tax machinery, social metrics and the Saez schedule against hand-computed values and a
line-by-line numpy transcription of the AI Economist's reference functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchrl_ermas.envs.economy import US_FEDERAL_2018_RATES, BracketTax, us_federal_cutoffs
from torchrl_ermas.envs.economy.saez import (
    estimate_elasticity,
    saez_bracket_rates,
)
from torchrl_ermas.envs.economy.social import (
    coin_eq_times_productivity,
    equality,
    gini,
    isoelastic_utility,
)

US = torch.tensor(US_FEDERAL_2018_RATES)


class TestBracketTax:
    def test_cutoffs(self):
        assert us_federal_cutoffs() == pytest.approx((0, 9.7, 39.475, 84.2, 160.725, 204.1, 510.3))
        tax = BracketTax()
        assert tax.sizes[:-1].tolist() == pytest.approx([9.7, 29.775, 44.725, 76.525, 43.375, 306.2])
        assert math.isinf(tax.sizes[-1].item())

    @pytest.mark.parametrize(
        "income,due",
        [
            # the 2018 IRS table ("$970 plus 12% of the amount over $9,700", ...), / 1000;
            # its base amounts are rounded to whole dollars (1e-3 here)
            (20.0, 0.970 + 0.12 * (20 - 9.7)),
            (50.0, 4.543 + 0.22 * (50 - 39.475)),
            (100.0, 14.382 + 0.24 * (100 - 84.2)),
            (180.0, 32.748 + 0.32 * (180 - 160.725)),
            (300.0, 46.628 + 0.35 * (300 - 204.1)),
            (600.0, 153.798 + 0.37 * (600 - 510.3)),
            (0.0, 0.0),
            (-5.0, 0.0),
        ],
    )
    def test_us_federal_taxes_due(self, income, due):
        assert BracketTax().taxes_due(torch.tensor([income]), US).item() == pytest.approx(due, abs=1.5e-3)

    def test_marginal_rates_at_edges(self):
        income = torch.tensor([-1.0, 0.0, 9.69, 9.7, 39.475, 510.29, 510.3, 1e4])
        rates = BracketTax().marginal_rate(income, US)
        assert rates.tolist() == pytest.approx([0.0, 0.1, 0.1, 0.12, 0.22, 0.35, 0.37, 0.37])

    def test_enact_caps_at_inventory_and_redistributes(self):
        tax = BracketTax()
        coin = torch.tensor([[0.0, 100.0, 5.0, 50.0]])
        escrow = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
        last = torch.tensor([[0.0, 0.0, 5.0, 60.0]])
        out = tax.enact(coin, escrow, last, US)
        due_100 = 14.3825 + 0.24 * (100 - 84.2)
        assert out.income[0].tolist() == pytest.approx([10.0, 100.0, 0.0, -10.0])
        # agent 0 owes 1.006 on its escrowed income but holds no inventory coin
        assert out.paid[0].tolist() == pytest.approx([0.0, due_100, 0.0, 0.0], abs=1e-4)
        lump = due_100 / 4
        assert out.coin[0].tolist() == pytest.approx([lump, 100 - due_100 + lump, 5 + lump, 50 + lump], abs=1e-4)
        assert out.revenue.item() == pytest.approx(due_100, abs=1e-4)
        assert out.marginal_rate[0].tolist() == pytest.approx([0.12, 0.24, 0.1, 0.0])

    def test_batched_rates(self):
        tax = BracketTax()
        rates = torch.stack([torch.zeros(7), torch.ones(7)])
        due = tax.taxes_due(torch.tensor([[50.0], [50.0]]), rates)
        assert due.squeeze(-1).tolist() == pytest.approx([0.0, 50.0])

    @pytest.mark.parametrize("cutoffs", [[0, 10, 5], [1, 2, 3], [0, 0, 1], [0]])
    def test_bad_cutoffs(self, cutoffs):
        with pytest.raises(ValueError, match="strictly increasing"):
            BracketTax(cutoffs)


class TestSocial:
    def test_equality_by_hand(self):
        # sum_ij |x_i - x_j| = 20, / (2 * 4 * 10) = 0.25, / (3 / 4) -> gini 1/3
        x = torch.tensor([1.0, 2.0, 3.0, 4.0])
        assert gini(x).item() == pytest.approx(1 / 3)
        assert equality(x).item() == pytest.approx(2 / 3)
        assert coin_eq_times_productivity(x).item() == pytest.approx(2 / 3 * 2.5)
        assert equality(torch.zeros(4)).item() == 1.0
        assert equality(torch.tensor([0.0, 0.0, 0.0, 7.0])).item() == pytest.approx(0.0)

    def test_equality_many_agents_uses_sorted_formula(self):
        x = torch.arange(40, dtype=torch.float64)
        s = np.sort(x.numpy())
        ref = 1 - (2 / 41) * np.sum(np.cumsum(s)) / (np.sum(s) + 1e-10)
        assert gini(x).item() == pytest.approx(ref)

    def test_isoelastic_utility(self):
        eta = torch.tensor([0.23, 0.35, 1.0])
        u = isoelastic_utility(torch.tensor([100.0, 100.0, 100.0]), torch.tensor([50.0, 0.0, 0.0]), eta)
        assert u[0].item() == pytest.approx((100**0.77 - 1) / 0.77 - 0.21 * 50, rel=1e-6)
        assert u[1].item() == pytest.approx((100**0.65 - 1) / 0.65, rel=1e-6)
        assert u[2].item() == pytest.approx(math.log(100), rel=1e-6)
        # u(0) = -1 / (1 - eta): the reference's initial utility
        zero = isoelastic_utility(torch.zeros(1), torch.zeros(1), torch.tensor([0.23]))
        assert zero.item() == pytest.approx(-1 / 0.77)


# --- line-by-line transcription of the reference (redistribution.py), the oracle ---------
def _ref_saez(incomes: np.ndarray, elas: float, cutoffs: np.ndarray) -> np.ndarray:
    edges_b = np.concatenate([cutoffs, [np.inf]])
    bracket_sizes = edges_b[1:] - edges_b[:-1]
    bin_edges = np.linspace(0, cutoffs[-1], 101)
    bin_sizes = np.concatenate([bin_edges[1:] - bin_edges[:-1], [np.inf]])

    def clip(x, lo=None, hi=None):
        if lo is not None:
            x = max(lo, x)
        if hi is not None:
            x = min(x, hi)
        return x

    def bin_z(left, right):
        return 0.5 * (left + right)

    def get_cumul(counts, incomes_below, incomes_above):
        n_below, n_above = len(incomes_below), len(incomes_above)
        n_total = np.sum(counts) + n_below + n_above
        p_below = n_below / n_total
        pz = [counts[i] / n_total for i in range(len(counts))] + [n_above / n_total]
        cum_pz = [pz[0] + p_below]
        for p in pz[1:]:
            cum_pz.append(clip(cum_pz[-1] + p, 0, 1.0))
        return np.array(pz), np.array(cum_pz)

    def pareto(z):
        return 1.0 / np.maximum(1, z)

    counts, lefts = np.histogram(incomes, bins=bin_edges)
    below, above = incomes[incomes < lefts[0]], incomes[incomes > lefts[-1]]
    w_below = np.sum(pareto(np.maximum(below, 0))) if len(below) else 0
    w_above = np.sum(pareto(above)) if len(above) else 0
    per_bin = counts * pareto(bin_z(lefts[:-1], lefts[1:]))
    norm = per_bin.sum() + w_below + w_above + 1e-9
    dens = np.concatenate([per_bin, [w_above]]) / norm
    dens_geq = np.cumsum(dens[::-1])[::-1]
    pz, cum_pz = get_cumul(counts, below, above)
    p_geq = np.cumsum(pz[::-1])[::-1]
    avg = dens_geq / (p_geq + 1e-9)
    gz = np.concatenate([0.5 * (avg[:-1] + avg[1:]), [avg[-1]]])
    p_geq_z = 1 - cum_pz + 0.5 * pz
    az = []
    for i in range(len(lefts) - 1):
        if pz[i] == 0:
            az.append(np.nan)
        else:
            z = bin_z(lefts[i], lefts[i + 1])
            az.append(z * pz[i] / (clip(p_geq_z[i], 0, 1) + 1e-9) / (lefts[i + 1] - lefts[i]))
    if len(above):
        m = np.mean(above)
        az.append(m / (m - lefts[-1] + 1e-9))
    else:
        az.append(0.0)
    az = np.array(az)
    taus = (1.0 - gz) / (1.0 - gz + az * elas + 1e-9)
    last_rate, last_idx = 0.0, -1
    for i, tau in enumerate(taus):
        if not np.isnan(tau):
            if i - last_idx > 1:
                gap = list(range(last_idx + 1, i))
                for g, r in zip(gap, np.linspace(last_rate, tau, len(gap) + 2)[1:-1]):
                    taus[g] = r
            last_rate, last_idx = float(tau), i
    out, last_total = [], 0
    for b, income in enumerate(cutoffs[1:]):
        due = np.maximum(0, np.sum(taus * np.minimum(bin_sizes, np.maximum(0, income - bin_edges))))
        out.append((due - last_total) / bracket_sizes[b])
        last_total = due
    out.append(taus[-1])
    return np.clip(np.array(out), 0, 1)


def _ref_elasticity(z, tau, prev):
    zs = [a for a, t in zip(z, tau) if a > 0 and t < 1]
    ts = [t for a, t in zip(z, tau) if a > 0 and t < 1]
    if len(zs) < 10 or np.std(ts) < 1e-6:
        return prev
    x = np.log(np.maximum(1 - np.array(ts), 1e-9))
    X = np.stack([x, np.ones_like(x)]).T
    y = np.log(np.maximum(np.array(zs), 1e-9))
    elas = (np.linalg.inv(X.T.dot(X)).T.dot(X.T.dot(y)))[0]
    return 0.02 * max(elas, 0.0) + 0.98 * prev


def _buffers():
    rng = np.random.default_rng(0)
    yield rng.lognormal(3.5, 1.2, 500)
    yield (rng.pareto(1.5, 800) + 1) * 20
    yield rng.normal(60, 80, 400)  # negative incomes included
    yield np.concatenate([rng.uniform(0, 30, 300), rng.uniform(600, 900, 20)])
    yield np.full(500, 12.0)  # one bin: long NaN gaps on both sides


class TestSaez:
    @pytest.mark.parametrize("elas", [0.5, 3.0])
    def test_bracket_rates_match_reference(self, elas):
        cutoffs = np.array(us_federal_cutoffs())
        for buf in _buffers():
            ours = saez_bracket_rates(torch.tensor(buf), torch.tensor(cutoffs), elas)
            np.testing.assert_allclose(ours.numpy(), _ref_saez(buf, elas, cutoffs), rtol=1e-9, atol=1e-12)

    def test_elasticity_matches_reference(self):
        rng = np.random.default_rng(1)
        tau = rng.uniform(0, 0.9, 300)
        z = 50 * (1 - tau) ** 1.7 * rng.lognormal(0, 0.1, 300)
        z[:10] = -1.0
        ours = estimate_elasticity(torch.tensor(z), torch.tensor(tau), previous=0.5)
        assert ours == pytest.approx(_ref_elasticity(z, tau, 0.5), rel=1e-10)
        # too few samples or constant rates keep the previous value
        assert estimate_elasticity(torch.tensor(z[:15]), torch.tensor(tau[:15]), 0.7) == 0.7
        assert estimate_elasticity(torch.tensor(z), torch.full((300,), 0.2, dtype=torch.float64), 0.7) == 0.7

    def test_hand_computed_single_bin(self):
        # All incomes are 12.0, in bin 2 = [10.206, 15.309) of 100 bins on [0, 510.3].
        # The normalised welfare weight is 1 on bin 2, so the average weight at or above
        # an edge is 1 up to bin 2 and 0 after: G = 1, 1, 0.5, 0, ... (edge averages).
        # A(bin 2) = z_mid * 1 / (1 - 1 + 0.5) / width = 2 z_mid / width = 5; bins 0-1 and
        # 3-99 are empty (NaN); the top bin has no income, so A = 0, G = 0, rate ~ 1.
        buf = torch.full((500,), 12.0, dtype=torch.float64)
        width = 510.3 / 100
        tau2 = (1 - 0.5) / (1 - 0.5 + 5.0 * 3.0)
        rates = saez_bracket_rates(buf, BracketTax().cutoffs, 3.0)
        # bins 0, 1 are interpolated from rate 0 (virtual bin -1) to tau2
        t0, t1 = tau2 / 3, 2 * tau2 / 3
        assert rates[0].item() == pytest.approx((t0 * width + t1 * (9.7 - width)) / 9.7, rel=1e-6)
        assert rates[-1].item() == pytest.approx(1.0, abs=1e-6)
        # bins 3..99 are interpolated from tau2 to ~1 over 98 steps
        step = (1 - tau2) / 98
        bin_rate = [t0, t1] + [tau2 + (k - 2) * step for k in range(2, 101)]
        lo, hi = 9.7, 39.475
        due = sum(bin_rate[k] * max(0.0, min(hi, (k + 1) * width) - max(lo, k * width)) for k in range(100))
        assert rates[1].item() == pytest.approx(due / (hi - lo), rel=1e-6)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
