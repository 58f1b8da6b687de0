# One image for every metergate service; the command picks the service (metergate run NAME).
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY libs libs
COPY services services
COPY schemas schemas
RUN pip install --no-cache-dir -e .
ENV METERGATE_SCHEMAS_DIR=/app/schemas
ENTRYPOINT ["metergate"]
