"""End to end: the workflow on the real snapshot with a tiny recipe (3 seeds, 30 epochs, 3 trials)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from electrode_ml.code_version import libraries_version, script_code_version
from electrode_ml.features import applicability
from electrode_ml.fileio import file_sha256
from electrode_ml.schema import TARGETS
from electrode_ml.trees import tree_voltage as tree_voltage_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def tiny_config(results: Path, snapshot: Path, **overrides) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(results)
    config["data"]["snapshot"] = str(snapshot)
    config["data"]["source"] = "snapshot"
    config["tune"].update(trials=3, epochs=None)
    config["train"].update(n_seeds=3, epochs=30, patience=None, batch_size=256, device="cpu")
    config["evaluation"]["group_seeds"] = 2
    config["analysis"]["contribution_seeds"] = 2
    config["voltage_trees"].update(bags=2, max_iter=100)
    config["peer_gbm"]["max_iter"] = 40
    for section, values in overrides.items():
        config[section].update(values)
    return config


def snakemake(config: dict, workdir: Path, *args: str, check: bool = True,
              env: dict | None = None, sort_keys: bool = True) -> subprocess.CompletedProcess:
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=sort_keys))
    # Run beside the results: Snakemake keeps its records (.snakemake/) in the working directory,
    # which left thousands of files of every test run in the repository's.
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args, "--cores", "2",
         "--configfile", str(config_path)],
        cwd=Path(config["results"]).parent, capture_output=True, text=True, timeout=900, env=env,
    )
    if check and run.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return run


def test_data_split_and_features_outputs(tiny_run):
    _, results, _ = tiny_run
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet")
    report = json.loads((results / "data" / "data_report.json").read_text())
    assert len(electrodes) == 4300 and report["rows_out"] == 4300 and report["source"] == "snapshot"
    split = pd.read_parquet(results / "split" / "split.parquet")
    assert split["split"].value_counts().to_dict() == {"train": 3483, "val": 388, "test": 429}
    for model in ("model1", "model2", "model1_redox"):
        description = json.loads((results / "features" / model / "features.json").read_text())
        train = pd.read_parquet(results / "features" / model / "train.parquet")
        assert train.shape == (3483, 1 + len(TARGETS) + description["n_features"])
        assert (results / "features" / model / "transformers.joblib").stat().st_size > 0


def test_tune_outputs(tiny_run):
    config, results, _ = tiny_run
    for model in ("model1", "model2", "model1_redox"):
        best = json.loads((results / "tune" / model / "best_params.json").read_text())
        trials = pd.read_csv(results / "tune" / model / "trials.csv")
        assert (trials["status"] == "COMPLETED").sum() == 3
        assert best["lowest_score"] == pytest.approx(trials["score"].min())
        chosen = trials.set_index("trial").loc[best["trial"]]
        assert best["score"] == pytest.approx(chosen["score"]) and best["units_1"] == chosen["units_1"]
        assert best["score"] <= best["lowest_score"] + config["tune"]["tolerance"] * abs(best["lowest_score"])
        assert json.loads((results / "tune" / model / "ax_state.json").read_text())


def test_train_outputs_per_seed(tiny_run):
    config, results, _ = tiny_run
    for model in ("model1", "model2", "model1_redox"):
        for seed in range(3):
            folder = results / "train" / model / f"seed_{seed}"
            history = pd.read_csv(folder / "history.csv")
            assert list(history.columns) == ["epoch", "train_loss", "val_loss"] and len(history) == 30
            predictions = pd.read_parquet(folder / "predictions.parquet")
            assert len(predictions) == 4300 and set(predictions["split"]) == {"train", "val", "test"}
            assert np.isfinite(predictions[list(TARGETS)].to_numpy()).all()
            # the archive's entries are not named after the random temporary file the job wrote it as
            assert {name.split("/")[0] for name in zipfile.ZipFile(folder / "model.pt").namelist()} == {"archive"}
            settings = torch.load(folder / "model.pt", weights_only=False)["train_settings"]
            assert (settings["seed"], settings["epochs"], settings["device"]) == (seed, 30, "cpu")
            assert settings["matmul"] in ("torch", "onednn") and settings["precision"] == config["train"]["precision"]
            assert (results / "logs" / "train" / model / f"seed_{seed}.log").exists()
            assert (results / "benchmarks" / "train" / model / f"seed_{seed}.tsv").exists()


def test_peer_baseline_fits_the_configured_rounds(tiny_run):
    config, results, _ = tiny_run
    log = (results / "logs" / "peer_gbm.log").read_text()
    assert f"'max_iter': {config['peer_gbm']['max_iter']}," in log and "'max_iter': 500" not in log
    summary = pd.read_parquet(results / "ensemble" / "peer_gbm" / "predictions.parquet")
    assert len(summary) == 4300 * 3 and np.isfinite(summary[["mean", "pi_low", "pi_high"]].to_numpy()).all()


def test_ensemble_is_well_formed_and_beats_the_mean(tiny_run):
    _, results, _ = tiny_run
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet").set_index("battery_id")
    for model in ("model1", "model2", "model1_phys", "model2_phys"):
        summary = pd.read_parquet(results / "ensemble" / model / "predictions.parquet")
        assert len(summary) == 4300 * 3
        assert (summary["n"] == 3).all()
        assert (summary["ci_low"] <= summary["mean"]).all() and (summary["mean"] <= summary["ci_high"]).all()
        assert (summary["pi_low"] <= summary["ci_low"]).all() and (summary["ci_high"] <= summary["pi_high"]).all()
        metrics = json.loads((results / "ensemble" / model / "metrics.json").read_text())
        # traceable once copied out of the run: the electrodes it scored and the code (with library versions)
        assert metrics["provenance"]["electrodes_sha256"] == file_sha256(results / "data" / "electrodes.parquet")
        script = REPO / "workflow" / "scripts" / "ensemble.py"
        assert metrics["provenance"]["code"] == f"{script_code_version(script)}-{libraries_version()}"
        for target in TARGETS:
            ours = metrics["ensemble_mean"]["val"][target]["mae"]
            baseline = metrics["train_mean_baseline"]["val"][target]["mae"]
            assert ours < baseline, (model, target, ours, baseline)
            test = summary[(summary["split"] == "test") & (summary["target"] == target)]
            for kind in ("ci", "pi"):  # the share of test DFT values inside, counted from the predictions
                inside = ((test["true"] >= test[f"{kind}_low"]) & (test["true"] <= test[f"{kind}_high"])).mean()
                assert metrics["coverage"][kind]["test"][target] == pytest.approx(inside)
            # calibrated for 95 % on validation; the tiny run's test coverage is 0.93-0.98
            assert metrics["coverage"]["pi"]["test"][target] >= 0.85, (model, target)
        if model in ("model1", "model2"):  # the physics models' values are not their networks' alone
            # the best single seed: the lowest validation MAE among the seeds' own prediction files
            val_mae = {}
            for path in sorted((results / "train" / model).glob("seed_*/predictions.parquet")):
                seed = pd.read_parquet(path)
                seed = seed[seed["split"] == "val"]
                true = electrodes.loc[seed["battery_id"], list(TARGETS)].to_numpy()
                error = np.abs(seed[list(TARGETS)].to_numpy() - true)
                val_mae[int(path.parent.name.removeprefix("seed_"))] = error.mean(axis=0)
            assert sorted(val_mae) == [0, 1, 2]
            for index, target in enumerate(TARGETS):
                best = min(val_mae, key=lambda seed: val_mae[seed][index])
                chosen = metrics["best_single_seed"][target]
                assert chosen["seed"] == best, (model, target, {seed: mae[index] for seed, mae in val_mae.items()})
                assert chosen["val"]["mae"] == pytest.approx(val_mae[best][index], rel=1e-6)
        for figure in ("parity.png", "error_histograms.png"):
            assert (results / "figures" / model / figure).read_bytes()[:4] == b"\x89PNG"


def test_ensembles_flag_the_electrodes_the_training_data_cannot_vouch_for(tiny_run):
    _, results, _ = tiny_run
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet")
    for model, base in (("model1", "model1"), ("model2_phys", "model2")):
        expected = applicability(joblib.load(results / "features" / base / "transformers.joblib"), electrodes)
        summary = pd.read_parquet(results / "ensemble" / model / "predictions.parquet")
        assert ("dft_outside_training" in summary) == (base == "model2")
        marked = summary.merge(expected, on="battery_id", suffixes=("", "_expected"))
        assert len(marked) == len(summary) and (marked["unseen_elements"] == marked["unseen_elements_expected"]).all()
        # the snapshot's random split leaves a few held-out electrodes with elements no training formula held
        assert (summary.loc[summary["split"] != "train", "unseen_elements"] != "").any()
        assert (summary.loc[summary["split"] == "train", "unseen_elements"] == "").all()
        scored = json.loads((results / "ensemble" / model / "metrics.json").read_text())["outside_training"]
        assert "train" not in scored
        test_voltage = summary[(summary["split"] == "test") & (summary["target"] == "average_voltage")]
        assert (marked["composition_outside_training"] == marked["composition_outside_training_expected"]).all()
        assert (summary.loc[summary["split"] == "train", "composition_outside_training"] == "").all()
        flagged = ((test_voltage["unseen_elements"] != "") | (test_voltage["composition_outside_training"] != "")) \
            & (test_voltage["source"] == "network")
        if "dft_outside_training" in summary:
            flagged |= test_voltage["dft_outside_training"] != ""
        assert scored["test"]["average_voltage"]["battery_ids"] == test_voltage.loc[flagged, "battery_id"].tolist()
    grouped = pd.read_parquet(results / "group" / "model1" / "predictions.parquet")
    assert grouped["unseen_elements"].notna().all()


def test_physics_models_reuse_base_networks_and_keep_energy_consistent(tiny_run):
    config, results, _ = tiny_run
    assert not (results / "train" / "model1_phys").exists()
    # model1_phys has no DFT voltage: its voltage blends the mean of the chemistry-informed networks
    # (model1_redox) with the trees fitted on the same features
    per_seed = pd.concat([pd.read_parquet(path) for path in (results / "train" / "model1_redox").glob("seed_*/predictions.parquet")])
    assert per_seed["battery_id"].value_counts().eq(3).all()
    networks = per_seed.groupby("battery_id")["average_voltage"].mean().sort_index()
    trees = joblib.load(results / "physics" / "model1_phys" / "voltage_trees.joblib")
    assert trees.weight == config["voltage_trees"]["weight"] > 0
    assert len(trees.models) == trees.bags == config["voltage_trees"]["bags"] > 1
    assert trees.capacity_weights == config["voltage_trees"]["capacity_weights"] is not None
    frames = {split: pd.read_parquet(results / "features" / "model1_redox" / f"{split}.parquet")
              for split in ("train", "val", "test")}
    tree_voltage = tree_voltage_of(trees, frames).set_index("battery_id")["average_voltage"]
    model1_phys = (pd.read_parquet(results / "ensemble" / "model1_phys" / "predictions.parquet")
                   .query("target == 'average_voltage'").set_index("battery_id")["mean"].sort_index())
    # the trees' share rises above the capacity weights' upper bound, gated by the physics capacity
    assert trees.high_capacity_weight == config["voltage_trees"]["high_capacity_weight"] > trees.weight
    capacity = (pd.read_parquet(results / "physics" / "model1_phys" / "physics.parquet")
                .set_index("battery_id")["capacity_grav"].loc[model1_phys.index])
    share = np.where(capacity > trees.weight_bounds[1], trees.high_capacity_weight, trees.weight)
    assert 0.02 < (share > trees.weight).mean() < 0.1  # the 95th percentile of the training capacities
    expected = (1 - share) * networks.loc[model1_phys.index] + share * tree_voltage.loc[model1_phys.index]
    np.testing.assert_allclose(model1_phys.to_numpy(), expected.to_numpy(), rtol=1e-12)
    recorded = json.loads((results / "ensemble" / "model1_phys" / "metrics.json").read_text())["voltage_trees"]
    assert recorded["weight"] == trees.weight and set(recorded["trees_alone_voltage_mae"]) == {"train", "val", "test"}
    assert recorded["high_capacity_weight"] == trees.high_capacity_weight
    physics = json.loads((results / "physics" / "model2_phys" / "physics.json").read_text())
    assert physics["physics_applies"] > 0.95 * physics["rows"]
    summary = pd.read_parquet(results / "ensemble" / "model2_phys" / "predictions.parquet")
    wide = summary.pivot(index="battery_id", columns="target", values="mean")
    exact = pd.read_parquet(results / "physics" / "model2_phys" / "physics.parquet").set_index("battery_id")
    held = exact["average_voltage"].notna()
    # where physics holds every seed agrees, and energy is exactly voltage x capacity
    assert held.mean() > 0.95
    rows = wide.loc[held[held].index]
    np.testing.assert_allclose(rows["energy_grav"], rows["average_voltage"] * rows["capacity_grav"], rtol=1e-9)
    np.testing.assert_allclose(rows["capacity_grav"], exact.loc[rows.index, "capacity_grav"], rtol=1e-9)
    metrics = {m: json.loads((results / "ensemble" / m / "metrics.json").read_text()) for m in ("model2", "model2_phys")}
    assert (metrics["model2_phys"]["ensemble_mean"]["test"]["capacity_grav"]["mae"]
            < metrics["model2"]["ensemble_mean"]["test"]["capacity_grav"]["mae"])


def test_group_evaluation_runs_in_its_own_folder(tiny_run):
    _, results, _ = tiny_run
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet")
    for base, variants in (("model1", {"model1"}), ("model1_redox", {"model1_phys"}), ("model2", {"model2", "model2_phys"})):
        metrics = json.loads((results / "group" / base / "metrics.json").read_text())
        assert set(metrics) == variants
        for model in variants:
            assert metrics[model]["n_seeds"] == 2
            assert set(metrics[model]["ensemble_mean"]) == {"train", "val", "test"}
            assert "pi" in metrics[model]["coverage"]
            assert metrics[model]["provenance"] == {
                "code": f"{script_code_version(REPO / 'workflow' / 'scripts' / 'group_evaluation.py')}-{libraries_version()}",
                "electrodes_sha256": file_sha256(results / "data" / "electrodes.parquet")}
        # the learned voltage of model1_phys blends trees fitted on the grouped split too
        assert ("voltage_trees" in metrics.get("model1_phys", {})) == (base == "model1_redox")
        predictions = pd.read_parquet(results / "group" / base / "predictions.parquet")
        assert set(predictions["model"]) == variants
        # honest: every host framework on one side only (the random split shares hundreds)
        frameworks = predictions.merge(electrodes[["battery_id", "framework_formula"]], on="battery_id")
        assert len(frameworks) == len(predictions) and set(frameworks["split"]) == {"train", "val", "test"}
        assert frameworks.groupby("framework_formula")["split"].nunique().max() == 1
    random_split = pd.read_parquet(results / "split" / "split.parquet").merge(electrodes, on="battery_id")
    assert random_split.groupby("framework_formula")["split"].nunique().max() > 1


def test_split_spread_reproduces_the_run_on_its_own_split(tiny_run, capsys):
    """`make split-spread` with the run's split seed and networks scores exactly what the run did."""
    import torch

    from electrode_ml import split_spread

    config, results, workdir = tiny_run
    own_seed, networks = config["split"]["seed"], config["train"]["n_seeds"]
    threads = torch.get_num_threads()
    try:
        split_spread.main(["--results", str(results), "--config", str(workdir / "config.yaml"),
                           "--model", "model1_phys", "--split-seeds", f"{own_seed},1", "--networks", str(networks)])
    finally:
        torch.set_num_threads(threads)
    table = pd.read_csv(results / "analysis" / "split_spread_model1_phys.csv")
    assert len(table) == 2 * 2 * len(TARGETS)
    run = json.loads((results / "ensemble" / "model1_phys" / "metrics.json").read_text())["ensemble_mean"]
    own = table[table["split_seed"] == own_seed]
    for row in own.itertuples():
        assert row.mae == pytest.approx(run[row.split][row.target]["mae"], rel=1e-9, abs=1e-12)
    # another split scores other electrodes: the learned voltage's error moves
    other = table[table["split_seed"] == 1].set_index(["split", "target"])["mae"]
    voltage = ("val", "average_voltage")
    assert other[voltage] != pytest.approx(own.set_index(["split", "target"])["mae"][voltage], rel=1e-6)
    printed = capsys.readouterr().out
    assert "over 2 random splits" in printed and "written to" in printed
    # what produced the table: the networks per split in it, the settings and the code beside it
    assert (table["networks"] == networks).all()
    provenance = json.loads((results / "analysis" / "split_spread_model1_phys.json").read_text())
    assert provenance["split_seeds"] == [own_seed, 1] and provenance["networks"] == networks
    assert provenance["config_sha256"] == hashlib.sha256((workdir / "config.yaml").read_bytes()).hexdigest()
    assert provenance["code"].startswith("electrode-ml ") and provenance["generated"].endswith("+00:00")


def test_same_seed_gives_identical_predictions(tiny_run, tmp_path):
    config, results, _ = tiny_run
    rerun_results = tmp_path / "results"
    rerun = tiny_config(rerun_results, Path(config["data"]["snapshot"]), train={"n_seeds": 2})
    rerun["models"] = ["model1"]
    snakemake(rerun, tmp_path, f"{rerun_results}/train/model1/seed_1/predictions.parquet")
    first = pd.read_parquet(results / "train" / "model1" / "seed_1" / "predictions.parquet")
    second = pd.read_parquet(rerun_results / "train" / "model1" / "seed_1" / "predictions.parquet")
    pd.testing.assert_frame_equal(first, second)


def test_a_copied_snapshot_keeps_the_run_and_a_changed_one_reruns_it(tmp_path, snapshot_path):
    """The profile has Snakemake compare the snapshot's checksum when its file time is newer than the
    outputs: data folders get provisioned again (new time, same bytes), and a needless rerun of the
    default workflow costs an hour on 2 cores. Snakemake's own threshold (1 MB) leaves the snapshot out."""
    import os

    snapshot = tmp_path / "snapshot.csv"
    snapshot.write_bytes(snapshot_path.read_bytes())
    assert snapshot.stat().st_size > 1_000_000
    results = tmp_path / "results"
    config = tiny_config(results, snapshot)
    report = results / "data" / "data_report.json"
    split = results / "split" / "split.parquet"
    snakemake(config, tmp_path, str(split))
    recorded = json.loads(report.read_text())
    assert recorded["snapshot"] == str(snapshot) and recorded["rows_out"] == 4300
    assert recorded["snapshot_sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()

    os.utime(snapshot)  # now: a copy of the same bytes, newer than every output
    assert snapshot.stat().st_mtime > split.stat().st_mtime
    assert "Nothing to be done" in snakemake(config, tmp_path, "-n", str(split)).stdout

    lines = snapshot.read_text().splitlines(keepends=True)
    snapshot.write_text("".join(lines[:-1]))
    plan = snakemake(config, tmp_path, "-n", str(split)).stdout
    assert "rule data:" in plan and "rule split:" in plan and f"Updated input files: {snapshot}" in plan
    snakemake(config, tmp_path, str(split))
    assert json.loads(report.read_text())["rows_out"] == 4299


def planned_models(plan: str, rule: str) -> set[str]:
    """The `model` wildcard of every job of ``rule`` in a dry run's printout."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", plan)
    return {re.search(r"wildcards: model=(\w+)", block).group(1) for block in blocks
            if re.match(rf"(?:local)?rule {rule}:", block)}


def test_a_finished_run_stays_done_when_its_scripts_are_touched(tiny_run, tmp_path):
    """A checkout or a copy gives the rule scripts a new file time, and Snakemake's code trigger reran the
    whole workflow for it; the workstation profile turns that trigger off, and the `code` param stands in."""
    config, _, _ = tiny_run
    script = REPO / "workflow" / "scripts" / "split.py"
    times = script.stat()
    try:
        os.utime(script)
        assert "Nothing to be done" in snakemake(config, tmp_path, "-n").stdout
    finally:
        os.utime(script, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_a_numerical_library_upgrade_reruns_every_job_and_a_snakemake_upgrade_none(tiny_run, tmp_path):
    """A `.venv` upgrade of a library the numbers come from may move them, and left every result as
    it was; each rule's `code` param now holds the libraries' versions. The upgrade is faked by a
    newer package record ahead of the real one on the path (the library itself is unchanged)."""
    config, _, _ = tiny_run

    def plan_with_upgraded(package: str) -> str:
        record = tmp_path / package / f"{package}-999.0.dist-info"
        record.mkdir(parents=True)
        (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 999.0\n")
        path = os.pathsep.join(filter(None, [str(record.parent), os.environ.get("PYTHONPATH")]))
        return snakemake(config, tmp_path, "-n", env={**os.environ, "PYTHONPATH": path}).stdout

    def job_stats(plan: str) -> str:
        return plan.split("Job stats:")[1].split("\n\n")[0]

    assert "Nothing to be done" in plan_with_upgraded("snakemake")
    upgraded = plan_with_upgraded("joblib")
    assert job_stats(upgraded) == job_stats(snakemake(config, tmp_path, "-n", "--forceall").stdout)
    assert "Params have changed since last execution" in upgraded


def test_another_models_loss_setting_reruns_only_that_models_jobs(tiny_run, tmp_path):
    """train.huber_delta.model1_redox changed: the whole `train` section in every rule's params reran
    model1's and model2's tuning and networks too, for identical results."""
    config, _, _ = tiny_run
    changed = copy.deepcopy(config)
    changed["train"]["huber_delta"] = {"model1_redox": 0.25}
    plan = snakemake(changed, tmp_path, "-n").stdout
    for rule in ("tune", "train", "group_evaluation"):
        assert planned_models(plan, rule) == {"model1_redox"}, rule


def test_the_same_settings_in_another_key_order_or_number_type_rerun_nothing(tiny_run, tmp_path):
    """Snakemake compares params by their text and puts a --configfile's keys ahead of config.yaml's:
    restating `split: {seed: 42}` in a file reran 174 of the 175 jobs, and `voltage: 2` for 2.0 the screen."""
    config, _, _ = tiny_run

    def whole_numbers_as_ints(value):
        if isinstance(value, dict):
            return {key: whole_numbers_as_ints(item) for key, item in value.items()}
        if isinstance(value, list):
            return [whole_numbers_as_ints(item) for item in value]
        return int(value) if isinstance(value, float) and value.is_integer() else value

    reordered = {section: dict(reversed(list(value.items()))) if isinstance(value, dict) else value
                 for section, value in reversed(list(whole_numbers_as_ints(config).items()))}
    assert list(reordered["split"]) != list(config["split"])
    assert repr(reordered["screen"]["na"]["capacity"]) != repr(config["screen"]["na"]["capacity"])
    assert repr(reordered["data"]["voltage_window"]) != repr(config["data"]["voltage_window"])
    # the ions are a set: listed in another order they reran every job
    reordered["data"]["ions"] = list(reversed(config["data"]["ions"]))
    # a patience the tuning does not read (its trials are the training recipe: tune.epochs null)
    assert config["tune"]["epochs"] is None
    reordered["tune"]["patience"] = 7
    assert "Nothing to be done" in snakemake(reordered, tmp_path, "-n", sort_keys=False).stdout


def test_a_feature_setting_reruns_only_the_models_that_read_it(tiny_run, tmp_path):
    """The whole `features` section was every featuriser's param: the DFT scaling, which only feature
    set 2 has, reran model1's and model1_redox's features, tunings and networks for identical ones."""
    config, _, _ = tiny_run
    changed = copy.deepcopy(config)
    changed["features"]["dft_scaling"] = "minmax" if config["features"]["dft_scaling"] == "standard" else "standard"
    if not config["features"]["space_groups"]:
        changed["features"]["space_group_variance"] = 0.9  # a block the features leave out
    plan = snakemake(changed, tmp_path, "-n").stdout
    for rule in ("features", "tune", "train", "group_evaluation"):
        assert planned_models(plan, rule) == {"model2"}, rule


def test_more_seeds_run_only_the_new_trainings_and_what_reads_them(tiny_run, tmp_path):
    """train.n_seeds was part of every tune and train job's params: one more seed reran the tunings
    and every finished training."""
    config, _, _ = tiny_run
    changed = copy.deepcopy(config)
    changed["train"]["n_seeds"] += 1
    plan = snakemake(changed, tmp_path, "-n").stdout
    assert "rule tune:" not in plan and "rule group_evaluation:" not in plan
    trainings = re.findall(r"wildcards: model=(\w+), seed=(\d+)", plan)
    new_seed = str(config["train"]["first_seed"] + config["train"]["n_seeds"])
    assert trainings and {seed for _, seed in trainings} == {new_seed}
    assert "rule ensemble:" in plan


def test_jobs_run_the_library_beside_the_snakefile_not_the_installed_one(tmp_path, snapshot_path):
    """A second checkout sharing one environment: the editable install points at the first, and its jobs
    imported that library while Snakemake itself checked the config with its own."""
    copy_root = tmp_path / "checkout"
    copy_root.mkdir()
    for name in ("Snakefile", "config.yaml", "workflow", "profiles", "envs", "src"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy_root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, copy_root / name)
    results = tmp_path / "results"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(results, snapshot_path)))
    run = subprocess.run([sys.executable, "-m", "snakemake", str(results / "data" / "electrodes.parquet"),
                          "--cores", "1", "--configfile", str(config_path)],
                         cwd=copy_root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log_text = (results / "logs" / "data.log").read_text()
    assert f"from {copy_root / 'src' / 'electrode_ml'}" in log_text, log_text[:500]


def test_default_dry_run_plans_fifty_train_jobs_per_model(tmp_path):
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules",
                          "--config", f"results={tmp_path / 'results'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = dict(line.split()[:2] for line in run.stdout.splitlines() if line.strip().startswith("train "))
    # the paper's model1 and model2, and model1_redox, whose networks model1_phys reads
    assert counts["train"] == str(50 * 3)


@pytest.fixture(scope="module")
def default_dry_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """`snakemake -n` of the default config, through the workstation profile it picks up by itself."""
    results = tmp_path_factory.mktemp("dry") / "results"
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", f"results={results}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_the_workstation_profile_prints_no_empty_shell_command(default_dry_run):
    """Every rule runs a script: printshellcmds printed "Shell command: None" once per job, 175 lines."""
    assert "rule train:" in default_dry_run.stdout
    assert "Shell command" not in default_dry_run.stdout + default_dry_run.stderr


def test_long_jobs_and_the_contributions_networks_go_first(default_dry_run):
    """Without priorities the 12-minute feature contribution once ran last, alone; with them on the long jobs only,
    model2's features (smaller inputs than a train job's, so picked after every one of them) held back its tuning."""
    prioritised = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", default_dry_run.stdout):
        if re.search(r"^\s+priority: 1$", block, re.MULTILINE):
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            prioritised.append((re.match(r"(?:local)?rule (\w+):", block).group(1),
                                wildcards.group(1) if wildcards else ""))
    assert sorted(prioritised) == sorted(
        [("features", f"model={model}") for model in ("model1", "model1_redox", "model2")]  # what they read
        + [("tune", f"model={model}") for model in ("model1", "model1_redox", "model2")]
        + [("group_evaluation", f"model={model}") for model in ("model1", "model1_redox", "model2")]
        + [("train", f"model=model2, seed={seed}") for seed in range(3)]  # the contribution's full networks
        + [("feature_contribution", "")])


def test_lint_is_clean():
    run = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_a_deleted_network_is_trained_again(tiny_run, tmp_path):
    """`predict` refuses an ensemble with a network missing and says to rerun the workflow, which
    then found nothing to do: Snakemake remakes a missing intermediate file only when a target needs it."""
    config, results, _ = tiny_run
    network = results / "train" / "model1" / "seed_1" / "model.pt"
    aside = tmp_path / "model.pt"
    network.rename(aside)
    try:
        plan = snakemake(config, tmp_path, "-n").stdout
    finally:
        aside.rename(network)
    assert re.search(r"rule train:\n(?:    .*\n)*?    output: [^\n]*train/model1/seed_1/model\.pt", plan)
