#!/bin/sh
# Helm post-renderer for the dask chart: reads the chart's rendering on stdin, applies the
# kustomize patches of deploy/helm/post-render/ (container securityContext, no
# service-account token, the scheduler's /tmp and TLS volumes) and writes the result.
#   helm install obpipe-dask dask/dask -n obpipe -f deploy/helm/dask-values.yaml \
#     --post-renderer deploy/helm/post-render.sh
# Needs kubectl (its built-in kustomize) on the machine that runs helm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here"/post-render/*.yaml "$work"/
cat > "$work/chart.yaml"
kubectl kustomize "$work"
