# distill: offline knowledge distillation. `make train-student` runs the main
# job on Fashion-MNIST (fetching the data and building the teacher cache as
# needed); `make test` runs the test suite.

CARGO        ?= cargo
BIN          := target/release/distill
DATA         ?= data/fashion-mnist
SMALL_DATA   := data/fashion-mnist-small
TEACHER_SPEC ?= cnn:c32-p-c64-p-f128-10
TEACHER      ?= data/teachers/fashion-cnn
CACHES       ?= data/caches
T            ?= 4
ALPHA        ?= 0.5
LOSS         ?= kd
ENCODING     ?= f16
STUDENT      ?= mlp:784-128-10
EPOCHS       ?= 15
SEED         ?= 0
RUNS         ?= runs
CACHE_DIR     = $(CACHES)/fashion-T$(T)-$(ENCODING)

.PHONY: all build data teacher cache train-student baseline sweep test stress bench clean-runs

all: build

build: $(BIN)

$(BIN): Cargo.toml $(shell find src -name '*.rs')
	$(CARGO) build --release

# Fashion-MNIST from the Debian package dataset-fashion-mnist (idempotent).
data: $(DATA)/train-images-idx3-ubyte.gz

$(DATA)/train-images-idx3-ubyte.gz:
	bash data/fetch-fashion-mnist.sh $(DATA)

# Trains the default CNN teacher; its weights and card are committed under
# data/teachers/, so a fresh machine never needs to run this.
teacher: $(BIN) data
	$(BIN) train --data $(DATA) --student $(TEACHER_SPEC) --epochs 12 --batch 128 \
	  --optimizer adam --lr 1e-3 --schedule cosine --seed 0 --out $(TEACHER)
	$(BIN) eval --model $(TEACHER) --data $(DATA)

# Phase one: the teacher's outputs on both splits, once.
cache: $(CACHE_DIR)/train/manifest.json $(CACHE_DIR)/test/manifest.json

$(CACHE_DIR)/%/manifest.json: $(BIN) | data
	$(BIN) cache build --teacher $(TEACHER) --data $(DATA) --split $* -T $(T) \
	  --encoding $(ENCODING) --out $(CACHE_DIR)/$*

STUDENT_TAG = $(subst :,-,$(STUDENT))

# Phase two: the default student distilled from the cache.
train-student: cache
	$(BIN) train --data $(DATA) --student $(STUDENT) --cache $(CACHE_DIR)/train \
	  --test-cache $(CACHE_DIR)/test --loss $(LOSS) -T $(T) --alpha $(ALPHA) \
	  --epochs $(EPOCHS) --seed $(SEED) --out $(RUNS)/$(STUDENT_TAG)-kd-T$(T)-a$(ALPHA)-s$(SEED)

# The same student on hard labels only, same epochs, optimizer and seed.
baseline: $(BIN) data
	$(BIN) train --data $(DATA) --student $(STUDENT) --epochs $(EPOCHS) --seed $(SEED) \
	  --out $(RUNS)/$(STUDENT_TAG)-baseline-s$(SEED)

# Many students from the one cache: every (T, alpha) plus a hard-label
# baseline per student; report.md, results.csv and plots in $(SWEEP_OUT).
# Rerunning skips finished runs and resumes a killed one.
SWEEP_STUDENTS ?= mlp:784-32-10,mlp:784-128-10,mlp:784-512-512-10,cnn:c8-p-c16-p-10
SWEEP_TEMPS    ?= 1,4
SWEEP_ALPHAS   ?= 0.1,0.5
SWEEP_EPOCHS   ?= 3
SWEEP_JOBS     ?= 1
SWEEP_OUT      ?= $(RUNS)/sweep

sweep: cache
	$(BIN) sweep --cache $(CACHE_DIR)/train --test-cache $(CACHE_DIR)/test --data $(DATA) \
	  --teacher $(TEACHER) --students $(SWEEP_STUDENTS) --temperatures $(SWEEP_TEMPS) \
	  --alphas $(SWEEP_ALPHAS) --baseline --epochs $(SWEEP_EPOCHS) --seed $(SEED) \
	  --jobs $(SWEEP_JOBS) --out $(SWEEP_OUT)

test:
	$(CARGO) test --locked
	$(CARGO) check --locked --benches

bench: $(BIN) data
	$(CARGO) bench --bench model
	$(CARGO) bench --bench cache
	$(CARGO) bench --bench distill

clean-runs:
	rm -rf $(RUNS)
