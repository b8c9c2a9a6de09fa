import os

import pandas as pd
import pytest

from electrode_ml.fileio import atomic_path, write_json, write_parquet


def test_outputs_get_the_mode_of_any_new_file_not_the_private_temp_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "metrics.json")
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "table.parquet")
    finally:
        os.umask(old)
    for name in ("metrics.json", "table.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_neither_the_output_nor_a_temp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
