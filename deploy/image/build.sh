#!/usr/bin/env bash
# Build the production image from Containerfile: `make image` runs this.
#   IMAGE       tag to build                       (default localhost/mnist-serve:latest)
#   IMAGE_BASE  `debian` = a base made here from Debian's packages by debian-base.sh, for
#               machines that cannot pull; or any image name, e.g. python:3.11-slim
#   CONTAINER   podman (default) or docker
#   CA_BUNDLE   CA certificates handed to pip as the build secret `ca`, when the file exists
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-localhost/mnist-serve:latest}
IMAGE_BASE=${IMAGE_BASE:-debian}
CONTAINER=${CONTAINER:-podman}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ! find models -name model.onnx -path 'models/*/*/model.onnx' 2>/dev/null | grep -q .; then
    echo "image: models/ holds no <name>/<version>/model.onnx to ship; run 'make train export' first" >&2
    exit 1
fi
if [ "$IMAGE_BASE" = debian ]; then
    IMAGE_BASE=$(CONTAINER=$CONTAINER deploy/image/debian-base.sh)
fi

args=(build --file Containerfile --tag "$IMAGE" --build-arg "BASE=$IMAGE_BASE")
if [ "$CONTAINER" = podman ]; then
    # chroot isolation builds where no container runtime may start (no cgroups, no user
    # namespaces); the docker format keeps the HEALTHCHECK, which OCI images cannot carry.
    args+=(--isolation chroot --format docker)
fi
if [ -s "$CA_BUNDLE" ]; then
    args+=(--secret "id=ca,src=$CA_BUNDLE")
fi
echo "image: building $IMAGE on $IMAGE_BASE" >&2
"$CONTAINER" "${args[@]}" .
