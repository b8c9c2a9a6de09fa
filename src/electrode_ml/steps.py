"""One function per workflow rule: read the rule's inputs, call the library, write its outputs atomically.

Each step takes Snakemake-like ``input``, ``output``, ``params`` and ``threads`` so it can be called
from a rule script or directly from a test.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from electrode_ml.devices import describe_device, job_device
from electrode_ml.fileio import atomic_path, file_sha256, read_json, write_csv, write_json, write_parquet
from electrode_ml.model import NetworkParams, TrainSettings, predict, seed_trainer, train_network
from electrode_ml.split import SPLITS
from electrode_ml.tables import frame_matrices, seed_predictions

# The featurisers, physics, plots and Ax (scikit-learn, pymatgen, matplotlib, BoTorch) are imported
# by the steps that use them. Every train job is a process of its own, and importing them all here
# made each of the 100 start in 3.3 s instead of 1.9 s (`import electrode_ml.steps`, 2-core machine).

log = logging.getLogger(__name__)


def _feature_tables(input) -> dict[str, pd.DataFrame]:
    """A rule's train, val and test feature tables (its inputs of those names)."""
    return {split: pd.read_parquet(input[split]) for split in SPLITS}


def data_step(input, output, params, threads, **_):
    from electrode_ml import data as data_mod
    from electrode_ml.config import resolve_source

    settings = params.data
    source = resolve_source(settings["source"])
    if source == "mp_api":
        from electrode_ml.mp_download import download_electrodes

        raw, provenance = download_electrodes(settings["ions"], tuple(settings["voltage_window"]))
        where = "Materials Project download"
    else:
        raw = data_mod.read_electrode_csv(input.snapshot)
        where = str(input.snapshot)
        provenance = {"snapshot": where, "snapshot_sha256": file_sha256(input.snapshot)}
    log.info("read %d electrodes from %s", len(raw), where)
    electrodes, report = data_mod.prepare_electrodes(raw, settings, source=source, where=where)
    write_parquet(electrodes, output.electrodes)
    write_json({**report.as_dict(), **provenance}, output.report)


def split_step(input, output, params, threads, **_):
    from electrode_ml.errors import InputError
    from electrode_ml.split import make_split

    electrodes = pd.read_parquet(input.electrodes)
    settings = params.split
    split = make_split(electrodes, method=settings["method"], fractions=settings["fractions"], seed=settings["seed"])
    if params.group_seeds and settings["method"] != "group":
        # the grouped evaluation draws its own split after the tunings: a data set too small for it
        # failed there, half an hour in, blaming split.fractions
        try:
            make_split(electrodes, method="group", fractions=settings["fractions"], seed=settings["seed"])
        except InputError as error:
            raise InputError(f"{error}; that split is the grouped evaluation's (evaluation.group_seeds: "
                             f"{params.group_seeds}): set evaluation.group_seeds: 0 to leave it out") from None
    log.info("split sizes: %s", split["split"].value_counts().to_dict())
    write_parquet(split, output.split)


def features_step(input, output, params, threads, wildcards=None, **_):
    import joblib

    from electrode_ml.features import describe_features, fit_feature_sets

    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    featurizer, frames = fit_feature_sets(electrodes, split, params.model, **params.features)
    description = describe_features(featurizer)
    log.info("%s: %d features from blocks %s", params.model, description["n_features"],
             {name: block["n_out"] for name, block in description["blocks"].items()})
    for name, frame in frames.items():
        write_parquet(frame, output[name])
    with atomic_path(output.transformers) as tmp:
        joblib.dump(featurizer, tmp)
    # the options too: which scaling and blocks the columns above come from
    write_json({**description, "options": dict(params.features)}, output.description)


def physics_step(input, output, params, threads, **_):
    """Fit a physics model's ion references on the training split and evaluate its physics for every electrode."""
    import joblib

    from electrode_ml.models import uses_dft
    from electrode_ml.physics import fit_physics

    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    labelled = electrodes.merge(split, on="battery_id", validate="one_to_one")
    physics, table = fit_physics(labelled, uses_voltage=uses_dft(params.model))
    summary = physics.summary(labelled)
    log.info("%s physics: %s", params.model, summary)
    write_parquet(table, output.table)
    with atomic_path(output.fitted) as tmp:
        joblib.dump(physics, tmp)
    write_json(summary, output.summary)


def voltage_trees_step(input, output, params, threads, **_):
    """Fit the trees of a learned voltage (trees.py) on the base model's training features."""
    import joblib

    from electrode_ml.trees import fit_voltage_trees

    frames = _feature_tables(input)
    trees, voltage = fit_voltage_trees(frames, **params.trees)
    summary = {**trees.record(voltage, frames), "params": trees.params, "columns_read": int(len(trees.columns))}
    log.info("voltage trees: %s", summary)
    with atomic_path(output.fitted) as tmp:
        joblib.dump(trees, tmp)
    write_json(summary, output.summary)


def tune_step(input, output, params, threads, **_):
    from electrode_ml.tune import SearchSpace, objective_fingerprint, run_tuning, trial_fidelity, trial_settings

    torch.set_num_threads(threads)
    x_train, y_train = frame_matrices(pd.read_parquet(input.train))
    x_val, y_val = frame_matrices(pd.read_parquet(input.val))
    tune = params.tune
    with job_device(params.train["device"]) as device:
        settings = trial_settings(tune, params.train, device, params.model)

        def objective(values: dict) -> float:
            network = train_network(x_train, y_train, x_val, y_val, NetworkParams.from_dict(values), settings)
            return float(network.history["val_loss"].min())

        # The saved Ax state resumes an interrupted tuning only; Snakemake also reruns this job
        # when the features, the settings or the code changed, and then the old trials must not count.
        key = objective_fingerprint((x_train, y_train, x_val, y_val), {**trial_fidelity(settings), "code": params.code})
        space = SearchSpace(lr=tuple(tune["lr"]), units=tuple(tune["units"]), dropout=tuple(tune["dropout"]))
        best = run_tuning(objective, trials=tune["trials"], seed=tune["seed"], state_path=Path(params.state),
                          trials_csv=Path(output.trials), space=space, name=params.model,
                          objective_key=key, restart_mismatched=True, tolerance=tune["tolerance"],
                          cost=lambda values: NetworkParams.from_dict(values).multiply_adds(x_train.shape[1]))
    write_json(best, output.best)


def train_step(input, output, params, threads, wildcards=None, **_):
    torch.set_num_threads(threads)
    seed = int(wildcards.seed)
    frames = _feature_tables(input)
    (x_train, y_train), (x_val, y_val) = frame_matrices(frames["train"]), frame_matrices(frames["val"])
    network_params = NetworkParams.from_dict(read_json(input.params))
    with job_device(params.train["device"]) as device:
        settings = TrainSettings.from_config(params.train, seed, device, wildcards.model)
        log.info("training seed %d on %s with %s, learning rate x %g, %s loss, %s matmuls (%s)", seed, device,
                 network_params, settings.lr_scale,
                 f"Huber (delta {settings.huber_delta})" if settings.huber_delta else "MSE", settings.precision,
                 settings.matmul_library())
        network = train_network(x_train, y_train, x_val, y_val, network_params, settings)
        predictions = seed_predictions(frames, lambda x: predict(network, x, device), seed)
    log.info("seed %d: best epoch %d of %d, %.1f s", seed, network.best_epoch, len(network.history), network.seconds)
    # through a handle: torch names the archive's entries after a path, here the random temporary one
    # the features' hash lets `electrode-ml predict` refuse networks beside another run's featuriser; the
    # settings say how the network was trained once the checkpoint is copied out of the run
    checkpoint = {**network.to_checkpoint(), "features_sha256": file_sha256(input.train),
                  "train_settings": {**asdict(settings), "matmul": settings.matmul_library()}}
    with atomic_path(output.model) as tmp, open(tmp, "wb") as handle:
        torch.save(checkpoint, handle)
    write_csv(network.history, output.history)
    write_parquet(predictions, output.predictions)


def ensemble_step(input, output, params, threads, **_):
    import joblib

    from electrode_ml.ensemble import evaluate_model
    from electrode_ml.features import applicability

    per_seed = [pd.read_parquet(path) for path in input.predictions]
    frames = _feature_tables(input)
    physics = pd.read_parquet(input.physics) if input.get("physics") else None
    trees = joblib.load(input.trees) if input.get("trees") else None
    flags = applicability(joblib.load(input.transformers), pd.read_parquet(input.electrodes))
    summary, metrics = evaluate_model(per_seed, frames, physics=physics, trees=trees, flags=flags,
                                      compare_seeds=params.get("group_seeds"))
    # Each panel says where its values come from (the summary's source column, the trees' blend).
    _write_ensemble(output, params.model, summary, {**metrics, "provenance": _provenance(input, params)},
                    voltage_trees=trees is not None and trees.blends)


def peer_gbm_step(input, output, params, threads, **_):
    """The peer baseline (peer.py), written as the ensemble rule writes a model, to join its comparison."""
    from electrode_ml import peer

    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    frames = peer.feature_sets(electrodes, split)
    seed, max_iter = int(params.seed), int(params.max_iter)
    log.info("%s: %d features (Magpie of both formulas, ion, crystal systems, space groups); "
             "HistGradientBoostingRegressor %s, seed %d",
             peer.MODEL, len(peer.feature_columns(frames["train"])), {"max_iter": max_iter, **peer.GBM_PARAMS}, seed)
    predictions = peer.fit_predict_gbm(frames["train"], frames, seed, max_iter)
    spread = peer.fit_predict_spread(frames["train"], frames, seed, max_iter)
    summary, metrics = peer.summarise(frames, predictions, seed, spread)
    _write_ensemble(output, peer.MODEL, summary, {**metrics, "provenance": _provenance(input, params)},
                    learned="gradient-boosted trees on Magpie features")


def _provenance(input, params) -> dict:
    """What a metrics file was computed from, so that it can be traced once copied out of the run: the
    code fingerprint (with the numerical libraries' versions, code_version.py) and the electrodes' bytes."""
    return {"code": params.code, "electrodes_sha256": file_sha256(input.electrodes)}


def _write_ensemble(output, model: str, summary: pd.DataFrame, metrics: dict, **sources) -> None:
    """A model's predictions, metrics and figures, in the layout the report compares models in;
    ``sources`` tell the figures where the learned values come from (``learned``, ``voltage_trees``)."""
    from electrode_ml import plots

    log.info("%s: validation MAE %s", model,
             {target: round(values["mae"], 4) for target, values in metrics["ensemble_mean"]["val"].items()})
    write_parquet(summary, output.predictions)
    write_json(metrics, output.metrics)
    plots.save(plots.parity_figure(summary, f"{model}: predicted against DFT", **sources), output.parity)
    plots.save(plots.error_histogram_figure(summary, f"{model}: prediction errors", **sources), output.errors)


# ------------------------------------------------------------------------------------------------
# The paper's applications (section 3.2), the feature contribution, the timings and the report.
# ------------------------------------------------------------------------------------------------

def _by_model(paths, model_of) -> dict[str, list[str]]:
    """Group rule input paths by the model their path names (``model_of(path) -> model``)."""
    grouped: dict[str, list[str]] = {}
    for path in paths:
        grouped.setdefault(model_of(Path(path)), []).append(str(path))
    return grouped


def _load_ensembles(input, params, device: str = "cpu") -> dict:
    """predict.TrainedEnsemble per model (physics models reuse their base model's networks): the
    seeds each ensemble was evaluated on (metrics.json), which the rule lists as inputs; a seed folder
    an earlier run with more seeds left stays out."""
    from electrode_ml.predict import TrainedEnsemble

    results = Path(input.electrodes).parents[1]  # {results}/data/electrodes.parquet
    return {model: TrainedEnsemble.load(results, model, device=device) for model in params.models}


def screen_na_step(input, output, params, threads, wildcards=None, **_):
    from electrode_ml import screening
    from electrode_ml.fileio import write_text

    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    models = list(params.models)
    predictions = dict(zip(models, (pd.read_parquet(path) for path in input.predictions)))
    thresholds = dict(params.thresholds)
    test = screening.screen_table(electrodes, split, predictions, thresholds, splits=("test",))
    everything = screening.screen_table(electrodes, split, predictions, thresholds, splits=None)
    metrics = {
        "filter": screening.filter_text(thresholds), "thresholds": thresholds,
        "test": screening.screen_metrics(test, models),
        "all_na": screening.screen_metrics(everything, models),
        "paper": screening.PAPER_NA_SCREEN,
    }
    skipped = screening.unscreenable(electrodes, split, tested="Na", trained="Na")
    if skipped:
        log.warning("Na screen not computed: %s", skipped)
        metrics["skipped"] = skipped
    for model in models if not skipped else ():
        score = metrics["test"][model]["all"]
        log.info("%s on the %d test Na electrodes: %d picks, precision %s, recall %s", model, len(test),
                 score["picks"], score["precision"], score["recall"])
    write_csv(test, output.screening)
    write_csv(everything, output.all)
    not_computed = f"Not computed: {skipped}.\n"
    write_text(not_computed if skipped else screening.table5_markdown(test, models, thresholds, metrics["test"]),
               output.table5)
    write_text(not_computed if skipped else screening.table6_markdown(test, models, thresholds), output.table6)
    write_json(metrics, output.metrics)


def screen_k_step(input, output, params, threads, wildcards=None, **_):
    from electrode_ml import plots, screening, screening_figures

    torch.set_num_threads(threads)
    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    models = list(params.models)
    skipped = screening.unscreenable(electrodes, split, tested="Li", trained="K")
    if skipped:
        log.warning("K substitution not computed: %s", skipped)
        write_csv(pd.DataFrame({"battery_id": []}), output.table)
        write_json({"skipped": skipped, "n": 0}, output.summary)
        plots.save(plots.message_figure(f"Li -> K substitution (paper Fig 7) not computed:\n{skipped}"), output.figure)
        return
    ensembles = _load_ensembles(input, params)
    substituted = {model: screening.substituted_predictor(ensemble_) for model, ensemble_ in ensembles.items()}
    table = screening.k_substitution(electrodes, split, {model: ensembles[model].predict for model in models},
                                     substituted_predictors=substituted)
    summary = screening.k_summary(table, models)
    log.info("K substitution of %d test Li electrodes: %s", len(table), summary)
    write_csv(table, output.table)
    write_json(summary, output.summary)
    learned = {model: "networks + trees" if ensemble_.trees is not None and ensemble_.trees.blends
               else "networks" for model, ensemble_ in ensembles.items()}
    plots.save(screening_figures.k_substitution_figure(table, models, learned=learned), output.figure)


def feature_contribution_step(input, output, params, threads, wildcards=None, **_):
    from electrode_ml import contribution, plots

    torch.set_num_threads(threads)
    frames = _feature_tables(input)
    network_params = NetworkParams.from_dict(read_json(input.params))
    seeds = [int(seed) for seed in params.seeds]
    trained = {int(table["seed"].iloc[0]): table for table in map(pd.read_parquet, input.get("trained", []))}
    with job_device(params.train["device"]) as device:
        trainer = seed_trainer(params.train, network_params, device, params.model)
        per_seed = contribution.run_contribution(frames, trainer, seeds, trained=trained)
    summary = contribution.summarise(per_seed)
    log.info("feature contribution (Eq. 9, %d seeds): %s", len(seeds),
             dict(zip(summary["group"], summary["contribution_mean"].round(4))))
    write_csv(summary, output.summary)
    write_csv(per_seed, output.per_seed)
    plots.save(plots.contribution_figure(summary, per_seed, f"{params.model}: feature contribution "
                                                f"(Eq. 9, {len(seeds)} seeds, validation set)"), output.figure)


def timing_step(input, output, params, threads, wildcards=None, **_):
    from electrode_ml import timing
    from electrode_ml.models import base_model, is_physics_model
    from electrode_ml.tune import tuning_note

    torch.set_num_threads(threads)
    models = list(params.models)
    tune_files = _by_model(input.tune, lambda path: path.stem)
    trial_files = _by_model(input.trials, lambda path: path.parent.name)
    train_files = _by_model(input.train, lambda path: path.parent.name)
    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    val = electrodes[electrodes["battery_id"].isin(split.loc[split["split"] == "val", "battery_id"])]
    tables = []
    with job_device(params.train["device"]) as device:
        ensembles = _load_ensembles(input, params, device=device)
        for model in models:
            prediction = timing.measure_prediction(ensembles[model], val, repeats=int(params.repeats))
            log.info("%s: prediction timing %s", model, prediction)
            base = base_model(model)
            tune_s, note = None, tuning_note(params.tune, params.train)
            if tune_files.get(base):
                tune_s, resumed = timing.tuning_seconds(timing.read_benchmark(tune_files[base][0]),
                                                        pd.read_csv(trial_files[base][0])["seconds"])
                note = "; ".join(filter(None, [note, resumed]))
            tables.append(timing.timing_table(
                model, tune_s, [timing.read_benchmark(path) for path in train_files.get(base, [])], prediction,
                tune_note=note, include_training=not is_physics_model(model), device=device))
        compute = describe_device(device)
    write_csv(pd.concat(tables, ignore_index=True).assign(compute=compute), output.timing)


def report_step(input, output, params, threads, wildcards=None, **_):
    from electrode_ml import report
    from electrode_ml.fileio import write_text

    html = report.build_report(report.collect(input, params))
    write_text(html, output.html)


def group_evaluation_step(input, output, params, threads, wildcards=None, **_):
    """The framework-grouped split, end to end for one base model and its physics variant(s)."""
    from electrode_ml.evaluation import grouped_evaluation

    torch.set_num_threads(threads)
    electrodes = pd.read_parquet(input.electrodes)
    network_params = NetworkParams.from_dict(read_json(input.params))
    seeds = [int(seed) for seed in params.seeds]
    with job_device(params.train["device"]) as device:
        trainer = seed_trainer(params.train, network_params, device, params.base)
        results = grouped_evaluation(electrodes, base=params.base, variants=list(params.variants),
                                     split_settings=params.split, feature_settings=params.features,
                                     seeds=seeds, trainer=trainer, tree_settings=params.trees)
    for model, (summary, metrics) in results.items():
        log.info("group split, %s: test MAE %s", model,
                 {target: round(values["mae"], 4) for target, values in metrics["ensemble_mean"]["test"].items()})
    provenance = _provenance(input, params)
    write_json({model: {**metrics, "provenance": provenance} for model, (_, metrics) in results.items()}, output.metrics)
    write_parquet(pd.concat([summary.assign(model=model) for model, (summary, _) in results.items()],
                            ignore_index=True), output.predictions)
