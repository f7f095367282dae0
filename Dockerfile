# The Pulse worker image: `docker compose up` builds it as the `worker` service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs: the build context also holds .venv and test state.
# README.md* copies the readme when it exists (pyproject names it) without failing when not.
COPY pyproject.toml README.md* ./
COPY pulse ./pulse
COPY agents ./agents
COPY models ./models
COPY tables ./tables
# gcc builds Pulse's C speedups (tables/_speedups.c); it is removed again after the build.
# Their build is optional for pip, not for the image: the import fails the build without them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && (cd / && python -c "import tables._speedups") \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app pulse

USER pulse
# The worker's health and metrics (PULSE_WEB_PORT); `pulse api` serves on PULSE_API_PORT.
EXPOSE 6066 6067
CMD ["pulse", "worker", "-l", "info"]
