"""Training: the loop and everything about running it (the only place with DDP, AMP and logging).

- ``trainer.py``     ``train(cfg, work_dir, resume=..., ...)``: the explicit loop
- ``step.py``        forward (autocast) / fp32 criterion / backward / accumulation / clip / skip-on-NaN
- ``optim.py``       AdamW parameter groups, cosine schedule with linear warm-up, lr scaling
- ``checkpoint.py``  atomic checkpoints (weights_only-loadable), auto-resume, RNG state, retention
- ``epoch_data.py``  fixed per-epoch batch order so a run resumes mid-epoch exactly
- ``distributed.py`` torchrun environment, process group (gloo/NCCL), device choice, reductions
- ``monitor.py``     log lines / progress bar, metrics.jsonl, TensorBoard, GPU stats, advice
- ``periodic_eval.py`` evaluation every ``train.eval_interval`` epochs
- ``setup.py``, ``errors.py``, ``demo.py`` (``bevforge demo``)
"""
