"""`make bench` prints figures and asserts none; this only keeps its code path working."""

import json

from electrode_ml import bench


def test_bench_writes_its_figures(tmp_path, snapshot_path, capsys):
    bench.main(["--results", str(tmp_path), "--snapshot", str(snapshot_path), "--epochs", "2", "--n-networks", "3",
                "--threads", "1"])
    figures = json.loads((tmp_path / "bench.json").read_text())["model1"]
    assert figures["train_epochs"] == 2 and figures["ensemble_networks"] == 3 and figures["val_electrodes"] == 388
    assert figures["matmul_peak_gflops"] > 0 and figures["ensemble_predict_val_ms_bfloat16"] > 0
    assert set(figures["bfloat16_max_shift"]) == {"average_voltage", "capacity_grav", "energy_grav"}
    assert "GFLOP/s" in capsys.readouterr().out
