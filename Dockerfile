# The one flipserve image: every role runs it (`flipserve serve | copy |
# controller | train`; the chart picks the role with `args`).
#
# CPU-only torch: the lock pins torch from PyPI, whose Linux wheel pulls ~3 GB
# of CUDA libraries. By default the build installs the same torch version from
# the PyTorch CPU wheel index instead (https://download.pytorch.org/whl/cpu;
# the build needs to reach it) and the rest of the lock without the CUDA
# packages.
#
# Build arguments (all optional):
#   BASE_IMAGE   a Debian bookworm image with python3 and its venv module. The
#                local real node's tests build on one made from Debian
#                packages (hack/realnode/images.sh): no registry is reachable
#                there.
#   TORCH_INDEX  where torch comes from; empty: the default package index (the
#                CUDA build, with its CUDA wheels).
# Behind a TLS-inspecting proxy, hand its CA bundle in as a build secret:
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src="$SSL_CERT_FILE" .
# It is mounted only while pip and uv run and is in no layer of the image.
# (No `# syntax=` line: it would make BuildKit pull a frontend image.)

ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV=/opt/uv/bin/uv
# uv in a venv of its own: Debian's python3 refuses pip installs outside one.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/uv && /opt/uv/bin/pip install -q --no-cache-dir uv==${UV_VERSION} \
 && python3 -m venv /opt/flipserve
WORKDIR /src
COPY requirements/lock.txt requirements/lock.txt
# Dependencies first, in their own layer: they change far less than the code.
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
 && grep -vE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' requirements/lock.txt > /tmp/lock-cpu.txt \
 && $UV pip install --python /opt/flipserve/bin/python ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} \
      "$(grep -E '^torch==' requirements/lock.txt)" \
 && $UV pip install --python /opt/flipserve/bin/python --no-deps -r /tmp/lock-cpu.txt
# Tests and C headers shipped inside wheels are dead weight at run time.
RUN find /opt/flipserve -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
      -not -path '*/torch/*' -exec rm -rf {} + \
 && find /opt/flipserve -name '*.h' -path '*/include/*' -delete \
 && echo /opt/flipserve-app > "$(/opt/flipserve/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/flipserve-app.pth"
# flipserve itself goes to a prefix of its own (found through that .pth file), so a
# change to the code rebuilds a small layer, never the ~7 GB of dependencies that
# `kind load` and containerd would otherwise copy again.
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
 && $UV pip install --python /opt/flipserve/bin/python --no-deps --target /opt/flipserve-app . \
 && /opt/flipserve-app/bin/flipserve --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="flipserve" \
      org.opencontainers.image.description="Blue/green serving for transformer text models" \
      org.opencontainers.image.licenses="Apache-2.0"
# The uid/gid the chart's securityContext runs as (runAsUser/fsGroup 10001).
RUN groupadd --system --gid 10001 flipserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin flipserve
COPY --from=build /opt/flipserve /opt/flipserve
COPY --from=build /opt/flipserve-app /opt/flipserve-app
# The root filesystem is read-only in the cluster: everything that writes goes
# to /tmp (an emptyDir there), and nothing is fetched from the Hub.
ENV PATH=/opt/flipserve-app/bin:/opt/flipserve/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    FLIPSERVE_CACHE_DIR=/tmp/flipserve \
    FLIPSERVE_MODEL_DIR=/mnt/models \
    FLIPSERVE_HTTP_PORT=8080
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["flipserve"]
CMD ["serve"]
