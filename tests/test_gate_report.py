"""Gate analysis: classification, dead gates, step selection, summaries."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from racli.gates.analysis import analyse_gates, trajectories


def ra_rows(final_rec, *, steps=(0, 100, 200), w_std_init=1.0, dead_layers=()):
    """w_std/w_rec rows for a 2-layer x 3-head model; w_rec goes linearly to ``final_rec``."""
    rows = []
    last = steps[-1]
    for step in steps:
        for layer in range(2):
            for head in range(3):
                frac = 0.0 if layer in dead_layers else step / last
                rows.append((step, layer, head, "w_std", w_std_init + 0.1 * frac))
                rows.append((step, layer, head, "w_rec", final_rec[layer][head] * frac))
    return rows


FINAL = [[0.5, 0.01, -0.2], [0.0, 0.06, 0.05]]


def test_classification_ratio_on_off():
    rep = analyse_gates(ra_rows(FINAL))
    assert rep.step == 200 and rep.steps == [0, 100, 200]
    states = {(e.layer, e.head): e.state for e in rep.entries if e.name == "w_rec"}
    # |w_rec / w_std| with w_std = 1.1 at the end
    assert states == {
        (0, 0): "on",
        (0, 1): "off",
        (0, 2): "on",
        (1, 0): "off",
        (1, 1): "on",
        (1, 2): "off",  # 0.05 / 1.1 = 0.045: below
    }
    # both entries of a head share its state
    for e in rep.entries:
        if e.name == "w_std":
            assert e.state == states[(e.layer, e.head)]


def test_init_value_and_movement():
    rep = analyse_gates(ra_rows(FINAL))
    e = rep.entry(0, 0, "w_rec")
    assert e.init == 0.0 and e.value == pytest.approx(0.5) and e.moved == pytest.approx(0.5)
    s = rep.entry(1, 2, "w_std")
    assert s.init == 1.0 and s.moved == pytest.approx(0.1)


def test_beta_and_other_gates():
    rows = [(0, 0, h, "beta", 0.0) for h in range(3)]
    rows += [(10, 0, 0, "beta", 0.2), (10, 0, 1, "beta", -0.04), (10, 0, 2, "beta", -0.3)]
    rows += [(0, 0, 0, "gate", 0.5), (10, 0, 0, "gate", 0.62)]
    rep = analyse_gates(rows)
    st = {(e.name, e.head): e.state for e in rep.entries}
    assert st[("beta", 0)] == "on"  # tanh(0.2) = 0.197
    assert st[("beta", 1)] == "off"
    assert st[("beta", 2)] == "on"
    assert st[("gate", 0)] == "-"
    beta_line = next(s for s in rep.summary if s.startswith("beta:"))
    assert "2/3 heads above 0.05" in beta_line and "layer 0 head 2" in beta_line
    assert any(s.startswith("gate:") for s in rep.summary)


def test_dead_gate_detection():
    rep = analyse_gates(ra_rows(FINAL, dead_layers=(1,)))
    assert set(rep.dead) == {(1, h, n) for h in range(3) for n in ("w_std", "w_rec")}
    assert rep.warnings and rep.warnings[0].startswith("DEAD GATES: 6 of 12")


def test_gate_moving_then_returning_is_not_dead():
    rows = [(0, 0, 0, "w_rec", 0.0), (1, 0, 0, "w_rec", 0.3), (2, 0, 0, "w_rec", 0.0)]
    rows += [(s, 0, 0, "w_std", 1.0) for s in (0, 1, 2)]
    rep = analyse_gates(rows)
    assert rep.dead == [(0, 0, "w_std")]
    assert rep.entry(0, 0, "w_rec").moved == 0.0


def test_all_dead_like_the_seed_module():
    rows = ra_rows([[0.0] * 3, [0.0] * 3], dead_layers=(0, 1))
    rep = analyse_gates(rows)
    assert len(rep.dead) == 12
    assert "never moved" in rep.warnings[0]
    line = next(s for s in rep.summary if s.startswith("w_rec:"))
    assert line.startswith("w_rec: 0/6 heads above 0.05")


def test_moved_tolerance():
    rows = [(0, 0, 0, "w_rec", 0.0), (5, 0, 0, "w_rec", 1e-7)]
    assert analyse_gates(rows).dead == [(0, 0, "w_rec")]
    assert analyse_gates(rows, moved_tolerance=1e-8).dead == []


def test_single_snapshot_warns_and_judges_nothing():
    rep = analyse_gates([(0, 0, 0, "w_std", 1.0), (0, 0, 0, "w_rec", 0.0)])
    assert rep.dead == []
    assert any("only one snapshot" in w for w in rep.warnings)


def test_step_selection():
    rows = ra_rows(FINAL)
    rep = analyse_gates(rows, step=100)
    assert rep.step == 100
    assert rep.entry(0, 0, "w_rec").value == pytest.approx(0.25)
    rep0 = analyse_gates(rows, step=0)
    assert all(e.moved == 0 for e in rep0.entries)
    with pytest.raises(ValueError, match=r"step 150 was not recorded; recorded steps: 0, 100, 200"):
        analyse_gates(rows, step=150)


def test_empty_rows_raise():
    with pytest.raises(ValueError, match="run has no gate values"):
        analyse_gates([])


def test_summary_line_names_largest_head():
    rep = analyse_gates(ra_rows(FINAL))
    line = next(s for s in rep.summary if s.startswith("w_rec:"))
    assert line.startswith("w_rec: 3/6 heads above 0.05")
    assert "largest layer 0 head 0" in line
    assert len(rep.summary) == 2 and rep.summary[0].startswith("w_std:")


def test_ratio_threshold_parameter():
    rep = analyse_gates(ra_rows(FINAL), ratio_threshold=0.3)
    on = [(e.layer, e.head) for e in rep.entries if e.name == "w_rec" and e.state == "on"]
    assert on == [(0, 0)]


def test_zero_w_std():
    rows = [
        (0, 0, 0, "w_std", 0.0),
        (0, 0, 0, "w_rec", 0.1),
        (0, 0, 1, "w_std", 0.0),
        (0, 0, 1, "w_rec", 0.0),
    ]
    st = {e.head: e.state for e in analyse_gates(rows).entries if e.name == "w_rec"}
    assert st == {0: "on", 1: "off"}


def test_accepts_attribute_rows():
    rows = [
        SimpleNamespace(step=s, layer=0, head=0, name="beta", value=v)
        for s, v in ((0, 0.0), (10, 0.5))
    ]
    rep = analyse_gates(rows)
    assert rep.entries[0].state == "on"


def test_to_dict_json():
    rep = analyse_gates(ra_rows(FINAL, dead_layers=(1,)))
    d = rep.to_dict(42, "ra_v5")
    json.dumps(d, allow_nan=False)
    assert d["run"] == 42 and d["attn"] == "ra_v5" and d["step"] == 200
    assert set(d["gates"][0]) == {"layer", "head", "name", "init", "value", "moved", "state"}
    assert len(d["gates"]) == 12 and len(d["dead"]) == 6
    assert d["summary"] == rep.summary and d["warnings"] == rep.warnings


def test_nan_values_warn_and_serialise():
    rows = [(0, 0, 0, "beta", 0.0), (5, 0, 0, "beta", math.nan)]
    rep = analyse_gates(rows)
    assert any("not finite" in w for w in rep.warnings)
    assert rep.to_dict(1, "ra_beta")["gates"][0]["value"] is None


def test_trajectories():
    tr = trajectories(reversed(ra_rows(FINAL)))
    assert list(tr) == ["w_std", "w_rec"]
    series = tr["w_rec"][(0, 0)]
    assert [s for s, _ in series] == [0, 100, 200]
    assert series[-1][1] == pytest.approx(0.5)
    assert len(tr["w_std"]) == 6


# ---------------------------------------------------------------- reciprocity measures


def measured_rows(final_share, *, steps=(0, 100, 200), init_share=0.002, ablation=True):
    """ra_v5 rows with measures: rec_share goes from ``init_share`` to ``final_share``;
    the raw gates all look 'on' (w_rec/w_std = 0.1) whatever the share."""
    rows = []
    last = steps[-1]
    for step in steps:
        frac = step / last
        for layer in range(2):
            for head in range(3):
                share = init_share + (final_share[layer][head] - init_share) * frac
                rows += [
                    (step, layer, head, "w_std", 1.0),
                    (step, layer, head, "w_rec", 0.1),
                    (step, layer, head, "rec_share", share),
                    (step, layer, head, "rec_effect", share / 10),
                ]
            if ablation and step in (0, last):
                rows.append((step, layer, 0, "rec_ablation", 0.001 * (layer + 1) * frac))
    return rows


SHARES = [[0.18, 0.01, 0.06], [0.0, 0.049, 0.3]]


def test_measures_classify_heads_not_the_raw_gate():
    rep = analyse_gates(measured_rows(SHARES), use_threshold=0.05)
    assert rep.classified_by == "rec_share" and rep.by_measure and rep.note is None
    on = {(e.layer, e.head) for e in rep.entries if e.name == "rec_share" and e.state == "on"}
    assert on == {(0, 0), (0, 2), (1, 2)}
    # every entry of a head takes the measure's state, the raw gates included
    for e in rep.entries:
        if e.name in ("w_rec", "w_std", "rec_effect"):
            assert (e.state == "on") == ((e.layer, e.head) in on)
    line = rep.summary[0]
    assert line == (
        "rec_share: 3/6 heads above 5%; largest layer 1 head 2 (30%); "
        "at init (step 0) 0/6 above, largest 0.2%"
    )
    assert rep.entry(1, 2, "rec_share").init == pytest.approx(0.002)
    assert rep.entry(1, 2, "rec_share").moved == pytest.approx(0.298)
    assert (
        analyse_gates(measured_rows(SHARES), use_threshold=0.2)
        .summary[0]
        .startswith("rec_share: 1/6 heads above 20%")
    )


def test_measures_are_not_dead_gates_and_layer_measures_kept_apart():
    rows = measured_rows([[0.002] * 3, [0.002] * 3])  # the share never moves
    rep = analyse_gates(rows)
    assert {k[2] for k in rep.dead} == {"w_std", "w_rec"}  # constant raw gates only
    assert rep.names == ["rec_share", "rec_effect", "w_std", "w_rec"]
    assert rep.layer_names == ["rec_ablation"]
    abl = [s for s in rep.summary if s.startswith("rec_ablation")]
    assert abl == [
        "rec_ablation (loss change with the layer's reciprocal term removed): "
        "layer 0 +0.1%, layer 1 +0.2%; at init (step 0) +0%, +0%"
    ]


def test_layer_measure_missing_at_a_step_is_not_a_warning():
    rep = analyse_gates(measured_rows(SHARES), step=100)  # ablation measured at the ends only
    assert rep.layer_names == [] and not any("no value recorded" in w for w in rep.warnings)


def test_old_rows_fall_back_to_raw_gate_with_a_note():
    rep = analyse_gates(ra_rows(FINAL))
    assert rep.classified_by == "raw gate" and not rep.by_measure
    assert "classified by raw gate" in rep.note and "cannot measure use" in rep.note
    assert rep.to_dict(1, "ra_v5")["note"] == rep.note
    assert analyse_gates([(0, 0, 0, "gate", 0.5)]).note is None  # sdpa_gate: nothing to classify


def test_beta_runs_classify_on_norm_ratio():
    rows = [(0, 0, h, "beta", 0.0) for h in range(2)] + [
        (0, 0, h, "rec_norm_ratio", 0.0) for h in range(2)
    ]
    rows += [
        (9, 0, 0, "beta", 0.01),
        (9, 0, 1, "beta", 0.5),
        (9, 0, 0, "rec_norm_ratio", 0.2),
        (9, 0, 1, "rec_norm_ratio", 0.01),
    ]
    rep = analyse_gates(rows)
    assert rep.classified_by == "rec_norm_ratio"
    st = {(e.name, e.head): e.state for e in rep.entries}
    assert st[("beta", 0)] == "on" and st[("beta", 1)] == "off"  # by the measure, not tanh(beta)


# ---------------------------------------------------------------- several runs


def test_aggregate_runs_mean_spread_and_agreement():
    from racli.gates.aggregate import aggregate_runs

    rows = {
        1: measured_rows([[0.18, 0.01, 0.06], [0.0, 0.049, 0.3]]),
        2: measured_rows([[0.20, 0.02, 0.04], [0.001, 0.03, 0.25]]),
        3: measured_rows([[0.16, 0.00, 0.07], [0.002, 0.02, 0.35]]),
    }
    rep = aggregate_runs(rows, use_threshold=0.05)
    assert rep.runs == [1, 2, 3] and rep.measure == "rec_share" and rep.by_measure
    cell = {(h.layer, h.head): h for h in rep.heads}
    assert cell[(0, 0)].mean == pytest.approx(0.18) and cell[(0, 0)].std == pytest.approx(0.02)
    assert cell[(0, 2)].above == 2 and cell[(1, 2)].above == 3
    assert rep.counts() == (2, 1, 3)
    assert rep.summary[0] == (
        "rec_share over 3 runs (1, 2, 3): 2/6 heads above 5% in every run, 1 in some, 3 in none"
    )
    assert "largest mean layer 1 head 2: 30%" in rep.summary[1]
    assert 0.8 < rep.agreement <= 1.0 and "seed agreement" in rep.summary[2]
    assert rep.ablation[1] == {1: 0.002, 2: 0.002, 3: 0.002}
    d = rep.to_dict("ra_v5")
    json.dumps(d, allow_nan=False)
    assert d["heads_above_in_every_run"] == 2 and len(d["heads"]) == 6
    assert d["heads"][0]["values"] == {"1": 0.18, "2": 0.2, "3": 0.16}


def test_aggregate_leaves_out_old_runs_or_falls_back_to_raw():
    from racli.gates.aggregate import aggregate_runs

    rep = aggregate_runs({1: measured_rows(SHARES), 2: ra_rows(FINAL), 3: []})
    assert (
        rep.runs == [1]
        and rep.left_out == [2, 3]
        and "run(s) 2 have no rec_share" in rep.warnings[0]
    )
    raw = aggregate_runs({2: ra_rows(FINAL), 4: ra_rows(FINAL)})
    assert raw.measure == "|w_rec/w_std|" and not raw.by_measure and "raw gate" in raw.note
    assert raw.heads[0].mean == pytest.approx(0.5 / 1.1)
    with pytest.raises(ValueError, match="nothing|none of these runs"):
        aggregate_runs({1: []})


def test_rank_correlation():
    from racli.gates.aggregate import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert (
        rank_correlation([1, 1, 1], [1, 2, 3]) is None and rank_correlation([1, 2], [1, 2]) is None
    )


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("ablation", "sometimes", "gates.ablation: must be one of every, ends, never"),
        ("use_threshold", 1.5, "gates.use_threshold"),
        ("measure_batches", -1, "gates.measure_batches"),
        ("measure_rows", "four", "gates.measure_rows"),
        ("measure_queries", -1, "gates.measure_queries"),
        ("measure_precision", "bf16", "gates.measure_precision: must be one of auto, float32"),
    ],
)
def test_gates_settings_are_validated(key, value, words):
    import yaml

    from racli.config import ConfigError, config_from_dict, packaged_config_path

    data = yaml.safe_load(packaged_config_path().read_text())
    assert data["gates"]["use_threshold"] == 0.05 and data["gates"]["ablation"] == "ends"
    data["gates"][key] = value
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        config_from_dict(data, "ra.yaml")


def test_step_without_measures_says_so():
    rows = measured_rows(SHARES) + [
        (300, la, h, n, 0.1 if n == "w_rec" else 1.0)
        for la in range(2)
        for h in range(3)
        for n in ("w_std", "w_rec")
    ]
    rep = analyse_gates(rows)  # step 300 has the raw gates only
    assert (
        rep.classified_by == "raw gate"
        and "no reciprocity measures recorded at step 300" in rep.note
    )
