"""Where a training step's activation memory goes, without a GPU: bytes saved for backward, by module.

The peak of a training step is mostly what autograd keeps for backward. This runs the recipe's training
forward on the CPU under bf16 autocast (as on the GPU) on a random batch of the recipe's shapes (images
scaled by ``--set data.img_scale=...``: the backbone's share grows with the image area, the encoder's
does not) and adds up the distinct storages autograd saves, attributed to the innermost module (down to
``--depth``) that was running. The MSDA and the DCN are counted as their CUDA paths save (the
``bevforge::msda`` custom op keeps its value, locations and weights; the DCN its inputs; the ops run the
references here), not as the CPU references' grid_sample would; ``train.channels_last`` applies as in
training (the same 4.14 GiB at base, ``img_scale=0.25``). Not counted: parameters, gradients and
optimizer state (``bevforge info``), and transient buffers (the history frames' no-grad forward among
them).

    python benchmarks/memory_census.py configs/bevformer_base.py --set data.img_scale=0.25
    python benchmarks/memory_census.py configs/bevformer_base.py --set data.img_scale=0.25 \\
        model.backbone.with_cp=true train.grad_ckpt=true --depth 1

BEVFormer-base at ``img_scale=0.25`` (sixth session): 5.8 GiB, of which the BEV encoder 4.5 (its six
layers ~0.77 each: spatial cross-attention 0.32, temporal self-attention 0.23, FFN 0.16), the decoder 0.65,
the image backbone 0.63 (x ~14 at full size: ~8-9 GiB, the largest part; ``model.backbone.with_cp``).
Seventh session, frozen BNs folded (``model.backbone.fold_bn``) and the SCA's projections recomputed
(``model.sca_recompute``): 4.39 GiB (encoder 3.33, decoder 0.68, backbone 0.38). Eighth session, the TSA's
too (``model.tsa_recompute``): 4.14 GiB (encoder 3.07; per layer the TSA keeps its fp32 MSDA output, the
output projection's input and the dropout mask, 137 MiB, was 191).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import cuda_paths  # noqa: E402  (benchmarks/, beside this script)


def census(cfg, depth: int) -> collections.Counter[str]:
    """Bytes of the distinct storages saved for backward in one training forward, by module name."""
    from bevforge.bench.train import FakeLoader
    from bevforge.data.device_images import finish_images
    from bevforge.models.build import build_model
    from bevforge.train.setup import channels_last_

    cuda_paths.msda_as_on_cuda()  # the MSDA saves what its CUDA custom op saves
    cuda_paths.recompute_as_on_cuda()
    cuda_paths.dcn_as_on_cuda()  # the DCN saves what its CUDA path saves (its inputs)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if cfg.train.channels_last:  # as training runs it (train/setup.py)
        channels_last_(model)
    batch = finish_images(next(iter(FakeLoader(cfg, num=1))), cfg.data)
    stack = ["(model)"]

    def leave(module, args, output) -> None:  # a forward hook returning something replaces the output
        stack.pop()

    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name))
            module.register_forward_hook(leave)
    saved: collections.Counter[str] = collections.Counter()
    seen: set[tuple[int, torch.dtype]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.dtype)
        if storage.data_ptr() != 0 and key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            saved[stack[-1]] += storage.nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.autocast("cpu", dtype=torch.bfloat16), hooks, _recompute_regions_counted(pack, saved, stack):
        model(batch, None)
    return saved


@contextlib.contextmanager
def _recompute_regions_counted(pack, saved: collections.Counter[str], stack: list[str]):
    """Recompute regions (nn/recompute.py) counted by what they keep, which saved-tensor hooks cannot see
    (the checkpoint packs the region's tensors itself): the region's tensor inputs (held for the
    recompute) and the outputs of the custom ops inside it (the MSDA's: the policy keeps them)."""
    import bevforge.nn.recompute as recompute

    real_run = recompute.run_recomputed
    in_region = [False]

    def run(fn, *args, **kwargs):
        in_region[0] = True
        try:
            out = real_run(fn, *args, **kwargs)
        finally:
            in_region[0] = False
        for a in args:
            if isinstance(a, torch.Tensor):
                pack(a)
        return out

    def kept_output(out: torch.Tensor) -> None:
        if in_region[0]:
            saved[stack[-1]] += out.untyped_storage().nbytes()

    recompute.run_recomputed = run
    cuda_paths.MSDA_OUTPUT_HOOKS.append(kept_output)
    try:
        with warnings.catch_warnings():  # "saved_tensors_hooks around a selective checkpoint": counted above
            warnings.filterwarnings("ignore", message=".*selective activation checkpoint.*")
            yield
    finally:
        recompute.run_recomputed = real_run
        cuda_paths.MSDA_OUTPUT_HOOKS.remove(kept_output)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--depth", type=int, default=3, help="module name depth to attribute to (1 = parts)")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    from bevforge.config import load_config

    cfg = load_config(args.config, ["model.backbone.pretrained=", *args.overrides])
    saved = census(cfg, args.depth)
    total = sum(saved.values())
    print(f"{args.config} {' '.join(args.overrides)}: {total / 2**30:.2f} GiB saved for backward "
          "(distinct storages, bf16 autocast, one training forward)")  # fmt: skip
    parts: collections.Counter[str] = collections.Counter()
    for name, n in saved.items():
        parts[name.split(".")[0]] += n
    print("by part: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in parts.most_common()))
    print(f"top {args.top} modules (depth {args.depth}):")
    for name, n in saved.most_common(args.top):
        print(f"{n / 2**20:10.1f} MiB  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
