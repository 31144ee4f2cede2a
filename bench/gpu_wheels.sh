#!/usr/bin/env bash
# Download (or build) into .whl/ the wheels that bench/gpu_check.sh installs on a GPU machine
# without network (Python 3.12, torch with CUDA, numpy, scipy, matplotlib, tqdm, tabulate,
# einops, msgpack, psutil, packaging, h5py and hypothesis already there; see
# /work/.library/device/KINDS.md). Run beforehand on a machine with PyPI: `make gpu-wheels`.
#
# Only what our commands import is taken (measured with sys.modules after importing the CLI,
# the training run, data conversion, DeepSpeed and the reference chgnet): pymatgen's plotting
# and bibliography extras (plotly, bibtexparser) are left out, and so is the `nvtx` package,
# so that the GPU run exercises the torch.cuda.nvtx fallback. Versions are the ones of the
# development venv (torch excepted: the GPU machine brings its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${DEST:-.whl}
DEEPSPEED=${DEEPSPEED:-0.19.8}
BINARY=(
    pymatgen==2026.10.24 pymatgen-core==2026.10.16 monty==2026.10.21 spglib==2.8.0
    ruamel.yaml==0.19.1 orjson==3.13.0 palettable==3.3.3 uncertainties==3.2.3
    ase==3.29.0 vesin==0.6.2 ijson==3.6.0
    chgnet==0.4.2
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5
)
mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$DEST" "${BINARY[@]}"
# Source-only packages, built here as pure-Python wheels: DeepSpeed with its C++/CUDA ops off
# (they are compiled just in time where needed; our runs use none of them), and the
# nvidia_smi module chgnet imports.
for spec in "deepspeed==$DEEPSPEED" nvidia-ml-py3==7.352.0; do
    name=${spec%%==*}
    if ! ls "$DEST"/"${name//-/_}"-"${spec##*==}"-*.whl >/dev/null 2>&1; then
        DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$spec"
    fi
done
du -sh "$DEST"
ls -l "$DEST"
