# The keyrotor image: `keyrotor worker` and `keyrotor api` (docker-compose.yml runs both).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY workflows workflows
COPY activities activities
COPY api api
COPY worker worker
COPY cli cli
COPY config config
RUN pip install --no-cache-dir .
# installed, keyrotor looks for its policy file beside its packages: point it at the copy here
ENV KEYROTOR_CONFIG=/app/config/keyrotor.toml
USER nobody
ENTRYPOINT ["keyrotor"]
