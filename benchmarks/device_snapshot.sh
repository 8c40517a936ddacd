#!/usr/bin/env bash
# Prepare a call of the session's device tool (a lent GPU machine: no network, no git, no venv, its own
# python with torch + triton): a clean snapshot of HEAD in .gpu_snap/ with the wheels that machine lacks,
# then the command to give the tool (carry [".gpu_snap"]) with the commit filled in.
#
#   benchmarks/device_snapshot.sh                   # snapshot + wheels, prints the call for gpu_check.sh
#   GPU_ENV='GPU_CHECK_STEPS=kernels,sca,base STEP_TIMEOUT=110' benchmarks/device_snapshot.sh
#   DEVICE_SNAPSHOT_DRY_RUN=1 benchmarks/device_snapshot.sh    # print the downloads and the call only
#
# DEVICE_PYTHON (default 3.12: the H200 image's) picks the wheels' Python; the wheels are kept in .whl/
# (git-ignored) and downloaded once. Uncommitted changes are NOT in the snapshot: commit first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${DEVICE_PYTHON:-3.12}
WHEELS=${DEVICE_WHEELS:-"nuscenes-devkit==1.2.0 pyquaternion simplejpeg orjson shapely"}
DRY=${DEVICE_SNAPSHOT_DRY_RUN:-0}
COMMIT=$(git rev-parse --short HEAD)

if [ -n "$(git status --porcelain --untracked-files=no -- src configs tests benchmarks)" ]; then
  echo "warning: uncommitted changes under src/ configs/ tests/ benchmarks/ are not in the snapshot" >&2
fi

[ "$DRY" = 1 ] || mkdir -p .whl
for spec in $WHEELS; do
  name=${spec%%[=<>]*}
  if compgen -G ".whl/${name//-/_}-*.whl" >/dev/null; then
    continue  # downloaded before
  fi
  cmd=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
       -d .whl "$spec")
  if [ "$DRY" = 1 ]; then
    echo "DOWNLOAD ${cmd[*]}"
  else
    "${cmd[@]}"
  fi
done

if [ "$DRY" != 1 ]; then
  rm -rf .gpu_snap
  mkdir .gpu_snap
  git archive HEAD | tar -x -C .gpu_snap
  cp -r .whl .gpu_snap/
  echo "snapshot of $COMMIT in .gpu_snap/ ($(du -sh .gpu_snap | cut -f1)), wheels: $(ls .gpu_snap/.whl | tr '\n' ' ')" >&2
fi

# the call: install the wheels beside the machine's torch, run the check, print its summary
call="cd .gpu_snap && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
call+=" --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;${GPU_ENV:+ $GPU_ENV}"
call+=" BEVFORGE_COMMIT=$COMMIT PYTHONUNBUFFERED=1 timeout 545 bash benchmarks/gpu_check.sh \$OUT"
call+=" > \$OUT/stdout.txt 2>&1; cat \$OUT/gpu_check.md"
echo "carry: [\".gpu_snap\"]"
echo "timeout_s: 570"
echo "command (${#call} characters; the tool takes 2000): $call"
