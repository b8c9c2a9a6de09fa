import multiprocessing
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from electrode_ml import cpu_matmul, devices
from electrode_ml import predict as prediction
from electrode_ml.devices import claim_gpu, job_device, resolve_device
from electrode_ml.errors import InputError
from electrode_ml.model import MLP, NetworkParams, TrainedNetwork, TrainSettings, predict, train_network
from electrode_ml.predict import (OneDNNNetworks, StackedEnsemble, consecutive_shares, in_streams, relu_,
                                  stream_workers)
from electrode_ml.runner import SNAKEMAKE, Terminated, snakemake_identity, snakemake_to_watch
from electrode_ml.training_kernels import FlatRMSprop, ReLUDropout, TrainingStep

PARAMS = NetworkParams(32, 16, 8, 0.1, 0.1, 0.1, 1e-3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((300, 12)).astype(np.float32)
    y = np.column_stack([x[:, 0] * 3, x[:, 1] * 100 + 50, x[:, 0] * x[:, 1] * 300])
    return x[:240], y[:240], x[240:], y[240:]


@pytest.fixture
def onednn_calls(monkeypatch):
    """How many products went through oneDNN's linear (cpu_matmul.linear): proof the path was taken
    where its numbers could, on some CPU, match torch's bit for bit."""
    calls = []
    linear = cpu_matmul.linear
    monkeypatch.setattr(cpu_matmul, "linear", lambda *args, **kwargs: calls.append(1) or linear(*args, **kwargs))
    return calls


def test_same_seed_same_network_other_seed_differs(data):
    settings = TrainSettings(epochs=15, batch_size=64, seed=3, log_every=0)
    first = train_network(*data, PARAMS, settings)
    again = train_network(*data, PARAMS, settings)
    other = train_network(*data, PARAMS, TrainSettings(epochs=15, batch_size=64, seed=4, log_every=0))
    np.testing.assert_array_equal(predict(first, data[2]), predict(again, data[2]))
    assert not np.array_equal(predict(first, data[2]), predict(other, data[2]))


def test_targets_are_standardised_on_the_training_split_alone(data):
    """Validation rows of another scale must move neither the mean nor the spread the network learns in."""
    x_train, y_train, x_val, y_val = data
    network = train_network(x_train, y_train, x_val, y_val * 50 + 1000, PARAMS,
                            TrainSettings(epochs=2, batch_size=64, seed=0, log_every=0))
    np.testing.assert_allclose(network.target_mean, y_train.mean(axis=0))
    np.testing.assert_allclose(network.target_std, y_train.std(axis=0))


def test_lr_scale_multiplies_the_tuned_learning_rate(data):
    def trained(params, lr_scale):
        settings = TrainSettings(epochs=10, batch_size=64, lr_scale=lr_scale, seed=1, log_every=0)
        return predict(train_network(*data, params, settings), data[2])

    halved = trained(PARAMS, 0.5)
    np.testing.assert_array_equal(halved, trained(replace(PARAMS, lr=PARAMS.lr * 0.5), 1.0))
    assert not np.array_equal(halved, trained(PARAMS, 1.0))


def test_training_learns_and_keeps_the_best_epoch(data):
    network = train_network(*data, PARAMS, TrainSettings(epochs=200, batch_size=32, patience=20, seed=0, log_every=0))
    history = network.history
    assert history["val_loss"].iloc[network.best_epoch - 1] == history["val_loss"].min()
    baseline = np.abs(data[3] - data[1].mean(axis=0)).mean(axis=0)
    assert (np.abs(predict(network, data[2]) - data[3]).mean(axis=0) < baseline).all()
    assert len(history) <= 200


def test_flat_rmsprop_takes_the_steps_of_torch_rmsprop(data):
    x, y = torch.tensor(data[0]), torch.tensor(data[1], dtype=torch.float32)
    networks = []
    for make_optimiser in (lambda net: torch.optim.RMSprop(net.parameters(), lr=1e-2, alpha=0.9, eps=1e-7),
                           lambda net: FlatRMSprop(net, lr=1e-2, alpha=0.9, eps=1e-7)):
        torch.manual_seed(5)
        network = MLP(x.shape[1], PARAMS)
        optimiser = make_optimiser(network)
        for start in range(0, len(x), 60):
            optimiser.zero_grad()
            torch.nn.functional.mse_loss(network(x[start:start + 60]), y[start:start + 60]).backward()
            optimiser.step()
        networks.append(network)
    reference, flat = (dict(network.named_parameters()) for network in networks)
    torch.manual_seed(5)
    untrained = dict(MLP(x.shape[1], PARAMS).named_parameters())
    for name, weight in reference.items():
        assert not torch.equal(weight, untrained[name]), name
        assert torch.equal(flat[name], weight), name


@pytest.mark.parametrize("params", [
    # widths that leave the last weight 4 bytes off a 16-byte boundary in the flat buffer, where
    # the BLAS kernel rounds differently
    NetworkParams(64, 48, 41, 0.1, 0.3, 0.5, 1e-2),
    NetworkParams(64, 48, 41, 0.0, 0.2, 0.0, 1e-2),
], ids=["dropout", "some-layers-without-dropout"])
@pytest.mark.parametrize("huber_delta", [None, 0.3], ids=["mse", "huber"])
def test_training_step_takes_the_steps_of_autograd(data, params, huber_delta):
    """The written-out backward pass on torch's products gives autograd's numbers bit for bit,
    including the last, short batch (its own buffers) and layers without dropout, on either loss;
    the step reports the batch's MSE either way."""
    x, y = torch.tensor(data[0]), torch.tensor(data[1], dtype=torch.float32)
    runs = []
    for written_out in (False, True):
        torch.manual_seed(7)
        network = MLP(x.shape[1], params)
        optimiser = FlatRMSprop(network, lr=params.lr, alpha=0.9, eps=1e-7)
        initial = optimiser.weights.clone()
        step = TrainingStep(network, optimiser, huber_delta, matmul="torch")
        losses = []
        for _ in range(3):
            for start in range(0, len(x), 70):
                batch_x, batch_y = x[start:start + 70], y[start:start + 70]
                if written_out:
                    losses.append(step(batch_x, batch_y))
                else:
                    optimiser.zero_grad()
                    output = network(batch_x)
                    if huber_delta:
                        torch.nn.functional.huber_loss(output, batch_y, delta=huber_delta).backward()
                    else:
                        torch.nn.functional.mse_loss(output, batch_y).backward()
                    optimiser.step()
                    losses.append(torch.nn.functional.mse_loss(output.detach(), batch_y))
        runs.append((optimiser.weights.clone(), torch.stack(losses)))
    (reference_weights, reference_losses), (weights, losses) = runs
    assert not torch.equal(weights, initial)
    assert torch.equal(weights, reference_weights)
    assert torch.equal(losses, reference_losses)


@pytest.mark.parametrize("huber_delta", [None, 0.3], ids=["mse", "huber"])
def test_training_step_on_onednn_products_follows_autograd(data, huber_delta, onednn_calls):
    """oneDNN's products give autograd's gradients to float32 rounding, and a few epochs of steps
    stay on autograd's path: the same losses and weights to a few parts in a thousand (RMSprop
    divides a gradient near 0 by its own size, so a rounding there moves a weight by up to lr).
    The first layer (12 -> 64 units) takes the weight gradient's other operand order, the rest
    grad.T @ x (``TrainingStep._weight_gradient``)."""
    x, y = torch.tensor(data[0]), torch.tensor(data[1], dtype=torch.float32)
    params = NetworkParams(64, 48, 41, 0.1, 0.3, 0.0, 1e-3)
    loss_fn = (lambda output, target: torch.nn.functional.huber_loss(output, target, delta=huber_delta)) \
        if huber_delta else torch.nn.functional.mse_loss
    weights, first_gradient, losses = {}, {}, {}
    for kind in ("autograd", "onednn"):
        torch.manual_seed(7)
        network = MLP(x.shape[1], params)
        optimiser = FlatRMSprop(network, lr=params.lr, alpha=0.9, eps=1e-7)
        initial = optimiser.weights.clone()
        step = TrainingStep(network, optimiser, huber_delta, matmul="onednn")
        assert step.matmul == "onednn"
        losses[kind] = []
        for epoch in range(3):
            for start in range(0, len(x), 70):
                batch_x, batch_y = x[start:start + 70], y[start:start + 70]
                if kind == "onednn":
                    losses[kind].append(float(step(batch_x, batch_y)))
                else:
                    optimiser.zero_grad()
                    output = network(batch_x)
                    loss_fn(output, batch_y).backward()
                    optimiser.step()
                    losses[kind].append(float(torch.nn.functional.mse_loss(output.detach(), batch_y)))
                if (epoch, start) == (0, 0):
                    first_gradient[kind] = optimiser.grads.clone()
        weights[kind] = optimiser.weights.clone()
    assert not torch.equal(weights["onednn"], initial)
    scale = float(first_gradient["autograd"].abs().max())
    torch.testing.assert_close(first_gradient["onednn"], first_gradient["autograd"], rtol=1e-4, atol=1e-5 * scale)
    assert losses["onednn"] == pytest.approx(losses["autograd"], rel=1e-3)
    torch.testing.assert_close(weights["onednn"], weights["autograd"], rtol=1e-3, atol=3 * params.lr)
    steps = 3 * -(-len(x) // 70)
    assert len(onednn_calls) == steps * (4 + 4 + 3)  # forward, weight gradients, input gradients


def test_the_steps_validation_score_is_the_networks_output_without_dropout(data, onednn_calls):
    """``TrainingStep.evaluate`` scores the validation rows each epoch: on torch's products the
    eval-mode network's own numbers bit for bit, on oneDNN's the same to float32 rounding."""
    x = torch.tensor(data[2])
    network = MLP(x.shape[1], NetworkParams(64, 48, 41, 0.5, 0.5, 0.5, 1e-3))
    optimiser = FlatRMSprop(network, lr=1e-3, alpha=0.9, eps=1e-7)
    with torch.no_grad():
        expected = network.eval()(x)
    assert torch.equal(TrainingStep(network, optimiser, matmul="torch").evaluate(x), expected)
    assert not onednn_calls
    on_onednn = TrainingStep(network, optimiser, matmul="onednn").evaluate(x)
    torch.testing.assert_close(on_onednn, expected, rtol=1e-5, atol=1e-6)
    assert len(onednn_calls) == 4


def test_training_on_onednn_repeats_itself_and_learns(data, onednn_calls):
    settings = TrainSettings(epochs=60, batch_size=32, seed=2, matmul="onednn", log_every=0)
    first, again = train_network(*data, PARAMS, settings), train_network(*data, PARAMS, settings)
    assert len(onednn_calls) == 2 * 60 * (-(-len(data[0]) // 32) * 11 + 4)  # the steps and validation
    np.testing.assert_array_equal(predict(first, data[2]), predict(again, data[2]))
    baseline = np.abs(data[3] - data[1].mean(axis=0)).mean(axis=0)
    assert (np.abs(predict(first, data[2]) - data[3]).mean(axis=0) < baseline).all()
    on_torch = train_network(*data, PARAMS, replace(settings, matmul="torch"))
    assert len(onednn_calls) == 2 * 60 * (-(-len(data[0]) // 32) * 11 + 4)
    # the same training to rounding: the best validation loss (standardised) within a percent
    assert first.history["val_loss"].min() == pytest.approx(on_torch.history["val_loss"].min(), rel=0.01)


@pytest.mark.parametrize("huber_delta", [None, 0.3], ids=["mse", "huber"])
def test_mixed_precision_step_takes_the_steps_of_autograd_on_bfloat16_operands(data, huber_delta):
    """bfloat16 matmul operands, float32 everything else: autograd with each Linear's operands
    cast to bfloat16 and its output back to float32 takes the same steps bit for bit, and they are
    not float32's."""
    x, y = torch.tensor(data[0]), torch.tensor(data[1], dtype=torch.float32)
    params = NetworkParams(64, 48, 41, 0.1, 0.3, 0.5, 1e-2)
    loss_fn = (lambda output, target: torch.nn.functional.huber_loss(output, target, delta=huber_delta)) \
        if huber_delta else torch.nn.functional.mse_loss
    weights = {}
    for kind in ("autograd", "mixed", "float32"):
        torch.manual_seed(7)
        network = MLP(x.shape[1], params)
        optimiser = FlatRMSprop(network, lr=params.lr, alpha=0.9, eps=1e-7)
        initial = optimiser.weights.clone()
        step = TrainingStep(network, optimiser, huber_delta, torch.bfloat16 if kind == "mixed" else torch.float32)
        for _ in range(3):
            for start in range(0, len(x), 70):
                batch_x, batch_y = x[start:start + 70], y[start:start + 70]
                if kind == "mixed":
                    step(batch_x.bfloat16(), batch_y)
                elif kind == "float32":
                    step(batch_x, batch_y)
                else:
                    optimiser.zero_grad()
                    hidden = batch_x
                    for layer in network.layers:
                        if isinstance(layer, torch.nn.Linear):
                            hidden = torch.nn.functional.linear(hidden.bfloat16(), layer.weight.bfloat16(),
                                                                layer.bias.bfloat16()).float()
                        else:
                            hidden = layer(hidden)
                    loss_fn(hidden, batch_y).backward()
                    optimiser.step()
        weights[kind] = optimiser.weights.clone()
    assert not torch.equal(weights["mixed"], initial)
    assert torch.equal(weights["mixed"], weights["autograd"])
    assert not torch.equal(weights["mixed"], weights["float32"])


def test_mixed_precision_training_learns_and_repeats_itself(data):
    settings = TrainSettings(epochs=60, batch_size=32, seed=2, precision="bfloat16", log_every=0)
    first, again = train_network(*data, PARAMS, settings), train_network(*data, PARAMS, settings)
    np.testing.assert_array_equal(predict(first, data[2]), predict(again, data[2]))
    assert first.state_dict["layers.0.weight"].dtype == torch.float32
    baseline = np.abs(data[3] - data[1].mean(axis=0)).mean(axis=0)
    assert (np.abs(predict(first, data[2]) - data[3]).mean(axis=0) < baseline).all()
    full = train_network(*data, PARAMS, replace(settings, precision="float32"))
    assert not np.array_equal(predict(first, data[2]), predict(full, data[2]))


def test_bfloat16_training_on_a_cpu_without_bfloat16_hardware_warns_once(data, monkeypatch, caplog):
    from electrode_ml import model

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    model.warn_if_bfloat16_is_emulated.cache_clear()
    settings = TrainSettings(epochs=1, precision="bfloat16", log_every=0)
    for _ in range(2):
        train_network(*data, PARAMS, settings)
    model.warn_if_bfloat16_is_emulated.cache_clear()
    warnings = [record.message for record in caplog.records if "emulated" in record.message]
    assert len(warnings) == 1 and "AMX" in warnings[0]


def test_unknown_training_precision_is_refused(data):
    with pytest.raises(ValueError, match="float16"):
        train_network(*data, PARAMS, TrainSettings(epochs=1, precision="float16", log_every=0))


def test_huber_loss_trains_other_weights_than_mse(data):
    """Huber's delta (0.3 standardised units) is well inside this data's errors at the start,
    so the two losses must take different steps."""
    trained = [train_network(*data, PARAMS, TrainSettings(epochs=5, batch_size=64, seed=1, huber_delta=delta,
                                                          log_every=0)) for delta in (None, 0.3)]
    assert not torch.equal(trained[0].state_dict["layers.0.weight"], trained[1].state_dict["layers.0.weight"])


def test_saved_weights_do_not_carry_the_optimiser_buffer(data):
    network = train_network(*data, PARAMS, TrainSettings(epochs=3, batch_size=64, seed=0, log_every=0))
    for name, tensor in network.state_dict.items():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name


def test_relu_dropout_is_relu_in_eval_and_unbiased_in_training():
    layer = ReLUDropout(0.3)  # acts as 77/256 = 0.3008
    x = torch.cat([torch.ones(200_000), -torch.ones(1000)])
    layer.eval()
    assert torch.equal(layer(x), torch.relu(x))
    layer.train()
    out = layer(x)
    assert (out[200_000:] == 0).all()
    assert abs(float(out[:200_000].mean()) - 1.0) < 0.01
    assert abs(float((out[:200_000] == 0).float().mean()) - 77 / 256) < 0.005


def test_relu_dropout_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.randn(5000, requires_grad=True)
    out = ReLUDropout(0.5)(x)
    out.sum().backward()
    kept = out != 0
    assert torch.equal(x.grad[kept], torch.full((int(kept.sum()),), 2.0))
    assert (x.grad[~kept] == 0).all() and (x.grad[x.detach() <= 0] == 0).all()


def test_relu_dropout_factor_is_the_byte_mask_times_relu():
    """The float-only factor against its definition: the dropout scale where x > 0 and the
    unit's random byte is at or above the threshold, 0 elsewhere (zeros of x included)."""
    layer = ReLUDropout(0.3)
    x = torch.randn(37, 41)
    x[0, :5] = 0.0
    torch.manual_seed(11)
    factor = layer.factor(x)
    torch.manual_seed(11)
    words = torch.empty((x.numel() + 7) // 8, dtype=torch.int64).random_(-2**63, 2**63 - 1)
    kept = words.view(torch.uint8)[:x.numel()].view_as(x) >= layer.threshold
    expected = torch.where(kept & (x > 0), 256 / (256 - layer.threshold), 0.0)
    assert torch.equal(factor, expected)
    assert 0 < int((factor == 0).sum()) < x.numel()
    assert torch.equal(ReLUDropout(0.0).factor(x), (x > 0).float())


def test_flat_rmsprop_aligns_every_parameter_and_leaves_the_padding_at_zero(data):
    x, y = torch.tensor(data[0]), torch.tensor(data[1], dtype=torch.float32)
    network = MLP(x.shape[1], NetworkParams(33, 17, 9, 0.1, 0.1, 0.1, 1e-2))
    optimiser = FlatRMSprop(network, lr=1e-2, alpha=0.9, eps=1e-7)
    step = TrainingStep(network, optimiser)
    for start in range(0, len(x), 60):
        step(x[start:start + 60], y[start:start + 60])
    used = torch.zeros_like(optimiser.weights, dtype=torch.bool)
    base = optimiser.weights.data_ptr()
    for parameter in network.parameters():
        assert parameter.data_ptr() % 64 == 0 and parameter.grad.data_ptr() % 64 == 0
        start = (parameter.data_ptr() - base) // 4
        used[start:start + parameter.numel()] = True
    assert int(used.sum()) == sum(p.numel() for p in network.parameters()) < used.numel()
    assert (optimiser.weights[~used] == 0).all() and (optimiser.weights[used] != 0).any()


def test_relu_dropout_is_seeded():
    x = torch.ones(1000)
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append(ReLUDropout(0.2)(x))
    assert torch.equal(*draws)


@pytest.mark.parametrize("matmul", ["torch", "onednn"])
def test_stacked_ensemble_matches_one_by_one(data, matmul):
    networks = [train_network(*data, PARAMS, TrainSettings(epochs=3, seed=seed, log_every=0)) for seed in range(4)]
    ensemble = StackedEnsemble(networks, matmul=matmul)
    stacked = ensemble.predict(data[2])
    for index, network in enumerate(networks):
        np.testing.assert_allclose(stacked[index], predict(network, data[2]), rtol=1e-5, atol=1e-4)
    for rows in (data[2][:1], data[2][:0]):
        np.testing.assert_allclose(ensemble.predict(rows), stacked[:, :len(rows)], rtol=1e-5, atol=1e-4)


def test_onednn_passes_of_any_size_give_the_same_numbers(data, monkeypatch):
    """The first layers of a pass's networks are one product: passes of 1, 2 (2 + 1) or all 3
    networks agree (bit for bit on the AMD host measured; oneDNN may pick other kernels by shape)."""
    networks = [train_network(*data, PARAMS, TrainSettings(epochs=3, seed=seed, log_every=0)) for seed in range(3)]
    predictions = []
    for per_pass in (1, 2, 3):
        monkeypatch.setattr(OneDNNNetworks, "PASS_NETWORKS", per_pass)
        ensemble = StackedEnsemble(networks, matmul="onednn")
        assert len(ensemble.onednn.passes) == -(-3 // per_pass)
        predictions.append(ensemble.predict(data[2]))
    for other in predictions[1:]:
        np.testing.assert_allclose(other, predictions[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(predictions[0][1], predict(networks[1], data[2]), rtol=1e-5, atol=1e-4)
    empty = ensemble.predict_scaled(torch.zeros(0, data[2].shape[1]))
    assert empty.shape == (3, 0, 3)


def test_consecutive_shares_cover_every_item_once_in_order():
    assert consecutive_shares(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert consecutive_shares(range(50), 2) == [range(0, 25), range(25, 50)]
    assert [len(share) for share in consecutive_shares(range(10), 3)] == [3, 3, 4]
    assert consecutive_shares(range(3), 1) == [range(0, 3)]


def test_in_streams_runs_every_share_once_and_raises_a_streams_error():
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        in_streams(range(7), lambda share: seen.append((list(share), threading.current_thread().name)))
        assert sorted(share for share, _ in seen) == [[0, 1, 2], [3, 4, 5, 6]]
        assert all(name.startswith("electrode-ml-networks") for _, name in seen)

        def fail_on_the_second(share):
            if 6 in share:
                raise ValueError("second share")

        with pytest.raises(ValueError, match="second share"):
            in_streams(range(7), fail_on_the_second)
    finally:
        torch.set_num_threads(caller_threads)


def test_stream_workers_are_one_pool_per_shape_and_a_forked_child_starts_its_own():
    """Callers racing to the first pool get the same one; a forked child, whose copy of the pool
    has no threads, builds its own instead of waiting on it for ever."""
    prediction._pools.clear()
    start = threading.Barrier(4)
    pools = []

    def first_call():
        start.wait()
        pools.append(stream_workers(2, 1))

    callers = [threading.Thread(target=first_call) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(pools) == 4 and len({id(pool) for pool in pools}) == 1 and list(prediction._pools) == [(2, 1)]

    def child():
        seen = []
        in_streams(range(4), lambda share: seen.append(threading.current_thread().name))
        os._exit(0 if len(seen) == 2 and len(prediction._pools) == 1 else 1)

    caller_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        in_streams(range(4), lambda share: None)  # the parent's pool exists before the fork
        forked = multiprocessing.get_context("fork").Process(target=child)
        forked.start()
        forked.join(timeout=60)
        if forked.is_alive():
            forked.kill()
        assert forked.exitcode == 0
    finally:
        torch.set_num_threads(caller_threads)


def test_a_pool_whose_setup_fails_raises_its_error_and_ends(monkeypatch):
    """One worker failing to take its threads: its error at once, not the others' broken barrier
    a minute later, and no worker left waiting."""
    prediction._pools.clear()
    set_num_threads, entered = torch.set_num_threads, []

    def fail_in_the_first_worker(threads):
        if threading.current_thread().name.startswith("electrode-ml-networks"):
            entered.append(threading.current_thread())
            if len(entered) == 1:
                raise RuntimeError("no threads for this worker")
        set_num_threads(threads)

    caller_threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", fail_in_the_first_worker)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="no threads for this worker"):
        stream_workers(3, 1)
    monkeypatch.undo()
    assert time.monotonic() - started < 30 and prediction._pools == {}
    assert torch.get_num_threads() == caller_threads
    for worker in entered:
        worker.join(timeout=30)
        assert not worker.is_alive()


@pytest.mark.parametrize("matmul", ["torch", "onednn"])
@pytest.mark.parametrize("pass_bytes", [None, 16 * 33 * 4])
def test_prediction_streams_give_the_same_numbers_and_leave_the_thread_counts(data, monkeypatch, matmul, pass_bytes):
    """On T threads the networks run as T streams (at most one per oneDNN pass or per network of
    the stacked path, T shared out over them): the same predictions as one stream (bit for bit
    on the AMD host measured), each network's its own, every output written (they start as NaN),
    also where a stream's share takes several passes and the rows go in parts (``pass_bytes``:
    16 rows of one network a pass) and for no rows, with the caller's grad mode, and neither the
    caller's thread count nor the one a new thread takes up is changed by the workers' own."""
    networks = [train_network(*data, PARAMS, TrainSettings(epochs=2, seed=seed, log_every=0)) for seed in range(5)]
    monkeypatch.setattr(OneDNNNetworks, "PASS_NETWORKS", 1)
    if pass_bytes:
        monkeypatch.setattr(StackedEnsemble, "CPU_PASS_BYTES", pass_bytes)
    ensemble = StackedEnsemble(networks, matmul=matmul)
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *size, **kwargs: empty(*size, **kwargs).fill_(float("nan")))
    prediction._pools.clear()
    caller_threads = torch.get_num_threads()
    predictions = {}
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            predictions[threads] = ensemble.predict(data[2])
            assert ensemble.predict(data[2][:0]).shape == (5, 0, 3)
            assert torch.get_num_threads() == threads
            fresh = []
            thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
            thread.start()
            thread.join()
            assert fresh == [threads]
        traced = torch.tensor(data[2], requires_grad=True)
        np.testing.assert_array_equal(ensemble.predict_scaled(traced).numpy(),
                                      ensemble.predict_scaled(traced.detach()).numpy())
        assert set(prediction._pools) == {(2, 1), (3, 1), (5, 1)}  # 2, 3 and 5 streams of one thread
        assert stream_workers(2, 1).submit(torch.get_num_threads).result() == 1
        assert stream_workers(2, 3).submit(torch.get_num_threads).result() == 3
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(caller_threads)
    for threads, members in predictions.items():
        np.testing.assert_allclose(members, predictions[1], rtol=1e-6, atol=1e-6)
        for index, network in enumerate(networks):
            np.testing.assert_allclose(members[index], predict(network, data[2]), rtol=1e-5, atol=1e-4)


def test_the_products_library_follows_the_cpu_maker(data, monkeypatch, tmp_path):
    """oneDNN on x86 CPUs whose MKL kernels are the slow ones; torch's own matmuls elsewhere, in
    bfloat16 and off the CPU."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    assert cpu_matmul.cpu_vendor(cpuinfo) == "AuthenticAMD"
    assert cpu_matmul.cpu_vendor(tmp_path / "absent") == ""
    monkeypatch.setattr(cpu_matmul.platform, "machine", lambda: "x86_64")
    assert cpu_matmul.float32_library("AuthenticAMD") == "onednn"
    assert cpu_matmul.float32_library("GenuineIntel") == "torch"
    assert cpu_matmul.float32_library("") == "torch"
    monkeypatch.setattr(cpu_matmul.platform, "machine", lambda: "aarch64")
    assert cpu_matmul.float32_library("ARM") == "torch"

    networks = [train_network(*data, PARAMS, TrainSettings(epochs=1, seed=seed, log_every=0)) for seed in range(2)]
    module = MLP(data[0].shape[1], PARAMS)

    def training_step(precision=torch.float32, matmul=None):
        return TrainingStep(module, FlatRMSprop(module, lr=1e-3, alpha=0.9, eps=1e-7), precision=precision,
                            matmul=matmul)

    for library in ("onednn", "torch"):
        monkeypatch.setattr(cpu_matmul, "float32_library", lambda library=library: library)
        assert StackedEnsemble(networks).matmul == library
        assert StackedEnsemble(networks, dtype=torch.bfloat16).matmul == "torch"
        assert StackedEnsemble(networks, device="meta").matmul == "torch"
        assert training_step().matmul == library == TrainSettings().matmul_library()
        assert training_step(torch.bfloat16).matmul == "torch" == TrainSettings(precision="bfloat16").matmul_library()
        assert TrainSettings(device="cuda").matmul_library() == "torch"
    for device, dtype in (("meta", torch.float32), ("cpu", torch.bfloat16)):
        with pytest.raises(ValueError, match="oneDNN products need float32 on the CPU"):
            StackedEnsemble(networks, device=device, dtype=dtype, matmul="onednn")
    with pytest.raises(ValueError, match="oneDNN products need float32 on the CPU"):
        training_step(torch.bfloat16, "onednn")
    for make in (lambda: StackedEnsemble(networks, matmul="mkl"), lambda: training_step(matmul="mkl")):
        with pytest.raises(ValueError, match="neither 'torch' nor 'onednn'"):
            make()


def test_stacked_ensemble_in_passes_matches_one_pass_and_takes_no_rows(data):
    networks = [train_network(*data, PARAMS, TrainSettings(epochs=3, seed=seed, log_every=0)) for seed in range(3)]
    ensemble = StackedEnsemble(networks, matmul="torch")
    one_network = len(data[2]) * ensemble.widest * 4  # bytes of one network's widest float32 activation
    ensemble.CPU_PASS_BYTES = 3 * one_network
    whole = ensemble.predict(data[2])
    for per_pass in (1, 2):  # three passes of one network; one of two and one of one
        ensemble.CPU_PASS_BYTES = per_pass * one_network
        np.testing.assert_array_equal(ensemble.predict(data[2]), whole)
    ensemble.CPU_PASS_BYTES = 1  # one network and one row per pass
    np.testing.assert_allclose(ensemble.predict(data[2]), whole, rtol=1e-6, atol=1e-6)
    ensemble.CPU_PASS_BYTES = 7 * ensemble.widest * 4  # 60 rows: eight parts of 7 rows and one of 4
    rows = []
    forward = ensemble._forward
    ensemble._forward = lambda inputs, *args: (rows.append(inputs.shape[1]), forward(inputs, *args))
    np.testing.assert_allclose(ensemble.predict(data[2]), whole, rtol=1e-6, atol=1e-6)
    assert rows == [7] * 24 + [4] * 3  # one network a pass
    assert ensemble.predict(data[2][:0]).shape == (3, 0, 3)


def test_stacked_ensemble_off_the_cpu_takes_every_network_in_one_pass(data):
    """The GPU path, on torch's meta device (shapes without values): no passes, whatever their size."""
    networks = [train_network(*data, PARAMS, TrainSettings(epochs=3, seed=seed, log_every=0)) for seed in range(3)]
    ensemble = StackedEnsemble(networks, device="meta")
    ensemble.CPU_PASS_BYTES = 1  # one network per pass on the CPU
    passes = []
    forward = ensemble._forward
    ensemble._forward = lambda inputs, first, last, activations: (passes.append((first, last)),
                                                                  forward(inputs, first, last, activations))
    scaled = ensemble.predict_scaled(torch.tensor(data[2], dtype=torch.float32))
    assert scaled.device.type == "meta" and scaled.shape == (3, len(data[2]), 3)
    assert passes == [(0, 3)]


def test_checkpoint_round_trip(data):
    network = train_network(*data, PARAMS, TrainSettings(epochs=3, seed=1, log_every=0))
    restored = TrainedNetwork.from_checkpoint(network.to_checkpoint())
    np.testing.assert_array_equal(predict(network, data[2]), predict(restored, data[2]))


def test_predicting_a_read_only_array_prints_no_warning():
    """Frames read from parquet hand out read-only arrays (the feature contribution predicts such),
    and torch warns once per process about those: so in a process of its own."""
    code = """
import warnings, numpy as np
from electrode_ml.model import NetworkParams, TrainSettings, predict, train_network
warnings.simplefilter("error")
rng = np.random.default_rng(0)
x, y = rng.random((40, 4)).astype(np.float32), rng.random((40, 3))
network = train_network(x, y, x, y, NetworkParams(8, 8, 8, 0.0, 0.0, 0.0, 1e-3), TrainSettings(epochs=2, log_every=0))
x.flags.writeable = False
print(predict(network, x).shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == ["(40,", "3)"], result.stderr[-2000:]


def test_device_choice_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="^config key train.device: cuda, but "):
            resolve_device("cuda")


@pytest.mark.parametrize("build, words", [
    (None, "this torch 2.13.0+cpu is a CPU-only build: install torch's CUDA build"),
    ("12.8", "torch 2.13.0+cpu (CUDA 12.8) sees no CUDA device on"),
])
def test_cuda_without_a_gpu_says_why_in_one_line(monkeypatch, build, words):
    """A CPU-only torch (what requirements.txt installs) and a host without a visible GPU need different fixes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(InputError) as error:
        resolve_device("cuda")
    assert words in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).endswith("or set train.device: auto or cpu to train on the CPU")
    assert ("CUDA_VISIBLE_DEVICES=)" in str(error.value)) == (build is not None)


def test_every_job_logs_the_device_its_networks_run_on(monkeypatch, caplog):
    """train.device: auto with a CPU-only torch on a GPU host trains on the CPU; the job's log says so, and why."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level("INFO", logger="electrode_ml.devices"), job_device("auto") as device:
        assert device == "cpu"
    assert f"networks run on cpu (train.device: auto: this torch {torch.__version__} is a CPU-only build)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="electrode_ml.devices"), job_device("cpu"):
        pass
    assert "networks run on cpu (train.device: cpu)" in caplog.text


def test_a_job_on_cuda_without_a_gpu_ends_in_one_line_not_a_traceback(tmp_path):
    """What a train or tune job does with train.device: cuda where torch sees no GPU: run_step (every network
    rule's script) ends it with one error line; the RuntimeError it raised before ended in a traceback."""
    code = f"""
import types, torch
torch.cuda.is_available = lambda: False
from electrode_ml.devices import job_device
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    with job_device(params.train["device"]):
        raise AssertionError("no GPU, so no training")

run_step(types.SimpleNamespace(log=[{str(tmp_path / "tune.log")!r}], rule="tune", input={{}}, output={{}}, threads=1,
                               params=types.SimpleNamespace(train={{"device": "cuda"}}), wildcards={{}}), step)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1].startswith("electrode-ml: error: config key train.device: cuda, but ")
    assert run.stderr.count("config key train.device: cuda, but") == 1  # the log's copy went to the file only
    assert "config key train.device: cuda, but" in (tmp_path / "tune.log").read_text()


def test_a_job_removes_what_a_killed_attempt_left_and_ends_ctrl_c_in_one_line(tmp_path):
    """A SIGKILL skips atomic_path's cleanup: its hidden temporary file stayed beside the outputs for
    good. And Ctrl-C printed a traceback from wherever the step happened to be."""
    from electrode_ml.fileio import atomic_path

    output = tmp_path / "train" / "predictions.parquet"
    output.parent.mkdir()
    leftover = tmp_path / "train" / ".predictions.parquet.k1ll3d.tmp.parquet"
    leftover.write_bytes(b"half a table")
    other = tmp_path / "train" / ".history.csv.k1ll3d.tmp.csv"  # another job's output: not this job's to remove
    other.write_bytes(b"")
    with pytest.raises(RuntimeError), atomic_path(output) as tmp:  # the pattern atomic_path names its files by
        assert re.fullmatch(r"\.predictions\.parquet\.\w+\.tmp\.parquet", tmp.name)
        raise RuntimeError
    code = f"""
import types
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    raise KeyboardInterrupt

run_step(types.SimpleNamespace(log=[{str(tmp_path / "train.log")!r}], rule="train", input={{}},
                               output=[{str(output)!r}], threads=1, params=types.SimpleNamespace(), wildcards={{}}), step)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not leftover.exists() and other.exists()
    log_text = (tmp_path / "train.log").read_text()
    assert f"removed {leftover}, left by an earlier attempt" in log_text and "rule train interrupted after" in log_text


def test_a_job_that_crashes_leaves_its_traceback_and_warnings_in_its_log(tmp_path):
    """An error that is no InputError (a corrupt parquet, a bug) went to stderr only and left the job's log
    empty, the file Snakemake points the user to; a Python warning did the same."""
    code = f"""
import types, warnings
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    warnings.warn("a deprecated call", FutureWarning)
    raise KeyError("column 'capacity_grav' is missing")

run_step(types.SimpleNamespace(log=[{str(tmp_path / "tune.log")!r}], rule="tune", input={{}}, output={{}}, threads=1,
                               params=types.SimpleNamespace(), wildcards={{}}), step)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    log_text = (tmp_path / "tune.log").read_text()
    assert "rule tune failed after" in log_text and "Traceback" in log_text
    assert "KeyError: \"column 'capacity_grav' is missing\"" in log_text
    assert "FutureWarning: a deprecated call" in log_text
    assert run.stderr.count("Traceback") == 1  # the log handler's copy on stderr, not Python's second one


def test_a_job_that_cannot_import_its_step_leaves_the_traceback_in_its_log(tmp_path):
    """The rule scripts imported their step before run_step opened the log: a broken environment
    (a bad wheel) failed there, and left the log empty ("Logfile ... not found")."""
    code = f"""
import sys, types
sys.modules["electrode_ml.steps"] = None  # what a failing import of the steps module raises
from electrode_ml.runner import run_step
run_step(types.SimpleNamespace(log=[{str(tmp_path / "data.log")!r}], rule="data", input={{}}, output={{}}, threads=1,
                               params=types.SimpleNamespace(), wildcards={{}}), "data_step")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    log_text = (tmp_path / "data.log").read_text()
    assert "rule data failed after" in log_text and "ModuleNotFoundError" in log_text


def test_a_job_stopped_by_sigterm_says_so_in_its_log_and_cleans_up(tmp_path):
    """SIGTERM is what kill, scancel and a cluster's time limit send: the log ended at the last
    progress line, with nothing said, and a half-written temporary file stayed."""
    output = tmp_path / "model.pt"
    code = f"""
import os, signal, types
from pathlib import Path
from electrode_ml.fileio import atomic_path
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    with atomic_path(output[0]) as tmp:
        tmp.write_bytes(b"half a network")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")

run_step(types.SimpleNamespace(log=[{str(tmp_path / "train.log")!r}], rule="train", input={{}},
                               output=[{str(output)!r}], threads=1, params=types.SimpleNamespace(), wildcards={{}}), step)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 143 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "rule train terminated (SIGTERM) after" in (tmp_path / "train.log").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.log"]


@pytest.mark.parametrize("shell_between", [False, True], ids=["job-child-of-snakemake", "shell-between"])
def test_a_job_whose_snakemake_is_killed_stops_too(tmp_path, shell_between):
    """`kill -9` on Snakemake (or the OOM killer) left its jobs running: after the README's `--unlock`
    and rerun, a second copy of each job ran beside the orphan and both wrote the same outputs. Where
    a shell stays between them (bash before 5.1, a shell prefix), the shell outlives Snakemake and
    the parent-death signal never comes: the job watches Snakemake's pid instead."""
    marker, log_file = tmp_path / "started", tmp_path / "tune.log"
    job = f"""
import os, time, types
from pathlib import Path
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    Path({str(marker)!r}).write_text(str(os.getpid()))
    for _ in range(600):
        time.sleep(0.1)
    Path({str(tmp_path / "finished")!r}).write_text("the orphan ran to the end")

run_step(types.SimpleNamespace(log=[{str(log_file)!r}], rule="tune", input={{}}, output=[], threads=1,
                               params=types.SimpleNamespace(), wildcards={{}}), step)
"""
    command = [sys.executable, "-c", job]
    if shell_between:  # a second command keeps bash from running the job in its own place
        command = ["bash", "-c", f"{shlex.join(command)}; true"]
    snakemake_stand_in = ("import os, subprocess; from electrode_ml.runner import snakemake_identity; "
                          f"os.environ[{SNAKEMAKE!r}] = snakemake_identity(); subprocess.run({command!r})")
    parent = subprocess.Popen([sys.executable, "-c", snakemake_stand_in])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the job never started"
        job_pid = int(marker.read_text())
        job_parent = int(Path(f"/proc/{job_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert (job_parent != parent.pid) == shell_between
    finally:
        parent.kill()
        parent.wait()
    try:
        deadline = time.monotonic() + 30
        while "terminated (SIGTERM)" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = log_file.read_text()
        assert "rule tune terminated (SIGTERM) after" in log
        assert (f"watching Snakemake (pid {parent.pid})" in log) == shell_between
        assert not (tmp_path / "finished").exists()
    finally:  # a job the signal missed would run on past the test
        try:
            os.kill(job_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_job_whose_snakemake_was_killed_before_it_started_does_not_run(tmp_path):
    """A Snakemake killed in a job's first second, before the job asked for the parent-death signal,
    left it running with no parent to signal it: it finds Snakemake gone and stops before its step."""
    log_file = tmp_path / "train.log"
    job = f"""
import types
from pathlib import Path
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    Path({str(tmp_path / "ran")!r}).write_text("the orphan ran")

run_step(types.SimpleNamespace(log=[{str(log_file)!r}], rule="train", input={{}}, output=[], threads=1,
                               params=types.SimpleNamespace(), wildcards={{}}), step)
"""
    # the stand-in ends while the job's shell still sleeps, as a Snakemake killed then would
    snakemake_stand_in = ("import os, subprocess; from electrode_ml.runner import snakemake_identity; "
                          f"os.environ[{SNAKEMAKE!r}] = snakemake_identity(); "
                          f"subprocess.Popen(['bash', '-c', 'sleep 1; exec \"$0\" -c \"$1\"', {sys.executable!r}, {job!r}])")
    parent = subprocess.run([sys.executable, "-c", snakemake_stand_in], timeout=60)
    assert parent.returncode == 0
    deadline = time.monotonic() + 60
    while not (log_file.exists() and re.search("stopped|done in", log_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(r"rule train stopped before its step: its Snakemake \(pid \d+\) had ended before it started$",
                     log_file.read_text().strip())
    assert not (tmp_path / "ran").exists()


def test_a_job_watches_only_the_snakemake_that_started_it(monkeypatch):
    """The environment's Snakemake is watched only where its pid means that process (the same boot, pid
    and time namespaces) and is an ancestor; a parent Snakemake is the parent-death signal's to cover
    where it was asked for, and one from another host or container is nothing to compare."""
    monkeypatch.setenv(SNAKEMAKE, snakemake_identity())
    assert snakemake_to_watch(signalled=True) is None  # this process: alive, not an ancestor of itself
    for value in ("", "not an identity", "12 34 56 78"):
        monkeypatch.setenv(SNAKEMAKE, value)
        assert snakemake_to_watch(signalled=True) is None
    stranger = subprocess.run([sys.executable, "-c", "from electrode_ml.runner import snakemake_identity; "
                               "print(snakemake_identity())"], capture_output=True, text=True, check=True)
    gone = stranger.stdout.split()
    assert len(gone) == 3
    monkeypatch.setenv(SNAKEMAKE, " ".join([*gone[:2], "another-boot" + gone[2][gone[2].index(":"):]]))
    assert snakemake_to_watch(signalled=True) is None  # another host's pid says nothing here
    monkeypatch.setenv(SNAKEMAKE, stranger.stdout)
    with pytest.raises(Terminated, match=rf"its Snakemake \(pid {gone[0]}\) had ended"):
        snakemake_to_watch(signalled=True)
    # the parent: watched only where the parent-death signal could not be asked for
    parent = subprocess.run([sys.executable, "-c", f"""
import os
from electrode_ml.runner import snakemake_identity
os.environ[{SNAKEMAKE!r}] = snakemake_identity()
import subprocess, sys
print(subprocess.run([sys.executable, "-c", "from electrode_ml.runner import snakemake_to_watch as w; "
                      "print(w(signalled=True), w(signalled=False))"], capture_output=True, text=True).stdout, os.getpid())
"""], capture_output=True, text=True, check=True).stdout.split()
    assert parent == ["None", parent[2], parent[2]]


def test_a_snakemake_the_job_cannot_see_in_proc_counts_as_alive(monkeypatch):
    """/proc mounted with hidepid hides another user's process: read as gone, every job of a run
    under a wrapper of another uid stopped at its start. Only the kernel's word that it is gone counts."""
    from electrode_ml import runner

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monkeypatch.setattr(runner, "_process_state", lambda pid: None)
        assert runner._alive(stranger.pid, "any start time")
    finally:
        stranger.kill()
        stranger.wait()
    assert not runner._alive(stranger.pid, "any start time")


def test_a_job_of_one_thread_runs_scikit_learns_openmp_on_one_thread(tmp_path):
    """Snakemake sets OMP_NUM_THREADS for shell rules only: the voltage trees of a `threads: 1` job took
    every core, beside other jobs' networks on them."""
    code = f"""
import types
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
from electrode_ml.runner import run_step

def step(input, output, params, threads, **_):
    print("openmp threads", _openmp_effective_n_threads())

print("outside", _openmp_effective_n_threads())
run_step(types.SimpleNamespace(log=[{str(tmp_path / "trees.log")!r}], rule="voltage_trees", input={{}}, output={{}},
                               threads=1, params=types.SimpleNamespace(), wildcards={{}}), step)
"""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "openmp threads 1" in run.stdout
    assert f"outside {os.cpu_count()}" in run.stdout or os.cpu_count() == 1


def _hold_gpu(lock_dir, gpu_ids, hold_s, queue):
    with claim_gpu(gpu_ids, lock_dir=lock_dir, poll_s=0.05) as index:
        started = time.monotonic()
        time.sleep(hold_s)
        queue.put((index, started, time.monotonic()))


def test_concurrent_jobs_claim_distinct_gpus_and_extra_jobs_wait(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    jobs = [context.Process(target=_hold_gpu, args=(tmp_path, ["GPU-a", "GPU-b"], 1.5, queue)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
    holds_by_gpu: dict[int, list] = {}
    for index, started, ended in (queue.get(timeout=5) for _ in range(3)):
        holds_by_gpu.setdefault(index, []).append((started, ended))
    assert set(holds_by_gpu) == {0, 1}
    # on each GPU, claims never overlap: every hold ends before the next one begins
    for holds in holds_by_gpu.values():
        holds.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(holds, holds[1:]))


def test_runs_that_see_the_gpus_differently_never_share_one(tmp_path):
    """Locks are named after the GPU, not its index: a run with CUDA_VISIBLE_DEVICES=1 sees the second
    GPU as index 0, which a run seeing both has as index 1 (named by index, both took "GPU 0")."""
    with claim_gpu(["GPU-a", "GPU-b"], lock_dir=tmp_path) as first:
        with claim_gpu(["GPU-b", "GPU-a"], lock_dir=tmp_path) as second:
            assert (first, second) == (0, 0)  # GPU-a, then GPU-b: the second run's index 0
            with pytest.raises(RuntimeError, match="no free GPU among 1"):
                with claim_gpu(["GPU-a"], lock_dir=tmp_path, wait_s=0.2, poll_s=0.05):
                    pass


def test_jobs_of_one_slurm_allocation_with_several_gpus_take_one_each(monkeypatch, tmp_path):
    """Snakemake run inside `salloc --gpus=2` with --resources gpu=2: every job sees both GPUs as 0 and 1
    (before, a job under SLURM took cuda:0 unasked, so all of them trained on the first GPU)."""
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setattr(devices, "LOCK_DIR", tmp_path / "locks")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid=f"GPU-{index}"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Fake GPU")
    with job_device("cuda") as first, job_device("cuda") as second:
        assert {first, second} == {"cuda:0", "cuda:1"}


def test_the_default_lock_folder_is_the_hosts_not_a_users_tmpdir(tmp_path):
    """It followed $TMPDIR, which is each user's or each job's own on some hosts: two runs took one GPU."""
    code = "from electrode_ml.devices import LOCK_DIR; print(LOCK_DIR)"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("ELECTRODE_ML_GPU_LOCK_DIR", None)
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "/tmp/electrode-ml-gpu-locks"
    env["ELECTRODE_ML_GPU_LOCK_DIR"] = str(tmp_path)
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == str(tmp_path / "electrode-ml-gpu-locks")


def test_the_lock_folder_serves_every_user_of_the_host(tmp_path):
    """Another user's job must be able to lock the same GPU: a folder like /tmp and readable lock files
    (created 0755 and by umask before: a second user's job failed with PermissionError)."""
    lock_dir = tmp_path / "locks"
    previous = os.umask(0o077)
    try:
        with claim_gpu(["GPU-a"], lock_dir=lock_dir):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
    assert stat.S_IMODE((lock_dir / "gpu-GPU-a.lock").stat().st_mode) == 0o666  # NFS locks need write access
    (lock_dir / "gpu-GPU-a.lock").chmod(0o444)  # a lock file this user may only read serves as well
    with claim_gpu(["GPU-a"], lock_dir=lock_dir, wait_s=0) as index:
        assert index == 0


def test_a_lock_folder_whose_locks_fail_is_one_line(tmp_path, monkeypatch):
    """On NFS flock is emulated with fcntl locks, and a descriptor the system cannot lock raised
    EBADF out of claim_gpu: a traceback in every CUDA job."""
    import errno

    from electrode_ml import devices

    def refuse(descriptor, operation):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(devices.fcntl, "flock", refuse)
    with pytest.raises(InputError, match=r"locks: cannot lock gpu-GPU-a.lock \(Bad file descriptor\); .*"
                                         r"ELECTRODE_ML_GPU_LOCK_DIR") as refused:
        with claim_gpu(["GPU-a"], lock_dir=tmp_path / "locks", wait_s=0):
            pass
    assert "\n" not in str(refused.value)


def test_stacked_ensemble_in_bfloat16_stays_close_to_float32(data):
    networks = [train_network(*data, PARAMS, TrainSettings(epochs=3, seed=seed, log_every=0)) for seed in range(3)]
    exact = StackedEnsemble(networks).predict(data[2])
    fast = StackedEnsemble(networks, dtype=torch.bfloat16).predict(data[2])
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    scale = np.abs(exact).mean(axis=(0, 1))
    assert (np.abs(fast - exact).mean(axis=(0, 1)) < 0.02 * scale).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_relu_matches_torch_on_both_signs_zeros_and_a_strided_view(dtype):
    values = torch.tensor([[-3.5, -0.0, 0.0, 1e-30, -1e-30], [2.0, -7.0, 0.5, -0.25, 65504.0]], dtype=dtype)
    expected = torch.relu(values)
    strided = values.t()
    assert relu_(strided) is strided
    assert torch.equal(values, expected)


def test_freed_activations_stay_in_the_process():
    """After keep_freed_memory, epoch-sized allocations stop page-faulting fresh memory in.

    The baseline sets glibc's starting thresholds (128 KiB) explicitly: glibc raises them as a
    process frees large blocks, so "the default" faults a varying amount (0 to 470,000 here)
    depending on what the process did before.
    """
    code = """
import ctypes, ctypes.util, resource, torch
from electrode_ml.training_kernels import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        activations = [torch.ones(1_000_000) * layer for layer in range(8)]  # an epoch's, 4 MB each
        del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc = ctypes.CDLL(ctypes.util.find_library("c"))
assert libc.mallopt(-3, 128 << 10) and libc.mallopt(-1, 128 << 10)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
faults()
plain = faults()
assert keep_freed_memory()
faults()
print(plain, faults())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain, kept = map(int, result.stdout.split())
    assert kept < plain / 4, (plain, kept)


def test_train_job_imports_no_featuriser_plotting_or_tuning_library():
    """Each of the 100 train jobs is a process of its own: its start-up must not pay for
    scikit-learn, pymatgen, matplotlib or Ax, which only other steps use."""
    heavy = ("sklearn", "pymatgen", "matplotlib", "ax", "botorch")
    code = ("import sys; import electrode_ml.steps; "
            f"print(' '.join(name for name in {heavy!r} if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []



@pytest.mark.parametrize("cores, words", [({0}, "CPU only (1 core)"), ({0, 1}, "CPU only (2 cores)")])
def test_the_timing_jobs_hardware_is_named_in_words(monkeypatch, cores, words):
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: cores)
    assert devices.describe_device("cpu") == words
