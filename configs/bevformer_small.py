"""BEVFormer-small (official ``bevformer_small.py``): tiny + R101-DCN (caffe, checkpointed), BEV 150,
input x0.8, BGR mean-only normalisation. Official numbers: 47.9 NDS / 37.0 mAP.

Official init: ``load_from = ckpts/r101_dcn_fcos3d_pretrain.pth`` (set ``load_from`` to your copy).
"""

from bevforge.config import Config, load_config


def config() -> Config:
    cfg = load_config("bevformer_tiny")
    cfg.name = "bevformer_small"
    d, m = cfg.data, cfg.model
    d.img_scale = 0.8
    d.img_mean, d.img_std, d.to_rgb = (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), False  # BGR, mean only
    m.backbone.depth = 101
    m.backbone.out_indices = (3,)
    m.backbone.dcn_stages = (False, False, True, True)
    m.backbone.pretrained = ""  # initialised from the FCOS3D checkpoint via load_from
    m.backbone.with_cp = True
    m.backbone.style = "caffe"  # FCOS3D-initialised R101-DCN
    m.neck.num_outs = 1
    m.bev_h = m.bev_w = 150
    m.encoder_layers = 3
    d.queue_length = 3
    return cfg
