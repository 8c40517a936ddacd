"""BEVDet export with the rig as a graph input (--dynamic-rig): the in-graph geometry finds the LSS's
cells exactly, onnxruntime's ScatterElements(add) sums repeated indices exactly and repeatably, and the
debug recipe's graph matches the model's own forward on rigs it was not traced with."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from bevforge.cli import export as export_cli
from bevforge.config import load_config
from bevforge.export.bevdet_onnx import (
    ORT_TOLERANCE,
    check_rigs,
    compare_with_pytorch,
    example_images,
    run_onnxruntime,
)
from bevforge.export.dynamic_bev_pool import DynamicBEVPool, affine_inverse
from bevforge.export.onnx_model import ort_session
from bevforge.export.rig import input_hw, rig_lidar2img
from bevforge.models.build import build_model
from bevforge.ops.bev_pool import bev_pool_reference, plan_bev_pool

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_export_affine_inverse_matches_linalg_inv():
    torch.manual_seed(0)
    m = torch.eye(4, dtype=torch.float64).repeat(3, 5, 1, 1)  # [3, 5, 4, 4]
    m[..., :3, :] = torch.randn(3, 5, 3, 4, dtype=torch.float64) * 100.0
    torch.testing.assert_close(affine_inverse(m), torch.linalg.inv(m), rtol=1e-10, atol=1e-12)


def test_export_dynamic_pool_equals_the_lss_plan_on_several_rigs():
    torch.manual_seed(0)
    cfg = load_config("configs/bevdet_debug.py")
    vt = build_model(cfg).eval().view_transformer
    hw = input_hw(cfg)
    stride = cfg.model.bevdet.feat_downsample
    feat_hw = (hw[0] // stride, hw[1] // stride)
    pool = DynamicBEVPool(vt, feat_hw)
    for rig in check_rigs(rig_lidar2img(cfg)):
        want_cells = vt.cell_index(feat_hw, rig)
        assert torch.equal(pool.cell_index(rig), want_cells)  # not one point in another cell
        depth = torch.rand(1, 6, vt.num_depth, *feat_hw)
        context = torch.randn(1, 6, *feat_hw, vt.context_channels)
        want = bev_pool_reference(depth, context, plan_bev_pool(want_cells, vt.bev_h, vt.bev_w))
        torch.testing.assert_close(pool(depth, context, rig), want, rtol=0, atol=1e-6)


def test_export_ort_scatter_elements_add_is_exact_with_repeated_indices(tmp_path):
    """What the dynamic graph relies on: onnxruntime's ScatterElements(reduction=add) applies repeated
    indices sequentially (bit-identical to torch's scatter_add), on any number of threads, every run."""

    class ScatterAdd(torch.nn.Module):
        def forward(self, x: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
            return x.scatter_add(0, index, src)

    gen = torch.Generator().manual_seed(0)
    num, channels, cells = 40000, 16, 500  # ~80 updates per cell
    index = torch.randint(0, cells, (num, 1), generator=gen).expand(num, channels).contiguous()
    src = torch.randn(num, channels, generator=gen)
    x = torch.zeros(cells, channels)
    path = tmp_path / "scatter_add.onnx"
    torch.onnx.export(ScatterAdd(), (x, index, src), str(path), opset_version=17, dynamo=False)
    want = x.scatter_add(0, index, src).numpy()
    for threads in (1, 2, 4):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = dict(zip([i.name for i in sess.get_inputs()], (x.numpy(), index.numpy(), src.numpy())))
        for _ in range(5):
            np.testing.assert_array_equal(sess.run(None, feeds)[0], want)


def test_export_bevdet_dynamic_rig_matches_onnxruntime(tmp_path):
    import onnx

    torch.manual_seed(0)
    small = ["model.bev_h=32", "model.bev_w=32"]
    cfg = load_config("configs/bevdet_debug.py", small)
    model = build_model(cfg).eval()
    ckpt = tmp_path / "epoch_1.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "dynamic.onnx"
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    argv = ["configs/bevdet_debug.py", str(ckpt), "--onnx", str(out), "--dynamic-rig", "--no-check"]
    assert export_cli.run(parser.parse_args([*argv, "--set", *small])) == 0  # checked below instead
    info = json.loads((tmp_path / "dynamic.onnx.json").read_text())
    assert info["inputs"] == {"images": [1, 6, 3, 128, 224], "lidar2img": [1, 6, 4, 4]}
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images", "lidar2img"]
    assert not [n for n in graph.node if n.op_type == "ScatterND"]  # the racy one

    sess = ort_session(out)
    rigs = check_rigs(rig_lidar2img(cfg))
    lift = torch.eye(4)
    lift[2, 3] = 1000.0  # lidar -> a frame 1 km higher: camera 2's frustum falls below z_min
    blind = rigs[1].clone()
    blind[0, 2] = blind[0, 2] @ lift  # camera 2 drops every point
    for seed, rig in enumerate([*rigs, blind]):
        images = example_images(cfg, input_hw(cfg), seed=10 + seed)
        if rig is blind:
            stride = cfg.model.bevdet.feat_downsample
            feat_hw = (input_hw(cfg)[0] // stride, input_hw(cfg)[1] // stride)
            cells = model.view_transformer.cell_index(feat_hw, rig)  # [1, N, D, fH, fW]
            assert (cells[0, 2] < 0).all() and (cells[0, 1] >= 0).any()
        diffs = compare_with_pytorch(model, sess, images, rig)
        assert max(diffs.values()) <= ORT_TOLERANCE, (seed, diffs)
        first, again = run_onnxruntime(sess, images, rig), run_onnxruntime(sess, images, rig)
        assert all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.raises(ValueError, match="lidar2img"):
        run_onnxruntime(sess, images)
