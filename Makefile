# distill: offline knowledge distillation. `make train-student` runs the main
# job on Fashion-MNIST (fetching the data and building the teacher cache as
# needed); `make test` runs the test suite.

CARGO        ?= cargo
BIN          := target/release/distill
DATA         ?= data/fashion-mnist
SMALL_DATA   := data/fashion-mnist-small
TEACHER_SPEC ?= cnn:c32-p-c64-p-f128-10
# The default teacher (since 2026-12-04) is the longer-trained CNN recipe
# with seed 0's 10% validation split held out (93.14%, `make
# teacher-long-val`), so runs that validate on that split (VAL_SEED) choose
# settings on images the teacher never saw. The same recipe on all 60,000
# images (92.90%, `make teacher-long`, the default from 2026-12-02) and the
# first teacher, 12 epochs (92.11%), stay committed.
TEACHER_SHORT    ?= data/teachers/fashion-cnn
TEACHER_LONG     ?= data/teachers/fashion-cnn-long
TEACHER_LONG_VAL ?= data/teachers/fashion-cnn-long-val
TEACHER          ?= $(TEACHER_LONG_VAL)
# The validation split of every run the Makefile trains (--val-seed): seed
# 0's, the one the default teacher held out, whatever SEED is.
VAL_SEED     ?= 0
CACHES       ?= data/caches
# The cache stores log-probabilities at CACHE_T=4; students distil at T
# (re-tempered exactly from the dense cache). T and ALPHA are the defaults
# of `distill train --cache`, chosen on validation (README.md, "Validation,
# and defaults that distil"; every run holds out 10% of the training split).
CACHE_T      ?= 4
T            ?= 1
# (the pseudo loss, the teacher's argmax alone, takes alpha 0)
ALPHA        ?= $(if $(filter pseudo,$(LOSS)),0,0.1)
LOSS         ?= kd
ENCODING     ?= f16
STUDENT      ?= mlp:784-128-10
# 60 epochs: at 15 the distilled MLP is no more than 0.12 points ahead of
# hard labels on clean validation, at 60 about 0.7 (README.md).
EPOCHS       ?= 60
SEED         ?= 0
# Caches and runs of other data (e.g. DATA=data/fashion-mnist-small) are
# named after it, so they never stand in for the default data's (make would
# take an existing manifest or card as up to date).
DATA_TAG      = $(if $(filter data/fashion-mnist data/fashion-mnist/ ./data/fashion-mnist ./data/fashion-mnist/,$(DATA)),,-$(notdir $(patsubst %/,%,$(DATA))))
RUNS         ?= runs$(DATA_TAG)
# One cache per teacher, temperature, encoding (and data other than the default).
CACHE_DIR     = $(CACHES)/$(notdir $(TEACHER))-T$(CACHE_T)-$(ENCODING)$(DATA_TAG)

.PHONY: distill-best all build build-cuda gpu-bundle gpu-check data teacher teacher-long teacher-long-val teacher-aug teacher-resnet cache train-student baseline sweep test doc stress bench bench-pytorch clean-runs

all: build

build: $(BIN)

# cargo decides what is stale; caches and runs depend on the binary
# order-only, so a rebuild never invalidates them.
$(BIN): FORCE
	$(CARGO) build --release

FORCE:

# The `cuda` feature, in its own target directory (target/cuda) so the CPU
# build's cache survives. Needs a CUDA 12 or 13 toolkit; on a machine without
# one, ../shared/tools/cuda-env.sh assembles CUDA 13.0 from PyPI wheels
# (see README.md, "GPU").
CUDA_ENV ?= ../shared/tools/cuda-env.sh
# scripts/cuda-build.sh builds it with dfdx patched for distill's own
# kernels (src/model/cuda/), leaving Cargo.toml and Cargo.lock untouched.
build-cuda:
	CARGO=$(CARGO) CUDA_ENV=$(CUDA_ENV) bash scripts/cuda-build.sh build

# Packs the cuda binary (stripped) and the headers its run-time-compiled
# kernels include into .gpu/ (git-ignored; it travels with a checkout to a
# GPU machine), where scripts/gpu-check.sh looks for them.
gpu-bundle:
	CUDA_ENV=$(CUDA_ENV) bash scripts/gpu-bundle.sh

# On a GPU machine, without Rust: the ops against the CPU, cache build ->
# train-student on cuda beside cpu, and the step benchmark; the report goes
# to gpu-check/report.txt (BENCHMARKS.md records what it said).
gpu-check:
	bash scripts/gpu-check.sh

# Fashion-MNIST from the Debian package dataset-fashion-mnist (idempotent).
data: $(DATA)/train-images-idx3-ubyte.gz

$(DATA)/train-images-idx3-ubyte.gz:
	bash data/fetch-fashion-mnist.sh $(DATA)

# Trains the first CNN teacher (12 epochs, 92.11%); its weights and card are
# committed under data/teachers/, so a fresh machine never needs to run this.
# `make cache TEACHER=$(TEACHER_SHORT)` caches it.
# These two predate input normalisation and the validation split: their
# recipes turn both off, so that they are the committed teachers' settings
# (and `train` accepts the committed directory as a rerun of them).
teacher: $(BIN) data
	$(BIN) train --data $(DATA) --student $(TEACHER_SPEC) --epochs 12 --batch 128 \
	  --optimizer adam --lr 1e-3 --schedule cosine --normalize none --val-fraction 0 \
	  --seed 0 --out $(TEACHER_SHORT)
	$(BIN) eval --model $(TEACHER_SHORT) --data $(DATA)

# The default teacher until 2026-12-04 (now teacher-long-val, the same recipe
# with seed 0's validation split held out): the same architecture trained longer (24 epochs,
# shifts of up to 1 pixel; 92.90%), also committed. Its own 50%-pruned copy
# cannot pass it on hard labels, which the first teacher's can (PRUNING.md
# section 1).
teacher-long: $(BIN) data
	$(BIN) train --data $(DATA) --student $(TEACHER_SPEC) --epochs 24 --batch 128 \
	  --optimizer adam --lr 1e-3 --schedule cosine --augment shift=1 --normalize none \
	  --val-fraction 0 --seed 0 --out $(TEACHER_LONG)
	$(BIN) eval --model $(TEACHER_LONG) --data $(DATA)

# The same recipe with a validation split held out: distill train's default
# --val-fraction 0.1 drawn from seed 0, so runs with --val-seed 0 validate on
# 6,000 images this teacher never saw (BENCHMARKS.md, "Validation images
# the teacher trained on"); committed, 93.14%, the default teacher.
teacher-long-val: $(BIN) data
	$(BIN) train --data $(DATA) --student $(TEACHER_SPEC) --epochs 24 --batch 128 \
	  --optimizer adam --lr 1e-3 --schedule cosine --augment shift=1 --seed 0 \
	  --val-fraction 0.1 --out $(TEACHER_LONG_VAL)
	$(BIN) eval --model $(TEACHER_LONG_VAL) --data $(DATA)

# The same architecture trained with the flip,shift=2 augmentation, so it
# reads those views (95.0% agreement on them; fashion-cnn-long: 80.9%);
# committed, 93.28% (BENCHMARKS.md, "Patient teaching from the cache").
TEACHER_AUG ?= data/teachers/fashion-cnn-aug
teacher-aug: $(BIN) data
	$(BIN) train --data $(DATA) --student $(TEACHER_SPEC) --epochs 40 --batch 128 \
	  --optimizer adam --lr 1e-3 --schedule cosine --augment flip,shift=2 --seed 0 --out $(TEACHER_AUG)
	$(BIN) eval --model $(TEACHER_AUG) --data $(DATA)

# The residual teacher (ResNet-20 of He et al., batch norm, flips and
# padded crops, SGD with momentum, cosine): `make teacher-resnet`. It
# checkpoints every 200 steps and resumes, so an interrupted run continues
# where it stopped (the result is byte-identical for the same thread count).
TEACHER_RESNET      ?= data/teachers/fashion-resnet20
TEACHER_RESNET_SPEC ?= resnet:16x3-32x3-64x3-10
teacher-resnet: $(BIN) data
	$(BIN) train --data $(DATA) --student $(TEACHER_RESNET_SPEC) --epochs 30 --batch 128 \
	  --optimizer sgd --momentum 0.9 --lr 0.1 --weight-decay 5e-4 --schedule cosine \
	  --augment flip,crop=2 --seed 0 --checkpoint-every 200 --resume --out $(TEACHER_RESNET)
	$(BIN) eval --model $(TEACHER_RESNET) --data $(DATA)

# Phase one: the teacher's outputs on both splits, once.
cache: $(CACHE_DIR)/train/manifest.json $(CACHE_DIR)/test/manifest.json

$(CACHE_DIR)/%/manifest.json: | $(BIN) data
	$(BIN) cache build --teacher $(TEACHER) --data $(DATA) --split $* -T $(CACHE_T) \
	  --encoding $(ENCODING) --out $(CACHE_DIR)/$*

STUDENT_TAG = $(subst :,-,$(STUDENT))

BASELINE_RUN = $(RUNS)/$(STUDENT_TAG)-baseline-e$(EPOCHS)-s$(SEED)
# Student runs write a checkpoint every 1000 steps and at each epoch's
# end, and a rerun continues a killed one from it (same bytes as a run
# never stopped) instead of starting over.
RESUMABLE = --checkpoint-every 1000 --resume

# Phase two: the default student distilled from the cache (after its
# hard-label baseline, which its curves.png draws for comparison).
train-student: cache $(BASELINE_RUN)/model.json
	$(BIN) train --data $(DATA) --student $(STUDENT) --cache $(CACHE_DIR)/train \
	  --test-cache $(CACHE_DIR)/test --loss $(LOSS) -T $(T) --alpha $(ALPHA) \
	  --epochs $(EPOCHS) --seed $(SEED) --val-seed $(VAL_SEED) --baseline-run $(BASELINE_RUN) \
	  $(RESUMABLE) --out $(RUNS)/$(STUDENT_TAG)-$(LOSS)-T$(T)-a$(ALPHA)-e$(EPOCHS)-s$(SEED)

# The same student on hard labels only, same epochs, optimizer and seed.
baseline: $(BIN) data
	$(BIN) train --data $(DATA) --student $(STUDENT) --epochs $(EPOCHS) --seed $(SEED) \
	  --val-seed $(VAL_SEED) $(RESUMABLE) --out $(BASELINE_RUN)

$(BASELINE_RUN)/model.json: | $(BIN) data
	$(MAKE) baseline

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
	  --val-seed $(VAL_SEED) --jobs $(SWEEP_JOBS) --out $(SWEEP_OUT)

# The headline recipe (README.md, "Results"): the long teacher's caches,
# built as needed, then for each of BEST_SEEDS the student distilled at
# BEST_T / BEST_ALPHA for BEST_EPOCHS and its hard-label baselines trained as
# long with the same optimizer and normalisation (plain, and augmented with
# BEST_BASE_AUGMENT); the means over the seeds at the end, then the three
# recipes against each other on the test images (`distill eval --arm`: over
# images and over seeds). With BEST_AUGMENT
# the student distils from a view set of that augmentation (BEST_VIEWS
# views) and both its augmented baseline and its views use it. Finished runs
# are kept, so a rerun only prints the table. Settings come from validation
# (README.md); e.g. `make distill-best STUDENT=cnn:c8-p-c16-p-10 BEST_EPOCHS=30`.
comma := ,
empty :=
space := $(empty) $(empty)
# a list as one comma-separated word: a b c -> a,b,c
join_comma = $(subst $(space),$(comma),$(strip $(1)))
BEST_TEACHER      ?= $(TEACHER_LONG)
BEST_EPOCHS       ?= 60
BEST_T            ?= 1
BEST_ALPHA        ?= 0.1
BEST_SEEDS        ?= 0 1 2
BEST_AUGMENT      ?=
BEST_VIEWS        ?= 16
BEST_BASE_AUGMENT ?= $(if $(BEST_AUGMENT),$(BEST_AUGMENT),flip$(comma)shift=2)
# Extra `distill train` flags for all three runs (e.g. the optimizer), and
# for one arm each (e.g. the batch size validation picks for that arm).
BEST_FLAGS        ?=
BEST_PLAIN_FLAGS  ?=
BEST_BASE_FLAGS   ?=
BEST_KD_FLAGS     ?=
BEST_CACHES        = $(CACHES)/$(notdir $(BEST_TEACHER))-T$(CACHE_T)-$(ENCODING)$(DATA_TAG)
BEST_OUT          ?= $(RUNS)/best
# an augmentation spec as a name part: flip,shift=2 -> flip-shift2
augment_tag        = $(subst =,,$(subst $(comma),-,$(1)))
BEST_VIEW_SET      = $(BEST_CACHES)/views-$(call augment_tag,$(BEST_AUGMENT))-k$(BEST_VIEWS)
# the augmented baseline is named by its augmentation, so changing
# BEST_BASE_AUGMENT trains a new baseline instead of reusing another's
BEST_BASE_TAG      = $(call augment_tag,$(BEST_BASE_AUGMENT))
BEST_TRAIN         = $(if $(BEST_AUGMENT),$(BEST_VIEW_SET),$(BEST_CACHES)/train)
# Runs with other BEST_FLAGS, or from another teacher than the default, get
# their own directories, so a finished run of one recipe is never taken for
# another's.
flags_tag          = $(if $(strip $(1)),-f$(shell printf '%s' '$(strip $(1))' | md5sum | cut -c1-6))
BEST_FLAGS_TAG     = $(call flags_tag,$(BEST_FLAGS))
BEST_TEACHER_TAG   = $(if $(filter-out $(TEACHER_LONG),$(BEST_TEACHER)),-$(notdir $(BEST_TEACHER)))
BEST_RUN           = $(BEST_OUT)/$(STUDENT_TAG)-e$(BEST_EPOCHS)$(BEST_FLAGS_TAG)
BEST_PLAIN_RUN     = $(BEST_RUN)-baseline$(call flags_tag,$(BEST_PLAIN_FLAGS))
BEST_AUG_RUN       = $(BEST_RUN)-baseline-aug-$(BEST_BASE_TAG)$(call flags_tag,$(BEST_BASE_FLAGS))
BEST_KD_RUN        = $(BEST_RUN)-kd$(BEST_TEACHER_TAG)-T$(BEST_T)-a$(BEST_ALPHA)$(if $(BEST_AUGMENT),-views-$(call augment_tag,$(BEST_AUGMENT))-k$(BEST_VIEWS))$(call flags_tag,$(BEST_KD_FLAGS))

distill-best: | $(BIN) data
	$(MAKE) $(BEST_CACHES)/test/manifest.json TEACHER=$(BEST_TEACHER)
	$(if $(BEST_AUGMENT),$(MAKE) $(BEST_VIEW_SET)/view-0/manifest.json,$(MAKE) $(BEST_CACHES)/train/manifest.json TEACHER=$(BEST_TEACHER))
	set -e; for s in $(BEST_SEEDS); do \
	  [ -f $(BEST_PLAIN_RUN)-s$$s/model.json ] || $(BIN) train --data $(DATA) \
	    --student $(STUDENT) --epochs $(BEST_EPOCHS) --seed $$s $(BEST_FLAGS) $(BEST_PLAIN_FLAGS) \
	    $(RESUMABLE) --out $(BEST_PLAIN_RUN)-s$$s; \
	  [ -f $(BEST_AUG_RUN)-s$$s/model.json ] || $(BIN) train --data $(DATA) \
	    --student $(STUDENT) --epochs $(BEST_EPOCHS) --seed $$s --augment $(BEST_BASE_AUGMENT) $(BEST_FLAGS) \
	    $(BEST_BASE_FLAGS) $(RESUMABLE) --out $(BEST_AUG_RUN)-s$$s; \
	  [ -f $(BEST_KD_RUN)-s$$s/model.json ] || $(BIN) train --data $(DATA) \
	    --student $(STUDENT) --epochs $(BEST_EPOCHS) --seed $$s --cache $(BEST_TRAIN) \
	    --test-cache $(BEST_CACHES)/test -T $(BEST_T) --alpha $(BEST_ALPHA) $(BEST_FLAGS) $(BEST_KD_FLAGS) \
	    $(RESUMABLE) --out $(BEST_KD_RUN)-s$$s; \
	done
	sh scripts/summarize_runs.sh $(foreach s,$(BEST_SEEDS),$(BEST_PLAIN_RUN)-s$(s)) \
	  $(foreach s,$(BEST_SEEDS),$(BEST_AUG_RUN)-s$(s)) \
	  $(foreach s,$(BEST_SEEDS),$(BEST_KD_RUN)-s$(s))
	$(BIN) eval --data $(DATA) --split test \
	  --arm plain=$(call join_comma,$(foreach s,$(BEST_SEEDS),$(BEST_PLAIN_RUN)-s$(s))) \
	  --arm $(BEST_BASE_TAG)=$(call join_comma,$(foreach s,$(BEST_SEEDS),$(BEST_AUG_RUN)-s$(s))) \
	  --arm distilled=$(call join_comma,$(foreach s,$(BEST_SEEDS),$(BEST_KD_RUN)-s$(s)))

$(BEST_VIEW_SET)/view-0/manifest.json: | $(BIN) data
	$(BIN) cache build --teacher $(BEST_TEACHER) --data $(DATA) --split train -T $(CACHE_T) \
	  --encoding $(ENCODING) --augment $(BEST_AUGMENT) --views $(BEST_VIEWS) --out $(BEST_VIEW_SET)

test: doc
	$(CARGO) test --locked
	$(CARGO) check --locked --benches

# The API docs, with broken or private intra-doc links treated as errors.
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps

# The long reliability campaign (issue 7): more kill points, corruptions and
# fuzz cases; prints its figures (see RELIABILITY.md).
stress:
	DISTILL_STRESS=1 $(CARGO) test --locked --test tests -- reliability --nocapture

bench: $(BIN) data
	$(CARGO) bench --bench model
	$(CARGO) bench --bench cache
	$(CARGO) bench --bench distill

# distill beside PyTorch on the CPU (scripts/bench_pytorch.py): every
# student row and the teacher forward, alternated for BENCH_ROUNDS rounds,
# medians, BENCH_THREADS threads each; the table goes to
# $(BENCH_OUT)/table.md (BENCHMARKS.md, "Side by side with PyTorch").
# PyTorch is installed from PyPI into the git-ignored $(BENCH_VENV); give
# PYTHON=/path/to/python to use an existing environment with torch, numpy
# and safetensors instead. BENCH_ROWS=mlp128,cnn8 runs some rows only;
# BENCH_LIMIT=N times the first N training images only (the ResNet rows).
# Not part of `make test`; distill never depends on PyTorch.
BENCH_VENV    ?= .venv-bench
PYTHON        ?= $(BENCH_VENV)/bin/python
BENCH_ROUNDS  ?= 3
BENCH_THREADS ?= 2
BENCH_ROWS    ?=
BENCH_LIMIT   ?=
BENCH_OUT     ?= $(RUNS)/bench-pytorch

bench-pytorch: $(BIN) data $(if $(filter $(BENCH_VENV)/bin/python,$(PYTHON)),$(BENCH_VENV)/.installed)
	$(PYTHON) scripts/bench_pytorch.py --bin $(BIN) --data $(DATA) --teacher $(TEACHER) \
	  --rounds $(BENCH_ROUNDS) --threads $(BENCH_THREADS) --out $(BENCH_OUT) \
	  $(if $(BENCH_ROWS),--rows $(BENCH_ROWS)) $(if $(BENCH_LIMIT),--train-limit $(BENCH_LIMIT))

$(BENCH_VENV)/.installed:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install torch numpy safetensors
	touch $@

clean-runs:
	rm -rf $(RUNS)
