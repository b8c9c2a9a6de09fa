import json

import numpy as np
import pandas as pd
import pytest

from electrode_ml.data import read_electrode_csv, validate_electrodes
from electrode_ml.errors import InputError
from electrode_ml.schema import ELECTRODE_COLUMNS, WORKING_IONS

ALL_IONS = list(WORKING_IONS)


def validate(frame, **kwargs):
    options = dict(ions=ALL_IONS, voltage_window=(-1, 7), on_bad_row="error")
    options.update(kwargs)
    return validate_electrodes(frame, **options)


def test_snapshot_loads_typed_and_complete(snapshot_path):
    electrodes, report = validate(read_electrode_csv(snapshot_path))
    assert len(electrodes) == 4300
    assert list(electrodes.columns) == list(ELECTRODE_COLUMNS)
    assert electrodes["average_voltage"].dtype == np.float64
    assert electrodes["charge_space_group_number"].dtype == np.int64
    assert report.rows_per_ion["Li"] == 2410 and report.rows_per_ion["Cs"] == 33


# (field, bad text, expected words in the message)
BAD_VALUES = [
    ("formula_discharge", "Li2Fe(PO4", "malformed"),
    ("formula_charge", "Qq2O3", "unknown element"),
    ("formula_discharge", "Li-2FeO2", "malformed"),
    ("working_ion", "Xe", "unknown working ion"),
    ("average_voltage", "nan", "missing value"),
    ("average_voltage", "", "missing value"),
    ("capacity_grav", "inf", "infinite"),
    ("charge_band_gap", "high", "not a number"),
    ("charge_space_group_number", "0", "space group"),
    ("discharge_space_group_number", "231", "space group"),
    ("charge_crystal_system", "Rhombic", "unknown crystal system"),
]


@pytest.mark.parametrize("field, value, words", BAD_VALUES)
def test_bad_row_is_one_line_naming_row_and_field(small_raw, field, value, words):
    small_raw.loc[3, field] = value
    battery_id = small_raw.loc[3, "battery_id"]
    with pytest.raises(InputError) as error:
        validate(small_raw, where="corpus.csv")
    message = str(error.value)
    assert "\n" not in message
    assert battery_id in message and field in message and words in message
    assert message.startswith("corpus.csv:")


@pytest.mark.parametrize("field, value, words", BAD_VALUES)
def test_drop_mode_counts_bad_rows(small_raw, field, value, words):
    small_raw.loc[3, field] = value
    electrodes, report = validate(small_raw, on_bad_row="drop")
    assert len(electrodes) == len(small_raw) - 1
    assert small_raw.loc[3, "battery_id"] not in set(electrodes["battery_id"])
    assert report.dropped[f"bad {field}"] == 1
    json.dumps(report.as_dict())


def test_duplicate_id_is_refused(small_raw):
    small_raw.loc[5, "battery_id"] = small_raw.loc[4, "battery_id"]
    with pytest.raises(InputError, match="duplicate id"):
        validate(small_raw)


def test_missing_column_is_named(small_raw):
    with pytest.raises(InputError, match="missing column.*charge_efermi"):
        validate(small_raw.drop(columns="charge_efermi"))


def test_ion_selection_and_voltage_window_are_counted_not_errors(small_raw):
    small_raw.loc[0, "average_voltage"] = "7.5"
    electrodes, report = validate(small_raw, ions=["Li", "Na"])
    assert set(electrodes["working_ion"]) <= {"Li", "Na"}
    assert report.dropped["working ion not selected"] == (~small_raw["working_ion"].isin(["Li", "Na"])).sum()
    assert report.rows_out == len(electrodes)


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (None, "no rows after the header"),
    (b"battery_id,formula\n\xff\xfe\x00bad", "not UTF-8"),
])
def test_unreadable_files_are_one_line(tmp_path, snapshot_text, content, words):
    path = tmp_path / "input.csv"
    if content is None:
        snapshot_text.head(0).to_csv(path, index=False)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        read_electrode_csv(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_electrode_csv(tmp_path / "absent.csv")
