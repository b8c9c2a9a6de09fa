"""One self-contained HTML page: every table and figure of the run beside the paper's numbers.

Figures are embedded as base64 PNGs, so the page can be mailed or archived on its own. Cells that
compare this run with the paper are coloured: green where this run does better, orange where it
trails, the stronger the colour the larger the relative difference.

This module holds the paper's numbers and the page's sections; report_inputs.py reads the run's
files into the context the sections read (``collect``), report_html.py holds the HTML blocks.
The report rule's step calls ``report.build_report(report.collect(input, params))``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from electrode_ml.models import paper_counterpart
from electrode_ml.peer import MODEL as PEER
from electrode_ml.plots import is_exact
from electrode_ml.report_html import (BAD, GOOD, STYLE, background, delta, esc, fmt, image, legend, percent, shade,
                                      table, td)
from electrode_ml.report_inputs import collect  # noqa: F401  (the report rule's step calls report.collect)
from electrode_ml.schema import CRITERIA, TARGETS, UNITS
from electrode_ml.screening import SHORT, SPLIT_ROLE

# Paper Table 3 (validation set): the MC mean of 50 networks and the best of the 50.
PAPER_TABLE3 = {
    "model1": {
        "mc": {"mae": (0.41, 13.38, 65.46), "rmse": (0.63, 27.98, 99.65)},
        "best": {"mae": (0.43, 14.54, 74.02), "rmse": (0.64, 23.10, 108.30)},
    },
    "model2": {
        "mc": {"mae": (0.20, 13.01, 38.81), "rmse": (0.32, 23.64, 61.21)},
        "best": {"mae": (0.21, 15.87, 41.17), "rmse": (0.32, 23.93, 62.22)},
    },
}
PAPER_SPLIT = {"train": 3483, "val": 388, "test": 429}
PAPER_CONTRIBUTION_TOP3 = ("formation energy", "energy per atom", "ion type")

TARGET_NAMES = {"average_voltage": "Voltage", "capacity_grav": "Capacity", "energy_grav": "Energy"}
DIGITS = {"average_voltage": 3, "capacity_grav": 2, "energy_grav": 2}

# The goals for the physics-informed models (test MAE) and for the calibrated 95 % interval.
PHYSICS_GOALS = {
    "model1_phys": {"average_voltage": 0.33, "capacity_grav": 1.0, "energy_grav": 45.0},
    "model2_phys": {"average_voltage": 0.08, "capacity_grav": 1.0, "energy_grav": 15.0},
}
COVERAGE_BAND = (0.93, 0.97)

SECTIONS = (
    ("glance", "At a glance"),
    ("data", "Data"),
    ("accuracy", "Accuracy (Table 3, Figs 3-5)"),
    ("beyond", "Beyond the paper"),
    ("contribution", "Feature contribution (Eq. 9, Fig 6)"),
    ("timing", "Timings (Table 4)"),
    ("na", "Na-ion screen (Tables 5-6)"),
    ("k", "Li → K substitution (Fig 7)"),
    ("config", "Configuration"),
    ("software", "Software"),
)


# An error below this is the physics reproducing MP's own computation, not a prediction. An absolute
# bound for the page's MAEs (physics': 1e-8); electrodes' errors are judged as the figures judge them
# (plots.is_exact: relative to the largest DFT value among them), so the page agrees with the figures.
EXACT = 1e-6


def as_printed(value: float | None) -> str:
    """A paper figure with the digits the paper gave (0.41, not 0.410)."""
    return "–" if value is None else f"{value:g}"


def exact(value: float | None) -> bool:
    return value is not None and np.isfinite(value) and abs(value) < EXACT


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------

def table3_cells(context: dict) -> list[dict]:
    """One record per (model, metric, target): ours MC, paper MC, ours best single, paper best single."""
    records = []
    for model in context["models"]:
        metrics = context["metrics"].get(model)
        if metrics is None:
            continue
        paper = PAPER_TABLE3.get(paper_counterpart(model))
        for metric in ("mae", "rmse"):
            for index, target in enumerate(TARGETS):
                best = metrics["best_single_seed"][target]
                records.append({
                    "model": model, "metric": metric, "target": target,
                    "ours_mc": metrics["ensemble_mean"]["val"][target][metric],
                    "ours_mc_test": metrics["ensemble_mean"].get("test", {}).get(target, {}).get(metric),
                    "ours_r": metrics["ensemble_mean"]["val"][target]["r"],
                    "ours_best": best["val"][metric], "best_seed": best["seed"],
                    "baseline": metrics["train_mean_baseline"]["val"][target][metric],
                    "paper_mc": paper["mc"][metric][index] if paper else None,
                    "paper_best": paper["best"][metric][index] if paper else None,
                    "n_seeds": metrics["n_seeds"],
                })
    return records


def section_glance(context: dict) -> str:
    records = table3_cells(context)
    parts = ['<p>Validation set, ensemble mean of this run against the paper\'s Monte Carlo mean of 50 networks '
             '(Table 3). Each cell: <b>this run</b> / paper. The physics models beyond the paper (<code>_phys</code>) '
             'are set against the paper\'s model that reads the same kind of inputs (no DFT: model #1; DFT: '
             'model #2). Where their value comes from physics it is MP\'s own computation redone: capacity from the '
             'formulas\' stoichiometry and, for <code>model2_phys</code>, voltage from the same end-member DFT '
             'energies MP derives it from; those cells read <i>exact</i> and are not counted. That they can be '
             'redone says the paper\'s DFT inputs hold model #2\'s targets in closed form.</p>']
    if not records:
        return "".join(parts) + '<p class="missing">No ensemble metrics.</p>'
    header = ["Model", "Metric"] + [f"{TARGET_NAMES[t]} ({UNITS[t]})" for t in TARGETS]
    rows = []
    wins = {"paper": [0, 0], "beyond": [0, 0]}  # kind -> [matched or beaten, compared]
    for model in context["models"]:
        kind = "paper" if paper_counterpart(model) == model else "beyond"
        for metric in ("mae", "rmse"):
            cells = [td(f"<b>{esc(model)}</b>"), td(metric.upper())]
            for target in TARGETS:
                record = next((r for r in records if (r["model"], r["metric"], r["target"]) == (model, metric, target)), None)
                if record is None:
                    cells.append(td("–"))
                    continue
                digits = DIGITS[target]
                paper_text = as_printed(record["paper_mc"])
                if exact(record["ours_mc"]):
                    cells.append(td(f"<b>exact</b> (physics) / {paper_text}", cls="num"))
                    continue
                wins[kind][1] += record["paper_mc"] is not None
                wins[kind][0] += record["paper_mc"] is not None and record["ours_mc"] <= record["paper_mc"]
                cells.append(td(f'<b>{fmt(record["ours_mc"], digits)}</b> / {paper_text} {delta(record["ours_mc"], record["paper_mc"])}',
                                shade(record["ours_mc"], record["paper_mc"]), "num"))
            rows.append(cells)
    # a clause only for a kind the run has: with models [model1_phys] it read "match or beat it in 0 of 0"
    clauses = []
    if wins["paper"][1]:
        clauses.append(f'the paper\'s models, reproduced, match or beat it in <b>{wins["paper"][0]} of '
                       f'{wins["paper"][1]}</b> validation error figures (MAE and RMSE of voltage, capacity and energy)')
    if wins["beyond"][1]:
        clauses.append(f'the models beyond it, in <b>{wins["beyond"][0]} of {wins["beyond"][1]}</b> of '
                       + ('those' if wins["paper"][1] else 'the validation error figures')
                       + ' their networks or trees predict (their exact physics values aside)')
    if clauses:
        headline = "; ".join(clauses)
        parts.insert(0, f'<p class="headline">{headline[0].upper() + headline[1:]}.</p>')
    parts.append(table(header, rows, "glance"))
    parts.append(legend())
    parts.append(_glance_applications(context))
    return "".join(parts)


def _glance_applications(context: dict) -> str:
    items = []
    na = context.get("na_metrics")
    if na and na.get("skipped"):
        items.append(f"<li>Na screen: not computed ({esc(na['skipped'])}).</li>")
    elif na:
        screened = context.get("na_screening")
        for model in context["models"]:
            score = na["test"].get(model, {}).get("all")
            if score:
                items.append(f"<li>Na screen, {esc(model)}: {score['picks']} picks for {score['reference_picks']} DFT picks, "
                             f"precision {fmt(score['precision'])}, recall {fmt(score['recall'])} "
                             + ("(DFT by construction: its values are MP's computation).</li>"
                                if screened is not None and screens_dft_values(screened, model) else
                                f"(paper: {na['paper'].get(paper_counterpart(model), {}).get('picks', '–')} picks for 9).</li>"))
    summary = context.get("k_summary")
    if summary and summary.get("skipped"):
        items.append(f"<li>Li → K: not computed ({esc(summary['skipped'])}).</li>")
    elif summary:
        for model in context["models"]:
            if model in summary:
                items.append(f"<li>Li → K, {esc(model)}: {fmt(summary[model]['fraction_k_below_li'] * 100 if summary[model]['fraction_k_below_li'] is not None else None, 0)} % "
                             f"of {summary['n']} test Li electrodes predicted lower in energy as K, by magnitude (paper: K lower than Li).</li>")
    contribution = context.get("contribution")
    if contribution is not None and len(contribution):
        top = list(contribution["group"][:3])
        items.append(f"<li>Largest feature contributions (model2): {', '.join(map(esc, top))} "
                     f"(paper: {', '.join(PAPER_CONTRIBUTION_TOP3)}).</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def section_data(context: dict) -> str:
    report = context["data_report"]
    crosstab = context["ion_split"]
    splits = [name for name in ("train", "val", "test") if name in crosstab.columns]
    header = ["Working ion", "Electrodes"] + [f"{name}" for name in splits]
    per_ion = report.get("rows_per_ion", {})
    rows = []
    for ion, count in sorted(per_ion.items(), key=lambda item: -item[1]):
        rows.append([td(f"<b>{esc(ion)}</b>"), td(fmt(int(count)), cls="num")] +
                    [td(fmt(int(crosstab.loc[ion, name])) if ion in crosstab.index else "0", cls="num") for name in splits])
    totals = [int(crosstab[name].sum()) for name in splits]
    rows.append([td("<b>total</b>"), td(f"<b>{fmt(int(report.get('rows_out', sum(per_ion.values()))))}</b>", cls="num")] +
                [td(f"<b>{fmt(total)}</b> <span class='delta'>paper {fmt(PAPER_SPLIT[name])}</span>", cls="num")
                 for name, total in zip(splits, totals)])
    dropped = ", ".join(f"{esc(k)}: {v}" for k, v in report.get("dropped", {}).items()) or "none"
    origin = ""
    if report.get("snapshot_sha256"):
        origin = f" <code>{esc(report['snapshot'])}</code> (SHA-256 <code>{esc(report['snapshot_sha256'])}</code>)"
    elif report.get("endpoint"):  # a download: which database, from where, when
        origin = (f" <code>{esc(report['endpoint'])}</code> (database {esc(report['database_version'])}, "
                  f"downloaded {esc(report['downloaded_at'])} with mp-api {esc(report['mp_api_version'])})")
        left_out = [f"{esc(reason)}: {fmt(entry['count'])} (e.g. {esc(', '.join(entry['examples']))})"
                    for reason, entry in report.get("download_dropped", {}).items() if entry["count"]]
        origin += f"; left out by the download: {'; '.join(left_out)}" if left_out else ""
    return (f"<p>Source: <b>{esc(report.get('source', '?'))}</b>{origin}; {fmt(report.get('rows_in'))} electrodes read, "
            f"{fmt(report.get('rows_out'))} kept (dropped: {dropped}; bad rows: {len(report.get('bad_rows', []))}).</p>"
            + table(header, rows, "compact"))


def section_accuracy(context: dict) -> str:
    records = table3_cells(context)
    parts = ["<p>Validation set (the paper's Table 3). <i>MC mean</i>: mean of the ensemble's networks; "
             "<i>best single</i>: per target, the one network with the lowest validation MAE (chosen on the "
             "validation set itself, so optimistic, as in the paper). Test-set ensemble error and the error of "
             "predicting the training mean are given for scale.</p>", setup_differences(context["config"])]
    for model in context["models"]:
        own = [r for r in records if r["model"] == model]
        if not own:
            continue
        n_seeds = own[0]["n_seeds"]
        header = ["Metric", f"MC mean of {n_seeds} (this run)", "MC mean of 50 (paper)",
                  "Best single (this run)", "Best single (paper)", "Pearson r (this run)", "Test MC mean", "Train-mean baseline"]
        rows = []
        for record in own:
            digits = DIGITS[record["target"]]
            label = f"{record['metric'].upper()} – {TARGET_NAMES[record['target']]} [{UNITS[record['target']]}]"
            if exact(record["ours_mc"]):  # the physics reproducing MP's computation: no win, no seed to pick
                rows.append([td(label), td("<b>exact</b> (physics)", cls="num"), td(as_printed(record["paper_mc"]), cls="num paper"),
                             td("–", cls="num"), td(as_printed(record["paper_best"]), cls="num paper"), td("", cls="num"),
                             td("exact", cls="num"), td(fmt(record["baseline"], digits), cls="num muted")])
                continue
            rows.append([
                td(label),
                td(f"<b>{fmt(record['ours_mc'], digits)}</b> {delta(record['ours_mc'], record['paper_mc'])}",
                   shade(record["ours_mc"], record["paper_mc"]), "num"),
                td(as_printed(record["paper_mc"]), cls="num paper"),
                td(f"{fmt(record['ours_best'], digits)} <span class='delta'>seed {record['best_seed']}</span> "
                   f"{delta(record['ours_best'], record['paper_best'])}", shade(record["ours_best"], record["paper_best"]), "num"),
                td(as_printed(record["paper_best"]), cls="num paper"),
                td(fmt(record["ours_r"], 3) if record["metric"] == "mae" else "", cls="num"),
                td(fmt(record["ours_mc_test"], digits), cls="num"),
                td(fmt(record["baseline"], digits), cls="num muted"),
            ])
        parts.append(f"<h3>{esc(model)}</h3>" + table(header, rows) + _largest_errors(context, model))
        parts.append('<div class="figs">' + image(context["parity"].get(model), f"{model}: parity plots (Figs 3-5 a-b)")
                     + image(context["errors"].get(model), f"{model}: error histograms (Figs 3-5 c-d)") + "</div>")
    parts.append(legend())
    return "".join(parts)


def setup_differences(config: dict) -> str:
    """Where this run's recipe departs from the paper's (README and docs/method.md say why), read from
    its configuration: Table 3's comparison is with the paper's numbers, not its exact setup."""
    features, train, data, tune = (config["features"], config.get("train", {}), config.get("data", {}),
                                   config.get("tune", {}))
    items = []
    if not features["space_groups"]:  # both required by the config schema: no guess at what the run used
        items.append("no space-group block in the features (the paper's Table 1 has one-hot space groups + PCA)")
    if features["dft_scaling"] != "minmax":
        items.append(f"DFT fields scaled <code>{esc(features['dft_scaling'])}</code> (the paper: min-max)")
    if data.get("exact_formulas"):
        items.append("ion counts of the formulas made exact from MP's voltage pairs (the paper: MP's rounded ones)")
    if train.get("batch_size") or train.get("patience"):
        batches = f"mini-batches of {esc(train['batch_size'])}" if train.get("batch_size") else "full batches"
        items.append(f"training in {batches}, at most "
                     f"{esc(train.get('epochs', '?'))} epochs, the best validation epoch kept (patience "
                     f"{esc(train.get('patience', '–'))}); the paper's Table 2 gives an epoch size of 10 000 and no "
                     "batch size")
    if train.get("lr_scale", 1) != 1:
        items.append(f"the networks train at the tuned learning rate times {esc(train['lr_scale'])}")
    if tune.get("tolerance"):
        items.append(f"the tuning's trial trained is the one with the fewest multiply-adds among those within "
                     f"{100 * float(tune['tolerance']):g} % of the lowest score, not the lowest itself")
    if not items:
        return ""
    return ("<p class='legend'>Where this run's setup differs from the paper's (<code>config.yaml</code>; the README "
            "says why each was chosen):</p><ul class='legend'>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")


def _largest_errors(context: dict, model: str) -> str:
    """One line per target: the validation electrodes missed most and what the RMSE is without them."""
    worst = (context.get("largest_errors") or {}).get(model)
    if not worst:
        return ""
    lines = []
    for target in TARGETS:
        entry = worst.get(target)
        rows = pd.DataFrame(entry["electrodes"]) if entry else None
        if rows is None or is_exact(rows, rows["mean"] - rows["true"]):
            continue  # exact physics: nothing to point at
        digits = DIGITS[target] - 1
        names = ", ".join(f"{esc(row['battery_id'])} ({fmt(row['true'], digits)} → {fmt(row['mean'], digits)})"
                          for row in entry["electrodes"])
        lines.append(f"<li>{TARGET_NAMES[target]} ({UNITS[target]}, DFT → predicted): {names}; RMSE without them "
                     f"{fmt(entry['rmse_without'], DIGITS[target])}</li>")
    return (f"<p class='legend'>The {len(worst[next(iter(worst))]['electrodes'])} validation electrodes missed most, "
            "which weigh on the RMSE most:</p><ul class='legend'>" + "".join(lines) + "</ul>") if lines else ""


# ----------------------------------------------------------------------------------------------
# Beyond the paper: test split, peer baseline, grouped split, physics
# ----------------------------------------------------------------------------------------------

def mae_on_test(metrics: dict | None, target: str) -> float | None:
    return ((metrics or {}).get("ensemble_mean", {}).get("test", {}).get(target) or {}).get("mae")


def coverage_on_test(metrics: dict | None, kind: str, target: str) -> float | None:
    return (metrics or {}).get("coverage", {}).get(kind, {}).get("test", {}).get(target)


def coverage_shade(fraction: float | None) -> str:
    """Green inside COVERAGE_BAND (93-97 %) around the nominal 95 %; orange outside, stronger the further (saturates at 10 points)."""
    if fraction is None or not np.isfinite(fraction):
        return ""
    low, high = COVERAGE_BAND
    miss = max(low - fraction, fraction - high, 0.0)
    return background(GOOD, 0.45) if miss == 0 else background(BAD, 0.18 + 0.6 * min(miss / 0.1, 1.0))


def models_on_test(context: dict) -> list[tuple[str, dict]]:
    """(name, metrics) of every model of the run with metrics, then the peer baseline when it ran."""
    models = [(model, context["metrics"][model]) for model in context["models"] if model in context["metrics"]]
    return models + ([(PEER, context["peer"])] if context.get("peer") else [])


def _test_split_row(model: str, metrics: dict) -> list[str]:
    goals = PHYSICS_GOALS.get(model, {})
    cells = [td(f"<b>{esc(model)}</b>")]
    for target in TARGETS:
        mae, goal = mae_on_test(metrics, target), goals.get(target)
        if exact(mae):  # no win to shade: the physics redoing MP's own computation, as in the glance table
            cells.append(td("<b>exact</b> (physics)", cls="num"))
        else:
            cells.append(td(f"{fmt(mae, DIGITS[target])} {delta(mae, goal)}", shade(mae, goal), "num"))
    for kind in ("ci", "pi"):
        if kind == "ci" and model == PEER:  # one model, no spread: its "CI" is the point itself
            cells += [td("– (one model)", cls="num muted") for _ in TARGETS]
            continue
        for target in TARGETS:
            coverage = coverage_on_test(metrics, kind, target)
            if exact(mae_on_test(metrics, target)):
                # an interval as wide as the round-off: what it "covers" is how the CSV rounded MP's numbers
                cells.append(td(f"{percent(coverage)} (round-off width)", cls="num muted"))
            else:
                cells.append(td(percent(coverage), coverage_shade(coverage) if kind == "pi" else "", "num"))
    return cells


def _coverage_by_source(model: str, metrics: dict) -> str:
    """One line: per target, the PI coverage of the rows physics predicts and of those left to the
    networks; a target exact on every test row has no coverage worth reading."""
    by_source = metrics["coverage_by_source"]
    parts = []
    for target in TARGETS:
        if exact(mae_on_test(metrics, target)):
            rows = sum(int(entry.get("rows", 0)) for entry in by_source.get(target, {}).values())
            parts.append(f"{TARGET_NAMES[target]}: exact (physics) on all {fmt(rows)}")
            continue
        sources = sorted(by_source.get(target, {}).items(), key=lambda item: item[0] != "physics")
        text = ", ".join(f"{esc(source)} {percent(entry.get('pi'))} of {fmt(int(entry.get('rows', 0)))}"
                         for source, entry in sources)
        parts.append(f"{TARGET_NAMES[target]}: {text or '–'}")
    return f"<li><b>{esc(model)}</b>: {'; '.join(parts)}</li>"


def _outside_training(model: str, scored: dict) -> str:
    """One line: the test electrodes the training data cannot vouch for, then per target their MAE
    beside the other rows' and how many of them the calibrated interval holds ('' where none)."""
    test = scored.get("test", {})
    names = sorted({name for entry in test.values() for name in entry["battery_ids"]})
    parts = [f"{TARGET_NAMES[target]} MAE {fmt(entry['mae'], DIGITS[target])} against "
             f"{fmt(entry['mae_others'], DIGITS[target])}, PI holds {percent(entry['pi_coverage'], 0)} of "
             f"{fmt(int(entry['rows']))}" for target, entry in test.items()
             if not (exact(entry["mae"]) and exact(entry["mae_others"]))]  # physics values: exact either way
    return f"<li><b>{esc(model)}</b> ({esc(', '.join(names))}): {'; '.join(parts)}</li>" if parts else ""


def goals_text(goals: dict[str, dict[str, float]] = PHYSICS_GOALS) -> str:
    """PHYSICS_GOALS in words: a goal every model shares once, then each model's own (met when the MAE is at most the goal)."""
    values = {target: {model_goals.get(target) for model_goals in goals.values()} for target in TARGETS}
    shared = {target: next(iter(v)) for target, v in values.items() if len(v) == 1 and None not in v}
    parts = [f"{TARGET_NAMES[target].lower()} MAE ≤ {value:g} {UNITS[target]}" for target, value in shared.items()]
    for model, model_goals in goals.items():
        own = [f"{SHORT[target]} ≤ {value:g} {UNITS[target]}" for target, value in model_goals.items() if target not in shared]
        parts += [f"<code>{esc(model)}</code> " + ", ".join(own)] if own else []
    return "; ".join(parts)


def beyond_test_split(context: dict) -> str:
    models = models_on_test(context)
    intro = ("<h3>Test split: every model and the peer baseline</h3><p>Ensemble mean on the test split. "
             f"<code>{PEER}</code>: Magpie features of both formulas and gradient-boosted trees, one per target, same "
             "split. The paper gives no test errors for models #1 and #2; the physics models are set against the "
             f"project's goals for them: {goals_text()} (green: met; percentages: (ours − goal) / goal). "
             "Coverage: share of test electrodes whose DFT value lies inside the paper's 95 % CI of the ensemble "
             "mean (CI) and inside the calibrated 95 % prediction interval (PI); PI green inside "
             f"{COVERAGE_BAND[0] * 100:.0f}–{COVERAGE_BAND[1] * 100:.0f} %. The CI, "
             f"the uncertainty of a {esc(_networks(context))}-network mean, is not meant to hold the DFT value and is not coloured: that "
             "it holds so few says how far the paper's Table 6 intervals understate a prediction's error.</p>")
    if not models:
        return intro + '<p class="missing">No ensemble metrics.</p>'
    header = (["Model"] + [f"MAE {TARGET_NAMES[t]} ({UNITS[t]})" for t in TARGETS]
              + [f"CI coverage {TARGET_NAMES[t]}" for t in TARGETS] + [f"PI coverage {TARGET_NAMES[t]}" for t in TARGETS])
    sources = [_coverage_by_source(model, metrics) for model, metrics in models
               if metrics.get("coverage_by_source")]
    by_source = ("<p class='legend'>Test PI coverage by source (physics value or network), with the rows of each:</p>"
                 f"<ul class='legend'>{''.join(sources)}</ul>" if sources else "")
    outside = [line for model, metrics in models if (line := _outside_training(model, metrics.get("outside_training", {})))]
    flagged = ("<p class='legend'>Test electrodes the training data cannot vouch for (network values of elements "
               "no training formula held, or at a share of a formula outside the training range; DFT fields outside "
               "the training range), their MAE against the other "
               f"test electrodes', and the share the calibrated interval holds:</p><ul class='legend'>{''.join(outside)}</ul>" if outside else "")
    peer_figures = ""
    if context.get("peer") is not None:
        peer_figures = ('<div class="figs">' + image(context.get("peer_parity"), f"{PEER}: parity plots")
                        + image(context.get("peer_errors"), f"{PEER}: error histograms") + "</div>")
    return (intro + table(header, [_test_split_row(model, metrics) for model, metrics in models]) + by_source + flagged
            + peer_figures)


def _networks(context: dict) -> str:
    """The networks per ensemble mean, as the run's metrics record them."""
    counts = sorted({metrics["n_seeds"] for model, metrics in context.get("metrics", {}).items() if "n_seeds" in metrics})
    return "/".join(map(str, counts)) or "?"


def _same_seeds(random: dict | None, grouped: dict) -> dict | None:
    """The random split's metrics of the ensemble of the grouped evaluation's seeds, where the run has them."""
    for metrics in (random or {}, (random or {}).get("compare_seeds") or {}):
        if metrics.get("n_seeds") == grouped.get("n_seeds"):
            return metrics
    return None


def _random_column_text(context: dict, grouped: dict, models: list[str], n_seeds) -> str:
    """What the random split's column is an ensemble of, against the grouped split's networks."""
    randoms = [context["metrics"].get(model) or {} for model in models]
    if all(_same_seeds(random, grouped[model]) for random, model in zip(randoms, models)):
        return (f"The random split's column is the ensemble of the same {esc(n_seeds)} seeds, so that the ratio "
                "does not count a larger ensemble's gain. ")
    more = all(random.get("n_seeds", 0) > grouped[model].get("n_seeds", 0) for random, model in zip(randoms, models))
    return ("The random split's column is its whole ensemble, of " + ("more" if more else "other numbers of")
            + " networks: part of the ratio is the ensembles' difference in size. ")


def _group_rows(model: str, random: dict | None, grouped: dict) -> list[list[str]]:
    """One row per target: the random split's test MAE of the grouped evaluation's seeds (the whole
    ensemble where the run scored no such subset), the grouped split's, and their ratio."""
    random = _same_seeds(random, grouped) or random
    sizes = grouped.get("split_sizes", {})
    label = (f"<b>{esc(model)}</b><br><span class='muted'>" +
             " / ".join(f"{name} {fmt(int(sizes[name]))}" for name in ("train", "val", "test") if name in sizes) + "</span>")
    rows = []
    for target in TARGETS:
        before, after = mae_on_test(random, target), mae_on_test(grouped, target)
        if exact(before) and exact(after):  # both physics: the ratio of two round-offs says nothing
            rows.append([td(TARGET_NAMES[target] + f" ({UNITS[target]})"), td("exact (physics)", cls="num muted"),
                         td("exact (physics)", cls="num muted"), td("–", cls="num")])
            continue
        ratio = after / before if before and after is not None else None
        rows.append([td(TARGET_NAMES[target] + f" ({UNITS[target]})"), td(fmt(before, DIGITS[target]), cls="num"),
                     td(fmt(after, DIGITS[target]), cls="num"),
                     td(f"{ratio:.2f}×" if ratio is not None else "–", shade(after, before, scale=1.0), "num")])
    rows[0].insert(0, td(label).replace("<td", f'<td rowspan="{len(TARGETS)}"', 1))
    return rows


def beyond_group_split(context: dict) -> str:
    grouped = context.get("group") or {}
    intro = "<h3>Unseen hosts: each host framework on one side of the split</h3>"
    models = [model for model in context["models"] if model in grouped]
    if not models:
        return intro + "<p class='muted'>Not run (<code>evaluation.group_seeds</code> is 0).</p>"
    n_seeds = grouped[models[0]].get("n_seeds", "?")
    text = ("<p>The paper's split is random over electrodes, so polymorphs of one host and the same host with "
            "another working ion sit on both sides of it. The same pipeline (same hyperparameters, "
            f"{esc(n_seeds)} networks) ran again on a split that keeps every host framework on one side. "
            + _random_column_text(context, grouped, models, n_seeds) +
            "Ratio = group / random test MAE: how much of the random-split accuracy comes from near-copies in the "
            "training set (orange, saturates at 2×); the two test splits hold other electrodes, so it also carries "
            "their difference. Split sizes of the group split under each name.</p>")
    rows = [row for model in models for row in _group_rows(model, context["metrics"].get(model), grouped[model])]
    return intro + text + table(["Model", "Target", "Random split (test MAE)", "Group split (test MAE)",
                                 "Group / random"], rows)


def _physics_row(model: str, summary: dict) -> list[str]:
    reasons = "<br>".join(f"{esc(reason)}: {fmt(int(n))}" for reason, n in summary.get("network_only", {}).items())
    references = ", ".join(f"{esc(ion)} {value:.3f}" for ion, value in summary.get("ion_references_eV_per_atom", {}).items())
    return [td(f"<b>{esc(model)}</b>"), td(fmt(summary.get("rows")), cls="num"),
            td(fmt(summary.get("physics_applies")), cls="num"), td(reasons or "–", cls="note"),
            td(references or "– (voltage from the networks)", cls="note")]


def _formulas_made_exact(report: dict) -> str:
    made = report.get("formulas_made_exact")
    text = ("<p>MP writes the electrode formulas with the working-ion count rounded to 2 decimals and with a "
            "trailing-zero strip that turns 10 into 1 (Li10Ti3Mn5O16 reads Li1Ti3Mn5O16); the data stage takes the "
            "exact counts from the voltage pairs, which stoichiometric capacity needs. ")
    if made is None:
        return text + "This run's data report does not record the counts repaired (an older run).</p>"
    if not made:
        return text + "No count changed in this run (<code>data.exact_formulas</code> off, or none to repair).</p>"
    rows = [[td(esc(field)), td(fmt(int(count)), cls="num")] for field, count in made.items()]
    return text + "Counts replaced:</p>" + table(["Field: ion count", "Electrodes"], rows, "compact")


def beyond_physics(context: dict) -> str:
    physics = context.get("physics") or {}
    models = [model for model in context["models"] if model in physics]
    intro = ("<h3>Physics and exact formulas</h3><p>Where it applies, a physics model takes capacity from the "
             "stoichiometry of the end-member formulas and, for <code>model2_phys</code>, voltage from the DFT "
             "energies of the end members and one fitted reference energy per ion (energy = V × C); elsewhere "
             "the networks predict: <code>model2_phys</code> model2's, <code>model1_phys</code> those of "
             "<code>model1_redox</code>, which read feature set 1 plus the oxidation-state chemistry of the "
             "formulas (the redox couple and the anions, by charge balance; no DFT), blended with gradient-boosted "
             "trees on the same redox features (<code>voltage_trees.weight</code> of the voltage).</p>")
    if not models:
        physics_table = "<p class='muted'>No physics model in this run.</p>"
    else:
        physics_table = table(["Model", "Electrodes", "Physics applies", "Network only (reason: electrodes)",
                               "Ion references (eV/atom)"], [_physics_row(m, physics[m]) for m in models])
    return intro + physics_table + _voltage_trees(context) + _formulas_made_exact(context["data_report"])


def _voltage_trees(context: dict) -> str:
    """How much of a learned voltage the trees give, and the trees alone against the blend."""
    parts = []
    for model in context["models"]:
        metrics = context["metrics"].get(model, {})
        trees = metrics.get("voltage_trees")
        if not trees:
            continue
        alone, blended = trees["trees_alone_voltage_mae"], metrics["ensemble_mean"]
        family = f"the mean of {trees['bags']} tree models" if trees.get("bags", 1) > 1 else "the trees"
        if trees.get("weight_bounds_mAh_g"):
            low, high = trees["weight_bounds_mAh_g"]
            family += f" (each electrode weighted by its capacity, clipped to {low:.0f}-{high:.0f} mAh/g)"
        share = f"{trees['weight']:.0%}"
        if trees.get("high_capacity_weight") is not None and trees.get("weight_bounds_mAh_g"):
            share += f" ({trees['high_capacity_weight']:.0%} above {trees['weight_bounds_mAh_g'][1]:.0f} mAh/g)"
        parts.append(f"<code>{esc(model)}</code>: {share} of the voltage from {family}; voltage MAE "
                     f"(validation / test) of the trees alone {alone['val']:.3f} / {alone['test']:.3f} V, blended "
                     f"{blended['val']['average_voltage']['mae']:.3f} / {blended['test']['average_voltage']['mae']:.3f} V")
    return f"<p>Voltage trees: {'; '.join(parts)}.</p>" if parts else ""


def section_beyond(context: dict) -> str:
    return beyond_test_split(context) + beyond_group_split(context) + beyond_physics(context)


def section_contribution(context: dict) -> str:
    summary = context.get("contribution")
    if summary is None:
        return '<p class="missing">Not computed (needs model2 in <code>models</code>).</p>'
    per_seed = context.get("contribution_seeds")
    n_seeds = int(summary["n_seeds"].max()) if len(summary) else 0
    has_test = "contribution_test_mean" in summary
    header = (["Left-out group", "Columns", f"Contribution, mean ± sd of {n_seeds} seeds" if n_seeds > 1
               else "Contribution (1 seed)", "Range over seeds"]
              + (["On the test split"] if has_test else []) + ["r without: V", "r without: C", "r without: E"])
    rows = []
    for _, row in summary.iterrows():
        value = row["contribution_mean"]
        style = shade(value, 1.0, lower_is_better=False, scale=0.05)
        rows.append([td(f"<b>{esc(row['group'])}</b>"), td(fmt(int(row["n_removed"])), cls="num"),
                     td(f"{value:.4f} ± {row['contribution_std']:.4f}" if np.isfinite(row["contribution_std"]) else f"{value:.4f}",
                        style, "num"),
                     # 6 digits: a bound of 1.000019 printed 1.0000 hid a range that crosses 1
                     td(f"{row['contribution_min']:.6f} – {row['contribution_max']:.6f}", cls="num")]
                    + ([td(f"{row['contribution_test_mean']:.4f}", cls="num")] if has_test else [])
                    + [td(f"{row[f'val_r_{t}_without']:.4f}", cls="num") for t in TARGETS])
    full = ""
    if per_seed is not None and len(per_seed):
        base = per_seed[per_seed["group"] == "all features"]
        full = ("<p>With every feature: mean validation r " +
                ", ".join(f"{TARGET_NAMES[t]} {base[f'val_r_{t}'].mean():.4f}" for t in TARGETS) + ".</p>")
    top = list(summary["group"][:3])
    agree = len(set(top) & set(PAPER_CONTRIBUTION_TOP3))
    above = int((summary["contribution_mean"] > 1).sum())
    unclear = list(summary.loc[(summary["contribution_min"] < 1) & (summary["contribution_max"] > 1), "group"])
    return ("<p>Eq. 9: contribution = mean Pearson r (V, C, E; validation set) with all features ÷ the same after "
            "retraining without the group; above 1 the group helps. Green: above 1, orange: below 1 "
            "(colour saturates at ±5 %).</p>" + full
            + table(header, rows)
            + f"<p>{above} of {len(summary)} groups contribute above 1 (paper: all). "
              + ("With one seed there is no spread: no group's side of 1 is tested against the seeds' noise. "
                 if n_seeds < 2 else
                 f"For {len(unclear)} of the {len(summary)} ({', '.join(map(esc, unclear))}) the seeds disagree on the "
                 "side of 1 (the range crosses it), so their sign is within the seeds' noise. " if unclear
                 else "Every group's range over the seeds lies on one side of 1. ")
            + f"Top three here: {', '.join(map(esc, top))}; paper: {', '.join(PAPER_CONTRIBUTION_TOP3)} "
              f"({agree} of 3 shared)." + (_test_ranking(summary) if has_test else "") + "</p>"
            + image(context.get("contribution_figure"), "model2: individual contribution of input features (Fig 6)", "760px"))


def _test_ranking(summary: pd.DataFrame) -> str:
    """The ranking on the test split: validation also picked each network's epoch (early stopping)
    and the tuning's trial, so its ranking is not the held-out one."""
    on_test = summary.sort_values("contribution_test_mean", ascending=False)
    return (" The validation split also chose each network's best epoch and the tuning's trial; on the "
            "held-out test split the top three are " + ", ".join(map(esc, on_test["group"][:3]))
            + f" ({int((summary['contribution_test_mean'] > 1).sum())} of {len(summary)} groups above 1).")


def section_timing(context: dict) -> str:
    timing = context.get("timing")
    if timing is None:
        return '<p class="missing">No timing table.</p>'
    header = ["Model", "Stage", "This run", "Paper (NVIDIA A40)", "Ratio", "Note"]
    rows = []
    for _, row in timing.iterrows():
        unit = row["unit"]
        ours = row["ours"]
        paper = row["paper_a40"] if pd.notna(row["paper_a40"]) else None
        digits = 1 if unit == "s" else 2
        rows.append([td(f"<b>{esc(row['model'])}</b>"), td(esc(row["stage"])),
                     td(f"{fmt(ours, digits)} {unit}", shade(ours, paper, scale=1.0), "num"),
                     td(f"{fmt(paper, digits)} {unit}" if paper is not None else "–", cls="num paper"),
                     td(f"{row['ratio']:.2g}×" if pd.notna(row["ratio"]) else "–", cls="num"),
                     td(esc(row["note"]) if pd.notna(row["note"]) else "", cls="note")])
    return ("<p>Tuning and training: wall time from the Snakemake benchmark files; prediction: measured in the "
            "timing rule (the best of several repeats; each row's note says how many, and how the networks were run). The paper ran on an "
            "NVIDIA A40 GPU; this run on " + esc(context["versions"].get("compute", "?")) +
            ". Colour saturates at 100 % (2× slower). The paper's prediction times are its Table 4's and "
            "abstract's (72.9 / 75.7 ms, one network on the 388 validation electrodes, mean of 50); its text "
            "gives 7.29 / 7.57 ms for \"a single prediction\", ten times less: against those the prediction "
            "ratios would be ten times higher.</p>" + table(header, rows))


def bounds_by_target(thresholds: dict) -> dict[str, float | None]:
    """The screen's thresholds (keyed by criterion: voltage, capacity, energy) keyed by target column."""
    return {target: thresholds.get(criterion) for criterion, target in CRITERIA.items()}


def _dft_row_cells(row: pd.Series, bounds: dict) -> list[str]:
    cells = [td(f"<b>{esc(row['framework_formula'])}</b><br><span class='muted'>{esc(row['formula_charge'])} → "
                f"{esc(row['formula_discharge'])}<br>{esc(row['battery_id'])}</span>")]
    cells.append(td("DFT"))
    cells.append(td(_verdict(row["dft_pass"]), cls="verdict"))
    for target in TARGETS:
        value = row[f"dft_{target}"]
        cells.append(td(_mark(fmt(value, DIGITS[target] - 1), bounds[target], value), cls="num"))
    return cells


def _mark(text: str, bound, value) -> str:
    return f'<span class="fail">{text}</span>' if bound is not None and value < bound else text


def _verdict(passed: bool, outcome: str | None = None) -> str:
    label = "pass" if passed else "fail"
    klass = {"FP": "fp", "FN": "fn"}.get(outcome or "", "ok")
    tag = f" <span class='tag {klass}'>{outcome}</span>" if outcome in ("FP", "FN") else ""
    return f"{label}{tag}"


def section_na(context: dict) -> str:
    test = context.get("na_screening")
    metrics = context.get("na_metrics")
    if test is None or metrics is None:
        return '<p class="missing">No Na screen.</p>'
    if metrics.get("skipped"):
        return f"<p>Not computed on this run's data: {esc(metrics['skipped'])}.</p>"
    models = context["models"]
    bounds = bounds_by_target(metrics["thresholds"])
    paper = metrics["paper"]
    parts = [f"<p>Filter: <b>{esc(metrics['filter'])}</b>, applied to the DFT values and to each model's ensemble "
             f"mean; {len(test)} Na electrodes in the test split (the paper: 9 DFT picks among its test split).</p>"]
    # Table 5 summary
    header = ["Method", "Picks", "TP", "FP", "FN", "Precision", "Recall", "Paper: picks / precision / recall"]
    dft_picks = int(test["dft_pass"].sum())
    rows = [[td("<b>DFT</b>"), td(fmt(dft_picks), cls="num"), td("–"), td("–"), td("–"), td("–"), td("–"),
             td(f"{paper['dft_picks']}", cls="num paper")]]
    by_construction = [model for model in models if screens_dft_values(test, model)]
    for model in models:
        score = metrics["test"][model]["all"]
        ref = paper.get(paper_counterpart(model), {})
        # a model whose values are DFT's own computation agrees with DFT by construction: no comparison
        colour = {} if model in by_construction else {"precision": ref.get("precision"), "recall": ref.get("recall")}
        label = f"<b>{esc(model)}</b>" + ("<br><span class='muted'>DFT by construction</span>" if model in by_construction else "")
        rows.append([td(label), td(fmt(score["picks"]), cls="num"), td(fmt(score["tp"]), cls="num"),
                     td(fmt(score["fp"]), cls="num"), td(fmt(score["fn"]), cls="num"),
                     td(fmt(score["precision"]), shade(score["precision"], colour.get("precision"), False, 0.3), "num"),
                     td(fmt(score["recall"]), shade(score["recall"], colour.get("recall"), False, 0.3), "num"),
                     td(f"{ref.get('picks', '–')} / {fmt(ref.get('precision'))} / {fmt(ref.get('recall'))}", cls="num paper")])
    parts.append("<h3>Table 5: picks, precision and recall against DFT</h3>" + table(header, rows))
    if by_construction:
        parts.append(f"<p class='muted'>{', '.join(map(esc, by_construction))}: every screened value is the physics "
                     "recomputing MP's own numbers from the DFT inputs the model reads (within round-off), so its "
                     "verdicts are DFT's by construction, not a test of a prediction; it is not shaded against the paper.</p>")
    # Picks lists
    lists = [f"<li><b>DFT</b> ({dft_picks}): {_names(test[test['dft_pass']])}</li>"]
    for model in models:
        picks = test[test[f"{model}_pass"]]
        missed = test[test[f"{model}_outcome"] == "FN"]
        text = _names(picks, highlight=~picks["dft_pass"])
        if len(missed):
            text += f"; <span class='tag fn'>missed</span> {_names(missed)}"
        lists.append(f"<li><b>{esc(model)}</b> ({len(picks)}): {text}</li>")
    parts.append("<ul class='picks'>" + "".join(lists) + "</ul>")
    # Table 6
    wrong = test[np.logical_or.reduce([test[f"{m}_outcome"].isin(["FP", "FN"]) for m in models])] if models else test.iloc[:0]
    parts.append("<h3>Table 6: false positives and false negatives</h3>")
    if wrong.empty:
        parts.append("<p>None: every model agrees with DFT on every test Na electrode.</p>")
    else:
        parts.append(_prediction_table(wrong, models, bounds))
    # All Na electrodes
    parts.append(_na_all(context, models))
    parts.append("<details><summary>All test-split Na electrodes</summary>" + _prediction_table(test, models, bounds) + "</details>")
    return "".join(parts)


def screens_dft_values(screened: pd.DataFrame, model: str) -> bool:
    """Whether each of ``model``'s screened values equals the DFT value to round-off (plots.is_exact,
    target by target), as model2_phys's do: its voltage and capacity are MP's computation."""
    if screened.empty:
        return False
    return all(is_exact(pd.DataFrame({"true": screened[f"dft_{target}"]}),
                        screened[f"{model}_{target}_mean"] - screened[f"dft_{target}"]) for target in TARGETS)


def _names(frame: pd.DataFrame, highlight: pd.Series | None = None) -> str:
    if frame.empty:
        return "–"
    names = []
    for index, row in frame.iterrows():
        name = esc(row["framework_formula"])
        if highlight is not None and bool(highlight.loc[index]):
            name = f"<span class='tag fp'>FP</span> {name}"
        names.append(f"<span title='{esc(row['battery_id'])}'>{name}</span>")
    return ", ".join(names)


def _prediction_table(frame: pd.DataFrame, models: list[str], bounds: dict) -> str:
    header = ["Electrode", "Method", "Verdict"] + [f"{TARGET_NAMES[t]} ({UNITS[t]})" for t in TARGETS]
    rows = []
    for _, row in frame.iterrows():
        first = _dft_row_cells(row, bounds)
        first[0] = first[0].replace("<td", f'<td rowspan="{1 + len(models)}"', 1)
        rows.append(first)
        for model in models:
            outcome = row[f"{model}_outcome"]
            cells = [td(esc(model)), td(_verdict(bool(row[f"{model}_pass"]), outcome), cls="verdict")]
            for target in TARGETS:
                digits = DIGITS[target] - 1
                mean = row[f"{model}_{target}_mean"]
                text = (f"{_mark(fmt(mean, digits), bounds[target], mean)} "
                        f"<span class='ci'>[{fmt(row[f'{model}_{target}_ci_low'], digits)}, {fmt(row[f'{model}_{target}_ci_high'], digits)}]</span>")
                cells.append(td(text, cls="num"))
            rows.append(cells)
    return (table(header, rows, "screen") +
            "<p class='legend'>Prediction = ensemble mean [95 % CI of the mean]. "
            "<span class='fail'>Underlined</span>: below its threshold.</p>")


def _na_all(context: dict, models: list[str]) -> str:
    everything = context.get("na_all")
    metrics = context["na_metrics"].get("all_na", {})
    if everything is None or not metrics:
        return ""
    header = ["Split (use in training)", "Na electrodes", "DFT picks"] + [f"{esc(m)}: picks / precision / recall" for m in models]
    rows = []
    # what each split was used for, as the screen wrote it beside each electrode (SPLIT_ROLE for an older table)
    roles = dict(zip(everything["split"], everything["split_role"])) if "split_role" in everything else SPLIT_ROLE
    for name in ("test", "val", "train", "all"):
        part = everything if name == "all" else everything[everything["split"] == name]
        if part.empty:
            continue
        cells = [td(f"<b>{name}</b> <span class='muted'>({roles.get(name, 'every split')})</span>"),
                 td(fmt(len(part)), cls="num"), td(fmt(int(part["dft_pass"].sum())), cls="num")]
        for model in models:
            score = metrics[model].get(name)
            cells.append(td(f"{score['picks']} / {fmt(score['precision'])} / {fmt(score['recall'])}" if score else "–", cls="num"))
        rows.append(cells)
    trained = everything[everything["trained_on"] & everything["dft_pass"]]
    return ("<h3>The same screen over every Na electrode</h3><p>Verdicts on training electrodes are not a test: the "
            "models were fitted on them (the column <code>trained_on</code> in <code>na_screening_all.csv</code>). "
            f"{len(trained)} of the {int(everything['dft_pass'].sum())} DFT picks are training electrodes.</p>"
            + table(header, rows, "compact"))


def section_k(context: dict) -> str:
    summary = context.get("k_summary")
    frame = context.get("k_table")
    if summary is None or frame is None:
        return '<p class="missing">No K substitution.</p>'
    if summary.get("skipped"):
        return f"<p>Not computed on this run's data: {esc(summary['skipped'])}.</p>"
    models = context["models"]
    header = ["Model", "Li electrodes", "Mean E, Li (Wh/kg)", "Mean E, K (Wh/kg)", "K predicted lower (|E|)",
              "Median E_K / E_Li", "Mean V, Li → K (V)", "C error vs stoichiometry, Li / K (mAh/g)",
              "K twins above their Li C"]
    rows = []
    for model in models:
        entry = summary.get(model)
        if not entry:
            continue
        fraction = entry["fraction_k_below_li"]
        rows.append([td(f"<b>{esc(model)}</b>"), td(fmt(summary["n"]), cls="num"),
                     td(fmt(entry["mean_energy_li"], 1), cls="num"), td(fmt(entry["mean_energy_k"], 1), cls="num"),
                     td(f"{fraction:.0%}" if fraction is not None else "–",
                        shade(fraction, 1.0, lower_is_better=False, scale=0.5), "num"),
                     td(fmt(entry["median_energy_ratio"], 3), cls="num"),
                     td(f"{fmt(entry['mean_voltage_li'])} → {fmt(entry['mean_voltage_k'])}", cls="num"),
                     td(f"{fmt(entry.get('capacity_mae_li_vs_stoichiometry'), 1)} / "
                        f"{fmt(entry.get('capacity_mae_k_vs_stoichiometry'), 1)}", cls="num"),
                     td(fmt(entry.get("n_capacity_k_above_li")), cls="num")])
    ratio = summary.get("median_stoich_capacity_ratio")
    detail_header = ["Li electrode", "K twin", "DFT E, Li (Wh/kg)"] + [f"{esc(m)}: E Li → K (Wh/kg)" for m in models]
    detail_rows = []
    for _, row in frame.iterrows():
        cells = [td(f"{esc(short_formula(row['formula_charge_li']))} → {esc(short_formula(row['formula_discharge_li']))}"
                    f"<br><span class='muted'>{esc(row['battery_id'])}</span>"),
                 td(f"{esc(short_formula(row['formula_charge_k']))} → {esc(short_formula(row['formula_discharge_k']))}"),
                 td(fmt(row["dft_energy_grav_li"], 1), cls="num")]
        for model in models:
            cells.append(td(f"{fmt(row[f'{model}_energy_grav_li_mean'], 1)} → {fmt(row[f'{model}_energy_grav_k_mean'], 1)}", cls="num"))
        detail_rows.append(cells)
    return ("<p>Every Li electrode of the test split with Li replaced by K in both formulas and in the working ion "
            "(amounts kept), featurised by the transformers fitted in training; crystal structure and, for model2, the "
            "DFT inputs stay those of the Li electrode, as in the paper (so polymorphs of one formula get the same "
            "model1 values: without space groups model1 cannot tell them apart). The paper finds the K energies below the Li "
            "ones for both models. The mass effect alone (same voltage, heavier ion) would scale the energy by the "
            f"ratio of stoichiometric capacities, median <b>{fmt(ratio, 3)}</b>. Green: share of K twins predicted "
            "lower, by magnitude (100 % = the paper's finding)."
            + (" model2_phys's Li energies are its physics values (the DFT voltage × the exact capacity) and its K "
               "twins' the model2 networks' voltage × the twin's stoichiometric capacity (the Li electrode's DFT "
               "energies are not the twin's), so its row sets the two kinds side by side."
               if "model2_phys" in models else "")
            + " The twin's capacity needs no DFT (the same amounts, a heavier ion), so a learned capacity can be "
            "checked on the twins too: the mean absolute error against stoichiometry on both sides, and how many "
            "twins a model gives more charge per gram than their Li original, which the heavier ion rules out.</p>"
            + table(header, rows) + image(context.get("fig7"), "Li vs K specific energy, test split (Fig 7)")
            + "<details><summary>Every substituted electrode</summary>" + table(detail_header, detail_rows, "compact") + "</details>")


def short_formula(formula: str) -> str:
    """A formula with its amounts to 3 decimals (the exact ion counts run to 10: Li0.9166666667VCuO4)."""
    return re.sub(r"\d+\.\d{4,}", lambda match: f"{float(match.group()):.3f}".rstrip("0").rstrip("."), str(formula))


def section_config(context: dict) -> str:
    text = yaml.safe_dump(context["config"], sort_keys=False, default_flow_style=False)
    return f"<pre>{esc(text)}</pre>"


def section_software(context: dict) -> str:
    rows = [[td(f"<b>{esc(name)}</b>"), td(esc(version))] for name, version in context["versions"].items()]
    return table(["Package", "Version"], rows, "compact")


def build_report(context: dict) -> str:
    builders = {
        "glance": section_glance, "data": section_data, "accuracy": section_accuracy,
        "beyond": section_beyond,
        "contribution": section_contribution, "timing": section_timing, "na": section_na, "k": section_k,
        "config": section_config, "software": section_software,
    }
    body = "".join(f'<section id="{key}"><h2>{esc(title)}</h2>{builders[key](context)}</section>'
                   for key, title in SECTIONS)
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS)
    results = Path(context["config"].get("results", "")).resolve()
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>electrode-ml report: Ma et al. 2022 reproduced</title><style>{STYLE}</style></head><body><main>"
            f"<header><h1>electrode-ml: deep learning for electrode materials</h1>"
            f"<p>Reproduction of Ma et al., <i>Green Energy &amp; Environment</i> 2022: this run beside the paper's "
            f"numbers. Models: {esc(', '.join(context['models']))}. Results folder: <code>{esc(results)}</code>. "
            f"Generated {esc(context['generated'])} by {esc(context.get('code', '?'))}.</p></header><nav>{nav}</nav>{body}</main></body></html>\n")
