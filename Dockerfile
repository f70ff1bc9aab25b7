# One image for every revoker process: the worker, beat, Flower, the admin API and the demo service.
# Build: docker build -t revoker .   (docker-compose.yml builds it for you)
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Wheels, so the runtime image carries no build tooling. [demo] includes [server] and [worker]:
# everything the image runs, plus FastAPI for the demo service.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[demo]"

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels "revoker[demo]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/revoker --create-home revoker
# Celery warns when run as root, and nothing here needs root: run unprivileged.
USER revoker
WORKDIR /var/lib/revoker
EXPOSE 8080 8000 5555
CMD ["revoker", "api", "--host", "0.0.0.0", "--port", "8080"]
