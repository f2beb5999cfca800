# syntax=docker/dockerfile:1
#
# mcp-optimizer: the operator and its MCP endpoint in one process (`mcp-optimizer run`).
#
#   docker build -t mcp-optimizer:dev .
#   docker build -t mcp-optimizer:dev --build-arg MODEL_SOURCE=context --build-arg MODEL_DIR=model .
#
# The embedding model (the ONNX export of sentence-transformers/all-MiniLM-L6-v2 that fastembed
# uses) is baked in at build time; nothing is downloaded when the container starts. It comes from
#   MODEL_SOURCE=download  Hugging Face's Qdrant/all-MiniLM-L6-v2-onnx (fastembed's own source), or
#   MODEL_SOURCE=context   a directory of the build context (MODEL_DIR) holding model.onnx,
#                          tokenizer.json, config.json, special_tokens_map.json, tokenizer_config.json.
# Either way the build embeds a text with it and fails if that does not give 384 dimensions.
#
# Runs as uid 10001 with a read-only root filesystem: the index lives on a volume at
# /var/lib/mcp-optimizer, HOME and temporary files in /tmp (an emptyDir in the Helm chart).
# Not built in this project's CI (no container engine there); see docs/kind.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG MODEL_SOURCE=download

# --- build: the package and its dependencies in a venv ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mcp_optimizer ./mcp_optimizer
RUN pip install . \
 && python -c "import sqlite3, sqlite_vec; c = sqlite3.connect(':memory:'); c.enable_load_extension(True); sqlite_vec.load(c); print('sqlite-vec', c.execute('select vec_version()').fetchone()[0])"

# --- the model, from Hugging Face at build time ...-----------------------------------------------
FROM build AS model-download
ARG MODEL_REPO=Qdrant/all-MiniLM-L6-v2-onnx
ARG MODEL_REVISION=main
RUN python -c "from huggingface_hub import snapshot_download; snapshot_download('${MODEL_REPO}', revision='${MODEL_REVISION}', local_dir='/model', allow_patterns=['*.onnx', '*.json', 'LICENSE*', 'README*'])" \
 && rm -rf /model/.cache

# --- ... or from the build context --------------------------------------------------------------
FROM build AS model-context
ARG MODEL_DIR=model
COPY ${MODEL_DIR}/ /model/

FROM model-${MODEL_SOURCE} AS model
RUN python -c "from pathlib import Path; from mcp_optimizer.embeddings import FastEmbedder; v = FastEmbedder(Path('/model')).embed(['list the tables of a database']); assert v.shape == (1, 384), v.shape; print('model ok')"

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-optimizer" \
      org.opencontainers.image.description="Kubernetes operator indexing MCP servers for find_tool" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mcp-optimizer \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin mcp-optimizer \
 && mkdir -p /var/lib/mcp-optimizer \
 && chown 10001:10001 /var/lib/mcp-optimizer
COPY --from=build /opt/venv /opt/venv
COPY --from=model /model /opt/mcp-optimizer/model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MCP_OPTIMIZER_EMBEDDING_MODEL_PATH=/opt/mcp-optimizer/model \
    MCP_OPTIMIZER_DB=/var/lib/mcp-optimizer/index.db \
    MCP_OPTIMIZER_LIVENESS_ENDPOINT=http://0.0.0.0:8081/healthz
VOLUME ["/var/lib/mcp-optimizer"]
# MCP endpoint, kopf liveness, metrics and readiness.
EXPOSE 8080 8081 9090
USER 10001:10001
ENTRYPOINT ["mcp-optimizer", "run"]
