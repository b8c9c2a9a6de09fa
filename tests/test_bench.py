"""`make bench` prints figures and asserts none; this only keeps its code path working."""

import json
from pathlib import Path

import pytest
import yaml

from electrode_ml import bench, cpu_matmul

REPO = Path(__file__).resolve().parents[1]


def run_bench(tmp_path, snapshot_path, config_path, model="model1"):
    bench.main(["--results", str(tmp_path), "--config", str(config_path), "--snapshot", str(snapshot_path),
                "--epochs", "2", "--n-networks", "3", "--threads", "1", "--model", model])
    return json.loads((tmp_path / "bench.json").read_text())[model]


def test_bench_writes_its_figures(tmp_path, snapshot_path, capsys, monkeypatch):
    # the bfloat16 training runs (emulated, two epochs) on a CPU without bfloat16 hardware too
    monkeypatch.setattr(bench, "native_bfloat16", lambda: True)
    figures = run_bench(tmp_path, snapshot_path, REPO / "config.yaml")
    assert figures["train_epochs"] == 2 and figures["ensemble_networks"] == 3 and figures["val_electrodes"] == 388
    # each model's entry says when and by which code it was measured: the file keeps older entries
    assert figures["code"].startswith("electrode-ml ") and figures["generated"].endswith("+00:00")
    assert figures["matmul_peak_gflops"] > 0 and figures["ensemble_predict_val_ms_bfloat16"] > 0
    # both libraries of the products timed (the pinned torch has oneDNN), the default one among
    # them; oneDNN's peak beside torch's
    assert cpu_matmul.onednn_available()
    assert figures["matmul_peak_gflops_onednn"] > 0 and 0 < figures["train_fraction_of_onednn_peak"]
    # the goal's fraction is against the peak of the library that trained
    trained_peak = figures["matmul_peak_gflops_onednn" if figures["train_matmul"] == "onednn" else "matmul_peak_gflops"]
    assert figures["train_fraction_of_peak"] == pytest.approx(figures["train_gflops"] / trained_peak, abs=2e-3)
    assert figures["train_fraction_of_torch_mm_peak"] == pytest.approx(
        figures["train_gflops"] / figures["matmul_peak_gflops"], abs=2e-3)
    by_library = figures["ensemble_predict_val_ms_by_matmul"]
    assert set(by_library) == {"torch", "onednn"} and min(by_library.values()) > 0
    assert figures["ensemble_predict_matmul"] == cpu_matmul.float32_library()
    assert by_library[figures["ensemble_predict_matmul"]] == figures["ensemble_predict_val_ms"]
    trained_by_library = figures["train_one_network_s_by_matmul"]
    assert set(trained_by_library) == {"torch", "onednn"} and min(trained_by_library.values()) > 0
    assert figures["train_matmul"] == cpu_matmul.float32_library()
    assert trained_by_library[figures["train_matmul"]] == figures["train_one_network_s"]
    assert set(figures["bfloat16_max_shift"]) == {"average_voltage", "capacity_grav", "energy_grav"}
    assert figures["train_one_network_s_bfloat16"] > 0 and 0 < figures["train_bfloat16_fraction_of_bfloat16_peak"]
    # two epochs of the same seed: the rounded matmuls end on another, nearby validation loss
    assert figures["train_best_val_loss_bfloat16"] != figures["train_best_val_loss"]
    assert abs(figures["train_best_val_loss_bfloat16"] / figures["train_best_val_loss"] - 1) < 0.1
    printed = capsys.readouterr().out
    assert "GFLOP/s" in printed and "bfloat16 matmuls" in printed and "GFLOP/s (oneDNN)" in printed
    assert f"({figures['train_matmul']} products;" in printed


def test_bench_skips_the_bfloat16_training_where_it_would_be_emulated(tmp_path, snapshot_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "native_bfloat16", lambda: False)
    figures = run_bench(tmp_path, snapshot_path, REPO / "config.yaml")
    assert figures["train_one_network_s_bfloat16"] is None and figures["train_best_val_loss_bfloat16"] is None
    assert figures["train_one_network_s"] > 0
    assert "skipped, this CPU has neither AMX nor AVX512-BF16" in capsys.readouterr().out


def test_bench_trains_on_the_configured_features(tmp_path, snapshot_path):
    """The benchmarked network sees the workflow's inputs: the space-group block only when configured."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    inputs = {}
    for space_groups in (False, True):
        config["features"]["space_groups"] = space_groups
        path = tmp_path / f"config_{space_groups}.yaml"
        path.write_text(yaml.safe_dump(config))
        figures = run_bench(tmp_path / str(space_groups), snapshot_path, path)
        assert figures["train_space_groups"] is space_groups
        inputs[space_groups] = figures["train_inputs"]
    assert inputs[True] > inputs[False] + 100  # the block is 173 PCA components on the snapshot


def test_bench_compares_each_model_with_its_own_paper_figures(tmp_path, snapshot_path):
    """Table 4 of the paper times model2 separately (245.6 s, 75.7 ms); model1's numbers are not reused."""
    figures = {model: run_bench(tmp_path, snapshot_path, REPO / "config.yaml", model) for model in ("model1", "model2")}
    assert (figures["model1"]["paper_train_one_network_s_A40"], figures["model1"]["paper_predict_val_ms_one_network_A40"]) == (238.51, 72.9)
    assert (figures["model2"]["paper_train_one_network_s_A40"], figures["model2"]["paper_predict_val_ms_one_network_A40"]) == (245.6, 75.7)
    assert figures["model2"]["train_inputs"] != figures["model1"]["train_inputs"]


def test_bench_refuses_a_broken_config_in_one_line_before_training(tmp_path, snapshot_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["split"]["fractions"] = [0.8, 0.1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as error:
        run_bench(tmp_path / "results", snapshot_path, bad)
    assert str(error.value).startswith("error: ") and "config key split.fractions" in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "results").exists()


@pytest.mark.parametrize("option", ["--epochs", "--threads", "--n-networks"])
def test_a_count_below_one_is_refused_before_any_work(tmp_path, option, capsys):
    """--epochs -5 wrote a negative GFLOP/s and a NaN loss into bench.json; --threads 0 was a traceback."""
    with pytest.raises(SystemExit) as refused:
        bench.main(["--results", str(tmp_path), option, "0"])
    assert refused.value.code == 2
    assert f"argument {option}: must be 1 or more, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_the_timed_ensemble_is_the_runs_seeds_not_every_seed_folder(tmp_path):
    """A seed folder an earlier run with more seeds left (another tuning's widths) joined the ensemble."""
    import numpy as np
    import torch

    from electrode_ml.model import NetworkParams, TrainSettings, train_network

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 3))
    for seed, units in ((0, 8), (1, 8), (2, 8), (7, 16)):
        network = train_network(x, y, x, y, NetworkParams(units, units, units, 0.0, 0.0, 0.0, 1e-3),
                                 TrainSettings(epochs=1, log_every=0))
        (tmp_path / "train" / "model1" / f"seed_{seed}").mkdir(parents=True)
        torch.save(network.to_checkpoint(), tmp_path / "train" / "model1" / f"seed_{seed}" / "model.pt")
    loaded = bench.load_ensemble(tmp_path, "model1", [0, 1, 2])
    assert [network.params.units_1 for network in loaded] == [8, 8, 8]


def test_the_training_flop_count_is_the_dense_layers_by_hand():
    """4 inputs -> 5 -> 6 -> 7 -> 3 outputs: 20 + 30 + 42 + 21 = 113 multiply-adds a row forward.
    Per training row: forward 226 FLOPs, weight gradients 226, input gradients 2 x (30 + 42 + 21) =
    186 (the inputs need none); per validation row the forward alone."""
    from electrode_ml.model import NetworkParams

    params = NetworkParams(5, 6, 7, 0.0, 0.0, 0.0, 1e-3)
    assert bench.training_flops(n_train=10, n_val=4, n_inputs=4, params=params, epochs=3) == 3 * (10 * (226 + 226 + 186) + 4 * 226)


def test_the_timed_ensemble_is_the_one_the_run_evaluated_and_a_missing_network_is_refused(tmp_path):
    """The benchmark timed the networks it found, silently fewer than the ensemble's."""
    import numpy as np
    import torch

    from electrode_ml.errors import InputError
    from electrode_ml.fileio import write_json
    from electrode_ml.model import NetworkParams, TrainSettings, train_network

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 3))
    network = train_network(x, y, x, y, NetworkParams(8, 8, 8, 0.0, 0.0, 0.0, 1e-3), TrainSettings(epochs=1, log_every=0))
    for seed in (0, 2):
        (tmp_path / "train" / "model1" / f"seed_{seed}").mkdir(parents=True)
        torch.save(network.to_checkpoint(), tmp_path / "train" / "model1" / f"seed_{seed}" / "model.pt")
    write_json({"n_seeds": 2, "seeds": [0, 2]}, tmp_path / "ensemble" / "model1" / "metrics.json")
    assert len(bench.load_ensemble(tmp_path, "model1", [0, 1])) == 2  # the evaluated seeds, not the config's
    write_json({"n_seeds": 3, "seeds": [0, 1, 2]}, tmp_path / "ensemble" / "model1" / "metrics.json")
    with pytest.raises(InputError, match="1 of the 3 networks the model1 ensemble was evaluated on are missing"):
        bench.load_ensemble(tmp_path, "model1", [0, 1, 2])


def test_a_missing_network_is_one_line_before_any_training(tmp_path, snapshot_path, monkeypatch):
    """The refusal came as a traceback, after the three benchmark trainings."""
    from electrode_ml.fileio import write_json

    write_json({"n_seeds": 2, "seeds": [0, 1]}, tmp_path / "ensemble" / "model1" / "metrics.json")
    monkeypatch.setattr(bench, "train_network", lambda *args, **kwargs: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit, match=r"^error: .*2 of the 2 networks the model1 ensemble was evaluated on "
                                         r"are missing \(seed_0, seed_1\)"):
        run_bench(tmp_path, snapshot_path, REPO / "config.yaml")
