#!/usr/bin/env bash
# One lease's GPU measurements, end to end, on a lent CUDA host without network: unpack the
# offline runtime, build the model folder, install enrich, then the runs of benchmarks/gpu.py in
# order of what matters most, each result written as soon as it is in. Meant to be started
# detached (setsid) so that it outlasts the short calls that bring its pieces and read its results:
#
#   setsid nohup bash benchmarks/gpu_lease.sh STASH > /tmp/lease/plan.log 2>&1 &
#
# STASH holds the runtime's pieces (site.tar.xz.part*), host-setup.sh, make_model_dir.py and any
# extra wheels (py-spy). Results: /tmp/lease/a.json (the engine-alone ceiling), b.json (enrich fed at
# the best engine setting of a.json, vLLM's own image benchmark, enrich at its defaults),
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
N=${N:-40000}  # rows of the enrich runs (a lease that runs only the engine-alone ceiling: fewer)
python3 benchmarks/gpu.py inputs --n "$N" --bare-n 10000 || exit 1
wait  # compileall
say "runs A"
LEASE=${LEASE:-"$ACC lease $(date -u +%Y-%m-%dT%H:%MZ)"}
COMMON=(--model /tmp/model --dummy-weights --n "$N" --bare-n 10000 --accelerator-type "$ACC"
        --lease "$LEASE")
# The engine alone (inputs processed beforehand) at enrich's batch and at vLLM's own default
# for a large GPU: the ceiling enrich is measured against.
python3 benchmarks/gpu.py run "${COMMON[@]}" --out "$L/a.json" \
  --runs "${RUNS_A:-split:1,split:1+seqs1024}"
say "runs B"
K=$([ "$ACC" = H200 ] && echo 2 || echo 3)  # enrich's engines per GPU there (config.REPLICAS_PER_GPU)
# The engine setting of runs A with the best engine-alone rate (its `+seqs*` suffix, or none):
# enrich is fed at that setting with one engine and four render processes, the compile cache
# already warm from that split run; then vLLM's own image benchmark at its own defaults (the
# other reference), then enrich at its defaults for this accelerator. In this order because a
# lease can end early: enrich against its ceiling is what the lease is for.
BEST=$(python3 -c '
import json, sys
runs = [r for r in json.load(open(sys.argv[1]))["runs"]
        if r["run"].startswith("split:1") and r.get("captions_per_s_sustained")]
best = max(runs, key=lambda r: r["captions_per_s_sustained"], default={"run": "split:1"})
print(best["run"][len("split:1"):])' "$L/a.json" 2>/dev/null)
say "best engine setting of runs A: '${BEST:-default}'"
python3 benchmarks/gpu.py run "${COMMON[@]}" --profile --out "$L/b.json" \
  --runs "${RUNS_B:-enrich:1:1:4$BEST,vllm-bench-chat,enrich:1:$K}"
say "runs C"
# the other engine-alone settings, as long as the lease lasts
python3 benchmarks/gpu.py run "${COMMON[@]}" --out "$L/c.json" \
  --runs "${RUNS_C:-split:1+seqs2048,split:1+seqs512}"
say "done"
