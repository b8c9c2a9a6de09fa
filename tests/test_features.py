import numpy as np
import pandas as pd
import pytest

from electrode_ml.data import read_electrode_csv, validate_electrodes
from electrode_ml.features import (applicability, build_featurizer, composition_outside_training, describe_features,
                                   dft_outside_training, fit_feature_sets, training_elements, unseen_elements)
from electrode_ml.models import DFT_FIELDS
from electrode_ml.schema import TARGETS, WORKING_IONS
from electrode_ml.split import make_split


@pytest.fixture(scope="module")
def electrodes(snapshot_path):
    table = validate_electrodes(read_electrode_csv(snapshot_path), ions=list(WORKING_IONS), voltage_window=(-1, 7))[0]
    return table.sample(600, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def split(electrodes):
    return make_split(electrodes, method="random", fractions=(0.8, 0.1, 0.1), seed=0)


@pytest.mark.parametrize("model", ["model1", "model2", "model1_redox"])
def test_frames_have_ids_targets_then_finite_features(electrodes, split, model):
    featurizer, frames = fit_feature_sets(electrodes, split, model, space_groups=True)
    for name, frame in frames.items():
        assert list(frame.columns[:4]) == ["battery_id", *TARGETS]
        assert len(frame) == (split["split"] == name).sum()
        assert np.isfinite(frame.iloc[:, 4:].to_numpy()).all()
    assert frames["train"].columns.equals(frames["test"].columns)


def test_model1_has_no_dft_column_and_model2_has_all(electrodes, split):
    model1 = describe_features(fit_feature_sets(electrodes, split, "model1", space_groups=True)[0])
    model2 = describe_features(fit_feature_sets(electrodes, split, "model2", space_groups=True)[0])
    assert "dft" not in model1["blocks"]
    assert not any(field in column["column"] for column in model1["columns"] for field in DFT_FIELDS)
    assert model2["blocks"]["dft"]["inputs"] == list(DFT_FIELDS)
    assert model2["n_features"] == model1["n_features"] + len(DFT_FIELDS)


def test_model1_redox_is_model1_plus_the_standardised_redox_block(electrodes, split):
    from electrode_ml.models import base_model, uses_dft
    from electrode_ml.redox import FEATURE_NAMES

    model1 = describe_features(fit_feature_sets(electrodes, split, "model1", space_groups=True)[0])
    featurizer, frames = fit_feature_sets(electrodes, split, "model1_redox", space_groups=True)
    redox = describe_features(featurizer)
    assert [c["column"] for c in redox["columns"]] == [c["column"] for c in model1["columns"]] + [
        f"redox__{name}" for name in FEATURE_NAMES]
    block = frames["train"][[f"redox__{name}" for name in FEATURE_NAMES]]
    varying = block.std(ddof=0) > 0
    assert np.allclose(block.mean(), 0) and np.allclose(block.std(ddof=0)[varying], 1)
    # the physics model without DFT takes its networks from here; no DFT is read
    assert base_model("model1_phys") == "model1_redox" and not uses_dft("model1_phys")
    assert base_model("model2_phys") == "model2" and base_model("model1") == "model1"


def test_pca_keeps_requested_variance(electrodes, split):
    description = describe_features(fit_feature_sets(electrodes, split, "model1", space_groups=True)[0])
    for block in ("formula_charge", "formula_discharge", "space_group"):
        pca = description["blocks"][block]["pca"]
        assert pca["explained_variance"] >= 0.99 and pca["n_components"] < pca["n_in"]


def test_validation_and_test_rows_do_not_influence_the_fit(electrodes, split):
    """Changing every non-training row leaves the fitted transformers, hence train features, unchanged."""
    featurizer, frames = fit_feature_sets(electrodes, split, "model2", space_groups=True)
    held_out = electrodes["battery_id"].isin(split.loc[split["split"] != "train", "battery_id"])
    altered = electrodes.copy()
    altered.loc[held_out, "charge_band_gap"] = 1e6
    altered.loc[held_out, "formula_charge"] = "Li0U3O8"
    altered.loc[held_out, "charge_space_group_number"] = 1
    _, altered_frames = fit_feature_sets(altered, split, "model2", space_groups=True)
    pd.testing.assert_frame_equal(frames["train"], altered_frames["train"])
    assert not frames["test"].equals(altered_frames["test"])


def test_dft_columns_are_min_max_or_standardised_on_train(electrodes, split):
    def dft_columns(scaling):
        frames = fit_feature_sets(electrodes, split, "model2", dft_scaling=scaling, space_groups=True)[1]
        return {name: frame[[c for c in frame.columns if c.startswith("dft__")]] for name, frame in frames.items()}

    minmax, standard = dft_columns("minmax"), dft_columns("standard")
    assert np.allclose(minmax["train"].min(), 0) and np.allclose(minmax["train"].max(), 1)
    assert np.allclose(standard["train"].mean(), 0, atol=1e-6) and np.allclose(standard["train"].std(ddof=0), 1, atol=1e-5)
    # the same affine map of each field on every split: standardising the min-max values
    for name in ("val", "test"):
        expected = (minmax[name] - minmax["train"].mean()) / minmax["train"].std(ddof=0)
        np.testing.assert_allclose(standard[name], expected, rtol=1e-4, atol=1e-4)


def test_unknown_categories_in_new_data_do_not_crash(electrodes, split):
    featurizer = build_featurizer("model1", space_groups=True).fit(electrodes)
    novel = electrodes.head(2).copy()
    novel["charge_space_group_number"] = 230
    assert np.isfinite(featurizer.transform(novel)).all()


def test_space_groups_must_be_said():
    """The paper's feature set has the space-group block and config.yaml's leaves it out: no default."""
    with pytest.raises(TypeError, match="space_groups"):
        build_featurizer("model1")


def test_space_groups_can_be_left_out(electrodes, split):
    full = describe_features(fit_feature_sets(electrodes, split, "model2", space_groups=True)[0])
    without = describe_features(fit_feature_sets(electrodes, split, "model2", space_groups=False)[0])
    assert "space_group" not in without["blocks"] and "space_group" in full["blocks"]
    assert without["n_features"] == full["n_features"] - full["blocks"]["space_group"]["n_out"]
    assert not any(column["column"].startswith("space_group__") for column in without["columns"])


@pytest.mark.parametrize("model, dft", [("model1", False), ("model2", True), ("model1_redox", False)])
def test_a_featuriser_names_the_inputs_it_reads(electrodes, split, model, dft):
    from electrode_ml.features import featurizer_inputs

    core = ["formula_charge", "formula_discharge", "charge_crystal_system", "discharge_crystal_system", "working_ion"]
    groups = ["charge_space_group_number", "discharge_space_group_number"]
    with_groups = featurizer_inputs(fit_feature_sets(electrodes, split, model, space_groups=True)[0])
    without = featurizer_inputs(fit_feature_sets(electrodes, split, model, space_groups=False)[0])
    assert sorted(without) == sorted(core + (list(DFT_FIELDS) if dft else []))
    assert sorted(with_groups) == sorted(without + groups)
    # those columns alone featurise as the whole table does
    featurizer = fit_feature_sets(electrodes, split, model, space_groups=True)[0]
    np.testing.assert_array_equal(featurizer.transform(electrodes[with_groups]), featurizer.transform(electrodes))


def test_variants_and_the_tree_settings_a_job_depends_on():
    from electrode_ml.models import variants_of, voltage_tree_settings

    models = ["model1", "model2", "model1_phys", "model2_phys"]
    assert variants_of("model1_redox", models) == ["model1_phys"]
    assert variants_of("model2", models) == ["model2", "model2_phys"]
    # only a job serving model1_phys depends on the trees' settings
    settings = {"weight": 0.5, "bags": 8}
    assert voltage_tree_settings(variants_of("model1_redox", models), settings) == settings
    assert voltage_tree_settings(variants_of("model2", models), settings) == {}


@pytest.mark.parametrize("formula_scaling", ["before_pca", "after_pca"])
def test_elements_no_training_formula_held_are_invisible_and_flagged(electrodes, split, formula_scaling):
    featurizer = fit_feature_sets(electrodes, split, "model1", formula_scaling=formula_scaling, space_groups=True)[0]
    assert "Pu" not in training_elements(featurizer)["formula_discharge"]
    assert {"Fe", "P", "O", "Li"} <= training_elements(featurizer)["formula_discharge"]
    olivine = electrodes.iloc[:1].assign(formula_charge="Li0FePO4", formula_discharge="Li1FePO4", working_ion="Li")
    exotic = pd.concat([olivine.assign(formula_charge="Li0PuPO4", formula_discharge="Li1PuPO4"),
                        olivine.assign(formula_charge="Li0NpPO4", formula_discharge="Li1NpPO4"),
                        olivine.assign(formula_charge="Li0Pu0.5Np0.5PO4", formula_discharge="Li1FePO4")])
    # why the flag exists: the fitted scaling and PCA give an unseen element no weight, so two
    # different unseen metals in the same anion frame look like one and the same material
    features = featurizer.transform(exotic)
    np.testing.assert_array_equal(features[0], features[1])
    assert unseen_elements(featurizer, olivine) == [""]
    assert unseen_elements(featurizer, exotic) == ["Pu", "Np", "Np Pu"]
    # each formula column is checked against its own training elements: one training electrode
    # holds Pu in its charged formula only and Np in its discharged one only
    train_id = split.loc[split["split"] == "train", "battery_id"].iloc[0]
    one_sided = electrodes.copy()
    one_sided.loc[one_sided["battery_id"] == train_id, ["formula_charge", "formula_discharge"]] = [
        "Li0PuPO4", "Li1NpPO4"]
    featurizer = fit_feature_sets(one_sided, split, "model1", formula_scaling=formula_scaling, space_groups=True)[0]
    candidates = pd.concat([olivine.assign(formula_charge="Li0PuPO4", formula_discharge="Li1NpPO4"),
                            olivine.assign(formula_charge="Li0FePO4", formula_discharge="Li1PuPO4"),
                            olivine.assign(formula_charge="Li0NpPO4", formula_discharge="Li1FePO4")])
    assert unseen_elements(featurizer, candidates) == ["", "Pu", "Np"]


def test_space_groups_no_training_electrode_had_are_invisible_and_flagged(electrodes, split):
    """A space group absent from training was encoded as no space group at all, and flagged nowhere."""
    featurizer = fit_feature_sets(electrodes, split, "model1", space_groups=True)[0]
    train = electrodes[electrodes["battery_id"].isin(split.loc[split["split"] == "train", "battery_id"])]
    seen_charge = set(train["charge_space_group_number"])
    unseen = next(group for group in range(1, 231) if group not in seen_charge)
    olivine = train.head(1)
    candidates = pd.concat([olivine, olivine.assign(charge_space_group_number=unseen)])
    flags = applicability(featurizer, candidates)
    assert list(flags["unseen_space_groups"]) == ["", f"charge:{unseen}"]
    # why: its one-hot column was constant zero at fit time, so the PCA gives it no weight
    other = next(group for group in range(unseen + 1, 231) if group not in seen_charge)
    features = featurizer.transform(pd.concat([candidates.tail(1), olivine.assign(charge_space_group_number=other)]))
    np.testing.assert_allclose(features[0], features[1], rtol=0, atol=1e-12)
    without = fit_feature_sets(electrodes, split, "model1", space_groups=False)[0]
    assert "unseen_space_groups" not in applicability(without, candidates)


def test_features_json_names_the_scaling_steps_in_the_order_they_ran(electrodes, split):
    """`after_pca` was described as "min-max and PCA", the order of the default."""
    for scaling, order in (("before_pca", "min-max then PCA"), ("after_pca", "PCA then min-max")):
        featurizer = fit_feature_sets(electrodes, split, "model2", formula_scaling=scaling, space_groups=False)[0]
        blocks = describe_features(featurizer)["blocks"]
        assert blocks["formula_charge"]["origin"].endswith(order)
        assert blocks["dft"]["origin"].endswith("min-max then standardised")
    minmax = fit_feature_sets(electrodes, split, "model2", dft_scaling="minmax", space_groups=False)[0]
    assert describe_features(minmax)["blocks"]["dft"]["origin"].endswith("), min-max")


def test_dft_values_outside_the_training_range_are_flagged(electrodes, split):
    featurizer = fit_feature_sets(electrodes, split, "model2", space_groups=True)[0]
    train = electrodes[electrodes["battery_id"].isin(split.loc[split["split"] == "train", "battery_id"])]
    assert set(dft_outside_training(featurizer, train)) == {""}
    # another code's total energies (eV per atom in the hundreds) and a negative energy above hull
    foreign = train.head(2).copy()
    foreign.loc[foreign.index[0], "charge_energy_per_atom"] = -850.0
    foreign.loc[foreign.index[1], ["discharge_band_gap", "stability_charge"]] = [99.0, -0.5]
    assert dft_outside_training(featurizer, foreign) == ["charge_energy_per_atom", "discharge_band_gap stability_charge"]
    assert dft_outside_training(fit_feature_sets(electrodes, split, "model1", space_groups=True)[0], foreign) is None


def test_composition_outside_the_training_range_is_flagged(electrodes, split):
    """10^6 Na per FePO4 is an almost pure-Na formula: model1's element fractions read it as a
    plausible electrode, which was scored 0.63 V and 1004 mAh/g unflagged."""
    featurizer = fit_feature_sets(electrodes, split, "model1", space_groups=False)[0]
    train = electrodes[electrodes["battery_id"].isin(split.loc[split["split"] == "train", "battery_id"])]
    assert set(composition_outside_training(featurizer, train)) == {""}
    sodium = train[train["working_ion"] == "Na"].head(1)
    host = sodium["formula_charge"].iloc[0]
    candidates = pd.concat([sodium, sodium.assign(formula_discharge=f"Na1000000{host}"),
                            sodium.assign(formula_charge=f"Pu{host}")], ignore_index=True)
    # the element no training formula held is unseen_elements', not this flag's
    assert composition_outside_training(featurizer, candidates) == ["", "discharge:Na", ""]
    flags = applicability(featurizer, candidates)
    assert list(flags["composition_outside_training"]) == ["", "discharge:Na", ""]
    assert list(flags["unseen_elements"]) == ["", "", "Pu"]
    after = fit_feature_sets(electrodes, split, "model1", formula_scaling="after_pca", space_groups=False)[0]
    assert composition_outside_training(after, candidates) is None  # no range per element to compare with
    assert "composition_outside_training" not in applicability(after, candidates)


def test_a_candidate_of_an_ion_the_run_never_trained_on_is_a_bad_row(electrodes, split):
    """Zn also sits in Li frameworks, so no element flag catches a Zn electrode: its ion column is
    untrained (weights at their random start) whatever the formulas."""
    from electrode_ml.candidates import validate_candidates
    from electrode_ml.errors import InputError
    from electrode_ml.features import featurizer_inputs, training_ions

    lithium_and_sodium = electrodes[electrodes["working_ion"].isin(["Li", "Na"])]
    featurizer = fit_feature_sets(lithium_and_sodium, split[split["battery_id"].isin(lithium_and_sodium["battery_id"])],
                                  "model1", space_groups=False)[0]
    assert training_ions(featurizer) == ("Li", "Na")
    candidates = pd.concat([lithium_and_sodium.head(2), electrodes[electrodes["working_ion"] == "Zn"].head(1)])
    needed = ["battery_id", *featurizer_inputs(featurizer)]
    text = candidates[needed].astype(str)
    with pytest.raises(InputError, match=r"field 'working_ion': the run trained on no Zn electrode \(its ions: Li, Na"):
        validate_candidates(text, needed, "candidates.csv", skip_bad=False, ions=training_ions(featurizer))
    good, rejects = validate_candidates(text, needed, "candidates.csv", skip_bad=True, ions=training_ions(featurizer))
    assert list(good["battery_id"]) == list(candidates["battery_id"][:2])
    assert list(rejects["field"]) == ["working_ion"] and rejects["row"].tolist() == [3]


def test_an_ion_seen_only_outside_training_is_no_training_ion(electrodes, split):
    """The networks learned only the ions of the training rows: an ion in validation alone is untrained."""
    from electrode_ml.features import training_ions

    lithium_and_sodium = electrodes[electrodes["working_ion"].isin(["Li", "Na"])]
    sodium_held_out = pd.DataFrame({"battery_id": lithium_and_sodium["battery_id"],
                                    "split": np.where(lithium_and_sodium["working_ion"] == "Na", "val",
                                                      np.where(np.arange(len(lithium_and_sodium)) % 10, "train", "test"))})
    featurizer = fit_feature_sets(lithium_and_sodium, sodium_held_out, "model1", space_groups=False)[0]
    assert training_ions(featurizer) == ("Li",)


def test_candidate_checks_cover_swapped_ends_and_the_columns_the_model_does_not_read(electrodes, split):
    """Both were caught only by the end-to-end tests: swapped ends (a negative capacity to the
    networks), and a known column the model does not read holding text (kept, it would be wrong)."""
    from electrode_ml.candidates import candidate_columns, validate_candidates
    from electrode_ml.features import featurizer_inputs, training_ions

    featurizer = fit_feature_sets(electrodes, split, "model1", space_groups=False)[0]
    needed = ["battery_id", *featurizer_inputs(featurizer)]
    known = candidate_columns("model1")
    rows = electrodes[electrodes["working_ion"] == "Li"].head(4)[[*needed, "discharge_space_group_number"]].astype(str)
    rows = rows.reset_index(drop=True)
    rows.loc[0, ["formula_charge", "formula_discharge"]] = ["Li1FePO4", "Li0FePO4"]
    rows.loc[1, "discharge_space_group_number"] = "twelve"
    rows.loc[2, "discharge_space_group_number"] = ""  # unread and blank: no problem
    good, rejects = validate_candidates(rows, needed, "candidates.csv", skip_bad=True, known=known,
                                        ions=training_ions(featurizer))
    assert good.index.tolist() == [2, 3]
    assert rejects["field"].tolist() == ["formula_discharge", "discharge_space_group_number"]
    assert "holds no more Li" in rejects["reason"][0] and "not a number" in rejects["reason"][1]


def test_predict_refuses_networks_and_a_featuriser_that_do_not_belong_together(electrodes, split, tmp_path):
    """The workflow reruns what a change makes stale; `electrode-ml predict` reading a results folder did not."""
    import hashlib

    from electrode_ml.errors import InputError
    from electrode_ml.predict import check_consistent

    featurizer, frames = fit_feature_sets(electrodes, split, "model1", space_groups=False)
    (tmp_path / "features" / "model1").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    train_path = tmp_path / "features" / "model1" / "train.parquet"
    frames["train"].to_parquet(train_path)
    electrodes.to_parquet(tmp_path / "data" / "electrodes.parquet")
    width = len(featurizer.get_feature_names_out())
    own = {"n_inputs": width, "features_sha256": hashlib.sha256(train_path.read_bytes()).hexdigest()}
    check_consistent(tmp_path, "model1", featurizer, [own, {"n_inputs": width}])  # an earlier release's: no hash
    with pytest.raises(InputError, match=f"networks with {width + 3} inputs beside a featuriser of {width}"):
        check_consistent(tmp_path, "model1", featurizer, [{**own, "n_inputs": width + 3}])
    with pytest.raises(InputError, match="networks trained on other features than .*train.parquet"):
        check_consistent(tmp_path, "model1", featurizer, [own, {**own, "features_sha256": "0" * 64}])
    # electrodes of another data step, without some the networks trained on
    trained = frames["train"]["battery_id"].iloc[5]
    electrodes[electrodes["battery_id"] != trained].to_parquet(tmp_path / "data" / "electrodes.parquet")
    with pytest.raises(InputError, match=f"lacks 1 of the {len(frames['train'])} electrodes model1 was trained on "
                                         f"\\(e.g. {trained}\\): data and features of different runs"):
        check_consistent(tmp_path, "model1", featurizer, [own])
    # the installed code featurising one training electrode otherwise (here: its formula changed under it)
    trained = frames["train"]["battery_id"].iloc[5]
    changed = electrodes.copy()
    changed.loc[changed["battery_id"] == trained, "formula_discharge"] = "Li9FePO4"
    changed.to_parquet(tmp_path / "data" / "electrodes.parquet")
    with pytest.raises(InputError, match="featurises model1's training electrodes otherwise than the run"):
        check_consistent(tmp_path, "model1", featurizer, [own])
