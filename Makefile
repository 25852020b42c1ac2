# tenfold: `make run` serves, `make test` tests. Both create/update .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TENFOLD := $(VENV)/bin/tenfold
STAMP := $(VENV)/.installed
REPO ?= var/model-repository
PYTEST_ARGS ?=

.PHONY: install run test lint protos bench-pod clean

$(STAMP): pyproject.toml setup.py $(wildcard protos/*/*/*.proto protos/*/*.proto)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,torch]'
	@touch $(STAMP)

install: $(STAMP)

# the default models, trained from the seeded simulation (a few minutes, once)
$(REPO)/build_report.json: | $(STAMP)
	$(TENFOLD) models build --out $(REPO)

run: $(STAMP) $(REPO)/build_report.json
	@echo "Serving $(REPO) on 127.0.0.1 (Ctrl-C or SIGTERM drains and stops). Try, from another shell:"
	@echo "  curl -s localhost:8000/v2/models/feed_ranker"
	@echo "  curl -s -X POST localhost:8000/v2/models/feed_ranker/infer -d '{\"inputs\":[{\"name\":\"user_ctx\",\"datatype\":\"INT64\",\"shape\":[2,4],\"data\":[8,20,1,0,8,20,1,0]},{\"name\":\"history\",\"datatype\":\"INT64\",\"shape\":[2,20],\"data\":[$$(python3 -c 'print(",".join(["0"]*40))')]},{\"name\":\"item\",\"datatype\":\"INT64\",\"shape\":[2,1],\"data\":[101,202]}]}'"
	@echo "  curl -s localhost:8002/metrics | grep tenfold_inference"
	$(TENFOLD) inference serve --model-repository $(REPO)

# pytest exits 5 when a selection holds no tests: that is not a failure here.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were selected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# regenerate protos/**/*_pb2.py from the .proto sources (also done by every install)
protos: $(STAMP)
	$(PY) -c 'import setup; setup.generate_protos()'

bench-pod: $(STAMP)
	$(PY) -m loadtest.bench_pod --out docs/results/bench_pod.json

clean:
	rm -rf $(VENV) var build *.egg-info
