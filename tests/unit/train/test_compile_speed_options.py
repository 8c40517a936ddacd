"""train.channels_last / train.compile / fused AdamW: the same losses as eager, names unchanged, clear errors.

torch.compile of the debug recipe takes minutes of inductor codegen on 2 CPU cores, so on the CPU the
compiled check runs on the trainer stand-in; the debug recipe runs channels-last on the CPU and compile
+ channels-last on CUDA (``gpu`` test).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bevforge.bench.train import benchmark, result_body, variants
from bevforge.config import ConfigError, load_config
from bevforge.structures.batch import Batch
from bevforge.train.optim import build_optimizer, build_scheduler
from bevforge.train.setup import apply_speed_options, seed_everything
from bevforge.train.step import Stepper

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import train_standin as si  # noqa: E402
from models_test_rig import ring_lidar2img  # noqa: E402

TINY_DEBUG = ["model.bev_h=8", "model.bev_w=8", "model.num_queries=12", "model.dropout=0.0"]


def _debug_batch(seed: int, device: torch.device, b: int = 1, t: int = 1, h: int = 32, w: int = 64) -> Batch:
    n = 6
    g = torch.Generator().manual_seed(seed)
    return Batch(
        images=torch.randn(b, t, n, 3, h, w, generator=g),  # [B, T, N, 3, H, W]
        lidar2img=ring_lidar2img(n, h, w).expand(b, t, n, 4, 4).clone(),
        can_bus=torch.zeros(b, t, 18),
        ego2global=torch.eye(4, dtype=torch.float64).expand(b, t, 4, 4).clone(),
        lidar2ego=torch.eye(4, dtype=torch.float64).expand(b, t, 4, 4).clone(),
        frame_valid=torch.ones(b, t, dtype=torch.bool),
        scene_tokens=[["scene"] * t for _ in range(b)],
        sample_tokens=[f"s{i}" for i in range(b)],
        timestamps=torch.zeros(b, t, dtype=torch.int64),
        img_hw=(h, w),
        gt_boxes=[torch.rand(3, 9, generator=g) * 20 - 10 for _ in range(b)],
        gt_labels=[torch.tensor([0, 1, 2]) for _ in range(b)],
    ).to(device)


def _losses(model, criterion, cfg, batches, device) -> list[float]:
    model = apply_speed_options(model.to(device), cfg.train)
    opt = build_optimizer(model, cfg.train, device, 1e-3)
    stepper = Stepper(model, criterion, opt, build_scheduler(opt, cfg.train, 10), device=device, amp="off",
                      grad_clip=35.0, accum_steps=1, max_nan_steps=0)  # fmt: skip
    out = []
    for batch in batches:
        out.append(float(stepper.forward_backward(batch)["loss"]))
        stepper.optimizer_step()
    return out


def _debug_losses(
    overrides: list[str], device: torch.device, steps: int
) -> tuple[list[float], torch.nn.Module]:
    from bevforge.losses.build import build_criterion
    from bevforge.models.build import build_model

    cfg = load_config("configs/bevformer_debug.py", TINY_DEBUG + overrides)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batches = [_debug_batch(i, device) for i in range(steps)]
    return _losses(model, build_criterion(cfg).to(device), cfg, batches, device), model


def test_compile_channels_last_debug_recipe_matches_eager_loss():
    cpu = torch.device("cpu")
    eager, _ = _debug_losses([], cpu, steps=2)
    fast, model = _debug_losses(["train.channels_last=true"], cpu, steps=2)
    assert fast == pytest.approx(eager, abs=1e-4)
    conv = model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    feats = model.neck(model.backbone(torch.randn(2, 3, 32, 64)))  # the hook converts the input
    assert feats[0].is_contiguous(memory_format=torch.channels_last)


def _standin_losses(overrides: list[str]) -> tuple[list[float], torch.nn.Module]:
    cfg = si.tiny_config(overrides)
    torch.manual_seed(0)
    model = si.StandInModel()
    seed_everything(1, False)  # the stand-in's dataset draws numpy / python noise
    batches = list(si.make_loader(6, 2))
    return _losses(model, si.StandInCriterion(), cfg, batches, torch.device("cpu")), model


def test_compile_and_channels_last_standin_match_eager_and_keep_names():
    eager, eager_model = _standin_losses([])
    fast, model = _standin_losses(["train.compile=default", "train.channels_last=true"])
    assert fast == pytest.approx(eager, abs=1e-4)  # measured 1.4e-6
    assert list(model.state_dict()) == list(eager_model.state_dict())  # checkpoints load either way
    assert model.backbone._compiled_call_impl is not None  # compiled in place
    assert model.drop._compiled_call_impl is None  # parameter-free parts stay eager


def test_compile_bad_mode_names_the_field():
    cfg = si.tiny_config(["train.compile=fast"])
    with pytest.raises(ConfigError, match=r"train\.compile='fast'.*max-autotune"):
        apply_speed_options(si.StandInModel(), cfg.train)
    cfg = si.tiny_config(["train.channels_last=true"])
    with pytest.raises(ConfigError, match=r"train\.channels_last"):
        apply_speed_options(torch.nn.Sequential(torch.nn.Linear(2, 2)), cfg.train)


def test_compile_fused_adamw_only_with_all_cuda_float_params():
    cfg = si.tiny_config()
    opt = build_optimizer(si.StandInModel(), cfg.train, torch.device("cpu"), 1e-3)
    assert not opt.defaults["fused"]
    if torch.cuda.is_available():
        opt = build_optimizer(si.StandInModel().cuda(), cfg.train, torch.device("cuda"), 1e-3)
        assert opt.defaults["fused"] is True


def test_compile_bench_train_variants_and_table():
    assert [v[0] for v in variants("default", True)] == [
        "eager",
        "channels-last",
        "compile default + channels-last",
    ]
    assert variants("max-autotune", False, baseline=False) == [
        ("compile max-autotune", False, "max-autotune")
    ]
    assert variants("", False) == [("eager", False, "")]
    torch.manual_seed(0)
    rows = []
    for label, channels_last, mode in variants("", True):
        cfg = si.tiny_config([f"train.channels_last={channels_last}", f"train.compile={mode}"])
        res = benchmark(cfg, warmup=1, iters=2, model=si.StandInModel(), criterion=si.StandInCriterion(),
                        loader=si.make_loader(4, 2))  # fmt: skip
        rows.append({**res, "variant": label})
    table = result_body(rows, "standin").splitlines()
    assert len(table) == 4 and "| eager | 1.00x |" in table[2] and "| channels-last |" in table[3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_debug_recipe_on_cuda_matches_eager_loss():
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cuda = torch.device("cuda")
        eager, _ = _debug_losses([], cuda, steps=3)
        fast, _ = _debug_losses(["train.compile=default", "train.channels_last=true"], cuda, steps=3)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert fast == pytest.approx(eager, abs=1e-3)


def test_compile_bench_train_fake_data_cli(tmp_path, capsys):
    import argparse

    from bevforge.bench import train as bench_train

    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    over = [*TINY_DEBUG, "data.img_scale=0.25", "data.queue_length=2", "train.amp=off"]
    args = parser.parse_args(
        ["configs/bevformer_debug.py", "--set", *over, "--fake-data", "--warmup", "0", "--iters", "1"]
        + ["--out", str(tmp_path / "train.md")]
    )
    loader = bench_train.FakeLoader(load_config(args.config, over), num=2)
    batch = next(iter(loader))
    assert batch.images.shape == (1, 2, 6, 3, 64, 128) and batch.gt_boxes[0].shape == (30, 9)
    assert batch.lidar2img.shape == (1, 2, 6, 4, 4) and batch.gt_labels[0].max() < 10
    torch.manual_seed(0)
    assert bench_train.run(args) == 0
    assert "| eager (fake data) | 1.00x |" in (tmp_path / "train.md").read_text()


def test_compile_explain_graph_breaks_of_model_and_parts():
    from bevforge.bench.train import explain_graph_breaks

    torch.manual_seed(0)
    batch = next(iter(si.make_loader(2, 2)))
    rows = {r["part"]: r for r in explain_graph_breaks(si.StandInModel(), batch)}
    assert list(rows) == ["model", "backbone", "norm", "cls", "box"]  # parts with parameters only
    assert rows["backbone"]["graphs"] == 1 and rows["backbone"]["breaks"] == 0
    assert rows["model"]["graphs"] >= 1 and all(isinstance(r, str) for r in rows["model"]["reasons"])


def _train(work_dir, overrides):
    from bevforge.train.trainer import train

    torch.manual_seed(0)
    cfg = si.tiny_config(["train.max_iters=3", *overrides])
    model = si.StandInModel()
    train(cfg, work_dir, model=model, criterion=si.StandInCriterion(), train_loader=si.make_loader(8, 2),
          progress=False, tensorboard=False)  # fmt: skip
    return model


def test_compile_in_the_trainer_same_losses_and_checkpoints(tmp_path):
    import json

    from bevforge.train.checkpoint import load_checkpoint

    _train(tmp_path / "eager", [])
    model = _train(tmp_path / "fast", ["train.compile=default", "train.channels_last=true"])
    assert model.backbone._compiled_call_impl is not None
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("eager", "fast")
    ]
    assert losses[1] == pytest.approx(losses[0], abs=1e-4) and len(losses[0]) == 3
    eager_ck, fast_ck = (load_checkpoint(tmp_path / run / "latest.pth") for run in ("eager", "fast"))
    assert list(fast_ck["model"]) == list(eager_ck["model"])  # no _orig_mod. prefixes
    si.StandInModel().load_state_dict(fast_ck["model"])  # an eager model loads it


def test_compile_imports_every_kernel_op_before_tracing():
    """``train.compile`` imports the kernel ops first (``prime_kernel_ops``): the tracer cannot run an
    import, so a compiled region's first kernel would otherwise be a graph break (fullgraph: an error;
    the interpreter case ``offsets_compile_graph`` shows it)."""
    pytest.importorskip("triton")
    from bevforge.ops import dispatch

    fresh = dispatch.LazyOp(
        "bevforge.ops.msda.op", "msda_offsets_op", "msda-offsets"
    )  # as if never used in this process
    try:
        apply_speed_options(si.StandInModel(), si.tiny_config(["train.compile=default"]).train)
        assert fresh._tried and fresh.op is not None, fresh.error
        names = {(op.module, op.attribute) for op in dispatch.LazyOp.instances}
        for module in ("bevforge.ops.msda.op", "bevforge.ops.dcn.triton_columns", "bevforge.ops.bev_pool.op",
                       "bevforge.ops.images.triton_finish"):  # fmt: skip
            assert any(m == module for m, _ in names), (module, names)
        assert all(op._tried for op in dispatch.LazyOp.instances)
    finally:
        dispatch.LazyOp.instances.remove(fresh)
