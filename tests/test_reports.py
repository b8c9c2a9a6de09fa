"""Timings, the HTML report, and end to end: a tiny workflow run up to results/report/index.html."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from electrode_ml import contribution, report, report_html, report_inputs, timing
from electrode_ml.schema import CRITERIA, TARGETS
from electrode_ml.screening import SPLIT_ROLE, passes
from test_workflow import snakemake

# ----------------------------------------------------------------------------------------------
# Units: timing and report helpers
# ----------------------------------------------------------------------------------------------


def test_read_benchmark(tmp_path):
    path = tmp_path / "bench.tsv"
    path.write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n13.5\t0:00:13\t100\n")
    assert timing.read_benchmark(path) == pytest.approx(13.0)
    (tmp_path / "bad.tsv").write_text("x\n1\n")
    with pytest.raises(Exception, match="benchmark"):
        timing.read_benchmark(tmp_path / "bad.tsv")


def test_a_resumed_tuning_is_timed_by_its_trials():
    """A tuning that ran its trials keeps its job's wall time (Ax's suggestions included); one
    resumed from saved trials, whose job took seconds, is timed by what the trials recorded."""
    assert timing.tuning_seconds(426.3, [13.0] * 30) == (426.3, "")
    seconds, note = timing.tuning_seconds(4.5, [13.0] * 29 + [float("nan")])
    assert seconds == pytest.approx(377.0) and "resumed" in note


def test_timing_table_puts_the_paper_beside():
    prediction = {"n_networks": 4, "n_rows": 388, "networks_s": 0.002, "end_to_end_s": 0.05}
    table = timing.timing_table("model1", 100.0, [10.0, 12.0], prediction).set_index("stage")
    assert table.loc["Bayesian optimisation (total)", "paper_a40"] == pytest.approx(6309.53)
    assert table.loc["Training, one network (mean over seeds)", "ours"] == pytest.approx(11.0)
    assert table.loc["Training, all networks (sum)", "ours"] == pytest.approx(22.0)
    one = table.loc["Prediction of the validation set, one network"]
    assert one["ours"] == pytest.approx(0.5) and one["paper_a40"] == pytest.approx(72.9)
    assert one["ratio"] == pytest.approx(0.5 / 72.9)
    physics = timing.timing_table("model2_phys", 100.0, [10.0], prediction, include_training=False)
    assert len(physics) == 1 and physics["stage"].iloc[0].startswith("Prediction incl.")
    whole = "Prediction of the validation set, whole ensemble"
    assert "batched" in table.loc[whole, "note"]
    onednn = timing.timing_table("model1", 100.0, [10.0], prediction | {"matmul": "onednn"}).set_index("stage")
    assert "oneDNN" in onednn.loc[whole, "note"]
    # the repeats each time is the best of, as measure_prediction counted them
    counted = timing.timing_table("model1", 100.0, [10.0], prediction | {"networks_repeats": 20, "end_to_end_repeats": 5})
    notes = counted.set_index("stage")["note"]
    assert "best of 20" in notes[whole] and "best of 5" in notes["Prediction incl. featurisation, whole ensemble"]


def test_best_time_runs_the_call():
    calls = []
    result = timing.best_time(lambda: calls.append(1), repeats=5, warmup=1)
    assert len(calls) == 6 and 0 <= result["best_s"] <= result["median_s"]
    # the end-to-end prediction is timed from the formulas: the caches an earlier call filled are emptied first
    from electrode_ml.chemistry import fraction_items, parse_formula
    from electrode_ml.redox import electrode_features

    misses = []
    timing.best_time(lambda: (electrode_features("FePO4", "LiFePO4", "Li"),
                              misses.append(electrode_features.cache_info().misses)),
                     repeats=3, warmup=1, before_each=timing.forget_formulas)
    assert misses == [1, 1, 1, 1]  # every call worked the electrode out afresh
    assert parse_formula.cache_info().currsize > 0
    fraction_items("LiFePO4")
    timing.forget_formulas()
    assert parse_formula.cache_info().currsize == 0 and electrode_features.cache_info().currsize == 0
    assert fraction_items.cache_info().currsize == 0


def test_shade_colours_by_direction():
    assert "27,158,119" in report_html.shade(0.3, 0.4)          # lower error than the paper: green
    assert "217,95,2" in report_html.shade(0.5, 0.4)            # higher: orange
    assert "27,158,119" in report_html.shade(0.95, 0.9, lower_is_better=False)
    assert report_html.shade(None, 0.4) == "" and report_html.shade(0.3, None) == ""
    weak, strong = report_html.shade(0.41, 0.4), report_html.shade(0.8, 0.4)
    assert float(re.search(r",([0-9.]+)\)", weak).group(1)) < float(re.search(r",([0-9.]+)\)", strong).group(1))


def test_the_legend_and_the_stylesheet_take_the_shading_colours():
    good, bad = ",".join(map(str, report_html.GOOD)), ",".join(map(str, report_html.BAD))
    legend = report_html.legend()
    assert legend.index(f"rgba({good},0.6)") < legend.index("better") < legend.index(f"rgba({bad},0.6)") < legend.index("behind")
    assert "saturates at 50 %" in legend
    assert f"border-left: 4px solid {report_html.hex_colour(report_html.GOOD)};" in report_html.STYLE
    assert ".tag.fp { background: #d95f02; }" in report_html.STYLE


def test_image_embeds_the_bytes_it_is_given():
    assert 'class="missing"' in report_html.image(None, "Fig 7")
    page = report_html.image(b"\x89PNG...", "Fig 7", "760px")
    assert base64.b64encode(b"\x89PNG...").decode() in page and 'style="max-width:760px"' in page


def test_the_screen_thresholds_and_split_roles_come_from_the_screen():
    thresholds = {"voltage": 2.0, "capacity": 100.0, "energy": 200.0}
    assert report.bounds_by_target(thresholds) == {CRITERIA[name]: value for name, value in thresholds.items()}
    assert report.bounds_by_target({"voltage": 2.0})["energy_grav"] is None
    everything = pd.DataFrame({"split": ["train", "val", "test"], "trained_on": [True, False, False],
                               "dft_pass": [True, True, False], "split_role": ["fitted (csv)", "tuned (csv)", "held (csv)"]})
    score = {"picks": 1, "precision": 1.0, "recall": 1.0}
    context = {"na_all": everything, "na_metrics": {"all_na": {"model1": {name: score for name in ("train", "val", "test", "all")}}}}
    page = report._na_all(context, ["model1"])
    assert "(tuned (csv))" in page and "(every split)" in page  # the table's own column
    page = report._na_all({**context, "na_all": everything.drop(columns="split_role")}, ["model1"])
    assert f"({SPLIT_ROLE['val']})" in page                      # an older table: the screen's constant


def test_the_physics_goals_read_as_the_table_shades_them():
    assert report.goals_text() == ("capacity MAE ≤ 1 mAh/g; <code>model1_phys</code> V ≤ 0.33 V, E ≤ 45 Wh/kg; "
                                   "<code>model2_phys</code> V ≤ 0.08 V, E ≤ 15 Wh/kg")
    assert report.goals_text({"m": {"average_voltage": 0.5}}) == "voltage MAE ≤ 0.5 V"


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------

SECTION_TITLES = [title for _, title in report.SECTIONS]


@pytest.fixture(scope="module")
def report_run(tiny_run):
    """The session's tiny run of the whole default workflow, which ends with the report."""
    return tiny_run




@pytest.mark.e2e
def test_report_renders_every_section(report_run):
    config, results, _ = report_run
    page = (results / "report" / "index.html").read_text()
    for title in SECTION_TITLES:
        assert report_html.esc(title) in page, title
    assert 'class="missing"' not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # parity + error histograms per model and of the peer baseline, Fig 6, Fig 7
    assert len(images) == 2 * (len(config["models"]) + 1) + 2
    assert all(base64.b64decode(data)[:4] == b"\x89PNG" for data in images)
    assert "src=\"file:" not in page and "<img src=\"/" not in page  # self-contained
    for number in ("0.41", "13.38", "65.46", "99.65", "38.81", "61.21", "74.02", "6,309.5", "72.90"):
        assert number in page, number
    assert "rgba(27,158,119" in page or "rgba(217,95,2" in page  # comparisons are coloured
    assert "Table 5" in page and "Table 6" in page and "The same screen over every Na electrode" in page
    data_report = json.loads((results / "data" / "data_report.json").read_text())
    assert f"(SHA-256 <code>{data_report['snapshot_sha256']}</code>)" in page  # which file the run read
    # the hardware named is the timing job's: on a cluster the report runs on a login node with no GPU
    compute = pd.read_csv(results / "analysis" / "timing.csv")["compute"].unique()
    assert len(compute) == 1 and f"this run on {compute[0]}." in page and "the report&#x27;s host" not in page


@pytest.mark.e2e
def test_na_screen_agrees_with_the_filter(report_run):
    config, results, _ = report_run
    thresholds = config["screen"]["na"]
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet")
    split = pd.read_parquet(results / "split" / "split.parquet")
    labelled = electrodes.merge(split, on="battery_id")
    test_na = labelled[(labelled["working_ion"] == "Na") & (labelled["split"] == "test")]
    table = pd.read_csv(results / "screening" / "na_screening.csv").set_index("battery_id")
    assert set(table.index) == set(test_na["battery_id"])
    expected_dft = passes(test_na.set_index("battery_id"), thresholds)
    assert table["dft_pass"].to_dict() == expected_dft.to_dict()
    metrics = json.loads((results / "screening" / "na_metrics.json").read_text())
    for model in config["models"]:
        summary = pd.read_parquet(results / "ensemble" / model / "predictions.parquet")
        means = summary.pivot(index="battery_id", columns="target", values="mean").loc[table.index]
        assert table[f"{model}_pass"].to_dict() == passes(means, thresholds).to_dict()
        tp = int((table["dft_pass"] & table[f"{model}_pass"]).sum())
        picks = int(table[f"{model}_pass"].sum())
        assert metrics["test"][model]["all"]["tp"] == tp and metrics["test"][model]["all"]["picks"] == picks
    everything = pd.read_csv(results / "screening" / "na_screening_all.csv")
    assert len(everything) == int((electrodes["working_ion"] == "Na").sum())
    assert (everything["trained_on"] == (everything["split"] == "train")).all()
    assert (results / "screening" / "table5.md").read_text().startswith("# Table 5")
    assert (results / "screening" / "table6.md").read_text().startswith("# Table 6")


@pytest.mark.e2e
def test_k_substitution_goes_through_the_trained_featuriser(report_run):
    config, results, _ = report_run
    table = pd.read_csv(results / "screening" / "k_substitution.csv")
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet")
    split = pd.read_parquet(results / "split" / "split.parquet")
    labelled = electrodes.merge(split, on="battery_id")
    assert len(table) == int(((labelled["working_ion"] == "Li") & (labelled["split"] == "test")).sum())
    assert table["formula_charge_k"].str.startswith("K").all() and not table["formula_discharge_k"].str.contains("Li").any()
    for model in config["models"]:
        # The Li rows scored by the TrainedEnsemble equal the ensemble rule's own test predictions.
        summary = pd.read_parquet(results / "ensemble" / model / "predictions.parquet")
        energy = summary[summary["target"] == "energy_grav"].set_index("battery_id")["mean"]
        np.testing.assert_allclose(table[f"{model}_energy_grav_li_mean"], energy.loc[table["battery_id"]], rtol=1e-4, atol=1e-3)
        assert np.isfinite(table[f"{model}_energy_grav_k_mean"]).all()
        assert not np.allclose(table[f"{model}_energy_grav_k_mean"], table[f"{model}_energy_grav_li_mean"])
    if {"model2", "model2_phys"} <= set(config["models"]):
        # the Li material's DFT energies are no physics for the K one: model2_phys's K voltage is its networks'
        np.testing.assert_allclose(table["model2_phys_average_voltage_k_mean"], table["model2_average_voltage_k_mean"],
                                   rtol=1e-6)
    assert (results / "screening" / "fig7.png").read_bytes()[:4] == b"\x89PNG"
    # the learned capacities checked against the exact ones, in the summary and on the page
    summary = json.loads((results / "screening" / "k_substitution.json").read_text())
    page = (results / "report" / "index.html").read_text()
    assert "C error vs stoichiometry, Li / K (mAh/g)" in page
    for model in config["models"]:
        error = (table[f"{model}_capacity_grav_k_mean"] - table["stoich_capacity_k"]).abs().mean()
        assert summary[model]["capacity_mae_k_vs_stoichiometry"] == pytest.approx(error)
        if model.endswith("_phys"):  # capacity from stoichiometry on both sides
            assert error < 1e-4 and summary[model]["n_capacity_k_above_li"] == 0


@pytest.mark.e2e
def test_feature_contribution_and_timing_outputs(report_run):
    config, results, _ = report_run
    summary = pd.read_csv(results / "analysis" / "feature_contribution.csv")
    per_seed = pd.read_csv(results / "analysis" / "feature_contribution_seeds.csv")
    space_groups = config["features"]["space_groups"]
    groups = 8 if space_groups else 7  # the space-group block is left out when the features leave it out
    assert len(summary) == groups and (summary["n_seeds"] == 2).all()
    assert ("space group" in set(summary["group"])) == space_groups
    assert len(per_seed) == (groups + 1) * 2 and np.isfinite(summary["contribution_mean"]).all()
    # the full networks are the train jobs' seeds 0 and 1, not trained a second time
    full = per_seed[per_seed["group"] == contribution.FULL].set_index("seed")
    val = pd.read_parquet(results / "features" / "model2" / "val.parquet")
    for seed in (0, 1):
        predictions = pd.read_parquet(results / "train" / "model2" / f"seed_{seed}" / "predictions.parquet")
        predicted = contribution.predictions_by_split(predictions, {"val": val})["val"]
        r = contribution.pearson_by_target(val[list(TARGETS)].to_numpy(), predicted)
        assert full.loc[seed, "val_mean_r"] == pytest.approx(np.mean(r), rel=1e-12)
    log = (results / "logs" / "analysis" / "feature_contribution.log").read_text()
    assert log.count("(the train job's network)") == 2
    assert (results / "analysis" / "feature_contribution.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(results / "analysis" / "timing.csv")
    for model in ("model1", "model2"):
        rows = table[table["model"] == model].set_index("stage")
        assert rows.loc["Bayesian optimisation (total)", "ours"] > 0
        assert rows.loc["Training, all networks (sum)", "note"].startswith("sum over 3 networks")
        assert rows.loc["Prediction of the validation set, one network", "ours"] > 0
    assert set(table["model"]) == set(config["models"])
    assert table["compute"].str.fullmatch(r"CPU only \(\d+ cores?\)").all()


@pytest.mark.e2e
def test_snakemake_report_has_the_captions(report_run):
    config, results, workdir = report_run
    out = workdir / "snakemake_report.zip"
    snakemake(config, workdir, f"{results}/report/index.html", "--report", str(out))
    import zipfile

    archive = zipfile.ZipFile(out)
    names = archive.namelist()
    assert any(name.endswith("fig7.png") for name in names)
    assert any(name.endswith("feature_contribution.png") for name in names)
    # the peer baseline's figures and the workflow's own page were left out of it
    assert sum(name.endswith("parity.png") for name in names) == len(config["models"]) + 1, names
    assert any(name.endswith("/index.html") for name in names), names
    text = "".join(archive.read(name).decode("utf-8", "replace") for name in names
                   if name.endswith((".html", ".js", ".json")))
    for caption in ("Parity plot of the predicted value against the DFT value", "Distribution of the error",
                    "Individual contribution of each input feature group", "substitution (paper Fig 7)",
                    "for the peer baseline", "The workflow's own report"):
        assert caption in text, caption


# ----------------------------------------------------------------------------------------------
# Beyond the paper: handmade contexts, no workflow run
# ----------------------------------------------------------------------------------------------


def _metrics(mae: float, ci: float = 0.002, pi: float = 0.95, **extra) -> dict:
    """Ensemble metrics in the ensemble rule's layout, the same numbers for every split and target."""
    per_split = lambda value: {split: {t: value for t in TARGETS} for split in ("train", "val", "test")}  # noqa: E731
    errors = {split: {t: {"mae": mae, "rmse": 2 * mae, "r": 0.9, "n": 10} for t in TARGETS}
              for split in ("train", "val", "test")}
    return {"n_seeds": 3, "ensemble_mean": errors, "train_mean_baseline": errors,
            "best_single_seed": {t: {"seed": 0, "val": {"mae": mae, "rmse": 2 * mae}} for t in TARGETS},
            "coverage": {"ci": per_split(ci), "pi": per_split(pi)}, **extra}


def _cell(page: str, text: str) -> str:
    """The opening tag of the first cell whose whole content is ``text``."""
    match = re.search(rf"(<td[^>]*>){re.escape(text)}</td>", page)
    assert match, text
    return match.group(1)


@pytest.fixture
def beyond_context() -> dict:
    by_source = {t: {"physics": {"rows": 8, "pi": 1.0}, "network": {"rows": 2, "pi": 0.5}} for t in TARGETS}
    return {
        "models": ["model2", "model2_phys"],
        "metrics": {"model2": _metrics(0.3, pi=0.95), "model2_phys": _metrics(0.05, pi=0.99, coverage_by_source=by_source)},
        "peer": _metrics(0.4, ci=0.0, pi=0.9),
        "group": {"model2": {**_metrics(0.6), "split_sizes": {"train": 8, "val": 1, "test": 1}}},
        "physics": {"model2_phys": {"rows": 10, "physics_applies": 8, "network_only": {"no working ion gained": 2},
                                    "ion_references_eV_per_atom": {"Li": -1.9089}}},
        "data_report": {"formulas_made_exact": {"formula_discharge: ion count truncated": 43}},
    }


def test_beyond_section_shows_test_errors_coverage_and_the_peer(beyond_context):
    page = report.section_beyond(beyond_context)
    assert "peer_gbm" in page and "model2_phys" in page
    assert "rgba(27,158,119" in _cell(page, "95.0 %")   # inside 93-97 %: good
    assert "rgba(217,95,2" in _cell(page, "99.0 %")     # too wide: flagged
    assert "rgba(217,95,2" in _cell(page, "90.0 %")     # the peer's, too narrow
    assert "0.2 %" in page and not re.search(r">0\.0 %<", page)  # the paper's CI of the mean; the peer has none
    assert page.count("– (one model)") == len(TARGETS)
    # model2_phys against the goals: V 0.050 <= 0.08 met, capacity 0.05 < 1 met
    assert re.search(r'<td class="num" style="background: rgba\(27,158,119[^>]*>0\.050 ', page)
    assert "physics 100.0 % of 8, network 50.0 % of 2" in page
    assert "the uncertainty of a 3-network mean" in page  # the run's networks, not the paper's 50
    # the peer's figures beside its table, as every model's are in the per-model sections
    assert "Figure missing: peer_gbm: parity plots" in page
    png = b"\x89PNG any bytes"  # the page embeds them as they are
    page = report.section_beyond({**beyond_context, "peer_parity": png, "peer_errors": png})
    assert page.count('alt="peer_gbm: ') == 2 and "Figure missing" not in page


def test_the_glance_counts_the_paper_models_apart_and_exact_physics_not_at_all():
    """model2_phys's physics values redo MP's own computation: shown as exact, not as a -100 % win."""
    def metrics(mae):
        return {**_metrics(0.0), "ensemble_mean": {split: {t: {"mae": mae[t], "rmse": 2 * mae[t], "r": 0.9}
                                                           for t in TARGETS} for split in ("val", "test")},
                "best_single_seed": {t: {"seed": 0, "val": {"mae": mae[t], "rmse": 2 * mae[t]}} for t in TARGETS},
                "train_mean_baseline": {"val": {t: {"mae": 1.0, "rmse": 1.0} for t in TARGETS}}}
    context = {"models": ["model2", "model2_phys"], "config": {},
               "metrics": {"model2": metrics({"average_voltage": 0.15, "capacity_grav": 14.0, "energy_grav": 20.0}),
                           "model2_phys": metrics({"average_voltage": 3e-9, "capacity_grav": 2e-8,
                                                   "energy_grav": 3e-7})}}
    page = report.section_glance(context)
    # model2: V and E MAE and RMSE beat 0.20 / 38.81 and 0.32 / 61.21; capacity 14.0 and 28.0 do not
    assert "reproduced, match or beat it in <b>4 of 6</b>" in page
    assert "models beyond it" not in page  # every model2_phys cell is exact physics
    # a run of the models beyond the paper alone has no "0 of 0" for the paper's
    alone = report.section_glance({**context, "models": ["model1_phys"],
                                   "metrics": {"model1_phys": context["metrics"]["model2"]}})
    assert "0 of 0" not in alone and "reproduced" not in alone
    assert "The models beyond it, in <b>4 of 6</b> of the validation error figures" in alone
    assert page.count("<b>exact</b> (physics)") == 6 and "-100%" not in page
    # the per-model tables say so too, with no best seed picked among round-offs
    accuracy = report.section_accuracy({**context, "parity": {}, "errors": {},
                                        "config": {"features": {"space_groups": False, "dft_scaling": "standard"}}})
    physics = accuracy.split("<h3>model2_phys</h3>")[1]
    assert physics.count("<b>exact</b> (physics)") == 6 and "seed 0" not in physics and "-100%" not in physics
    assert "seed 0" in accuracy.split("<h3>model2_phys</h3>")[0]


def test_the_contribution_section_shows_the_test_ranking_and_a_range_that_crosses_1():
    """Validation also stops each network early: its ranking was the only one shown; and a bound of
    1.000019 printed 1.0000, a range the text said crosses 1."""
    summary = pd.DataFrame({"group": ["ion type", "formation energy", "Fermi level"], "n_removed": [10, 2, 2],
                            "n_seeds": 3, "contribution_mean": [1.0043, 1.0032, 0.9990],
                            "contribution_std": [0.001, 0.001, 0.001], "contribution_min": [1.002, 1.001, 0.9973],
                            "contribution_max": [1.006, 1.005, 1.000019],
                            "contribution_test_mean": [1.0039, 1.0087, 0.9995],
                            **{f"val_r_{t}_without": 0.98 for t in TARGETS}})
    page = report.section_contribution({"contribution": summary})
    assert "0.997300 – 1.000019" in page
    # the groups whose range crosses 1 are named; it counted them "of" the groups above 1, which held none
    assert "2 of 3 groups contribute above 1 (paper: all). For 1 of the 3 (Fermi level) the seeds disagree" in page
    assert "on the held-out test split the top three are formation energy, ion type, Fermi level (2 of 3 groups above 1)" in page
    assert "<th>On the test split</th>" in page and "1.0087" in page


def test_the_largest_validation_errors_and_the_rmse_without_them():
    rows = [{"battery_id": f"e{i}", "split": "val", "target": target, "true": 100.0, "mean": 100.0 + miss}
            for target in TARGETS for i, miss in enumerate([1, -1, 1, -1, 600, -300, 2])]
    rows += [{"battery_id": "t0", "split": "test", "target": t, "true": 0.0, "mean": 9000.0} for t in TARGETS]
    worst = report_inputs.largest_errors(pd.DataFrame(rows), n=2)
    assert [row["battery_id"] for row in worst["capacity_grav"]["electrodes"]] == ["e4", "e5"]  # test rows left out
    assert worst["capacity_grav"]["rmse_without"] == pytest.approx(np.sqrt((1 + 1 + 1 + 1 + 4) / 5))
    text = report._largest_errors({"largest_errors": {"model1": worst}}, "model1")
    assert "e4 (100.0 → 700.0), e5 (100.0 → -200.0); RMSE without them 1.26" in text
    exact = {t: {"rmse_without": 0.0, "electrodes": [{"battery_id": "e0", "true": 1.0, "mean": 1.0 + 1e-9}]}
             for t in TARGETS}
    assert report._largest_errors({"largest_errors": {"model2_phys": exact}}, "model2_phys") == ""
    # round-off of an energy of 81 Wh/kg (model2_phys's run: 1.94e-6), exact in the figures, is exact here too
    round_off = {t: {"rmse_without": 0.0, "electrodes": [{"battery_id": "e0", "true": 81.4, "mean": 81.4 + 1.94e-6}]}
                 for t in TARGETS}
    assert report._largest_errors({"largest_errors": {"model2_phys": round_off}}, "model2_phys") == ""


def test_the_accuracy_section_says_where_the_setup_differs_from_the_papers():
    config = {"features": {"space_groups": False, "dft_scaling": "standard"}, "data": {"exact_formulas": True},
              "train": {"epochs": 500, "batch_size": 128, "patience": 100}}
    text = report.setup_differences(config)
    assert "no space-group block" in text and "<code>standard</code> (the paper: min-max)" in text
    assert "made exact" in text and "mini-batches of 128, at most 500 epochs" in text
    # the full batch was "mini-batches of None"; the rate scale and the tuning's tolerance were not listed
    text = report.setup_differences({**config, "train": {"batch_size": None, "patience": 100, "lr_scale": 0.5},
                                     "tune": {"tolerance": 0.055}})
    assert "training in full batches, at most" in text and "None" not in text
    assert "tuned learning rate times 0.5" in text and "within 5.5 % of the lowest score" in text
    assert report.setup_differences({"features": {"space_groups": True, "dft_scaling": "minmax"}}) == ""
    with pytest.raises(KeyError, match="dft_scaling"):  # the schema requires it: no guess at what the run used
        report.setup_differences({"features": {"space_groups": True}})


def test_report_provenance_names_the_code_and_shortens_exact_formulas():
    assert re.fullmatch(r"electrode-ml \S+, commit [0-9a-f]{12}( with uncommitted changes)?", report_inputs.code_provenance())
    assert report_inputs.code_provenance(Path("/")).startswith("electrode-ml ") and "commit" not in report_inputs.code_provenance(Path("/"))
    assert report.short_formula("Li0.9166666667VCuO4") == "Li0.917VCuO4"
    assert report.short_formula("Li1.5Fe2(PO4)3") == "Li1.5Fe2(PO4)3"


def test_beyond_section_names_the_test_electrodes_outside_the_training_data(beyond_context):
    scored = {"test": {"average_voltage": {"rows": 1, "mae": 1.31, "mae_others": 0.40, "pi_coverage": 0.0,
                                           "battery_ids": ["mp-753108_Li"]}}}
    context = {**beyond_context, "metrics": {**beyond_context["metrics"],
                                             "model2": _metrics(0.3, outside_training=scored)}}
    page = report.section_beyond(context)
    assert "<b>model2</b> (mp-753108_Li): Voltage MAE 1.310 against 0.400, PI holds 0 % of 1</li>" in page
    assert "cannot vouch for" not in report.section_beyond(beyond_context)


def test_beyond_section_sets_the_group_split_against_the_random_one(beyond_context):
    page = report.section_beyond(beyond_context)
    assert "2.00×" in page and "train 8 / val 1 / test 1" in page
    assert "model2_phys" not in page.split("Unseen hosts")[1].split("Physics and exact formulas")[0]
    assert "the ensemble of the same 3 seeds" in page
    # a random split of 50 networks is set against the grouped one's 3 through the ensemble of those 3
    fifty = {**_metrics(0.3), "n_seeds": 50, "compare_seeds": {"n_seeds": 3, "ensemble_mean": _metrics(0.4)["ensemble_mean"]}}
    page = report.section_beyond({**beyond_context, "metrics": {**beyond_context["metrics"], "model2": fifty}})
    assert "1.50×" in page and "2.00×" not in page and "the ensemble of the same 3 seeds" in page
    # metrics written before the ensemble rule scored that subset: the whole ensemble, said so
    fifty.pop("compare_seeds")
    page = report.section_beyond({**beyond_context, "metrics": {**beyond_context["metrics"], "model2": fifty}})
    assert "2.00×" in page and "its whole ensemble, of more networks" in page
    # more grouped networks than the run trained (evaluation.group_seeds over train.n_seeds): no subset
    grouped = {"model2": {**beyond_context["group"]["model2"], "n_seeds": 10}}
    page = report.section_beyond({**beyond_context, "group": grouped})
    assert "its whole ensemble, of other numbers of networks" in page


def test_beyond_section_reports_physics_and_exact_formulas(beyond_context):
    page = report.section_beyond(beyond_context)
    physics = page.split("Physics and exact formulas")[1]
    assert "Li -1.909" in physics and "no working ion gained: 2" in physics
    assert "trailing-zero strip" in physics and "formula_discharge: ion count truncated" in physics and ">43<" in physics


def test_beyond_section_reports_the_voltage_trees_share_and_their_own_error(beyond_context):
    trees = {"weight": 0.5, "trees_alone_voltage_mae": {"train": 0.1, "val": 0.338, "test": 0.372}}
    context = {**beyond_context, "models": ["model1_phys"], "metrics": {"model1_phys": _metrics(0.3, voltage_trees=trees)}}
    physics = report.section_beyond(context).split("Physics and exact formulas")[1]
    assert "model1_phys</code>: 50% of the voltage from the trees" in physics
    assert "trees alone 0.338 / 0.372 V, blended 0.300 / 0.300 V" in physics
    assert "Voltage trees" not in report.section_beyond(beyond_context)
    bagged = {**context, "metrics": {"model1_phys": _metrics(0.3, voltage_trees={**trees, "bags": 4})}}
    assert "50% of the voltage from the mean of 4 tree models;" in report.section_beyond(bagged)
    weighted = {**context, "metrics": {"model1_phys": _metrics(0.3, voltage_trees={
        **trees, "bags": 4, "capacity_weights": [5, 95], "weight_bounds_mAh_g": [40.2, 305.4]})}}
    assert ("the mean of 4 tree models (each electrode weighted by its capacity, clipped to 40-305 mAh/g);"
            in report.section_beyond(weighted))
    raised = {**context, "metrics": {"model1_phys": _metrics(0.3, voltage_trees={
        **trees, "bags": 4, "capacity_weights": [5, 95], "weight_bounds_mAh_g": [40.2, 305.4], "high_capacity_weight": 0.8})}}
    assert "model1_phys</code>: 50% (80% above 305 mAh/g) of the voltage from the mean of 4" in report.section_beyond(raised)


def test_beyond_section_without_optional_parts(beyond_context):
    bare = {**beyond_context, "models": ["model1"], "metrics": {"model1": _metrics(0.4)}, "peer": None,
            "group": {}, "physics": {}, "data_report": {}}
    page = report.section_beyond(bare)
    assert "peer_gbm</b>" not in page and "Not run" in page and "No physics model" in page
    assert "does not record" in page and 'class="missing"' not in page


def test_collect_reads_the_beyond_inputs_and_skips_a_missing_physics_summary(tmp_path, beyond_context):
    def write(name: str, value) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
        return str(path)

    pd.DataFrame({"battery_id": ["a", "b"], "working_ion": ["Li", "Na"]}).to_parquet(tmp_path / "electrodes.parquet")
    pd.DataFrame({"battery_id": ["a", "b"], "split": ["train", "test"]}).to_parquet(tmp_path / "split.parquet")
    metrics = beyond_context["metrics"]
    input = {
        "data_report": write("data/data_report.json", {"rows_per_ion": {"Li": 1, "Na": 1}}),
        "electrodes": str(tmp_path / "electrodes.parquet"), "split": str(tmp_path / "split.parquet"),
        "metrics": [write(f"ensemble/{m}/metrics.json", metrics[m]) for m in metrics],
        "parity": [str(tmp_path / "figures" / "model2" / "parity.png")], "errors": [],
        "fig7": str(tmp_path / "screening" / "fig7.png"),  # never written
        "peer": write("ensemble/peer_gbm/metrics.json", beyond_context["peer"]),
        "group": [write("group/model2/metrics.json", beyond_context["group"])],
        "physics": [str(tmp_path / "physics" / "model2_phys" / "physics.json")],  # never written
    }
    (tmp_path / "figures" / "model2").mkdir(parents=True)
    (tmp_path / "figures" / "model2" / "parity.png").write_bytes(b"\x89PNG parity")
    config = {"results": str(tmp_path), "features": {"space_groups": False, "dft_scaling": "standard"}}
    params = type("Params", (), {"models": ["model2", "model2_phys"], "config": config})()
    context = report.collect(input, params)  # the report rule's step calls report.collect
    assert context["physics"] == {} and context["peer"]["n_seeds"] == 3
    assert context["parity"] == {"model2": b"\x89PNG parity"} and context["fig7"] is None  # figures read here
    assert set(context["group"]) == {"model2"}
    page = report.build_report(context)
    assert report_html.esc("Beyond the paper") in page and "No physics model" in page and "2.00×" in page


def test_the_data_section_names_a_download_and_what_it_left_out():
    download = {"source": "mp_api", "endpoint": "https://api.materialsproject.org/", "database_version": "2025.09.25",
                "downloaded_at": "2026-12-06T12:00:00+00:00", "mp_api_version": "0.46.5", "rows_in": 10, "rows_out": 9,
                "rows_per_ion": {"Li": 9}, "dropped": {"average_voltage outside window": 0},
                "download_dropped": {"average_voltage outside window": {"count": 2, "examples": ["mp-1_Li", "mp-2_Li"]},
                                     "end member without summary properties": {"count": 0, "examples": []}}}
    crosstab = pd.DataFrame({"train": [7], "val": [1], "test": [1]}, index=["Li"])
    text = report.section_data({"data_report": download, "ion_split": crosstab})
    assert "database 2025.09.25" in text
    assert "left out by the download: average_voltage outside window: 2 (e.g. mp-1_Li, mp-2_Li)" in text
    assert "end member without summary properties" not in text  # reasons that left nothing out are not listed


def test_a_test_split_without_na_electrodes_still_gets_its_report(tmp_path):
    """An empty screen table reads its verdict columns as text, and a mask of text selected columns:
    `data.ions` without Na ended the whole run's last job in a KeyError traceback."""
    columns = ["battery_id", "framework_formula", "split", "split_role", "trained_on", "dft_pass",
               "model1_pass", "model1_outcome"]
    path = tmp_path / "na_screening.csv"
    pd.DataFrame(columns=columns).to_csv(path, index=False)
    assert pd.read_csv(path)["dft_pass"].dtype == object  # what the report read before
    test = report_inputs.screen_table(path)
    assert test["dft_pass"].dtype == bool and test["trained_on"].dtype == bool and test.empty
    none = {"picks": 0, "tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None}
    metrics = {"thresholds": {"voltage": 2.0, "capacity": 100.0, "energy": 200.0}, "paper": {"dft_picks": 9},
               "filter": "V > 2.0 V", "test": {"model1": {"all": none}}, "all_na": {"model1": {"all": none}}}
    page = report.section_na({"na_screening": test, "na_all": test, "na_metrics": metrics, "models": ["model1"]})
    assert "0 Na electrodes in the test split" in page and "0 of the 0 DFT picks" in page


def test_a_screen_of_dft_values_is_not_shaded_against_the_paper():
    """model2_phys's Na screen recomputes MP's numbers from the DFT inputs it reads: its precision
    and recall of 1.00 were coloured green against the paper's 0.90 as if it were a prediction."""
    dft = {"average_voltage": [3.1, 1.5], "capacity_grav": [120.0, 90.0], "energy_grav": [372.0, 135.0]}
    test = pd.DataFrame({"battery_id": ["mp-1_Na", "mp-2_Na"], "framework_formula": ["FePO4", "CoO2"],
                         "formula_charge": ["FePO4", "CoO2"], "formula_discharge": ["NaFePO4", "NaCoO2"],
                         "working_ion": "Na", "split": "test", "split_role": "held out", "trained_on": False, "dft_pass": [True, False]})
    for target, values in dft.items():
        test[f"dft_{target}"] = values
        test[f"model2_phys_{target}_mean"] = np.asarray(values) * (1 + 1e-9)
        test[f"model2_{target}_mean"] = np.asarray(values) * 1.05
        for model in ("model2", "model2_phys"):
            for stat, factor in (("ci_low", 0.99), ("ci_high", 1.01), ("pi_low", 0.9), ("pi_high", 1.1), ("std", 0.01)):
                test[f"{model}_{target}_{stat}"] = test[f"{model}_{target}_mean"] * factor
    for model in ("model2", "model2_phys"):
        test[f"{model}_pass"], test[f"{model}_outcome"] = [True, False], ["TP", "TN"]
    assert report.screens_dft_values(test, "model2_phys") and not report.screens_dft_values(test, "model2")
    assert not report.screens_dft_values(test.iloc[:0], "model2_phys")
    score = {"picks": 1, "tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "reference_picks": 1}
    metrics = {"thresholds": {"voltage": 2.0, "capacity": 100.0, "energy": 200.0},
               "paper": {"dft_picks": 9, "model2": {"picks": 10, "precision": 0.9, "recall": 1.0}},
               "filter": "V ≥ 2 V", "test": {"model2": {"all": score}, "model2_phys": {"all": score}}}
    page = report.section_na({"na_screening": test, "na_all": test, "na_metrics": metrics,
                              "models": ["model2", "model2_phys"]})
    table5 = page.split("<h3>Table 5")[1].split("</table>")[0]
    rows = table5.split("<tr")
    model2_row = next(row for row in rows if "<b>model2</b>" in row)
    physics_row = next(row for row in rows if "<b>model2_phys</b>" in row)
    assert "background" in model2_row and "background" not in physics_row
    assert "DFT by construction" in physics_row and "DFT by construction" not in model2_row
    glance = report._glance_applications({"na_metrics": metrics, "na_screening": test, "models": ["model2", "model2_phys"]})
    assert glance.count("DFT by construction") == 1 and "model2_phys: 1 picks" in glance


def test_a_target_exact_by_physics_shows_no_error_and_no_coverage_to_read(beyond_context):
    """model2_phys's test row read "0.000 -100 %" and a calibrated coverage shaded green, for
    values and intervals of round-off (the run's PIs were 2e-8 V wide)."""
    metrics = _metrics(0.05, pi=0.946, coverage_by_source={
        t: {"physics": {"rows": 10, "pi": 0.946}} for t in TARGETS})
    for split in metrics["ensemble_mean"].values():
        split["capacity_grav"]["mae"] = 2e-8
    page = report.section_beyond({**beyond_context, "metrics": {"model2_phys": metrics}})
    row = re.search(r"<tr><td><b>model2_phys</b>.*?</tr>", page, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[2] == "<b>exact</b> (physics)"
    assert '<td class="num"><b>exact</b> (physics)</td>' in row  # unshaded, as in the glance table
    assert cells[1].startswith("0.050 ")  # a learned target keeps its number
    assert cells[5] == "0.2 % (round-off width)" and cells[8] == "94.6 % (round-off width)"
    assert cells[7] == "94.6 %"  # the voltage's, learned: shaded as before
    assert "rgba" not in re.search(r"<td[^>]*>94\.6 % \(round-off width\)</td>", row).group(0)
    assert "Capacity: exact (physics) on all 10" in page
    assert "Voltage: physics 94.6 % of 10" in page


@pytest.mark.parametrize("value, text", [(0.41, "0.41"), (0.2, "0.2"), (13.38, "13.38"), (0.902, "0.902"), (None, "–")])
def test_the_papers_figures_keep_the_digits_it_printed(value, text):
    """Table 3 printed the paper's 0.41 V as 0.410, a digit the paper does not give."""
    assert report.as_printed(value) == text


def test_a_screen_the_data_could_not_make_is_one_line_not_empty_tables():
    """With no Na test electrode the page said "every model agrees with DFT on every test Na
    electrode" and "0 picks for 0 DFT picks"; with no K training electrode, K twins scored by
    untrained weights."""
    na = {"skipped": "no Na electrode in the test split", "test": {}, "all_na": {}, "thresholds": {}, "filter": "",
          "paper": {}}
    k = {"skipped": "no K electrode in the training split: the models never learned K", "n": 0}
    context = {"models": ["model1"], "na_metrics": na, "na_screening": pd.DataFrame(), "k_summary": k,
               "k_table": pd.DataFrame()}
    assert report.section_na(context) == "<p>Not computed on this run's data: no Na electrode in the test split.</p>"
    assert "the models never learned K" in report.section_k(context) and "<table" not in report.section_k(context)
    glance = report._glance_applications(context)
    assert "Na screen: not computed (no Na electrode in the test split)" in glance
    assert "Li → K: not computed (no K electrode in the training split" in glance and "picks" not in glance
