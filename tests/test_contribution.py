"""Eq. 9 feature contribution on hand cases and a synthetic retraining with a linear stand-in network."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from electrode_ml import contribution, plots
from electrode_ml.errors import InputError
from electrode_ml.fileio import write_json, write_parquet
from electrode_ml.model import NetworkParams
from electrode_ml.schema import TARGETS
from electrode_ml.model import seed_trainer
from electrode_ml.steps import train_step

MODEL2_COLUMNS = [
    "formula_charge__pca0", "formula_discharge__pca0",
    "crystal_system__charge_crystal_system_Cubic", "crystal_system__discharge_crystal_system_Cubic",
    "space_group__pca0", "space_group__pca1",
    "working_ion__working_ion_Li", "working_ion__working_ion_Na",
    "dft__charge_formation_energy_per_atom", "dft__charge_band_gap", "dft__charge_efermi", "dft__charge_energy_per_atom",
    "dft__discharge_formation_energy_per_atom", "dft__discharge_band_gap", "dft__discharge_efermi",
    "dft__discharge_energy_per_atom", "dft__stability_charge", "dft__stability_discharge",
]


def test_eq9_hand_case():
    r_full = np.array([0.9, 0.8, 0.7])
    r_without = np.array([0.8, 0.7, 0.6])
    assert contribution.contribution(r_full, r_without) == pytest.approx(0.8 / 0.7)
    assert contribution.contribution(r_full, r_full) == pytest.approx(1.0)
    assert contribution.contribution(r_without, r_full) < 1


def test_pearson_by_target_hand_case():
    true = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    predicted = np.array([[2.0, 3.0, 1.0], [4.0, 2.0, 1.0], [6.0, 1.0, 2.0]])
    r = contribution.pearson_by_target(true, predicted)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0)
    assert r[2] == pytest.approx(np.corrcoef(true[:, 2], predicted[:, 2])[0, 1])


def test_groups_map_to_their_columns():
    groups = {name: contribution.group_columns(MODEL2_COLUMNS, name) for name in contribution.FEATURE_GROUPS}
    assert groups["energy per atom"] == ["dft__charge_energy_per_atom", "dft__discharge_energy_per_atom"]
    assert groups["formation energy"] == ["dft__charge_formation_energy_per_atom",
                                          "dft__discharge_formation_energy_per_atom"]
    assert groups["ion type"] == ["working_ion__working_ion_Li", "working_ion__working_ion_Na"]
    assert groups["space group"] == ["space_group__pca0", "space_group__pca1"]
    covered = [column for columns in groups.values() for column in columns]
    assert len(covered) == len(set(covered))  # no column in two groups
    assert set(MODEL2_COLUMNS) - set(covered) == {"formula_charge__pca0", "formula_discharge__pca0"}  # Fig 6 leaves the formula in


def test_groups_need_feature_set_2():
    model1_columns = [name for name in MODEL2_COLUMNS if not name.startswith("dft__")]
    with pytest.raises(InputError, match="feature set 2"):
        contribution.group_columns(model1_columns, "band gap")


def synthetic_frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    """Targets driven by formation energy (strongly) and the ion (weakly); the band gap is pure noise."""
    rng = np.random.default_rng(seed)
    frames = {}
    for split, n in (("train", 400), ("val", 150), ("test", 150)):
        x = pd.DataFrame(rng.uniform(size=(n, len(MODEL2_COLUMNS))), columns=MODEL2_COLUMNS)
        x["working_ion__working_ion_Li"] = rng.integers(0, 2, n)
        x["working_ion__working_ion_Na"] = 1 - x["working_ion__working_ion_Li"]
        signal = 3 * x["dft__charge_formation_energy_per_atom"] + 0.5 * x["working_ion__working_ion_Li"]
        y = {target: signal * scale + rng.normal(0, 0.3, n) for target, scale in zip(TARGETS, (1.0, 50.0, 150.0))}
        frames[split] = pd.concat([pd.DataFrame({"battery_id": [f"{split}-{i}" for i in range(n)]}),
                                   pd.DataFrame(y), x], axis=1)
    return frames


def linear_trainer(x_train, y_train, x_val, y_val, seed):
    """Least squares with a seed-dependent ridge: a deterministic stand-in for a network."""
    design = np.hstack([x_train, np.ones((len(x_train), 1))])
    ridge = 1e-3 * (1 + seed)
    weights = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ y_train)
    return lambda x: np.hstack([x, np.ones((len(x), 1))]) @ weights


def test_run_contribution_ranks_the_informative_group_first():
    per_seed = contribution.run_contribution(synthetic_frames(), linear_trainer, seeds=[0, 1])
    assert len(per_seed) == (1 + len(contribution.FEATURE_GROUPS)) * 2
    full = per_seed[per_seed["group"] == contribution.FULL]
    assert full["contribution"].isna().all() and (full["n_removed"] == 0).all()
    # Per seed, the contribution pairs with the full network of the same seed (Eq. 9 by hand).
    row = per_seed[(per_seed["group"] == "band gap") & (per_seed["seed"] == 1)].iloc[0]
    base = full[full["seed"] == 1].iloc[0]
    expected = np.mean([base[f"val_r_{t}"] for t in TARGETS]) / np.mean([row[f"val_r_{t}"] for t in TARGETS])
    assert row["contribution"] == pytest.approx(expected)

    summary = contribution.summarise(per_seed)
    assert list(summary["group"][:2]) == ["formation energy", "ion type"]
    by_group = summary.set_index("group")
    assert by_group.loc["formation energy", "contribution_mean"] > 1.5
    assert by_group.loc["band gap", "contribution_mean"] == pytest.approx(1.0, abs=0.01)
    assert (summary["n_seeds"] == 2).all() and (summary["contribution_min"] <= summary["contribution_max"]).all()
    assert "contribution_test_mean" in summary

    figure = plots.contribution_figure(summary, per_seed, "synthetic")
    axis = figure.axes[0]
    assert len(axis.patches) == len(contribution.FEATURE_GROUPS)
    # a legend says what bars, whiskers, dots and the line at 1 are
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels == ["mean over the 2 seeds, ≥ 1: the group helps",
                      "mean over the 2 seeds, < 1: the network does better without it",
                      "± 1 standard deviation over the 2 seeds", "one seed", "1: no contribution"]
    assert any(list(line.get_xdata()) == [1, 1] for line in axis.get_lines())
    low, high = axis.get_xlim()
    assert low < 1 < high


def test_a_block_left_out_by_the_configuration_is_skipped():
    frames = {split: frame.drop(columns=[name for name in frame.columns if name.startswith("space_group__")])
              for split, frame in synthetic_frames().items()}
    per_seed = contribution.run_contribution(frames, linear_trainer, seeds=[0])
    assert "space group" not in set(per_seed["group"])
    assert len(per_seed) == len(contribution.FEATURE_GROUPS)  # the full network + every other group


class Files(dict):
    """A rule's input as the step sees it: by name, as attribute or key."""
    __getattr__ = dict.__getitem__


def test_the_train_jobs_predictions_stand_in_for_the_full_network_bit_for_bit(tmp_path):
    """The rule hands the train jobs' predictions in as the full networks: they must be what retraining gives."""
    frames = synthetic_frames()
    inputs = {}
    for split, frame in frames.items():
        inputs[split] = tmp_path / f"{split}.parquet"
        write_parquet(frame, inputs[split])
    network = {"lr": 3e-3, "units_1": 24, "units_2": 16, "units_3": 8,
               "dropout_1": 0.2, "dropout_2": 0.1, "dropout_3": 0.0}
    inputs["params"] = tmp_path / "best_params.json"
    write_json(network, inputs["params"])
    recipe = {"epochs": 6, "batch_size": 64, "patience": None, "lr_scale": 0.5, "huber_delta": {}, "precision": "float32",
              "device": "cpu", "first_seed": 0}
    output = SimpleNamespace(model=tmp_path / "model.pt", history=tmp_path / "history.csv",
                             predictions=tmp_path / "predictions.parquet")
    train_step(Files(inputs), output, SimpleNamespace(train=recipe), threads=1,
               wildcards=SimpleNamespace(seed="1", model="model2"))

    trainer = seed_trainer(recipe, NetworkParams.from_dict(network), "cpu", "model2")
    groups = {"band gap": contribution.FEATURE_GROUPS["band gap"]}
    retrained = contribution.run_contribution(frames, trainer, seeds=[1], groups=groups)
    trained = {1: pd.read_parquet(output.predictions)}

    def refuse(*args):
        raise AssertionError("the full network was trained again")

    reused = contribution.run_contribution(frames, lambda *args: refuse() if args[0].shape[1] == len(MODEL2_COLUMNS)
                                           else trainer(*args), seeds=[1], groups=groups, trained=trained)
    pd.testing.assert_frame_equal(reused, retrained, check_exact=True)
    assert np.isfinite(reused["contribution"].iloc[1])


def test_predictions_of_other_feature_tables_are_refused():
    frames = synthetic_frames()
    foreign = pd.DataFrame({"battery_id": ["elsewhere-0"], "split": ["val"], **{target: [1.0] for target in TARGETS}})
    with pytest.raises(InputError, match="lack train electrode 'train-0'"):
        contribution.run_contribution(frames, linear_trainer, seeds=[0], trained={0: foreign})


def test_a_group_constant_on_the_training_split_is_left_out_not_ranked(caplog):
    """On one-ion data the ion type is 10 constant columns: its "contribution" of 0.918 was the two
    trainings' noise, ranked and counted among the groups below 1."""
    frames = synthetic_frames()
    ion_columns = contribution.group_columns(frames["train"].columns, "ion type")
    for frame in frames.values():
        frame[ion_columns] = 0
        frame["working_ion__working_ion_Li"] = 1
    per_seed = contribution.run_contribution(frames, linear_trainer, seeds=[0])
    assert "ion type" not in set(per_seed["group"])
    assert len(per_seed) == len(contribution.FEATURE_GROUPS)  # the full network and every other group
    assert "left out 'ion type', whose columns are constant on the training split" in caplog.text


def test_the_report_does_not_test_the_side_of_1_with_one_seed():
    from electrode_ml import report

    per_seed = contribution.run_contribution(synthetic_frames(), linear_trainer, seeds=[0])
    page = report.section_contribution({"contribution": contribution.summarise(per_seed)})
    assert "Contribution (1 seed)" in page and "mean ± sd of 1 seeds" not in page
    assert "With one seed there is no spread" in page and "lies on one side of 1" not in page
