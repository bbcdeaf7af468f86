# The application image used by docker-compose.yml for provision, worker, sink and shim.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: only a pyproject.toml change rebuilds it.
# (Empty dirs for every package pyproject.toml lists, and a README, let setuptools build the
# project before the sources are copied.)
COPY pyproject.toml ./
RUN python -c "import os, tomllib; [os.makedirs(p.replace('.', '/'), exist_ok=True) for p in tomllib.load(open('pyproject.toml', 'rb'))['tool']['setuptools']['packages']]" \
    && touch README.md \
    && pip install . \
    && pip uninstall -y kafka-notifications \
    && rm -rf build *.egg-info

COPY . .
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && useradd --system --uid 10001 --home-dir /app app \
    && mkdir -p /app/var && chown app /app/var

USER app
# Processes run from /app, so topics.yaml and schemas/ resolve next to the sources.
CMD ["python", "-m", "streams", "worker", "-l", "info"]
