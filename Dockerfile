# AntiCollapse in a container: built with Swift 6 on Debian bookworm, run from a slim Debian
# image (Open MPI, HDF5, OpenBLAS, zlib runtime libraries; the Swift runtime linked statically)
# as an unprivileged user.
#
# Build (a Package.resolved beside Package.swift, if you have one, pins the dependencies):
#   docker build -t anticollapse .
# Train into a run directory on the host (the container runs as uid 1000; give it the directory):
#   mkdir -p runs && sudo chown 1000 runs   # or: docker run --user "$(id -u)" …
#   docker run --rm -v "$PWD/runs:/work/runs" anticollapse train --run-dir runs/vicreg
# (the image carries configs/ and the shipped MNIST-5k under /opt/anticollapse; its working
# directory /work resolves the default data path datasets/mnist5k through a link).
# Several ranks in one container (Open MPI's shared-memory transport wants a larger /dev/shm
# than Docker's default 64 MB):
#   docker run --rm --shm-size=1g -v "$PWD/runs:/work/runs" --entrypoint mpirun anticollapse \
#       -np 2 --bind-to none anticollapse train --run-dir runs/vicreg
# The test suite runs in the build stage:
#   docker build --target build -t anticollapse-build . && \
#   docker run --rm --shm-size=1g anticollapse-build launch/test
#
# Not built on the project's machine (it has no Docker daemon): see the README.

FROM swift:6.3-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libopenblas-dev zlib1g-dev libpng-dev libjpeg62-turbo-dev pkg-config iproute2 \
    && rm -rf /var/lib/apt/lists/*
# The build stage runs as root (its tests too): Open MPI needs both variables then.
ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORKDIR /anticollapse
# The dependencies first (and Package.resolved when there is one), so that source edits do
# not invalidate that layer.
COPY Package.swift Package.resolve[d] ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
COPY launch ./launch
COPY configs ./configs
COPY datasets ./datasets
RUN swift build -c release --static-swift-stdlib \
    && install -m 0755 "$(swift build -c release --show-bin-path)/anticollapse" /usr/local/bin/anticollapse

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        openmpi-bin libopenmpi3 libhdf5-103-1 libopenblas0 zlib1g libpng16-16 libjpeg62-turbo ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 anticollapse
COPY --from=build /usr/local/bin/anticollapse /usr/local/bin/anticollapse
COPY --from=build /anticollapse/configs /opt/anticollapse/configs
COPY --from=build /anticollapse/datasets /opt/anticollapse/datasets
COPY --from=build /anticollapse/launch /opt/anticollapse/launch
RUN mkdir -p /work \
    && ln -s /opt/anticollapse/datasets /work/datasets \
    && ln -s /opt/anticollapse/configs /work/configs \
    && chown anticollapse /work
USER anticollapse
WORKDIR /work
# Runs go to /work/runs: mount a host directory there (-v "$PWD/runs:/work/runs").
VOLUME ["/work/runs"]
ENTRYPOINT ["anticollapse"]
