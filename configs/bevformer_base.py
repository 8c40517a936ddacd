"""BEVFormer-base (official ``bevformer_base.py``): R101-DCN, C3-C5 + extra level (4 FPN outputs),
BEV 200 x 200, 6 encoder layers, queue 4, full-size input. Official numbers: 51.7 NDS / 41.6 mAP.

Official init: ``load_from = ckpts/r101_dcn_fcos3d_pretrain.pth`` (set ``load_from`` to your copy).
"""

from bevforge.config import Config, load_config


def config() -> Config:
    cfg = load_config("bevformer_small")
    cfg.name = "bevformer_base"
    d, m = cfg.data, cfg.model
    d.img_scale = 1.0
    d.queue_length = 4
    m.backbone.out_indices = (1, 2, 3)
    m.backbone.with_cp = False
    m.neck.num_outs = 4
    m.neck.add_extra_convs = True  # official 'on_output'
    m.bev_h = m.bev_w = 200
    m.encoder_layers = 6
    return cfg
