# One image for every role: `data-appraisal {model-owner,data-owner,dealer} serve`, `appraise`,
# `example-data`, `certs` (see docker-compose.yml). Every version comes from requirements/lock.txt.
#
#   docker build -t data-appraisal:0.2.0 .                       torch from PyTorch's CPU index
#   docker build --build-arg TORCH_WHEEL_DIR=wheels -t ... .     torch from a wheel in ./wheels
#
# TORCH_WHEEL_DIR names a directory of the build context holding a torch-2.13.0 CPU wheel (copy
# it there first: `wheels/` is git-ignored); when it holds one, PyTorch's index is not contacted.
# TORCH_INDEX_URL= (empty) takes the plain requirement from PyPI instead: a CUDA build of several
# GB on x86-64. Where a build's RUN steps have no network of their own, add `--network host`.
#
# Two stages: the first installs everything into the virtual environment /opt/venv; the image is
# the base image plus that environment (no wheel, no pip cache, no build files), less the parts of
# torch that nothing here runs: the headers and CMake files for compiling C++ extensions, and its
# own C++ test programs (torch/test, torch/bin but torch_shm_manager).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEEL_DIR=requirements

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
COPY requirements/ /build/requirements/
COPY ${TORCH_WHEEL_DIR}/ /build/wheels/
WORKDIR /build
# The Makefile's recipe: pip, then torch (from the wheel directory, or PyTorch's CPU index if it
# answers), then crypten without its stale metadata, then the rest from the lock.
RUN pip install -c requirements/lock.txt pip \
    && if ls wheels/torch-*.whl >/dev/null 2>&1; then \
           pip install -c requirements/lock.txt --find-links wheels torch; \
       else \
           pip install -c requirements/lock.txt \
               $(python requirements/torch_index.py "$TORCH_INDEX_URL") torch; \
       fi \
    && pip install --no-deps --require-hashes -r requirements/crypten.txt \
    && pip install -c requirements/lock.txt setuptools wheel \
    && python requirements/torch_index.py --check-installed

COPY pyproject.toml README.md /build/
COPY common /build/common
COPY model_owner /build/model_owner
COPY data_owner /build/data_owner
COPY dealer /build/dealer
RUN pip install -c requirements/lock.txt --no-build-isolation /build \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && cd "$site/torch" \
    && rm -rf include share/cmake test \
    && find bin -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
    && cd / && python -c 'from common.mpc.compat import import_crypten; import_crypten()' && data-appraisal --help >/dev/null


FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

COPY --from=build /opt/venv /opt/venv

# An unprivileged user; the mount points of docker-compose.yml's volumes exist and belong to it, so
# that a fresh named volume starts out writable for it.
RUN useradd --create-home --uid 10001 --user-group appraisal \
    && mkdir -p /data /tls \
        /var/lib/data-appraisal/model-owner \
        /var/lib/data-appraisal/data-owner \
        /var/lib/data-appraisal/dealer \
    && chown -R appraisal:appraisal /data /tls /var/lib/data-appraisal
USER appraisal
WORKDIR /home/appraisal

# The service this container serves (PID 1's `data-appraisal <service> serve`) answers its health
# route on this host, with its own port, CA and certificate; one-shot containers pass.
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=6 \
    CMD ["data-appraisal", "health"]

ENTRYPOINT ["data-appraisal"]
CMD ["--help"]
