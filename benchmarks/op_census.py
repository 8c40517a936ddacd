"""Count the operators one training step dispatches, by source line: the launch budget, without a GPU.

At batch 1 the BEVFormer steps are launch-bound on the GPU (tiny: ~100 ms of CPU per step against
~34 ms of GPU work on an H100; base: 618 ms of CPU profile time against 372 ms of CUDA time on an H200),
so the number of operators per step is what to cut, and it does not depend on the image size: this runs
the recipe's step on the CPU on small random batches (``--set data.img_scale=0.1``) and counts every
non-view aten operator of one step (forward, backward and the optimizer step), attributed to the deepest
bevforge source line that issued it (backward operators to the forward line that recorded them, through
autograd's anomaly-mode tracebacks). Under bf16 autocast by default, as on the GPU (its casts are
operators too); ``--amp off`` leaves them out.

    python benchmarks/op_census.py configs/bevformer_tiny.py --set data.img_scale=0.1 --top 40
    python benchmarks/op_census.py configs/bevformer_tiny.py --set data.img_scale=0.1 data.batch_size=4

Prints the total, the split forward / backward / optimizer, the top lines, the host reads, the layout
switches (4-d operators whose output is in the other memory format than their inputs: NCHW <->
channels-last conversions, ``train.channels_last=true`` shows them; the speed options apply as in
training), the strided pointwise operators (a broadcast or mixed-layout operand: CUDA's generic
``elementwise_kernel<128, 4>``, 18% of tiny's GPU time at batch 8 on the H200) and the top operators.

``--paths cuda`` (default) takes the GPU's kernel paths: the MSDA and DCNv2 custom ops dispatch and count
as one operator each (their references compute them inside), and the SCA's recompute regions are active.
Still CPU-specific: AdamW and the gradient clipping run per tensor (fused / foreach on CUDA: read the
forward and backward counts), and dropout is three operators (one fused kernel on CUDA).
``--paths cpu``: the CPU's own paths (the references, each many operators).

On a CUDA machine it runs there (gpu_check's ``op-census-base-cuda``, full size): the counts are the same,
and the strided-pointwise list then reflects CUDA's own output layouts (cuDNN's), which the CPU's oneDNN
may not share.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

_PKG = "/bevforge/"


def _site_of(frames: list[tuple[str, int, str]]) -> str:
    for filename, lineno, name in reversed(frames):
        if _PKG in filename and "/bevforge/bench/" not in filename:
            return f"{filename.split(_PKG, 1)[1]}:{lineno} ({name})"
    return "(outside bevforge)"


def _forward_frames_of_backward_node() -> list[tuple[str, int, str]] | None:
    node = torch._C._current_autograd_node()
    if node is None:
        return None
    trace = node.metadata.get("traceback_") or []
    frames = []
    for entry in trace:  # strings "  File "...", line N, in name\n    code\n"
        for line in str(entry).splitlines():
            line = line.strip()
            if line.startswith('File "'):
                filename = line.split('"')[1]
                rest = line.split('", line ', 1)[1]
                lineno, _, name = rest.partition(", in ")
                frames.append((filename, int(lineno), name))
    return frames


class Census(TorchDispatchMode):
    """Counts non-view aten operators by (phase, source line) and by operator."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.by_site: collections.Counter[tuple[str, str]] = collections.Counter()
        self.by_op: collections.Counter[str] = collections.Counter()
        self.by_phase: collections.Counter[str] = collections.Counter()
        self.host_reads: collections.Counter[tuple[str, str]] = collections.Counter()  # syncs on a GPU
        #: (phase, operator + source line) of 4-d operators switching between NCHW and channels-last
        self.layout_switches: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (phase, operator + source line) -> output elements of pointwise operators that CUDA runs with
        #: its generic strided kernel (``elementwise_kernel<128, 4>``), and their count
        self.strided_elements: collections.Counter[tuple[str, str]] = collections.Counter()
        self.strided_calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            phase, name = self.phase, func.overloadpacket.__name__
            frames = _forward_frames_of_backward_node() if phase == "backward" else None
            if frames is None:
                frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_stack()]
            site = _site_of(frames)
            self.by_site[(phase, site)] += 1
            if name in ("_local_scalar_dense", "nonzero", "masked_select"):
                self.host_reads[(phase, f"{name} {site}")] += 1
            if _switches_layout(args, out):
                self.layout_switches[(phase, f"{name} {site}")] += 1
            if torch.Tag.pointwise in func.tags and (numel := _strided_pointwise(args, out)):
                self.strided_elements[(phase, f"{name} {site}")] += numel
                self.strided_calls[(phase, f"{name} {site}")] += 1
            self.by_op[name] += 1
            self.by_phase[phase] += 1
        return out


def _layout(t) -> str | None:
    """``nchw`` / ``nhwc``: a 4-d tensor in one format and not the other (C or H*W of 1: both), else None."""
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        return None
    nchw, nhwc = t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    return "nchw" if nchw and not nhwc else "nhwc" if nhwc and not nchw else None


def _switches_layout(args, out) -> bool:
    """A 4-d output in the other memory format than every 4-d input that has one: a layout conversion (on
    CUDA a transpose kernel, or cuDNN's nchwToNhwc inside a convolution of mixed formats)."""
    ins = {_layout(a) for a in args} - {None}
    outs = {_layout(o) for o in (out if isinstance(out, (tuple, list)) else (out,))} - {None}
    return len(ins) == 1 and bool(outs) and not outs & ins


def _strided_pointwise(args, out) -> int:
    """Output elements of a pointwise operator whose tensor operands do not all share the output's dense
    layout (a broadcast operand, a permuted view, a mix of NCHW and channels-last): CUDA's TensorIterator
    then cannot flatten it to one contiguous range and runs the generic strided kernel, several times slower
    per byte than the vectorised one. 0 when it can (0-d and one-element operands are scalars to it)."""
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
    if not outs or outs[0].numel() < 2:
        return 0
    ref = outs[0]
    dense = is_non_overlapping_and_dense(ref)  # a permutation of a contiguous tensor: one flat range
    flat = [a for a in args if isinstance(a, (list, tuple))]
    tensors = [t for t in (*args, *(x for f in flat for x in f), *outs) if isinstance(t, torch.Tensor)]
    for t in tensors:
        if t.numel() <= 1:
            continue
        if not dense or t.shape != ref.shape or _strides(t) != _strides(ref):
            return ref.numel()
    return 0


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides that matter to TensorIterator: those of dims longer than 1 (a size-1 dim's stride, 0
    after an ``expand`` of a batch of one, is never used)."""
    return tuple(st for size, st in zip(t.shape, t.stride(), strict=True) if size > 1)


def _kernel_paths_as_on_cuda() -> None:
    """Take the kernel paths a CUDA step takes (``cuda_paths.py``): the MSDA and DCNv2 custom ops dispatch
    as on the GPU and count as the one operator each they are there (the census does not look into them),
    and the SCA's recompute regions are active."""
    import cuda_paths

    cuda_paths.msda_as_on_cuda(backward=True)
    cuda_paths.dcn_as_on_cuda()
    cuda_paths.recompute_as_on_cuda()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--top", type=int, default=30, help="lines and operators to print")
    p.add_argument("--amp", choices=("off", "bf16"), default="bf16",
                   help="autocast as on the GPU (bf16, default: counts its casts) or off")  # fmt: skip
    p.add_argument("--paths", choices=("cuda", "cpu"), default="cuda",
                   help="kernel paths: the MSDA / DCN custom ops as on the GPU (default; one operator each) "
                   "or the CPU's references")  # fmt: skip
    args = p.parse_args(argv)
    if args.paths == "cuda":
        _kernel_paths_as_on_cuda()

    from bevforge.bench.train import FakeLoader
    from bevforge.config import load_config
    from bevforge.data.device_images import finish_images
    from bevforge.train.distributed import init_distributed
    from bevforge.train.optim import build_optimizer, build_scheduler
    from bevforge.train.setup import build_parts, seed_everything, wrap_model
    from bevforge.train.step import Stepper

    cfg = load_config(args.config, ["model.backbone.pretrained=", *args.overrides])
    info = init_distributed()
    seed_everything(cfg.train.seed, False)
    model, criterion, loader = build_parts(cfg, info, None, None, FakeLoader(cfg, num=1))
    model = wrap_model(model, cfg, info, print)  # train.channels_last / train.compile as in training
    optimizer = build_optimizer(model, cfg.train, info.device, cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg.train, 10)
    stepper = Stepper(model, criterion, optimizer, scheduler, device=info.device, amp=args.amp,
                      grad_clip=cfg.train.grad_clip, accum_steps=1, max_nan_steps=0)  # fmt: skip
    model.train()
    batch = next(iter(loader))
    stepper.forward_backward(finish_images(batch, cfg.data))  # warm-up: lazy state (optimizer, caches)
    stepper.optimizer_step()

    census = Census()
    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):  # the phase switch; anomaly mode keeps the forward tracebacks
        census.phase = "backward"
        try:
            return real_backward(self, *a, **k)
        finally:
            census.phase = "forward"

    torch.Tensor.backward = backward  # type: ignore[method-assign]
    try:
        with torch.autograd.set_detect_anomaly(True, check_nan=False), census:
            stepper.forward_backward(finish_images(batch, cfg.data))  # data.images_on_device: counted
            census.phase = "optimizer"
            stepper.optimizer_step()
    finally:
        torch.Tensor.backward = real_backward  # type: ignore[method-assign]

    total = sum(census.by_phase.values())
    b = cfg.data.batch_size
    print(f"{args.config} batch {b} ({args.paths} kernel paths): {total} non-view operators in one training "
          "step, " + ", ".join(f"{k} {v}" for k, v in census.by_phase.most_common()))  # fmt: skip
    print(f"\ntop {args.top} source lines (phase, line, operators):")
    for (phase, site), n in census.by_site.most_common(args.top):
        print(f"{n:7d}  {phase:9s} {site}")
    reads = [(k, n) for k, n in census.host_reads.most_common() if k[0] != "optimizer"]
    print("\nhost reads in forward/backward (device syncs on a GPU; the CPU optimizer's are not CUDA's):")
    for (phase, site), n in reads or [(("-", "none"), 0)]:
        print(f"{n:7d}  {phase:9s} {site}")
    switches = census.layout_switches.most_common(args.top)
    print(f"\nlayout switches (4-d NCHW <-> channels-last), {sum(census.layout_switches.values())} in all:")
    for (phase, site), n in switches or [(("-", "none"), 0)]:
        print(f"{n:7d}  {phase:9s} {site}")
    strided = census.strided_elements.most_common(args.top)
    total_strided = sum(census.strided_elements.values())
    print(f"\nstrided pointwise operators (CUDA's generic elementwise kernel), "
          f"{sum(census.strided_calls.values())} calls, {total_strided / 1e6:.1f} M output elements in all "
          "(phase, operator + line, calls, M elements):")  # fmt: skip
    for (phase, site), n in strided or [(("-", "none"), 0)]:
        print(f"{census.strided_calls[(phase, site)]:7d}  {n / 1e6:9.2f}  {phase:9s} {site}")
    print(f"\ntop {args.top} operators:")
    for name, n in census.by_op.most_common(args.top):
        print(f"{n:7d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
