"""BEVDet ONNX export: the static-plan BEV pooling equals the reference; the debug recipe exported by
`bevforge export` matches the model's own forward in onnxruntime on several image sets (and its decoded
boxes), repeats itself exactly, holds no scatter, and is tied to the rig it was exported for."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from bevforge.cli import export as export_cli
from bevforge.config import load_config
from bevforge.export.bevdet_onnx import (
    ORT_TOLERANCE,
    BEVDetFrame,
    compare_with_pytorch,
    example_images,
    export_bevdet_onnx,
    output_names,
    pytorch_outputs,
    run_onnxruntime,
)
from bevforge.export.onnx_model import ort_session
from bevforge.export.rig import input_hw, rig_lidar2img
from bevforge.export.static_bev_pool import StaticBEVPool
from bevforge.models.build import build_model
from bevforge.ops.bev_pool import bev_pool_reference, plan_bev_pool

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("case", ["mixed", "crowded", "empty"])
def test_export_static_bev_pool_equals_reference(case):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    b, n, d, fh, fw, c, h, w = 2, 3, 7, 4, 5, 6, 8, 9
    cells = torch.randint(-1, h * w, (b, n, d, fh, fw), generator=gen)  # ~1/72 dropped
    if case == "crowded":
        cells[cells % 3 == 0] = 5  # one cell with ~280 points next to cells with 1..10
        cells[:, :, :2] = -1  # and a block of dropped points
    if case == "empty":
        cells.fill_(-1)
    plan = plan_bev_pool(cells, h, w)
    pool = StaticBEVPool(plan)
    assert pool.padded_points <= 2 * plan.num_points  # power-of-two buckets at most double the work
    for _ in range(2):
        depth = torch.rand(b, n, d, fh, fw, generator=gen)
        context = torch.randn(b, n, fh, fw, c, generator=gen)
        want = bev_pool_reference(depth, context, plan)
        torch.testing.assert_close(pool(depth, context), want, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="export again"):
        pool(depth[:1], context[:1])


def _rotate_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    rot = torch.eye(4)
    rot[:2, :2] = torch.tensor([[c, -s], [s, c]])
    return rot  # [4, 4] lidar -> lidar


def test_export_bevdet_debug_recipe_matches_onnxruntime(tmp_path):
    import onnx

    torch.manual_seed(0)
    cfg = load_config("configs/bevdet_debug.py")
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics, so every layer matters
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    ckpt = tmp_path / "epoch_1.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "bevdet.onnx"
    assert export_cli.run(_parse(["configs/bevdet_debug.py", str(ckpt), "--onnx", str(out)])) == 0
    info = json.loads((tmp_path / "bevdet.onnx.json").read_text())
    assert max(info["onnxruntime_max_abs_diff"].values()) <= info["tolerance"] == ORT_TOLERANCE
    assert info["inputs"]["images"] == [1, 6, 3, 128, 224]  # 400x225 x 0.5, padded to 32
    assert info["outputs"]["t0.heatmap"] == [1, 1, cfg.model.bev_h, cfg.model.bev_w]  # car alone in task 0
    rig = rig_lidar2img(cfg)
    torch.testing.assert_close(torch.tensor(info["rig"]["lidar2img"]), rig[0])

    proto = onnx.load(str(out))
    graph = proto.graph
    assert [i.name for i in graph.input] == ["images"]  # the rig is baked in
    assert [o.name for o in graph.output] == list(output_names(model))
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 6, 3, 128, 224]
    assert not [node for node in graph.node if node.op_type.startswith("Scatter")]
    meta = {p.key: p.value for p in proto.metadata_props}
    np.testing.assert_allclose(json.loads(meta["lidar2img"]), rig[0].numpy())

    sess = ort_session(out)
    hw = input_hw(cfg)
    cases = [example_images(cfg, hw, seed) for seed in (5, 6, 7)]
    cases.append(torch.full_like(cases[0], 0.5))  # a flat grey image
    for images in cases:
        diffs = compare_with_pytorch(model, sess, images, rig)
        assert max(diffs.values()) <= ORT_TOLERANCE, diffs
        first = run_onnxruntime(sess, images)
        again = run_onnxruntime(sess, images)
        assert all(np.array_equal(first[k], again[k]) for k in first)  # no race: bit-identical runs

    # the decoded boxes of onnxruntime's outputs are the model's
    images = cases[0]
    got = {k: torch.from_numpy(v) for k, v in run_onnxruntime(sess, images).items()}
    want = pytorch_outputs(model, images, rig)
    dec_got, dec_want = model.decode(got, max_boxes=50)[0], model.decode(want, max_boxes=50)[0]
    assert dec_want["boxes"].shape[0] > 0
    assert torch.equal(dec_got["labels"], dec_want["labels"])
    torch.testing.assert_close(dec_got["boxes"], dec_want["boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(dec_got["scores"], dec_want["scores"], rtol=0, atol=1e-5)


def test_export_bevdet_graph_is_tied_to_its_rig(tmp_path):
    """Another rig exports to a graph that matches the model on that rig, and not on the first one."""
    torch.manual_seed(0)
    cfg = load_config("configs/bevdet_debug.py")
    model = build_model(cfg).eval()
    hw = input_hw(cfg)
    turned = rig_lidar2img(cfg) @ _rotate_z(25.0)  # the rig turned 25 degrees
    images = example_images(cfg, hw, seed=3)
    sess = ort_session(export_bevdet_onnx(model, turned, images, tmp_path / "turned.onnx"))
    other = example_images(cfg, hw, seed=4)
    assert max(compare_with_pytorch(model, sess, other, turned).values()) <= ORT_TOLERANCE
    on_ring = compare_with_pytorch(model, sess, other, rig_lidar2img(cfg))
    assert max(on_ring.values()) > 100 * ORT_TOLERANCE  # the ring's BEV differs: a rig-specific graph


def test_export_bevdet_frame_rejects_bad_shapes():
    torch.manual_seed(0)
    cfg = load_config("configs/bevdet_debug.py")
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match=r"\[1, N, 4, 4\]"):
        BEVDetFrame(model, rig_lidar2img(cfg)[0], (128, 224))
    stride = cfg.model.bevdet.feat_downsample
    with pytest.raises(ValueError, match="feat_downsample"):
        BEVDetFrame(model, rig_lidar2img(cfg), (8 * stride + stride // 2, 16 * stride))
