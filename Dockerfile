# One image, both commands: `dcwatch agent` (DaemonSet, one per node) and `dcwatch analyzer`.
# Build: docker build -t ghcr.io/dcwatch/dcwatch:0.1.0 .
# GPU metrics: run with the NVIDIA container runtime (NVIDIA_VISIBLE_DEVICES=all,
# NVIDIA_DRIVER_CAPABILITIES=utility): it injects libnvidia-ml; nvidia-ml-py is a base dependency.
# The image holds the analyzer's extra too; a node that only runs the agent can `pip install dcwatch`.
# The kubernetes extra (grpcio) lets the agent read the kubelet's pod-resources socket.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY dcwatch ./dcwatch
COPY agent ./agent
COPY exporters ./exporters
COPY detectors ./detectors
RUN pip install '.[analyzer,kubernetes]' \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/dcwatch \
       --shell /usr/sbin/nologin dcwatch \
    && install -d -o dcwatch -g dcwatch -m 0750 /var/lib/dcwatch

WORKDIR /var/lib/dcwatch
USER 10001:10001
EXPOSE 9478 9479
ENTRYPOINT ["dcwatch"]
CMD ["agent"]
