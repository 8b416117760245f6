import numpy as np
import pytest

from autocompress.search.pareto import hypervolume, non_dominated_mask


def test_front_two_objectives_mixed_directions():
    # (accuracy max, size min)
    pts = [(0.99, 10.0), (0.98, 2.0), (0.97, 3.0), (0.99, 12.0), (0.90, 1.0)]
    mask = non_dominated_mask(pts, ["maximize", "minimize"])
    assert mask.tolist() == [True, True, False, False, True]


def test_ties_are_kept_and_empty_input():
    assert non_dominated_mask([(1, 1), (1, 1)], ["minimize", "minimize"]).tolist() == [True, True]
    assert non_dominated_mask([], ["minimize"]).tolist() == []


def test_hypervolume_2d_exact():
    # minimisation, reference (4, 4): points (1,3), (2,2), (3,1) -> 3 + 2 + 1 = 6 unit squares? compute:
    pts = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume(pts, ["minimize", "minimize"], (4, 4)) == pytest.approx(6.0)


def test_hypervolume_3d_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(12, 3))
    ref = (1.0, 1.0, 1.0)
    hv = hypervolume(pts, ["minimize"] * 3, ref)
    samples = rng.uniform(0, 1, size=(200_000, 3))
    dominated = np.zeros(len(samples), dtype=bool)
    for p in pts:
        dominated |= np.all(samples >= p, axis=1)
    assert hv == pytest.approx(dominated.mean(), abs=0.01)


def test_hypervolume_maximize_and_outside_reference():
    # accuracy max (ref 0.5), speedup max (ref 1.0)
    pts = [(0.9, 3.0), (0.4, 10.0)]  # second point is worse than the reference in accuracy
    hv = hypervolume(pts, ["maximize", "maximize"], (0.5, 1.0))
    assert hv == pytest.approx(0.4 * 2.0)
