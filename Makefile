# The two commands of the README: `make run` and `make test` (and `make docs`, which serves the site).
# All create .venv on first use (only Python 3.10+ with venv and pip needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 1883
WEB_PORT ?= 8080
SIM_INPUTS ?= /tmp/edison-inputs.jsonl

.PHONY: run test docs bench clean mqttjs

# Two stamps: `make run` needs only the programs; the tests, the site and the benchmarks need everything.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(BIN)/.installed-run: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[broker,bridge]'
	touch $@

$(BIN)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[broker,bridge,nats,test,docs]'
	touch $@ $(BIN)/.installed-run

# The embedded broker (trial mode: no users, loopback only) on 127.0.0.1:$(PORT) with the control page on
# 127.0.0.1:$(WEB_PORT), and the node with simulated pins, printing the LED and the button as they change; lines
# appended to $(SIM_INPUTS) press the button. The node starts once the broker listens, with a state directory of this
# run's own (removed at the end), so runs never share the ids of commands carried out. Ctrl-C stops both, the node
# first (its `offline` reaches the broker); either of them ending (a port already taken, say) stops the other. The
# broker has its own session, so Ctrl-C reaches it last.
run: $(BIN)/.installed-run
	@$(BIN)/python -c 'import socket; socket.create_server(("127.0.0.1", $(PORT)))' 2>/dev/null || \
		{ echo "make run: port $(PORT) is taken (another MQTT broker?): try make run PORT=1884" >&2; exit 1; }
	@$(BIN)/python -c 'import socket; socket.create_server(("127.0.0.1", $(WEB_PORT)))' 2>/dev/null || \
		{ echo "make run: port $(WEB_PORT) is taken: try make run WEB_PORT=8081" >&2; exit 1; }
	@echo "control page: http://127.0.0.1:$(WEB_PORT)/ (trial mode: any user name, no password)"
	@state=$$(mktemp -d -t edison-run.XXXXXX); \
	setsid $(BIN)/edison-broker --allow-anonymous --bind 127.0.0.1:$(PORT) --web-bind 127.0.0.1:$(WEB_PORT) & broker=$$!; \
	node=; trap 'trap - EXIT INT TERM; [ -z "$$node" ] || { kill -INT $$node 2>/dev/null; wait $$node; }; \
		kill -INT $$broker 2>/dev/null; wait; rm -rf "$$state"' EXIT INT TERM; \
	until (exec 3<>/dev/tcp/127.0.0.1/$(PORT)) 2>/dev/null; do kill -0 $$broker 2>/dev/null || exit 1; sleep 0.05; done; \
	MQTT_USERNAME=edison-1 $(BIN)/edison-node --config topics.yaml --device edison-1 --state "$$state" \
		--broker mqtt://127.0.0.1:$(PORT) --pins sim --sim-inputs $(SIM_INPUTS) & node=$$!; \
	wait -n $$broker $$node

# Lint and types first (settings in ruff.toml and setup.cfg): they take seconds and catch what tests miss.
# The site next (a second): --strict fails on a broken link or a page left out of the navigation (never add
# --quiet: it hides the warnings --strict counts).
test: $(BIN)/.installed
	$(BIN)/ruff check
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python -m pytest

# The documentation site on http://127.0.0.1:8000, rebuilt as the pages change.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

bench: $(BIN)/.installed
	$(BIN)/python bench/node.py

# The control page's MQTT client: mqtt.js's own browser bundle (dist/mqtt.min.js) and license, from the npm registry
# (npm checks the package's integrity). To update: change the version, run `make mqttjs`, run the tests, commit.
MQTTJS_VERSION := 5.16.0
PAGE := broker/control_page
mqttjs:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent mqtt@$(MQTTJS_VERSION) >/dev/null && tar xzf mqtt-$(MQTTJS_VERSION).tgz) && \
	cp "$$tmp/package/dist/mqtt.min.js" $(PAGE)/mqtt.min.js && \
	cp "$$tmp/package/LICENSE.md" $(PAGE)/mqtt.min.js.LICENSE.md && \
	echo "$(PAGE)/mqtt.min.js: mqtt.js $(MQTTJS_VERSION), sha256 $$(sha256sum $(PAGE)/mqtt.min.js | cut -c1-64)"

clean:
	rm -rf $(VENV) site *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
