"""Modulated deformable convolution (DCNv2).

``torchvision.ops.deform_conv2d`` is the spec (and the ``"torchvision"`` implementation of the
backbone's ``ModulatedDeformConv2d``); :func:`deform_conv2d_sampled` computes the same function with one
``grid_sample`` and one batched GEMM, so under bf16/fp16 autocast the GEMM runs on tensor cores.
"""

from __future__ import annotations

from bevforge.ops.dcn.sampled import deform_conv2d_sampled

__all__ = ["deform_conv2d_sampled"]
