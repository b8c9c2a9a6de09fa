"""Na screen (Tables 5-6) and Li -> K substitution (Fig 7) on small handmade frames."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition

from electrode_ml import screening, screening_figures
from electrode_ml.errors import InputError
from electrode_ml.chemistry import stoichiometric_capacity
from electrode_ml.schema import TARGETS

THRESHOLDS = {"voltage": 2.0, "capacity": 100, "energy": 200}


def electrode(battery_id, ion, charge, discharge, framework, v, c, e, **extra):
    row = {"battery_id": battery_id, "working_ion": ion, "formula_charge": charge, "formula_discharge": discharge,
           "framework_formula": framework, "average_voltage": v, "capacity_grav": c, "energy_grav": e,
           "charge_crystal_system": "Monoclinic", "discharge_crystal_system": "Monoclinic",
           "charge_space_group_number": 12, "discharge_space_group_number": 12}
    row.update(extra)
    return row


@pytest.fixture
def hand_case():
    """Six Na electrodes, one Li, with DFT values and two models' predictions chosen by hand."""
    electrodes = pd.DataFrame([
        electrode("na-a", "Na", "Na0MnO2", "Na1MnO2", "MnO2", 3.0, 200.0, 600.0),        # DFT pass
        electrode("na-b", "Na", "Na0VO2", "Na0.5VO2", "VO2", 1.84, 98.6, 181.3),        # DFT fail (V, C, E)
        electrode("na-c", "Na", "Na0CrN2", "Na1CrN2", "CrN2", 1.96, 260.2, 511.0),      # DFT fail (V only)
        electrode("na-d", "Na", "Na0FePO4", "Na1FePO4", "FePO4", 2.0, 100.0, 200.0),    # DFT pass, on every bound
        electrode("na-e", "Na", "Na0WO3", "Na1WO3", "WO3", 0.5, 50.0, 25.0),            # DFT fail
        electrode("na-f", "Na", "Na0NiO2", "Na1NiO2", "NiO2", 2.5, 150.0, 375.0),       # DFT pass, train split
        electrode("li-a", "Li", "Li0MnO2", "Li1MnO2", "MnO2", 3.5, 300.0, 1050.0),      # not Na
    ])
    split = pd.DataFrame({"battery_id": electrodes["battery_id"],
                          "split": ["test", "test", "test", "test", "test", "train", "test"]})
    # Predictions (mean) per model: (V, C, E)
    means = {
        "model1": {"na-a": (2.9, 190, 550), "na-b": (2.32, 112.3, 254.2), "na-c": (2.30, 207.9, 476.4),
                   "na-d": (1.99, 101, 201), "na-e": (0.6, 55, 30), "na-f": (2.4, 140, 330), "li-a": (3.4, 290, 990)},
        "model2": {"na-a": (3.1, 205, 610), "na-b": (1.90, 98.3, 186.0), "na-c": (2.55, 188.5, 495.8),
                   "na-d": (2.05, 102, 210), "na-e": (0.4, 45, 20), "na-f": (2.6, 155, 400), "li-a": (3.5, 300, 1000)},
    }
    predictions = {}
    for model, values in means.items():
        rows = []
        for battery_id, triple in values.items():
            for target, mean in zip(TARGETS, triple):
                rows.append({"battery_id": battery_id, "split": split.set_index("battery_id").loc[battery_id, "split"],
                             "target": target, "true": np.nan, "mean": float(mean), "std": 1.0, "n": 5,
                             "ci_low": mean - 0.5, "ci_high": mean + 0.5})
        predictions[model] = pd.DataFrame(rows)
    return electrodes, split, predictions


def test_passes_is_inclusive_and_needs_every_criterion():
    frame = pd.DataFrame({"average_voltage": [2.0, 1.99, 3.0, 3.0], "capacity_grav": [100, 300, 99.9, 300],
                          "energy_grav": [200, 600, 300, 199]})
    assert screening.passes(frame, THRESHOLDS).tolist() == [True, False, False, False]
    with pytest.raises(InputError, match="unknown criterion"):
        screening.passes(frame, {"density": 1})


def test_confusion_hand_case():
    reference = pd.Series([True, True, False, False, True, False])
    predicted = pd.Series([True, False, True, False, True, False])
    score = screening.confusion(reference, predicted)
    assert (score["tp"], score["fp"], score["fn"], score["tn"]) == (2, 1, 1, 2)
    assert score["precision"] == pytest.approx(2 / 3) and score["recall"] == pytest.approx(2 / 3)
    assert score["picks"] == 3 and score["reference_picks"] == 3
    nothing = screening.confusion([False, False], [False, False])
    assert nothing["precision"] is None and nothing["recall"] is None
    assert screening.outcome(reference, predicted).tolist() == ["TP", "FN", "FP", "TN", "TP", "TN"]


def test_screen_agrees_with_hand_computed_filter(hand_case):
    electrodes, split, predictions = hand_case
    table = screening.screen_table(electrodes, split, predictions, THRESHOLDS, splits=("test",))
    assert set(table["battery_id"]) == {"na-a", "na-b", "na-c", "na-d", "na-e"}  # Na, test only
    verdict = table.set_index("battery_id")
    assert verdict["dft_pass"].to_dict() == {"na-a": True, "na-b": False, "na-c": False, "na-d": True, "na-e": False}
    # By hand: model1 passes a, b (VO2, as in the paper), c (CrN2); fails d (1.99 V). model2 passes a, c, d.
    assert verdict["model1_pass"].to_dict() == {"na-a": True, "na-b": True, "na-c": True, "na-d": False, "na-e": False}
    assert verdict["model2_pass"].to_dict() == {"na-a": True, "na-b": False, "na-c": True, "na-d": True, "na-e": False}
    assert verdict["model1_outcome"].to_dict() == {"na-a": "TP", "na-b": "FP", "na-c": "FP", "na-d": "FN", "na-e": "TN"}
    assert verdict.loc["na-b", "model1_average_voltage_mean"] == pytest.approx(2.32)
    assert verdict.loc["na-b", "model1_energy_grav_ci_low"] == pytest.approx(253.7)
    assert verdict.loc["na-b", "dft_capacity_grav"] == pytest.approx(98.6)

    metrics = screening.screen_metrics(table, ["model1", "model2"])
    assert metrics["model1"]["all"]["precision"] == pytest.approx(1 / 3)
    assert metrics["model1"]["all"]["recall"] == pytest.approx(1 / 2)
    assert metrics["model2"]["all"]["precision"] == pytest.approx(2 / 3)
    assert metrics["model2"]["all"]["recall"] == pytest.approx(1.0)


def test_screen_over_all_na_flags_training_electrodes(hand_case):
    electrodes, split, predictions = hand_case
    table = screening.screen_table(electrodes, split, predictions, THRESHOLDS, splits=None)
    assert len(table) == 6 and table["split"].iloc[0] == "test"  # test rows first
    trained = table.set_index("battery_id")["trained_on"]
    assert trained["na-f"] and not trained[["na-a", "na-b", "na-c", "na-d", "na-e"]].any()
    metrics = screening.screen_metrics(table, ["model1", "model2"])
    assert metrics["model2"]["train"]["tp"] == 1 and metrics["model2"]["all"]["tp"] == 3


def test_table5_and_table6_name_the_errors(hand_case):
    electrodes, split, predictions = hand_case
    models = ["model1", "model2"]
    table = screening.screen_table(electrodes, split, predictions, THRESHOLDS)
    metrics = screening.screen_metrics(table, models)
    table5 = screening.table5_markdown(table, models, THRESHOLDS, metrics)
    assert "| DFT | 2 | MnO2 (na-a), FePO4 (na-d)" in table5
    assert "VO2 (na-b) **(false positive)**" in table5
    assert "model1 missed (false negatives): FePO4 (na-d)" in table5
    table6 = screening.table6_markdown(table, models, THRESHOLDS)
    assert "Na0VO2 -> Na0.5VO2 (na-b)" in table6 and "Na0CrN2 -> Na1CrN2 (na-c)" in table6
    assert "Na0MnO2" not in table6  # correctly screened by both
    assert "2.32 [2.32, 2.33]" not in table6 and "2.32 [1.82, 2.82]" in table6
    assert "**1.84**" in table6  # the DFT voltage that keeps VO2 out is marked
    assert "fail (FN)" in table6 and "pass (FP)" in table6
    # another ion's screen says so (it said Na whatever the ion)
    assert "working ion = Na" in table5 and f"Candidates: {len(table)} Na electrodes" in table5
    k_table = table.assign(working_ion="K")
    assert f"Candidates: {len(table)} K electrodes" in screening.table5_markdown(k_table, models, THRESHOLDS, metrics, ion="K")
    assert "working ion = K" in screening.table6_markdown(k_table, models, THRESHOLDS, ion="K")


def test_missing_prediction_is_refused(hand_case):
    electrodes, split, predictions = hand_case
    predictions["model1"] = predictions["model1"][predictions["model1"]["battery_id"] != "na-a"]
    with pytest.raises(InputError, match="na-a"):
        screening.screen_table(electrodes, split, predictions, THRESHOLDS)


@pytest.mark.parametrize("formula, expected", [
    ("Li0FeH12(SO7)2", "K0FeH12(SO7)2"),
    ("Li1V(Si2O5)3", "K1V(Si2O5)3"),
    ("Li0.33Mn2O4", "K0.33Mn2O4"),
    ("Li4Cr3Fe3(TeO8)2", "K4Cr3Fe3(TeO8)2"),
    ("Li1.333333333CuO2", "K1.333333333CuO2"),  # an exact count written by the data rule
    ("Fe2LiO3", "K1Fe2O3"),  # not snapshot style: rewritten from the composition
])
def test_substitute_formula_keeps_amounts(formula, expected):
    written = screening.substitute_formula(formula, "Li", "K")
    assert written == expected
    original = Composition(formula)
    assert Composition(written).almost_equals(original.replace({"Li": "K"}) if original["Li"] else original)


def test_substitute_formula_refuses_a_formula_without_the_ion():
    with pytest.raises(InputError, match="holds no Li"):
        screening.substitute_formula("MnO2", "Li", "K")


def test_k_substitution_changes_only_the_ion(small_raw):
    from electrode_ml.data import validate_electrodes

    electrodes, _ = validate_electrodes(small_raw, ions=["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Zn", "Al", "Y"],
                                        voltage_window=(-1, 7), on_bad_row="error", source="snapshot", where="test")
    swapped = screening.substitute_ion(electrodes)
    original = electrodes[electrodes["working_ion"] == "Li"]
    assert len(swapped) == len(original) > 0 and (swapped["working_ion"] == "K").all()
    assert not set(TARGETS) & set(swapped.columns)  # the K electrode has no DFT values
    unchanged = [name for name in swapped.columns if name not in screening.SUBSTITUTED_COLUMNS]
    pd.testing.assert_frame_equal(swapped[unchanged], original[unchanged])
    for column in ("formula_charge", "formula_discharge"):
        for before, after in zip(original[column], swapped[column]):
            li, k = Composition(before), Composition(after)
            assert "Li" not in {str(el) for el in k}
            assert k["K"] == pytest.approx(li["Li"])
            assert {str(el): amount for el, amount in k.items() if str(el) != "K"} == \
                {str(el): amount for el, amount in li.items() if str(el) != "Li"}
            assert after.startswith("K") and after[1:].lstrip("0123456789.") == before[2:].lstrip("0123456789.")


def test_k_substitution_table_and_the_featuriser(small_raw):
    """The substituted rows run through the same fitted featuriser as any input; only the ion block moves."""
    from electrode_ml.data import validate_electrodes
    from electrode_ml.features import build_featurizer

    electrodes, _ = validate_electrodes(small_raw, ions=["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Zn", "Al", "Y"],
                                        voltage_window=(-1, 7), on_bad_row="error", source="snapshot", where="test")
    split = pd.DataFrame({"battery_id": electrodes["battery_id"], "split": "test"})
    featurizer = build_featurizer("model2", space_groups=True).fit(electrodes)
    names = list(featurizer.get_feature_names_out())
    seen = {}

    def fake_predict(frame):
        x = featurizer.transform(frame)
        seen[frame["working_ion"].iloc[0]] = x
        energy = 100 * x[:, names.index("working_ion__working_ion_Li")] + 10
        return pd.DataFrame({"battery_id": frame["battery_id"].to_numpy(),
                             **{f"{t}_{s}": energy for t in TARGETS for s in ("mean", "ci_low", "ci_high")}})

    def capacity_of(charge, discharge):
        return stoichiometric_capacity(charge, discharge, "K")

    table = screening.k_substitution(electrodes, split, {"fake": fake_predict})
    n_li = int((electrodes["working_ion"] == "Li").sum())
    assert len(table) == n_li
    assert (table["fake_energy_grav_li_mean"] == 110).all() and (table["fake_energy_grav_k_mean"] == 10).all()
    assert (table["fake_energy_ratio"] < 1).all()
    assert (table["stoich_capacity_ratio"] < 1).all()  # K is heavier than Li: less charge per gram
    # K and Li feature rows differ in the ion one-hot and the formula PCA only.
    moved = np.abs(seen["K"] - seen["Li"]).max(axis=0) > 1e-9
    moved_blocks = {names[i].split("__")[0] for i in np.flatnonzero(moved)}
    assert moved_blocks <= {"working_ion", "formula_charge", "formula_discharge"} and "working_ion" in moved_blocks
    summary = screening.k_summary(table, ["fake"])
    assert summary["fake"]["fraction_k_below_li"] == 1.0 and summary["n"] == n_li
    # a model with its own predictor for the substituted rows: the Li rows keep the first one
    doubled = screening.k_substitution(electrodes, split, {"fake": fake_predict}, substituted_predictors={
        "fake": lambda frame: fake_predict(frame).assign(energy_grav_mean=7.0)})
    assert (doubled["fake_energy_grav_k_mean"] == 7).all() and (doubled["fake_energy_grav_li_mean"] == 110).all()
    # the learned capacities against the exact ones: a heavier twin cannot hold more charge per gram
    assert summary["fake"]["n_capacity_k_above_li"] == 0
    assert summary["fake"]["capacity_mae_li_vs_stoichiometry"] == pytest.approx((110 - table["stoich_capacity_li"]).abs().mean())
    exact = screening.k_substitution(electrodes, split, {"fake": fake_predict}, substituted_predictors={
        "fake": lambda frame: fake_predict(frame).assign(capacity_grav_mean=lambda wide: [
            capacity_of(charge, discharge) for charge, discharge in zip(frame["formula_charge"], frame["formula_discharge"])])})
    heavier = screening.k_summary(exact, ["fake"])["fake"]
    assert heavier["capacity_mae_k_vs_stoichiometry"] < 1e-9 and heavier["capacity_median_error_k_vs_stoichiometry"] == 0
    above = screening.k_summary(doubled.assign(fake_capacity_grav_k_mean=1e4), ["fake"])["fake"]
    assert above["n_capacity_k_above_li"] == n_li and above["capacity_median_error_k_vs_stoichiometry"] > 0
    figure = screening_figures.k_substitution_figure(table, ["fake"])
    assert len(figure.axes) == 1
    assert figure.axes[0].get_xlabel() == "Predicted specific energy, Li electrode (Wh/kg)"  # no sources: no claim

    # where the predictor says where each value came from, the table keeps it and the axes say it:
    # model2_phys's Li values are physics (DFT), its K voltage the networks' (steps.screen_k_step)
    def sourced(voltage):
        return lambda frame: fake_predict(frame).assign(average_voltage_source=voltage, capacity_grav_source="physics",
                                                        energy_grav_source=voltage)

    mixed = screening.k_substitution(electrodes, split, {"fake": sourced("physics")},
                                     substituted_predictors={"fake": sourced("network")})
    assert (mixed["fake_average_voltage_li_source"] == "physics").all()
    assert (mixed["fake_average_voltage_k_source"] == "network").all()
    axis = screening_figures.k_substitution_figure(mixed, ["fake"]).axes[0]
    assert axis.get_xlabel().endswith("\nLi: V (physics: DFT energies) × C (physics: stoichiometry)")
    assert axis.get_ylabel().endswith("\nK: V (networks) × C (physics: stoichiometry)")
    assert "different sources" in axis.get_title()
    plt.close("all")


def k_table(ci_half_width: float, n: int = 40) -> pd.DataFrame:
    """A K-substitution table of one model without sources, K energies 0.8 of Li, CI of the given half-width."""
    li = np.linspace(100, 1000, n)
    table = pd.DataFrame({"stoich_capacity_ratio": np.full(n, 0.85), "m_energy_grav_li_mean": li,
                          "m_energy_grav_k_mean": 0.8 * li})
    for label, values in (("li", li), ("k", 0.8 * li)):
        table[f"m_energy_grav_{label}_ci_low"] = values - ci_half_width
        table[f"m_energy_grav_{label}_ci_high"] = values + ci_half_width
    return table


def test_the_k_figure_says_how_often_the_ci_hides_behind_the_marker():
    narrow = screening_figures.k_substitution_figure(k_table(0.01), ["m"])
    assert narrow._suptitle.get_text().endswith(
        "95 % CI of the ensemble mean of the K values, within the marker for 100 % of the points")
    wide = screening_figures.k_substitution_figure(k_table(200.0), ["m"])
    assert wide._suptitle.get_text().endswith("within the marker for 0 % of the points")
    plt.close("all")


def test_the_k_figure_gives_each_panel_its_own_share_of_hidden_error_bars():
    """Pooled over the panels, the run's figure said 86 % where model1's panel hid 53 %."""
    table = k_table(0.01)
    for side in ("li", "k"):  # a second model whose intervals are wide
        table[f"w_energy_grav_{side}_mean"] = table[f"m_energy_grav_{side}_mean"]
        table[f"w_energy_grav_{side}_ci_low"] = table[f"m_energy_grav_{side}_mean"] - 200.0
        table[f"w_energy_grav_{side}_ci_high"] = table[f"m_energy_grav_{side}_mean"] + 200.0
    figure = screening_figures.k_substitution_figure(table, ["m", "w"])
    assert figure._suptitle.get_text().endswith("within the marker for 100 % (a), 0 % (b) of the points")
    plt.close("all")


def test_a_substitution_that_brings_a_negative_energy_nearer_zero_counts_as_lower():
    """The mass effect shrinks a negative-voltage electrode's energy too: -50 -> -40 Wh/kg is lower."""
    before = pd.Series([-50.0, 300.0, 200.0, -10.0])
    after = pd.Series([-40.0, 250.0, 220.0, -30.0])
    assert screening.lower_as_substituted(before, after) == 0.5


def ion_table(rows: list[tuple[str, str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Electrodes (LiFePO4-like, one per row) and their split from (battery_id, working_ion, split)."""
    electrodes = pd.DataFrame({
        "battery_id": [row[0] for row in rows], "working_ion": [row[1] for row in rows],
        "framework_formula": "FePO4", "formula_charge": [f"{row[1]}0FePO4" for row in rows],
        "formula_discharge": [f"{row[1]}1FePO4" for row in rows],
        "average_voltage": 3.4, "capacity_grav": 170.0, "energy_grav": 578.0})
    split = pd.DataFrame({"battery_id": [row[0] for row in rows], "split": [row[2] for row in rows]})
    return electrodes, split


@pytest.mark.parametrize("rows, reason", [
    ([("a", "Li", "train"), ("b", "Li", "test"), ("c", "Na", "train"), ("d", "Na", "test")], None),
    ([("a", "Li", "train"), ("b", "Li", "test"), ("c", "Na", "train"), ("d", "Na", "val")],
     "no Na electrode in the test split"),
    ([("a", "Li", "train"), ("b", "Li", "test"), ("c", "Na", "val"), ("d", "Na", "test")],
     "no Na electrode in the training split: the models never learned Na"),
])
def test_a_screen_says_why_this_data_cannot_make_it(rows, reason):
    """With no Na test electrode the run reported "0 picks for 0 DFT picks" and "every model agrees
    with DFT"; with no K training electrode the K twins were scored by weights never trained."""
    electrodes, split = ion_table(rows)
    assert screening.unscreenable(electrodes, split, tested="Na", trained="Na") == reason


def test_the_screens_write_a_reason_not_vacuous_results(tmp_path):
    from types import SimpleNamespace

    from electrode_ml.fileio import read_json, write_parquet
    from electrode_ml.steps import screen_k_step, screen_na_step

    electrodes, split = ion_table([("a", "Li", "train"), ("b", "Li", "test"), ("c", "Mg", "test")])
    inputs = SimpleNamespace(electrodes=tmp_path / "electrodes.parquet", split=tmp_path / "split.parquet",
                             predictions=[])
    write_parquet(electrodes, inputs.electrodes)
    write_parquet(split, inputs.split)
    output = SimpleNamespace(table=tmp_path / "k.csv", summary=tmp_path / "k.json", figure=tmp_path / "fig7.png")
    # returns before loading any ensemble: none exists here
    screen_k_step(inputs, output, SimpleNamespace(models=["model1"]), threads=1)
    assert read_json(output.summary) == {
        "skipped": "no K electrode in the training split: the models never learned K", "n": 0}
    assert output.figure.read_bytes()[:4] == b"\x89PNG" and len(pd.read_csv(output.table)) == 0
    output = SimpleNamespace(**{name: tmp_path / name for name in ("screening", "all", "table5", "table6", "metrics")})
    screen_na_step(inputs, output, SimpleNamespace(models=[], thresholds={"voltage": 3.0}), threads=1)
    assert read_json(output.metrics)["skipped"] == "no Na electrode in the test split"
    assert output.table5.read_text() == output.table6.read_text() == "Not computed: no Na electrode in the test split.\n"
