#!/usr/bin/env bash
# The GPU check: the CUDA kernel tests and the kernel, training and inference benchmarks, in step groups
# chosen per call (all of them take more than one 10-minute device call: benchmarks/README.md says which
# groups go together). Numbers go to $RESULTS (default benchmarks/results/): kernel.md, train.md, infer.md,
# gpu_check.md (step summary, rewritten after every step) and gpu_check.log (full output).
#
# No venv and no network needed: it uses the machine's own python (PYTHON, default python3) with
# PYTHONPATH=src; a step whose imports fail is reported as skipped, not failed.
#
#   benchmarks/gpu_check.sh [RESULTS_DIR]
#   BEVFORGE_COMMIT=$(git rev-parse --short HEAD) benchmarks/gpu_check.sh   # where .git is absent
#   GPU_CHECK_STEPS=kernels,bench-kernel,base benchmarks/gpu_check.sh       # only these groups
#   GPU_CHECK_SKIP=bench-train-base-bf16-ckpt,... benchmarks/gpu_check.sh  # minus these steps (by name)
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh /tmp/x   # no GPU: print each step's command, run nothing
#     (as if CUDA and every import were there; tests/unit/bench/test_gpu_check_script.py parses them all)
#
# Step groups (GPU_CHECK_STEPS, comma-separated, default all): kernels (CUDA kernel tests), dcn (the DCNv2
# op: torchvision vs grid_sample vs Triton columns, forward+backward and forward), syncs (device
# syncs left in the model and the training step), bench-kernel
# (MSDA + BEV-pool kernel benchmarks), base (BEVFormer-base training bf16 with/without gradient
# checkpointing + inference, the issue-9 targets), sca (SCA hit gather vs all queries on the base rig),
# batch (tiny training at batch 4 and 8, base at 2 with gradient checkpointing), data (a synthetic
# 1600x900 set made on the box: the loader and tiny training on real batches, data share), profile
# (benchmarks/profile_parts.py on base), bevdet (BEVDet-R50 training + inference), tiny (tiny training +
# inference eager/ORT), compile (torch.compile inference + training, graph breaks, compile-parity tests),
# doctor (`bevforge doctor`: its smoke test of every kernel against its reference, as a user first sees it).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=${1:-${RESULTS_DIR:-benchmarks/results}}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
SUMMARY="$RESULTS/gpu_check.md"
: >"$LOG"
declare -a LINES=()
status=0

COMMIT=${BEVFORGE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

write_summary() {  # after every step: a call cut off by its time limit still leaves the table so far
  {
    echo "# gpu_check $STARTED commit $COMMIT (GPU_CHECK_STEPS=${GPU_CHECK_STEPS:-all})"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${LINES[@]}"
  } >"$SUMMARY"
}

step() {  # step NAME CMD... : run with a timeout, log, record ok/FAIL and seconds
  local name=$1
  shift
  if [[ ",${GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then
    skip "$name" "GPU_CHECK_SKIP"
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then  # one line per step: STEP NAME ARGS..., each shell-quoted
    printf 'STEP %q' "$name"
    printf ' %q' "$@"
    printf '\n'
    return
  fi
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  if timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee -a "$LOG"; then
    LINES+=("| $name | ok | $((SECONDS - t0)) |")
  else
    LINES+=("| $name | FAIL (rc ${PIPESTATUS[0]}) | $((SECONDS - t0)) |")
    status=1
  fi
  write_summary
}

skip() {
  echo "== $1: skipped ($2)" | tee -a "$LOG"
  LINES+=("| $1 | skipped: $2 | 0 |")
  write_summary
}

can_import() { [ "$DRY_RUN" = 1 ] || "$PY" -c "import $1" >/dev/null 2>&1; }
STEPS=",${GPU_CHECK_STEPS:-kernels,dcn,syncs,bench-kernel,base,sca,batch,data,profile,bevdet,tiny,compile,doctor},"
want() { [[ $STEPS == *",$1,"* ]]; }

step env "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')"
[ "$DRY_RUN" = 0 ] && command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  2>&1 | tee -a "$LOG"

HAVE_CUDA=$DRY_RUN
[ "$DRY_RUN" = 0 ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_CUDA=1

if ! want kernels; then
  :
elif [ $HAVE_CUDA = 0 ]; then
  skip kernels-cuda "no CUDA device"
elif can_import pytest; then
  # ~150 s on the H200 at 9cdd050 (the DCN cases compile many kernel variants): its own limit
  STEP_TIMEOUT=${KERNELS_TIMEOUT:-240} step kernel-tests-cuda "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/kernels \
    tests/unit/ops/test_dcn_sampled_cuda.py tests/unit/export/test_export_bench_infer.py \
    tests/unit/losses/test_losses_matcher_blocks.py
  # the model-level CUDA tests (graph captures, cuDNN's fused convs, the projected frames): a step of their
  # own, so a slow kernel step cannot cut them off (cuDNN may compile a fused engine per conv shape)
  STEP_TIMEOUT=${MODEL_TESTS_TIMEOUT:-150} step model-tests-cuda "$PY" -m pytest -q -p no:cacheprovider -m gpu \
    tests/unit/models/test_history_graph.py tests/unit/models/test_fused_conv_relu.py \
    tests/unit/models/test_frame_projections.py tests/unit/models/test_frame_graph.py \
    tests/unit/models/test_infer_graph.py tests/unit/data/test_prefetch.py \
    "tests/unit/train/test_train_gpu.py::test_training_with_loader_workers_prefetches_the_batches"
  # the MSDA kernels' launch constants on the SCA shape, offsets path (ptxas, offline: the backward takes
  # 144 registers at the default 64 x 4, 78 at 32 x 4): the winners go into ops/msda/triton_msda.py LAUNCH
  STEP_TIMEOUT=${SWEEP_TIMEOUT:-90} step bench-msda-sweep "$PY" -m bevforge.cli.main \
    bench kernel --shape base-sca --dtype bf16 --sweep --iters 10 --warmup 2 --out "$RESULTS/kernel.md"
else
  step kernel-cases-cuda "$PY" tests/kernels/msda_kernel_cases.py --device cuda
  step kernel-cases-cuda-bev-pool "$PY" tests/kernels/bev_pool_kernel_cases.py --device cuda
fi

if ! want doctor; then
  :
elif [ $HAVE_CUDA = 0 ]; then
  skip doctor-cuda "no CUDA device"
else
  # every kernel forward + backward against its reference at small shapes (fp32, bf16), in a child process
  STEP_TIMEOUT=${DOCTOR_TIMEOUT:-240} step doctor-cuda "$PY" -m bevforge.cli.main doctor --no-nccl
fi

if ! want bench-kernel; then
  :
elif [ $HAVE_CUDA = 0 ]; then
  skip bench-kernel "no CUDA device"
elif can_import triton; then
  step bench-kernel-fp32 "$PY" -m bevforge.cli.main bench kernel --dtype fp32 --out "$RESULTS/kernel.md"
  step bench-kernel-bf16 "$PY" -m bevforge.cli.main bench kernel --dtype bf16 --out "$RESULTS/kernel.md"
  # BEVDet-R50 BEV pooling (6 x 59 x 16 x 44 frustum, 64 channels, 128 x 128 BEV): reference vs Triton
  step bench-bev-pool-fp32 "$PY" -m bevforge.cli.main bench kernel --shape bevdet-pool --dtype fp32 \
    --out "$RESULTS/kernel.md"
  step bench-bev-pool-bf16 "$PY" -m bevforge.cli.main bench kernel --shape bevdet-pool --dtype bf16 \
    --out "$RESULTS/kernel.md"
else
  skip bench-kernel "triton not importable"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip bench-base "no CUDA device"
elif want base && can_import bevforge.train.step; then
  # the issue-9 targets: BEVFormer-base training in bf16 (>= 5 samples/s, <= 12 GB; random batches of
  # the recipe's shapes: 4-frame queue, 6 x 900 x 1600) and inference (>= 20 FPS), random init
  # (the recipe's channels-last row only: the NCHW eager row was 1.94 samples/s against 2.15 at 9cdd050;
  # GPU_CHECK_BASE_NCHW=1 adds it back)
  BASELINE=(--no-baseline); [ "${GPU_CHECK_BASE_NCHW:-0}" = 1 ] && BASELINE=()
  step bench-train-base-bf16 "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= --amp bf16 --fake-data --warmup 3 --iters 10 --channels-last \
    "${BASELINE[@]}" --out "$RESULTS/train.md"
  # the history pass (3 frames, no grad: a quarter of the step's operators) replayed as one CUDA graph:
  # the base step is host-bound (455 ms CPU vs 236 ms GPU at 9cdd050); channels-last from the recipe
  # the SCA's hit gather instead of the kernel over the cameras (the default since session 12)
  step bench-train-base-bf16-sca-gather "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= model.sca_fuse_cameras=off --amp bf16 --fake-data --warmup 3 --iters 10 \
    --channels-last --no-baseline --out "$RESULTS/train.md"
  step bench-train-base-bf16-history-graph "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= train.history_graph=true --amp bf16 --fake-data --warmup 3 --iters 10 \
    --no-baseline --out "$RESULTS/train.md"
  # the memory cuts off (frozen BNs folded into the convs; the SCA's and the TSA's projections recomputed
  # in backward; all default on): the sixth session's step, for the time and memory they make
  # model.backbone.fuse_conv_relu: each frozen conv -> BN -> ReLU (+ residual) as one cuDNN call (in
  # training with the plain ops' backward): the conv bias otherwise costs a broadcast pass in CUDA's generic
  # strided kernel (222 per base step: the 307 launches / 33 ms of it at 9cdd050), ReLU and add passes more
  step bench-train-base-bf16-fused "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= model.backbone.fuse_conv_relu=true --amp bf16 --fake-data --warmup 3 \
    --iters 10 --no-baseline --out "$RESULTS/train.md"
  step bench-train-base-bf16-history-graph-fused "$PY" -m bevforge.cli.main bench train \
    configs/bevformer_base.py --set model.backbone.pretrained= train.history_graph=true \
    model.backbone.fuse_conv_relu=true --amp bf16 --fake-data --warmup 3 --iters 10 --no-baseline \
    --out "$RESULTS/train.md"
  # train.frame_graph: the current frame's forward and backward replayed as two CUDA graphs; with the
  # history graph the whole model replays (the step's host work: grid mask, criterion, optimizer)
  step bench-train-base-bf16-graphs "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= train.history_graph=true train.frame_graph=true --amp bf16 --fake-data \
    --warmup 3 --iters 10 --no-baseline --out "$RESULTS/train.md"
  step bench-train-base-bf16-graphs-fused "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= train.history_graph=true train.frame_graph=true \
    model.backbone.fuse_conv_relu=true --amp bf16 --fake-data --warmup 3 --iters 10 --no-baseline \
    --out "$RESULTS/train.md"
  step bench-train-base-bf16-kept "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= model.backbone.fold_bn=false model.sca_recompute=off \
    model.tsa_recompute=off --amp bf16 \
    --fake-data --warmup 3 --iters 10 --out "$RESULTS/train.md"
  # more memory if the cuts above fall short of <= 12 GB: each encoder layer's FFN recomputed too
  # (~0.9 GiB in the census); --grad-ckpt checkpoints encoder layers and backbone blocks whole
  step bench-train-base-bf16-ffn-recompute "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= model.ffn_recompute=true --amp bf16 --fake-data --warmup 3 \
    --iters 10 --out "$RESULTS/train.md"
  # the DCN's 27-channel offset/mask conv zero-padded to 32 (tensor cores tile channels by 8), channels-last
  step bench-train-base-bf16-offset-pad "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= model.backbone.dcn_offset_pad=true train.channels_last=true --amp bf16 \
    --fake-data --warmup 3 --iters 10 --no-baseline --out "$RESULTS/train.md"
  step bench-train-base-bf16-ckpt "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= --amp bf16 --grad-ckpt --fake-data --warmup 3 --iters 10 \
    --out "$RESULTS/train.md"
  step bench-infer-base-bf16 "$PY" -m bevforge.cli.main bench infer configs/bevformer_base.py \
    --set model.backbone.pretrained= --amp bf16 --modes eager,cuda-graph,eager-ref --iters 20 \
    --out "$RESULTS/infer.md"
  step bench-infer-base-bf16-cl "$PY" -m bevforge.cli.main bench infer configs/bevformer_base.py \
    --set model.backbone.pretrained= --amp bf16 --modes eager,cuda-graph --iters 20 --channels-last \
    --out "$RESULTS/infer.md"
  # inference is all no-grad: every backbone conv fused (the 20 FPS target: 52.3 ms with a graph at 9cdd050);
  # eval / eval-graph: the model's own forward with the state carried, eager and with eval.cuda_graph (what
  # `bevforge test` runs per frame)
  step bench-infer-base-bf16-cl-fused "$PY" -m bevforge.cli.main bench infer configs/bevformer_base.py \
    --set model.backbone.pretrained= model.backbone.fuse_conv_relu=true --amp bf16 \
    --modes eager,cuda-graph,eval,eval-graph --iters 20 --channels-last --out "$RESULTS/infer.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip sca "no CUDA device"
elif want sca && can_import bevforge.models.build; then
  # one SCA layer on the base and tiny rigs: hit gather (one host read per frame) vs all queries (static
  # shapes) vs one kernel over the cameras (model.sca_fuse_cameras, default where the kernel runs)
  # (--sweep: the camera kernels' launch constants too, BLOCK_Q / 8 x 8 tiles; winners into
  # ops/msda/triton_cameras.py LAUNCH)
  step bench-sca-base "$PY" -m bevforge.cli.main bench kernel --shape sca-base --dtype bf16 --iters 10 \
    --warmup 3 --sweep --out "$RESULTS/kernel.md"
  step bench-sca-tiny "$PY" -m bevforge.cli.main bench kernel --shape sca-tiny --dtype bf16 --iters 10 \
    --warmup 3 --out "$RESULTS/kernel.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip dcn "no CUDA device"
elif want dcn; then  # the DCNv2 op alone at R101 stage 3/4 shapes: torchvision vs grid_sample vs Triton columns
  # --sweep: the two Triton kernels' launch constants (BLOCK_C, BLOCK_L, warps), to set the defaults from;
  # --channels-last: the pixel-major columns (vector loads/stores along channels) of train.channels_last
  step bench-dcn-stage3 "$PY" -m bevforge.ops.dcn.bench --sweep --out "$RESULTS/kernel.md"
  step bench-dcn-stage3-cl "$PY" -m bevforge.ops.dcn.bench --channels-last --sweep --out "$RESULTS/kernel.md"
  # stage 4 (3 of R101's 26 DCN layers) without the sweeps: the call's time goes to stage 3's
  step bench-dcn-stage4 "$PY" -m bevforge.ops.dcn.bench --channels 512 --hw 29 50 --out "$RESULTS/kernel.md"
  step bench-dcn-stage4-cl "$PY" -m bevforge.ops.dcn.bench --channels 512 --hw 29 50 --channels-last --out "$RESULTS/kernel.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip batch "no CUDA device"
elif want batch && can_import bevforge.train.step; then
  # throughput vs batch size (batch 1 is launch-bound: ~100 ms of CPU per tiny step at bd6703a, 34 ms of
  # GPU): tiny at 4, 8 and 16 samples per GPU (16: b8 took 11.5 GiB before the seventh session's memory
  # cuts), base at 2 with gradient checkpointing
  # (b8 with a channels-last row: GPU-bound there, where channels-last should pay; at b1, CPU-bound, it
  # was 0.91x at bd6703a)
  for B in 4 8 16; do
    CL=(); [ "$B" = 8 ] && CL=(--channels-last)
    step bench-train-tiny-b$B "$PY" -m bevforge.cli.main bench train configs/bevformer_tiny.py \
      --set model.backbone.pretrained= data.batch_size=$B --fake-data --warmup 3 --iters 10 "${CL[@]}" \
      --out "$RESULTS/train.md"
  done
  step bench-train-tiny-b8-fused "$PY" -m bevforge.cli.main bench train configs/bevformer_tiny.py \
    --set model.backbone.pretrained= data.batch_size=8 model.backbone.fuse_conv_relu=true --amp bf16 \
    --fake-data --warmup 3 --iters 10 --no-baseline --out "$RESULTS/train.md"
  step bench-train-tiny-b8-graphs-fused "$PY" -m bevforge.cli.main bench train configs/bevformer_tiny.py \
    --set model.backbone.pretrained= data.batch_size=8 train.history_graph=true train.frame_graph=true \
    model.backbone.fuse_conv_relu=true --amp bf16 --fake-data --warmup 3 --iters 10 --no-baseline \
    --out "$RESULTS/train.md"
  step bench-train-tiny-b8-history-graph "$PY" -m bevforge.cli.main bench train configs/bevformer_tiny.py \
    --set model.backbone.pretrained= data.batch_size=8 train.history_graph=true --amp bf16 --fake-data \
    --warmup 3 --iters 10 --no-baseline --out "$RESULTS/train.md"
  step bench-train-base-b2-ckpt "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= data.batch_size=2 --amp bf16 --grad-ckpt --fake-data --warmup 2 --iters 6 \
    --out "$RESULTS/train.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip data "no CUDA device"
elif want data && can_import bevforge.data.synthetic.generate; then
  # the real input pipeline (no fake batches): a synthetic nuScenes-format set of 1600x900 JPEGs made on
  # the box, then the loader alone and tiny training at batch 8 on it ("data share" is the issue-9 target
  # < 5 %; bevformer_tiny ships uint8 images, finished on the GPU by the Triton kernel)
  SYN=${SYN_DIR:-/tmp/bevforge_syn1600}
  SYN_SET=(data.data_root="$SYN" data.info_dir="$SYN/infos" data.version=v1.0-mini data.num_workers=8)
  step synth-1600x900 "$PY" -m bevforge.cli.main synth --out "$SYN" --scenes 6 --samples-per-scene 12 \
    --size 1600x900
  step prepare-1600x900 "$PY" -m bevforge.cli.main prepare --data-root "$SYN" --version v1.0-mini \
    --out "$SYN/infos"
  step bench-data-tiny "$PY" -m bevforge.cli.main bench data bevformer_tiny --set "${SYN_SET[@]}" \
    --batches 30 --naive-samples 4 --out "$RESULTS/data.md"
  # the recipe's 4 workers with 3 decode threads each (data.decode_threads): a 16-core box's idle cores
  step bench-data-tiny-4w-threads "$PY" -m bevforge.cli.main bench data bevformer_tiny --set "${SYN_SET[@]}" \
    data.num_workers=4 data.decode_threads=3 --batches 30 --naive-samples 1 --out "$RESULTS/data.md"
  step bench-train-tiny-real-b8 "$PY" -m bevforge.cli.main bench train configs/bevformer_tiny.py \
    --set model.backbone.pretrained= "${SYN_SET[@]}" data.batch_size=8 --warmup 3 --iters 12 \
    --out "$RESULTS/train.md"
  # base decodes 24 full-size JPEGs per sample (4 frames x 6 cameras, no scale-on-decode)
  step bench-train-base-real "$PY" -m bevforge.cli.main bench train configs/bevformer_base.py \
    --set model.backbone.pretrained= "${SYN_SET[@]}" --amp bf16 --warmup 3 --iters 10 --out "$RESULTS/train.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip syncs "no CUDA device"
elif want syncs && can_import pytest; then  # device syncs left in the model / training step (listed as warnings)
  step sync-tests-cuda "$PY" -m pytest -q -rw -p no:cacheprovider tests/unit/nn/test_nn_cuda_syncs.py \
    tests/unit/train/test_train_step_syncs.py tests/unit/train/test_train_sync_audit.py
fi

if [ $HAVE_CUDA = 0 ]; then
  skip profile "no CUDA device"
elif want profile; then  # where the base step's time goes (per part, top CUDA ops)
  step profile-base-bf16 "$PY" benchmarks/profile_parts.py configs/bevformer_base.py --amp bf16 --top 25 \
    --out "$RESULTS/profile.md"
  step profile-base-bf16-cl "$PY" benchmarks/profile_parts.py configs/bevformer_base.py --amp bf16 --top 25 \
    --channels-last --out "$RESULTS/profile-cl.md"
  # the same with the fused convs: which kernels they remove, and the host-side line (syncs, launches)
  step profile-base-bf16-cl-fused "$PY" benchmarks/profile_parts.py configs/bevformer_base.py --amp bf16 \
    --top 25 --channels-last --set model.backbone.fuse_conv_relu=true --out "$RESULTS/profile-cl-fused.md"
  # the whole model in CUDA graphs with the fused convs: the GPU time left, and whether the host still waits
  step profile-base-bf16-cl-graphs-fused "$PY" benchmarks/profile_parts.py configs/bevformer_base.py \
    --amp bf16 --top 25 --channels-last --set model.backbone.fuse_conv_relu=true train.history_graph=true \
    train.frame_graph=true --out "$RESULTS/profile-cl-graphs-fused.md"
  # the op census on the GPU: CUDA's own layouts (cuDNN's conv outputs) decide which pointwise ops take the
  # generic strided kernel (307 launches, 33 ms of a base step at 9cdd050): their source lines and sizes
  step op-census-base-cuda "$PY" benchmarks/op_census.py configs/bevformer_base.py --top 25
  # tiny at 8 samples per GPU (the 50 samples/s target; 28.3 at 9651359): where its step goes
  step profile-tiny-b8-bf16 "$PY" benchmarks/profile_parts.py configs/bevformer_tiny.py --amp bf16 --top 25 \
    --set data.batch_size=8 --out "$RESULTS/profile-tiny.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip bench-bevdet "no CUDA device"
elif want bevdet && [ -f configs/bevdet_r50.py ]; then
  # BEVDet-R50 (256 x 704, BEV 128 x 128): training bf16 on random batches, inference eager (Triton
  # bev_pool) vs eager-ref vs onnxruntime (CPU provider, the rig's pooling plan baked in)
  step bench-train-bevdet-bf16 "$PY" -m bevforge.cli.main bench train configs/bevdet_r50.py \
    --amp bf16 --fake-data --warmup 3 --iters 10 --out "$RESULTS/train.md"
  step bench-infer-bevdet "$PY" -m bevforge.cli.main bench infer configs/bevdet_r50.py \
    --modes eager,eager-ref,onnxruntime --iters 10 --out "$RESULTS/infer.md"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip bench-infer "no CUDA device"
elif [ -f configs/bevformer_tiny.py ] && can_import bevforge.models.build; then
  # random init (no weights on the GPU box); eager (Triton MSDA) vs eager-ref vs compile (+ onnxruntime
  # when importable); a second call for compile so an inductor timeout keeps the eager rows
  want tiny && step bench-infer-tiny-eager "$PY" -m bevforge.cli.main bench infer configs/bevformer_tiny.py \
    --set model.backbone.pretrained= --modes eager,cuda-graph,eager-ref,onnxruntime --iters 20 \
    --out "$RESULTS/infer.md"
  want compile && step bench-infer-tiny-compile "$PY" -m bevforge.cli.main bench infer \
    configs/bevformer_tiny.py --set model.backbone.pretrained= --modes compile --iters 20 --out "$RESULTS/infer.md"
else
  skip bench-infer "configs/bevformer_tiny.py or bevforge.models.build missing"
fi

if [ $HAVE_CUDA = 0 ]; then
  skip bench-train "no CUDA device"
elif [ -f configs/bevformer_tiny.py ] && can_import bevforge.train.step; then
  # training throughput of the tiny recipe on random batches of its shapes (no dataset on the GPU box):
  # eager vs channels-last in one call, then torch.compile (+ channels-last) alone with a longer timeout
  # (inductor compiles forward + backward in the warm-up), so a compile timeout keeps the eager rows
  TRAIN_ARGS=(configs/bevformer_tiny.py --set model.backbone.pretrained= --fake-data --warmup 5 --iters 20
    --out "$RESULTS/train.md")
  want tiny && step bench-train-tiny-eager "$PY" -m bevforge.cli.main bench train "${TRAIN_ARGS[@]}" \
    --channels-last
  want compile && STEP_TIMEOUT=${COMPILE_TIMEOUT:-300} step bench-train-tiny-compile "$PY" -m bevforge.cli.main bench train \
    "${TRAIN_ARGS[@]}" --channels-last --compile default --no-baseline
  # base with every part compiled and CUDA-graphed (reduce-overhead): never timed yet; against the
  # base group's rows (eager 2.15 samples/s channels-last, history graph)
  want compile && STEP_TIMEOUT=${COMPILE_TIMEOUT:-300} step bench-train-base-compile "$PY" -m bevforge.cli.main \
    bench train configs/bevformer_base.py --set model.backbone.pretrained= --amp bf16 --fake-data --warmup 3 \
    --iters 10 --compile reduce-overhead --no-baseline --out "$RESULTS/train.md"
  # graph breaks of the whole model and of each compiled part on CUDA (Triton MSDA op instead of the
  # reference's spatial_shapes.tolist())
  want compile && STEP_TIMEOUT=${COMPILE_TIMEOUT:-300} step explain-tiny "$PY" -m bevforge.cli.main bench train \
    configs/bevformer_tiny.py --set model.backbone.pretrained= --explain
  if want compile && can_import pytest; then  # loss of 3 debug-recipe steps: compile + channels-last == eager (fp32)
    STEP_TIMEOUT=${COMPILE_TIMEOUT:-300} step compile-tests-cuda "$PY" -m pytest -q -p no:cacheprovider \
      -m gpu tests/unit/train/test_compile_speed_options.py
  fi
else
  skip bench-train "configs/bevformer_tiny.py or bevforge.train.step missing"
fi

write_summary
cat "$SUMMARY"
exit $status
