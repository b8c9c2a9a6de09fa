from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from electrode_ml.data import read_electrode_csv, validate_electrodes
from electrode_ml.errors import InputError
from electrode_ml.schema import WORKING_IONS
from electrode_ml.split import make_split, split_sizes


@pytest.fixture(scope="module")
def electrodes(snapshot_path):
    return validate_electrodes(read_electrode_csv(snapshot_path), ions=list(WORKING_IONS), voltage_window=(-1, 7))[0]


def test_paper_sizes_on_snapshot(electrodes):
    split = make_split(electrodes, method="random", fractions=(0.81, 0.0902, 0.0998), seed=42)
    assert split["split"].value_counts().to_dict() == {"train": 3483, "val": 388, "test": 429}
    assert split["battery_id"].is_unique and set(split["battery_id"]) == set(electrodes["battery_id"])


def test_sizes_always_add_up():
    for n in (1, 7, 99, 4300, 4351):
        assert sum(split_sizes(n, (0.81, 0.09, 0.10))) == n
    assert split_sizes(4300, (0.81, 0.09, 0.10)) == (3483, 387, 430)


def test_random_split_is_seeded(electrodes):
    first = make_split(electrodes, method="random", fractions=(0.8, 0.1, 0.1), seed=1)
    again = make_split(electrodes, method="random", fractions=(0.8, 0.1, 0.1), seed=1)
    other = make_split(electrodes, method="random", fractions=(0.8, 0.1, 0.1), seed=2)
    assert first.equals(again)
    assert not first.equals(other)


def test_group_split_keeps_frameworks_on_one_side(electrodes):
    split = make_split(electrodes, method="group", fractions=(0.81, 0.09, 0.10), seed=42)
    sides = split.assign(framework=electrodes["framework_formula"].to_numpy()).groupby("framework")["split"].nunique()
    assert (sides == 1).all()
    counts = split["split"].value_counts()
    assert abs(counts["train"] / len(split) - 0.81) < 0.02
    assert counts["val"] > 0 and counts["test"] > 0


def test_split_spread_says_in_one_line_what_is_missing_or_wrong(tmp_path):
    from electrode_ml import split_spread

    config = str(Path(__file__).resolve().parents[1] / "config.yaml")
    with pytest.raises(SystemExit) as missing:
        split_spread.main(["--results", str(tmp_path / "results"), "--config", config, "--model", "model1_phys"])
    message = str(missing.value)
    assert message.count("\n") == 0
    assert str(tmp_path / "results" / "data" / "electrodes.parquet") in message and "model1_phys" in message
    with pytest.raises(SystemExit) as bad_seeds:
        split_spread.main(["--results", str(tmp_path / "results"), "--config", config, "--split-seeds", "1,two"])
    assert "--split-seeds" in str(bad_seeds.value) and "'1,two'" in str(bad_seeds.value)
    with pytest.raises(SystemExit) as no_config:
        split_spread.main(["--results", str(tmp_path / "results"), "--config", str(tmp_path / "none.yaml")])
    assert "none.yaml" in str(no_config.value)
    with pytest.raises(SystemExit) as no_networks:  # was a traceback after the featurisation had run
        split_spread.main(["--results", str(tmp_path / "results"), "--config", config, "--networks", "0"])
    assert no_networks.value.code == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(config).read_text().replace("n_seeds: 50", "n_seeds: fifty"))
    with pytest.raises(SystemExit) as bad_config:
        split_spread.main(["--results", str(tmp_path / "results"), "--config", str(broken)])
    assert str(bad_config.value) == f"error: {broken}: config key train.n_seeds: 'fifty' is not of type 'integer'"
    assert not (tmp_path / "results" / "analysis").exists()


def test_split_spread_draws_eight_distinct_splits_with_the_runs_own_first():
    from electrode_ml.split_spread import default_split_seeds

    assert default_split_seeds(42) == [42, 1, 2, 3, 4, 5, 6, 7]
    assert default_split_seeds(3) == [3, 1, 2, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("method", ["random", "group"])
def test_fractions_that_leave_a_split_empty_are_refused_by_name(electrodes, method):
    """[0.99996, 0.00002, 0.00002] sum to 1 and passed; the features job then failed on 0 rows."""
    with pytest.raises(InputError, match=r"^config key split\.fractions: .* leave the val and test split\(s\) of the 4300"):
        make_split(electrodes, method=method, fractions=(0.99996, 0.00002, 0.00002), seed=42)


@pytest.mark.parametrize("method", ["random", "group"])
def test_a_validation_split_too_small_to_calibrate_the_intervals_is_refused(electrodes, method):
    """data.ions: [K, Rb, Cs] gave 16 validation electrodes: every prediction interval was infinite,
    metrics.json said 100 % coverage, and nothing said why."""
    few = electrodes[electrodes["working_ion"].isin(["K", "Rb", "Cs"])]
    with pytest.raises(InputError, match=rf"^config key split\.fractions: \[0\.81, 0\.09, 0\.1\] leave \d+ of the "
                                         rf"{len(few)} electrodes in the val split \({method} split\); the 95 % "
                                         r"prediction intervals are calibrated on it and need at least 19$"):
        make_split(few, method=method, fractions=(0.81, 0.09, 0.10), seed=42)
    assert (make_split(few, method=method, fractions=(0.6, 0.2, 0.2), seed=42)["split"] == "val").sum() >= 19


def test_the_validation_floor_is_19_rows_exactly(electrodes):
    """18 validation rows give every calibrated interval an infinite width; 19 a finite one."""
    from electrode_ml.split import MIN_VALIDATION_ROWS

    assert MIN_VALIDATION_ROWS == 19
    rows = electrodes.head(100)
    for n_val, refused in ((18, True), (19, False)):
        fractions = ((100 - n_val - 10) / 100, n_val / 100, 0.1)
        if refused:
            with pytest.raises(InputError, match=r"leave 18 of the 100 electrodes in the val split"):
                make_split(rows, method="random", fractions=fractions, seed=0)
        else:
            assert (make_split(rows, method="random", fractions=fractions, seed=0)["split"] == "val").sum() == 19


def test_a_group_that_fills_a_split_exactly_starts_the_next():
    """Groups of one electrode must reproduce the random split's sizes: 8 / 1 / 1 of 10."""
    from electrode_ml.split import group_split

    ids = pd.Series([f"mp-{n}_Li" for n in range(10)])
    for seed in range(5):
        split = group_split(ids, ids, (0.8, 0.1, 0.1), seed)
        assert split["split"].value_counts().to_dict() == {"train": 8, "val": 1, "test": 1}


def test_the_smallest_validation_split_allowed_gives_finite_intervals():
    from electrode_ml.ensemble import conformal_quantile
    from electrode_ml.split import MIN_VALIDATION_ROWS

    assert conformal_quantile(np.arange(MIN_VALIDATION_ROWS), 0.95) < float("inf")
    assert conformal_quantile(np.arange(MIN_VALIDATION_ROWS - 1), 0.95) == float("inf")


def test_the_split_rule_refuses_a_grouped_evaluation_the_data_cannot_hold(tmp_path):
    """The grouped evaluation draws its own split after the tunings; a data set too small for it
    failed there, after 30 tuning trials, in a message that blamed split.fractions alone."""
    from types import SimpleNamespace

    from electrode_ml.fileio import write_parquet
    from electrode_ml.steps import split_step

    electrodes = pd.DataFrame({"battery_id": [f"b{i}" for i in range(220)],
                               "framework_formula": [f"F{i // 15}" for i in range(220)]})  # 15 per framework
    write_parquet(electrodes, tmp_path / "electrodes.parquet")
    settings = {"method": "random", "fractions": [0.81, 0.0902, 0.0998], "seed": 42}

    def run(group_seeds: int):
        output = SimpleNamespace(split=tmp_path / f"split_{group_seeds}.parquet")
        split_step(SimpleNamespace(electrodes=tmp_path / "electrodes.parquet"), output,
                   SimpleNamespace(split=settings, group_seeds=group_seeds), threads=1)
        return output.split

    assert pd.read_parquet(run(0))["split"].value_counts()["val"] == 20  # the random split holds
    with pytest.raises(InputError, match=r"leave 15 of the 220 electrodes in the val split \(group split\).*; "
                                         r"that split is the grouped evaluation's \(evaluation.group_seeds: 10\): "
                                         r"set evaluation.group_seeds: 0 to leave it out"):
        run(10)
    assert not (tmp_path / "split_10.parquet").exists()
