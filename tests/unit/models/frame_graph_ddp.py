"""One rank of the frame graph under DDP on the CPU (gloo), run by ``torch.distributed.run`` from
``test_frame_graph.py``: the debug model trained a few steps through ``wrap_model`` and the Stepper, once
eagerly and once with ``train.frame_graph`` (``make_graphed_callables`` emulated as torch builds it,
``graph_fakes``), each rank on its own batches. Writes ``OUT/rank{R}.pt``: the parameters after each run,
the losses and the frame graph's replays.

    python -m torch.distributed.run --nproc_per_node 2 tests/unit/models/frame_graph_ddp.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from graph_fakes import make_graphed_callables_on_the_cpu
from test_bevformer_forward import debug_model, random_batch

from bevforge.config import load_config
from bevforge.models.frame_graph import FrameGraph
from bevforge.train.distributed import init_distributed
from bevforge.train.optim import build_optimizer, build_scheduler
from bevforge.train.setup import unwrap, wrap_model
from bevforge.train.step import Stepper

SCENES = [["a", "a", "a"], ["x", "y", "y"]]
STEPS = 4


class SquaredPredictions(torch.nn.Module):
    """A criterion of the Stepper's signature that reads every prediction."""

    def forward(self, preds, gt_boxes, gt_labels, seg_target):
        return {"loss": sum(v.square().mean() for k, v in preds.items() if k != "bev")}


def train(graphed: bool, rank: int, dist_info) -> dict:
    cfg = load_config("bevformer_debug", [f"train.frame_graph={str(graphed).lower()}"])
    torch.manual_seed(0)
    model = debug_model().train()
    for m in model.modules():  # BN statistics frozen: the capture's warm-up would move them
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    if graphed:
        model.frame_graph = FrameGraph()
    ddp = wrap_model(model, cfg, dist_info, print)
    optimizer = build_optimizer(ddp, cfg.train, dist_info.device, lr=1e-3)
    scheduler = build_scheduler(optimizer, cfg.train, 10)
    stepper = Stepper(ddp, SquaredPredictions(), optimizer, scheduler, device=dist_info.device, amp="off",
                      grad_clip=35.0, accum_steps=1, max_nan_steps=3)  # fmt: skip
    losses = []
    for step in range(STEPS):
        torch.manual_seed(100 * step + rank)  # each rank its own batch, grid masks and dropout
        losses.append(float(stepper.forward_backward(random_batch(SCENES))["loss"]))
        stepper.optimizer_step()
    replays = model.frame_graph.replays if graphed else 0
    params = {n: p.detach().clone() for n, p in unwrap(ddp).named_parameters()}
    return {"params": params, "losses": losses, "replays": replays}


def main() -> None:
    out = Path(sys.argv[1])
    torch.cuda.make_graphed_callables = make_graphed_callables_on_the_cpu
    torch.cuda.graph_pool_handle = lambda: ("pool", 1)
    FrameGraph._replayable = staticmethod(lambda tensors, model: model.training)
    dist_info = init_distributed("cpu")
    rank = dist_info.rank
    result = {"eager": train(False, rank, dist_info), "graphed": train(True, rank, dist_info)}
    torch.save(result, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
