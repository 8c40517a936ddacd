#!/usr/bin/env bash
# One-click distributed training (torchrun around `bevforge train`).
#
#   DATA_PATH=data/nuscenes CONFIG=bevformer_tiny GPUS=8 WORK_DIR=work_dirs/tiny tools/dist_train.sh
#   tools/dist_train.sh -- --amp bf16 --set train.epochs=12      # extra `bevforge train` arguments
#
# Environment: DATA_PATH, CONFIG, GPUS (default: all visible GPUs, or 1 process on CPU), WORK_DIR,
# NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1), INFO_DIR (DATA_PATH/infos),
# PYTHON (python). Multi-node: run this on every node with the same MASTER_ADDR/PORT/NNODES and its
# own NODE_RANK (see tools/slurm_train.sbatch).
set -euo pipefail
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m bevforge.cli.main launch "$@"
