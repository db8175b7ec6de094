import math

import pytest

from population.mapelites import Dim, Grid, replaces


def test_dim_bins_on_log_scale():
    d = Dim("params", 1e3, 1e7, 4)  # one decade per bin
    assert [d.index(v) for v in (1e3, 5e3, 1e4, 2e5, 9.9e6)] == [0, 0, 1, 2, 3]


def test_dim_linear_scale():
    d = Dim("x", 0.0, 10.0, 5, log=False)
    assert [d.index(v) for v in (0.0, 1.9, 2.0, 9.99)] == [0, 0, 1, 4]


def test_out_of_range_values_clip_into_edge_bins():
    d = Dim("params", 1e3, 1e7, 4)
    assert d.index(1.0) == 0
    assert d.index(0) == 0
    assert d.index(-5) == 0
    assert d.index(1e12) == 3
    assert d.index(1e7) == 3


def test_missing_values_have_no_bin():
    d = Dim("params", 1e3, 1e7, 4)
    assert d.index(None) is None
    assert d.index(math.nan) is None


def test_bad_dims_are_refused():
    with pytest.raises(ValueError):
        Dim("a", 0.0, 10.0, 4)  # log scale needs a positive range
    with pytest.raises(ValueError):
        Dim("a", 10.0, 1.0, 4)
    with pytest.raises(ValueError):
        Dim("a", 1.0, 10.0, 0)
    with pytest.raises(ValueError):
        Grid([Dim("a", 1, 10, 2), Dim("a", 1, 10, 2)])


def test_grid_cell_and_keys():
    g = Grid([Dim("params", 1e3, 1e7, 4), Dim("tokens", 1e6, 1e10, 8)])
    assert g.n_cells == 32
    assert g.names == ("params", "tokens")
    cell = g.cell({"params": 2e4, "tokens": 1e9, "other": 3})
    assert cell == (1, 6)
    assert g.key(cell) == "1,6"
    assert Grid.parse_key("1,6") == (1, 6)
    assert g.cell({"params": 2e4}) is None
    assert g.cell({"params": 2e4, "tokens": None}) is None
    assert g.cell(None) is None


def test_config_round_trip():
    g = Grid([Dim("params", 1e3, 1e7, 4), Dim("mfu", 0.0, 1.0, 5, log=False)], qd_offset=6.0)
    again = Grid.from_config(g.to_config())
    assert again == g
    assert again.dims[1].log is False and again.qd_offset == 6.0


def test_around_puts_the_seed_mid_cell():
    g = Grid.around({"params": 3.2e6, "tokens": 1.1e8})
    assert g.names == ("params", "tokens")
    assert all(d.bins == 10 and d.log for d in g.dims)
    assert g.cell({"params": 3.2e6, "tokens": 1.1e8}) == (5, 5)
    # jitter of a few percent around the seed stays in the seed's cell
    assert g.cell({"params": 3.2e6 * 1.05, "tokens": 1.1e8 * 0.95}) == (5, 5)
    # two decades away in either direction: the edge bins
    assert g.cell({"params": 3.2e6 / 100, "tokens": 1.1e8 * 100}) == (0, 9)
    lo, hi = math.log10(g.dims[0].lo), math.log10(g.dims[0].hi)
    assert math.isclose(hi - lo, 4.0)


def test_around_with_odd_bins_is_symmetric():
    g = Grid.around({"params": 1e6}, decades=1.5, bins=9)
    assert g.cell({"params": 1e6}) == (4,)
    assert math.isclose(g.dims[0].lo, 10**4.5) and math.isclose(g.dims[0].hi, 10**7.5)


def test_around_refuses_non_positive_center():
    with pytest.raises(ValueError):
        Grid.around({"params": 0})
    with pytest.raises(ValueError):
        Grid.around({"params": None})


def test_qd_metrics():
    g = Grid([Dim("a", 1, 100, 10), Dim("b", 1, 100, 10)])
    assert g.coverage(25) == 0.25
    assert math.isclose(g.qd_score([1.5, 2.0]), (8 - 1.5) + (8 - 2.0))
    assert g.qd_score([9.0]) == 0.0  # worse than uniform counts nothing
    assert g.qd_score([]) == 0.0


def test_replace_rule():
    assert replaces(1.5, 1, None, 0, 0.01)  # empty cell
    assert not replaces(0.99, 1, 1.0, 1, 0.01)  # within noise
    assert replaces(0.95, 1, 1.0, 1, 0.01)
    assert replaces(0.99, 1, 1.0, 1, None)
