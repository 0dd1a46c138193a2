#!/usr/bin/env bash
# One lease's GPU measurements, end to end, on a lent CUDA host without network: unpack the
# offline runtime, build the model folder, install enrich, then the runs of benchmarks/gpu.py in
# order of what matters most, each result written as soon as it is in. Meant to be started
# detached (setsid) so that it outlasts the short calls that bring its pieces and read its results:
#
#   setsid nohup bash benchmarks/gpu_lease.sh STASH > /tmp/lease/plan.log 2>&1 &
#
# STASH holds the runtime's pieces (site.tar.xz.part*), host-setup.sh, make_model_dir.py and any
# extra wheels (py-spy). Results, each written as soon as its runs end:
# /tmp/lease/f.json (enrich at its defaults), a.json (the engine-alone ceiling), b.json (vLLM's
# own image benchmark), d.json (a warm start-up probe), e.json (one engine at 1,024 sequences),
# c.json (other engine settings).
set -uo pipefail
STASH=${1:?usage: gpu_lease.sh STASH}
L=/tmp/lease
mkdir -p "$L"
SRC=/tmp/src
rm -rf "$SRC" && cp -r "$(cd "$(dirname "$0")/.." && pwd)" "$SRC" && cd "$SRC" || exit 1
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

say "setup"
bash "$STASH/host-setup.sh" "$STASH" || exit 1
export PYTHONPATH=/tmp/site RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0
# the runtime travels without bytecode: compile it once, or every process compiles vLLM again
python3 -m compileall -q -j 0 /tmp/site > /dev/null 2>&1 &
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$STASH"/*.whl 2>/dev/null
export PATH=/tmp/site/bin:$PATH
python3 "$STASH/make_model_dir.py" /tmp/model > "$L/model.log" 2>&1 || { say "model dir failed"; exit 1; }
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$L/install.log" 2>&1 \
  || { say "install failed"; cat "$L/install.log"; exit 1; }
ACC=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o 'H[12]00' || echo H100)
say "accelerator $ACC; inputs"
# (an earlier call may have started making them while the pieces travelled: wait for it)
while [ -e "$STASH/inputs.started" ] && [ ! -e "$STASH/inputs.done" ]; do sleep 2; done
BARE_N=${BARE_N:-10000}  # requests of the engine-alone runs
N=${N:-40000}  # rows of the enrich runs (a lease that runs only the engine-alone ceiling: fewer)
python3 benchmarks/gpu.py inputs --n "$N" --bare-n "$BARE_N" || exit 1
wait  # compileall
LEASE=${LEASE:-"$ACC lease $(date -u +%Y-%m-%dT%H:%MZ)"}
COMMON=(--model /tmp/model --dummy-weights --n "$N" --bare-n "$BARE_N" --accelerator-type "$ACC"
        --lease "$LEASE")
K=$([ "$ACC" = H200 ] && echo 2 || echo 3)  # enrich's engines per GPU there (config.REPLICAS_PER_GPU)
# In order of what the issue's bar needs, because a machine can go back mid-lease and take what
# is on its disk with it (it did, three times, on 2026-12-07). Runs F: enrich at its defaults
# for this accelerator over N rows (K engines of 256 sequences, their engine cores in the
# replicas' processes), py-spy samples of one replica.
say "runs F"
python3 benchmarks/gpu.py run "${COMMON[@]}" --profile --out "$L/f.json" --runs "${RUNS_F:-enrich:1:$K}"
say "runs A"
# The engine alone (inputs processed beforehand) at enrich's batch and at twice it: the ceiling
# enrich is measured against, on the same machine.
python3 benchmarks/gpu.py run "${COMMON[@]}" --out "$L/a.json" \
  --runs "${RUNS_A:-split:1,split:1+seqs512}"
say "runs B"
# vLLM's own image benchmark at its own defaults (the other reference)
python3 benchmarks/gpu.py run "${COMMON[@]}" --out "$L/b.json" --runs "${RUNS_B:-vllm-bench-chat}"
say "runs D"
# the time to the first committed row on a warm machine (compile cache filled by the runs above):
# a short run of the first enrich setting, the first 3,000 rows of the same input set
python3 benchmarks/gpu.py run "${COMMON[@]}" --n 3000 --shards-n "$N" --out "$L/d.json" \
  --runs "${RUNS_D:-${RUNS_F:-enrich:1:$K}}"
say "runs E"
# one engine at 1,024 sequences, its engine core in a process of its own, eight render
# processes (in the replica's process, 2026-12-07 12:01 on an H100, this setting sustained
# 112.2/s with the GPU 41.6 % busy: PERFORMANCE.md): is one replica's GIL the bound?
python3 benchmarks/gpu.py run "${COMMON[@]}" --profile --out "$L/e.json" \
  --runs "${RUNS_E:-enrich:1:1:8+seqs1024+mp}"
say "runs C"
# the other engine-alone settings, as long as the lease lasts
python3 benchmarks/gpu.py run "${COMMON[@]}" --out "$L/c.json" \
  --runs "${RUNS_C:-split:1+seqs1024}"
say "done"
