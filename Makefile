# tenfold: `make run` serves, `make test` tests. Both create/update .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TENFOLD := $(VENV)/bin/tenfold
STAMP := $(VENV)/.installed
REPO ?= var/model-repository
PYTEST_ARGS ?=
PODS ?= 1

.PHONY: test-unit prometheus triton-optional bench-memory bench-overload bench-feed bench-effects bench-events bench-mesh install run test test-stress lint protos bench-pod bench-gateway bench-peers triton-venv clean

$(STAMP): pyproject.toml setup.py $(wildcard protos/*/*/*.proto protos/*/*.proto)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,torch,optimize,loadtest]'
	@touch $(STAMP)

install: $(STAMP)

# the default models, trained from the seeded simulation (a few minutes, once)
# the build, then the optimizer on the models the feed serves (version 2 serves;
# docs/models.md "Which version serves")
$(REPO)/feed_user_tower/feed_assets.json: | $(STAMP)
	$(TENFOLD) models build --out $(REPO)

# --pod-cores 1: make run's one pod shares this machine with the gateway and the
# clients; tuned for all cores (2 instances) it served one ladder rung less end to end
$(REPO)/.optimized: $(REPO)/feed_user_tower/feed_assets.json
	$(TENFOLD) optimize feed_recall --repository $(REPO) --no-bench --pod-cores 1
	$(TENFOLD) optimize feed_list_ranker --repository $(REPO) --no-bench --pod-cores 1
	@touch $@

run: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) up --repository $(REPO) --pods $(PODS)

# Debian's prometheus (~19 MB, with promtool) for the Prometheus tests (autoscale source,
# k8s/observability); best effort:
# without root or apt the test skips and says why
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	  || echo "prometheus not installed: the Prometheus tests (tests/autoscale, tests/k8s) will skip"; }

# NVIDIA Triton for its tests (tests/gateway/test_triton_pool.py, tests/loadtest); best
# effort: without it (no registry) those tests skip and say why
triton-optional:
	@out=$$($(MAKE) --no-print-directory triton-venv 2>&1) || { \
	  echo "Triton venv not installed: the Triton tests will skip; make triton-venv said:"; \
	  echo "$$out" | tail -5; }

# pytest exits 5 when a selection holds no tests: that is not a failure here.
test: $(STAMP) prometheus triton-optional
	TENFOLD_TRITON_VENV=$(abspath $(TRITON_VENV)) $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were selected"; exit 0; fi; exit $$rc

# the unit tests alone (they start nothing: docs/testing.md), without the Prometheus and
# Triton installs that only integration tests need
test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# the tests marked `timing`, STRESS_RUNS times in a row with one core kept busy
# (docs/testing.md): they must not depend on wall-clock luck
STRESS_RUNS ?= 20
test-stress: $(STAMP)
	$(PY) -m tests.stress --runs $(STRESS_RUNS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# regenerate protos/**/*_pb2.py from the .proto sources (also done by every install)
protos: $(STAMP)
	$(PY) -c 'import setup; setup.generate_protos()'

# the benchmarks of docs/benchmarks.md (`tenfold loadtest bench --help`)
bench-pod: $(STAMP)
	$(TENFOLD) loadtest bench pod --out docs/results/bench_pod.json

bench-gateway: $(STAMP) $(REPO)/feed_user_tower/feed_assets.json
	$(TENFOLD) loadtest bench gateway --repository $(REPO) --out docs/results/bench_gateway.json

# POST /v1/feed: the stack make run starts vs the day-one PyTorch feed server vs the
# in-process limit, with the CPU split and the per-stage table (docs/benchmarks.md)
bench-feed: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) loadtest bench feed --repository $(REPO) --out docs/results/bench_feed.json

# POST /v1/effects/cartoon: the stack make run starts vs the day-one PyTorch effects
# server, per-stage table (docs/benchmarks.md)
bench-effects: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) loadtest bench effects --repository $(REPO) --out docs/results/bench_effects.json

# overload: the feed at 1x/1.5x/3x capacity, with the adaptive concurrency limit and without
bench-overload: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) loadtest bench overload --repository $(REPO) --out docs/results/bench_overload.json

bench-memory: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) loadtest bench memory --repository $(REPO) --out docs/results/bench_memory.json

# feedback events: ingestion, the stream processor, lag to the state, feed with/without it
bench-events: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) loadtest bench events --repository $(REPO) --out docs/results/bench_events.json

# the mesh: Envoy's overhead, KServe v2 straight to the pod, endpoint change latency
bench-mesh: $(STAMP) $(REPO)/.optimized
	$(TENFOLD) loadtest bench mesh --repository $(REPO) --out docs/results/bench_mesh.json

# NVIDIA Triton (the tritonserver binary in the nvidia-pytriton wheel) for the peer
# benchmark; its own venv because it pins numpy<2. Its onnxruntime is tenfold's own
# version (read from .venv), so Triton and the pods run the same kernels
TRITON_VENV ?= .venv-triton
$(TRITON_VENV)/.installed: | $(STAMP)
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --timeout 60 --retries 2 'nvidia-pytriton>=0.7' 'numpy<2' \
	  "onnxruntime==$$($(PY) -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')"
	@touch $@

triton-venv: $(TRITON_VENV)/.installed

# tenfold vs in-process ORT vs naive PyTorch vs Triton, same load (docs/benchmarks.md)
bench-peers: $(STAMP) $(TRITON_VENV)/.installed $(REPO)/feed_user_tower/feed_assets.json
	$(TENFOLD) loadtest bench peers --repository $(REPO) --triton-venv $(TRITON_VENV) \
		--out docs/results/bench_peers.json

clean:
	rm -rf $(VENV) $(TRITON_VENV) var build *.egg-info
