#!/bin/sh
# Entrypoint of the obpipe image: runs `obpipe` with the container's arguments, so that
# `docker run IMAGE run SURVEY --out PRODUCTS` is `obpipe run SURVEY --out PRODUCTS`.
#
# The dask Helm chart starts its scheduler and workers with arguments only
# (`dask-scheduler --port=8786 ...`, `dask-worker ADDRESS ...`), and distributed no
# longer installs those two commands: they become `dask scheduler` / `dask worker`.
# An explicit command (obpipe, dask, python, sh) runs as given.
set -e
case "${1:-}" in
    dask-scheduler) shift; exec dask scheduler "$@" ;;
    dask-worker) shift; exec dask worker "$@" ;;
    obpipe|dask|python|python3|sh|bash) exec "$@" ;;
    *) exec obpipe "$@" ;;
esac
