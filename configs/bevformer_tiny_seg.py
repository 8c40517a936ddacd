"""BEVFormer-tiny with the BEV map-segmentation head (joint detection + segmentation)."""

from bevforge.config import Config, load_config


def config() -> Config:
    cfg = load_config("bevformer_tiny")
    cfg.name = "bevformer_tiny_seg"
    cfg.data.with_seg = True
    cfg.model.with_seg = True
    cfg.model.seg_classes = cfg.data.seg_classes
    return cfg
