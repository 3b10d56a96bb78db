# AntiCollapse in a container: Swift 6 on Debian bookworm with Open MPI, HDF5 and OpenBLAS.
#
# Build:
#   docker build -t anticollapse .
# One process:
#   docker run --rm anticollapse --help
# Several ranks in one container (mpirun is the entry point; the image runs as root, for which
# OMPI_ALLOW_RUN_AS_ROOT* are set below; --oversubscribe allows more ranks than cores, and
# Open MPI's shared-memory transport wants a larger /dev/shm than Docker's default 64 MB):
#   docker run --rm --shm-size=1g --entrypoint mpirun anticollapse \
#       -np 4 --oversubscribe --bind-to none anticollapse --help
# The test suite inside the image:
#   docker run --rm --shm-size=1g --entrypoint /anticollapse/launch/test anticollapse
# MultiNodeTests simulates two nodes with network namespaces (iproute2, installed below); it
# skips unless the container may create them, e.g. with `docker run --privileged`.
FROM swift:6.3-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libopenblas-dev pkg-config iproute2 \
    && rm -rf /var/lib/apt/lists/*

ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

WORKDIR /anticollapse

# Resolve and fetch the dependencies first, so that source edits do not invalidate that layer.
COPY Package.swift ./
RUN swift package resolve

COPY Sources ./Sources
COPY Tests ./Tests
COPY launch ./launch
COPY configs ./configs
COPY datasets ./datasets

RUN swift build -c release \
    && install -m 0755 "$(swift build -c release --show-bin-path)/anticollapse" /usr/local/bin/anticollapse

ENTRYPOINT ["anticollapse"]
