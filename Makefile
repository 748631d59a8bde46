# `make test` and `make demo` do all set-up on a fresh machine: both depend on `make install`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OPENCV_VERSION := $(shell sed -n 's/^opencv-contrib-python-headless==//p' constraints.txt)

.PHONY: install test test-fast demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@# albumentations brings the plain headless OpenCV, which lacks ximgproc: put the contrib build back on top.
	$(PY) -m pip install -q --no-deps --force-reinstall opencv-contrib-python-headless==$(OPENCV_VERSION)
	$(PY) -c "import cv2; assert hasattr(cv2, 'ximgproc') and hasattr(cv2.ximgproc, 'segmentation'), 'cv2.ximgproc.segmentation missing: the OpenCV contrib build was overwritten'; print('OpenCV', cv2.__version__, 'with ximgproc.segmentation')"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/rcnn bench detection --config configs/demo.yaml --out runs/demo

clean:
	rm -rf $(VENV) build *.egg-info
