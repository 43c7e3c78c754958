# ARK itself as a container: the "ark" service of the container bundle (docs/deploy.md, "The container bundle").
# Installed as scripts/install installs it: llama.cpp built portably (one CPU backend per x86-64 level), ARK's
# dependencies from requirements/ark.lock with --require-hashes, then ARK itself with --no-deps.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/ark/venv
ENV PATH=/opt/ark/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/ark/src

# the dependencies first: a change to ARK's code does not rebuild them
COPY pyproject.toml requirements/ark.lock ./
COPY scripts/llama-wheel scripts/llama-wheel
RUN mkdir requirements && mv ark.lock requirements/ \
    && pip install --no-cache-dir --no-deps "$(ARK_BUILD_CACHE=/tmp/wheels scripts/llama-wheel python portable)" \
    && rm -rf /tmp/wheels \
    && pip install --no-cache-dir --require-hashes --no-deps -r requirements/ark.lock

COPY README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && groupadd --gid 10001 ark \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ark

USER 10001:10001
CMD ["ark", "up"]
