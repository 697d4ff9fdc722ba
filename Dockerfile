# The Fleet image compose.yaml builds: `fleet up` with the model extras.
# CPU torch by default; for NVIDIA GPUs build with a CUDA wheel index, e.g.
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim
ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fleet ./fleet
COPY worker ./worker
COPY scaler ./scaler
COPY scheduler ./scheduler
COPY configs ./configs
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch --index-url "$TORCH_INDEX"; fi \
 && pip install ".[models,nvidia]"
RUN useradd --create-home --uid 10001 fleet
USER fleet
ENTRYPOINT ["fleet"]
ENV FLEET_CONFIG=/app/configs/fleet.yaml
CMD ["up"]
