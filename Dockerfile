# syntax=docker/dockerfile:1
# leadscore: the HTTP service, the worker and the migration step from one image.
#
#   docker build -t leadscore .
#   docker run --rm -e LEADSCORE_DATABASE_URL=... leadscore leadscore migrate    # once per release
#   docker run -p 8000:8000 -e LEADSCORE_DATABASE_URL=... leadscore              # any number of replicas
#   docker run -e LEADSCORE_DATABASE_URL=... leadscore leadscore worker           # deliveries, timers, jobs
#
# docs/operations.md explains the settings, scaling out, backups and upgrades.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: compile nothing at run time, ship only the virtual environment ----------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
COPY rules ./rules
COPY deploy/install.sh ./deploy/install.sh
RUN sh deploy/install.sh /opt/leadscore /src

# -- run: the same slim base, no compiler, no sources, a user without privileges -----------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 leadscore \
 && useradd --system --uid 10001 --gid leadscore --home-dir /var/lib/leadscore --create-home leadscore
COPY --from=build /opt/leadscore /opt/leadscore
ENV PATH=/opt/leadscore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LEADSCORE_DATABASE_URL=sqlite:////var/lib/leadscore/leadscore.db
WORKDIR /var/lib/leadscore
USER leadscore:leadscore
EXPOSE 8000
# /healthz answers while the process lives; /readyz (database reachable, rules loaded) is for the
# load balancer. Python's urllib: the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=4s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status != 200)"]
# Migrations are their own step (`leadscore migrate`): replicas start with --no-migrate.
CMD ["leadscore", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
