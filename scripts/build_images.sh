#!/usr/bin/env bash
# Build (and optionally push) pairforge's images from deploy/Dockerfile.
#
# In: options below; the version comes from pyproject.toml. Out: the images
#   REGISTRY/pairforge-cpu:VERSION   CPU torch: the `cpu` pool's worker, the weekly flow, Dask workers
#   REGISTRY/pairforge-gpu:VERSION   CUDA torch: the `gpu` Kubernetes pool's training jobs
# (REGISTRY defaults to ghcr.io/pairforge, the names deploy/prefect.yaml and the job
# template use), and one line per image built: its tag, id and size.
#
#   scripts/build_images.sh                     both images with docker (if its daemon answers), else podman, else buildah
#   scripts/build_images.sh --pool cpu --push   one image, then push it
#   scripts/build_images.sh --dry-run           print the commands only
#
# Options:
#   --pool cpu|gpu|all       which image (default: all)
#   --registry PREFIX        tag prefix (default: ghcr.io/pairforge; '' for bare local names)
#   --base-image IMAGE       the FROM image (default: the Dockerfile's python:3.11-slim-bookworm)
#   --torch-spec SPEC        the torch requirement (default: the Dockerfile's, setup.sh's pin)
#   --cpu-torch-index URL    where the CPU image's torch comes from (default: PyTorch's CPU
#                            index; '' for PyPI plus --wheels)
#   --gpu-torch-index URL    where the GPU image's torch comes from (default '': PyPI, CUDA build)
#   --wheels DIR             podman/buildah: mount DIR into the build as pip's find-links
#   --pip-cert FILE          podman/buildah: CA bundle pip trusts during the build (a proxy's)
#   --push                   push each image after building it
#   --dry-run                print the build commands, run nothing
#   -- ARGS...               passed to the builder's build command as they are
# Environment: BUILDER=docker|podman|buildah picks the builder; BUILDER_FLAGS are global
# flags put before its subcommand (e.g. BUILDER_FLAGS="--storage-driver vfs").
set -euo pipefail
cd "$(dirname "$0")/.."

usage_error() {
    echo "build_images.sh: $1" >&2
    exit 2
}

pools=(cpu gpu)
registry=ghcr.io/pairforge
base_image=""
torch_spec=""
cpu_torch_index=https://download.pytorch.org/whl/cpu
gpu_torch_index=""
wheels=""
pip_cert=""
push=0
dry_run=0
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --pool)
            [[ $# -ge 2 ]] || usage_error "--pool needs cpu, gpu or all"
            case "$2" in
                cpu|gpu) pools=("$2") ;;
                all) pools=(cpu gpu) ;;
                *) usage_error "--pool must be cpu, gpu or all, not '$2'" ;;
            esac
            shift 2 ;;
        --registry|--base-image|--torch-spec|--cpu-torch-index|--gpu-torch-index|--wheels|--pip-cert)
            [[ $# -ge 2 ]] || usage_error "$1 needs a value"
            case "$1" in
                --registry) registry=${2%/} ;;
                --base-image) base_image=$2 ;;
                --torch-spec) torch_spec=$2 ;;
                --cpu-torch-index) cpu_torch_index=$2 ;;
                --gpu-torch-index) gpu_torch_index=$2 ;;
                --wheels) wheels=$2 ;;
                --pip-cert) pip_cert=$2 ;;
            esac
            shift 2 ;;
        --push) push=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) usage_error "unknown option '$1' (see --help)" ;;
    esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
[[ -n $version ]] || usage_error "no version = \"...\" line in pyproject.toml"

# The builder: docker only when a daemon answers (`docker` may be a bare client).
builder=${BUILDER:-}
if [[ -z $builder ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        builder=docker
    elif command -v podman >/dev/null; then
        builder=podman
    elif command -v buildah >/dev/null; then
        builder=buildah
    elif [[ $dry_run == 1 ]]; then
        builder=docker
    else
        usage_error "no builder: docker's daemon does not answer and neither podman nor buildah is installed"
    fi
fi
case "$builder" in
    docker|podman) build=(build) ;;
    buildah) build=(bud) ;;
    *) usage_error "BUILDER must be docker, podman or buildah, not '$builder'" ;;
esac
read -r -a builder_flags <<< "${BUILDER_FLAGS:-}"

mounts=()
if [[ -n $wheels ]]; then
    [[ $builder != docker ]] || usage_error "--wheels needs podman or buildah (docker build has no --volume)"
    [[ -d $wheels ]] || usage_error "--wheels: no folder $wheels"
    mounts+=(--volume "$(cd "$wheels" && pwd):/tmp/pairforge-wheels:ro" --build-arg PIP_FIND_LINKS=/tmp/pairforge-wheels)
fi
if [[ -n $pip_cert ]]; then
    [[ $builder != docker ]] || usage_error "--pip-cert needs podman or buildah (docker build has no --volume)"
    [[ -f $pip_cert ]] || usage_error "--pip-cert: no file $pip_cert"
    mounts+=(--volume "$(cd "$(dirname "$pip_cert")" && pwd)/$(basename "$pip_cert"):/tmp/pairforge-pip-cert.pem:ro" --build-arg PIP_CERT=/tmp/pairforge-pip-cert.pem)
fi

run() {
    printf '%q ' "$@" | sed 's/ $//'
    echo
    [[ $dry_run == 1 ]] || "$@"
}

built=()
for pool in "${pools[@]}"; do
    tag="${registry:+$registry/}pairforge-$pool:$version"
    index=$cpu_torch_index
    [[ $pool == gpu ]] && index=$gpu_torch_index
    args=(--file deploy/Dockerfile --tag "$tag" --label "org.opencontainers.image.version=$version"
          --build-arg "PAIRFORGE_TORCH_INDEX_URL=$index")
    [[ -n $base_image ]] && args+=(--build-arg "BASE_IMAGE=$base_image")
    [[ -n $torch_spec ]] && args+=(--build-arg "PAIRFORGE_TORCH_SPEC=$torch_spec")
    echo "build_images.sh: building $tag with $builder"
    start=$SECONDS
    run "$builder" ${builder_flags[@]+"${builder_flags[@]}"} "${build[@]}" "${args[@]}" \
        ${mounts[@]+"${mounts[@]}"} ${extra[@]+"${extra[@]}"} .
    seconds=$((SECONDS - start))
    if [[ $push == 1 ]]; then
        run "$builder" ${builder_flags[@]+"${builder_flags[@]}"} push "$tag"
    fi
    built+=("$tag ${seconds}s")
done

for line in "${built[@]}"; do
    tag=${line% *}
    if [[ $dry_run == 1 ]]; then
        echo "build_images.sh: would build $tag"
    else
        if [[ $builder == buildah ]]; then
            info=$(buildah ${builder_flags[@]+"${builder_flags[@]}"} images --noheading --format '{{.ID}} {{.Size}}' "$tag" 2>/dev/null || true)
        else
            info=$("$builder" ${builder_flags[@]+"${builder_flags[@]}"} image inspect --format '{{.Id}} {{.Size}} bytes' "$tag" 2>/dev/null || true)
        fi
        echo "build_images.sh: built $tag in ${line##* } (image ${info:0:12}, ${info#* })"
    fi
done
