# bigvar for pods (launch/xpk.sh build, or by hand):
#
#   docker build -t IMAGE .                                    # TPU (extras tpu,tfds)
#   docker build -t IMAGE --build-arg=EXTRAS=cuda12,tfds .     # NVIDIA GPUs
#   docker run --rm IMAGE --config=configs/var_tiny.py --workdir=/tmp/var_tiny
#
# The package is installed from a wheel (not editable), configs included: the entry point is
# `python -m bigvar.main`, and --config=configs/var_d16.py finds the packaged config from any
# directory. Nothing is installed when a container starts.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bigvar/ bigvar/
COPY configs/ configs/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir=/wheels .

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=tpu,tfds
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/bigvar-*.whl)[${EXTRAS}]" && rm -rf /wheels
WORKDIR /workspace
ENTRYPOINT ["python", "-m", "bigvar.main"]
