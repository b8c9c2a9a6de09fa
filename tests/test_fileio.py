import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from electrode_ml.fileio import atomic_path, temporary_pattern, write_json, write_parquet, write_text


def test_outputs_get_the_mode_of_any_new_file_not_the_private_temp_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "metrics.json")
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "table.parquet")
    finally:
        os.umask(old)
    for name in ("metrics.json", "table.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_json_outputs_are_strict_json_with_null_for_nan_and_infinity(tmp_path):
    """metrics.json held NaN (an undefined r), which jq, JavaScript and R's jsonlite refuse."""
    write_json({"r": float("nan"), "q": {"network": np.inf}, "low": [np.float32(-np.inf), np.float64(1.5)],
                "values": np.array([np.nan, 2.0]), "n": np.int64(3), "path": Path("a/b")}, tmp_path / "metrics.json")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse) == {
        "r": None, "q": {"network": None}, "low": [None, 1.5], "values": [None, 2.0], "n": 3, "path": "a/b"}


def test_a_failed_write_leaves_neither_the_output_nor_a_temp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []



def test_fsync_flushes_the_finished_file_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text("plain\n", tmp_path / "plain.txt")
    assert synced == []
    old = os.umask(0o022)
    try:
        write_text("a,b\n1,2\n", tmp_path / "trials.csv", fsync=True)
    finally:
        os.umask(old)
    output = tmp_path / "trials.csv"
    assert output.read_text() == "a,b\n1,2\n" and output.stat().st_mode & 0o777 == 0o644
    assert synced == [output.stat().st_ino]  # the very file renamed into place, once
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plain.txt", "trials.csv"]


def test_the_temporary_pattern_matches_what_a_killed_write_leaves(tmp_path):
    """A process killed inside atomic_path leaves its temporary file: temporary_pattern finds it, and only it."""
    # the longest a file system takes: its temporary name would not fit whole
    for name in ("ax_state.json", "trials.csv", "odd[1].json", "no_suffix", "x" * 251 + ".csv"):
        target = tmp_path / name
        with atomic_path(target) as tmp:
            tmp.write_text("done")
            left = tmp
        assert not left.exists() and list(tmp_path.glob(temporary_pattern(target))) == []
        left.write_text("half")  # what a write killed before its rename leaves behind
        (tmp_path / f".other_{name[:200]}.abcd1234.tmp{target.suffix}").write_text("")  # another output's
        assert list(tmp_path.glob(temporary_pattern(target))) == [left], name
