#!/usr/bin/env bash
# Fetch, on this machine (which reaches the package registry), the wheels the GPU machine lacks, into
# .whl/ (git-ignored) for bench/gpu_proof.sh to install there. Python 3.12, manylinux x86_64: the
# GPU machine's interpreter. Versions are the ones installed here (the project's pins), so both
# machines run the same plotly and W&B.
#
#     bash bench/fetch_gpu_wheels.sh            # plotly + W&B (the default)
#     bash bench/fetch_gpu_wheels.sh plotly     # plotly only (Compare needs it; W&B is optional)
#
# What the GPU machine already has (torch, Lightning, numpy, narwhals, packaging, protobuf, pyyaml,
# requests, click, xxhash, anyio, httpx ...) is not fetched: see /work/shared/notes/gpu-device.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
PLOTLY=(plotly)
# W&B 0.31 and what it needs that the GPU image lacks (Requires-Dist of each wheel, read here).
WANDB=(wandb pydantic pydantic-core annotated-types typing-inspection platformdirs cwevals distro sniffio
       opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
       opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
       opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common googleapis-common-protos)
case "${1:-all}" in
  plotly) names=("${PLOTLY[@]}") ;;
  all) names=("${PLOTLY[@]}" "${WANDB[@]}") ;;
  *) echo "usage: $0 [all|plotly]" >&2; exit 2 ;;
esac
pins=$(python - "${names[@]}" <<'PY'
import importlib.metadata as md, sys
out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"fetch_gpu_wheels: {name} is not installed here, so there is no version to pin")
print(" ".join(out))
PY
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the install there
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" $pins
ls -l "$DEST"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5/1048576, $NF}'
du -cb "$DEST"/*.whl | tail -1 | awk '{printf "total %.2f MiB (the working tree and these must stay under 64 MiB)\n", $1/1048576}'
