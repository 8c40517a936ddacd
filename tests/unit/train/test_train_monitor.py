"""Advice warnings, metrics records and metrics truncation on resume."""

from __future__ import annotations

import json

import torch

from bevforge.train.monitor import PLATEAU_WINDOW, Advisor, TrainMonitor, gpu_stats, truncate_metrics


def test_advisor_data_time_gpu_util_and_plateau() -> None:
    adv = Advisor()
    assert adv.check({"step_time": 9.0, "data_time": 8.0, "gpu_util": 1.0}) == []  # start-up window
    msgs = adv.check({"step_time": 1.0, "data_time": 0.5, "gpu_util": 10.0, "loss": 1.0})
    assert any("num_workers" in m and "bevforge cache" in m for m in msgs)
    assert any("GPU utilisation is low" in m for m in msgs)
    assert adv.check({"step_time": 1.0, "data_time": 0.5}) == []  # rate-limited
    adv2 = Advisor()
    flat = [m for _ in range(2 * PLATEAU_WINDOW) for m in adv2.check({"loss": 1.0, "step_time": 1.0})]
    assert any("not decreasing" in m and "bevforge browse" in m for m in flat)
    adv3 = Advisor()
    falling = [m for i in range(2 * PLATEAU_WINDOW) for m in adv3.check({"loss": 1.0 / (i + 1)})]
    assert falling == []


def test_advisor_no_plateau_warning_at_the_tail_of_a_decayed_schedule() -> None:
    """A flat loss once the LR has decayed below 10 % of its peak (cosine tail) is convergence; at a
    constant LR, or still above that share, the same flat loss is reported."""
    n = 4 * PLATEAU_WINDOW  # two full comparisons after the peak record
    adv = Advisor()
    adv.check({"loss": 5.0, "lr": 2e-4})  # the peak
    tail = [m for i in range(n) for m in adv.check({"loss": 1.0, "lr": 1.5e-5 * (1 - i / n)})]
    assert not any("not decreasing" in m for m in tail)
    adv2 = Advisor()
    adv2.check({"loss": 5.0, "lr": 2e-4})
    still_high = [m for _ in range(n) for m in adv2.check({"loss": 1.0, "lr": 5e-5})]
    assert any("not decreasing" in m for m in still_high)


def test_monitor_writes_records_with_every_field(tmp_path) -> None:
    torch.manual_seed(0)
    mon = TrainMonitor(tmp_path, is_main=True, device=torch.device("cpu"), total_iters=4, tensorboard=True)
    for it in (1, 2):
        mon.update({"loss": torch.tensor(2.0 * it), "loss_cls": torch.tensor(1.0)}, 0.01, num_samples=2)
    rec = mon.log(epoch=0, global_iter=2, lr=1e-3, grad_norm=torch.tensor(3.0), extra={})
    mon.close()
    assert rec["loss"] == 3.0 and rec["loss_cls"] == 1.0 and rec["grad_norm"] == 3.0
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("epoch", "iter", "lr", "data_time", "step_time", "samples_per_s", "gpu_util", "mem_peak_mib"):
        assert key in line
    assert line["gpu_util"] is None and line["mem_allocated_mib"] is None  # CPU
    assert "iter 2/4" in (tmp_path / "output.log").read_text()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_gpu_stats_none_on_cpu() -> None:
    assert set(gpu_stats(torch.device("cpu")).values()) == {None}


def test_truncate_metrics_drops_records_after_checkpoint(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"iter": i, "loss": i}) + "\n" for i in range(1, 7)) + '{"iter": 7, "lo'
    )
    truncate_metrics(path, 4)
    assert [json.loads(x)["iter"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_progress_bar_mode_logs_to_file(tmp_path) -> None:
    mon = TrainMonitor(tmp_path, is_main=True, device=torch.device("cpu"), total_iters=2, tensorboard=False,
                       progress=True)  # fmt: skip
    mon.update({"loss": torch.tensor(1.0)}, 0.0, num_samples=1)
    mon.log(epoch=0, global_iter=1, lr=1e-3, grad_norm=None, extra={})
    mon.close()
    assert "iter 1/2 loss 1.0000" in (tmp_path / "output.log").read_text()


def test_warnings_go_to_the_log_while_routed(tmp_path) -> None:
    """Python warnings raised inside ``warnings_to_log`` become WARNING lines of output.log (rank 0) and the
    previous handler is back afterwards; a non-main rank leaves them alone."""
    import warnings

    mon = TrainMonitor(tmp_path, is_main=True, device=torch.device("cpu"), total_iters=1, tensorboard=False)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with mon.warnings_to_log():
            warnings.warn("train.frame_graph: capturing a CUDA graph failed", stacklevel=1)
        assert warnings.showwarning is before
        other = TrainMonitor(tmp_path / "r1", is_main=False, device=torch.device("cpu"), total_iters=1)
        with other.warnings_to_log():
            assert warnings.showwarning is before
    mon.close()
    log = (tmp_path / "output.log").read_text()
    assert (
        "WARNING: train.frame_graph: capturing a CUDA graph failed (UserWarning, test_train_monitor.py:"
        in log
    )
