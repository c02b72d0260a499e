# One image for every role: `data-appraisal {model-owner,data-owner,dealer} serve`, `appraise`,
# `example-data`, `certs` (see docker-compose.yml). Build: docker build -t data-appraisal:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The Makefile's recipe. torch first and pinned (as in pyproject.toml), from the CPU-only index:
# PyPI's Linux wheel pulls a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# crypten's metadata requires dead/unneeded packages; its real imports are in pyproject.toml
RUN pip install --no-deps crypten==0.4.1

# then the project itself (its dependencies from PyPI; the torch above satisfies its pin)
COPY pyproject.toml README.md /build/
COPY common /build/common
COPY model_owner /build/model_owner
COPY data_owner /build/data_owner
COPY dealer /build/dealer
RUN pip install /build && rm -rf /build

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

ENTRYPOINT ["data-appraisal"]
CMD ["--help"]
