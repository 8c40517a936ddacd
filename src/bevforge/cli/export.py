"""`bevforge export CONFIG CKPT --onnx OUT.onnx`: the model as a static-shape ONNX graph, checked with ORT.

BEVFormer: (images, prev_bev, prev_bev_exists, can_bus deltas, lidar2img) -> (cls_logits, box_code, bev),
valid for any rig (:mod:`bevforge.export.onnx_model`). BEVDet: images -> the CenterPoint head's outputs,
for ONE rig whose BEV pooling plan is baked in (:mod:`bevforge.export.bevdet_onnx`): a nuScenes-like ring
by default, or a sample's calibration with ``--rig-from SPLIT[:INDEX]``; with ``--dynamic-rig``,
(images, lidar2img) -> the same outputs for any rig. ``CKPT`` may be ``none`` to export random weights
(a check).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "export a model to ONNX and check it with onnxruntime"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name (bevformer_tiny) or path (configs/bevformer_tiny.py)")
    p.add_argument("checkpoint", help="checkpoint written by `bevforge train`, or 'none' (random weights)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX graph")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16 for GridSample; default 17)")
    p.add_argument(
        "--raw-wh",
        type=int,
        nargs=2,
        default=None,
        metavar=("W", "H"),
        help="raw camera image size, before the data.img_scale / data.input_size resize (default 1600 900; "
        "400 225 for data/synthetic)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    p.add_argument(
        "--rig-from",
        default="",
        metavar="SPLIT[:INDEX]",
        help="take the camera rig (lidar2img as evaluation feeds it) from sample INDEX (default 0) of "
        "{data.info_dir}/infos_SPLIT.json instead of a nuScenes-like ring; BEVDet's graph is valid for "
        "this rig only",
    )
    p.add_argument(
        "--dynamic-rig",
        action="store_true",
        help="BEVDet: take lidar2img [1, N, 4, 4] as a graph input (geometry + scatter_add BEV pooling in "
        "the graph, valid for any rig; more memory) instead of baking one rig's pooling plan in "
        "(BEVFormer's graph always takes lidar2img)",
    )
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError, load_config

    if args.opset < 16:
        print(f"error: --opset {args.opset}: GridSample needs opset 16 or newer", file=sys.stderr)
        return 2
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("error: the onnx package is missing; pip install 'bevforge[onnx]'", file=sys.stderr)
        return 2
    if not args.no_check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print(
                "error: onnxruntime is missing; pip install 'bevforge[onnx]' or pass --no-check",
                file=sys.stderr,
            )
            return 2
    from bevforge.eval.pipeline import CheckpointError
    from bevforge.export.onnx_model import export_recipe
    from bevforge.export.rig import rig_from_infos

    ckpt = None if args.checkpoint.lower() == "none" else args.checkpoint
    try:
        cfg = load_config(args.config, args.overrides)
        rig = None
        if args.rig_from:
            split, _, index = args.rig_from.partition(":")
            if index and not index.isdigit():
                raise ValueError(f"--rig-from {args.rig_from}: INDEX must be a sample number, e.g. val:0")
            rig = rig_from_infos(cfg, split, int(index or 0))
        info = export_recipe(
            cfg,
            ckpt,
            args.onnx,
            args.opset,
            tuple(args.raw_wh) if args.raw_wh else None,
            check=not args.no_check,
            lidar2img=rig,
            dynamic_rig=args.dynamic_rig,
        )
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    print(f"wrote {args.onnx} and {args.onnx}.json")
    return 0
