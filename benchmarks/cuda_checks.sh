#!/usr/bin/env bash
# The checks and benchmarks that need a CUDA GPU, in one run (a lent GPU machine's time is short).
#
#   bash benchmarks/cuda_checks.sh OUTDIR [STEP ...]      (default: every step, in this order)
#
# Steps, each under its own time limit, writing its log (and JSON) to OUTDIR:
#   mlp        benchmarks/dpsgd.py on CUDA, StreamRec MLP, batch 4096, with the torch.compile rows and
#              the CUDA-graph rows (issue 18's CUDA row);
#   test       tests/dpsgd/test_cuda.py: the fast path equals the loop on CUDA (float64), noise drawn on
#              the device, training with device="cuda", compile=True, CUDA-graph steps equal to eager ones;
#   lm         benchmarks/dpsgd_lm.py on CUDA: the tiny GPT of chapter 14, full and LoRA, batch 32, T = 128;
#   mlp64k     benchmarks/dpsgd.py on CUDA at batch 65536;
#   streamrec  the StreamRec sweep of chapter 13 end to end on CUDA (smoke scale, eps = 8 and no DP);
#   nccl       multi-process DP-SGD under torchrun with the NCCL backend (one rank per GPU);
#   lmpaper    benchmarks/dpsgd_lm.py on CUDA at the chapter's paper scale: GPT-2 small's shape
#              (85M parameters with characters), batch 256, T = 128, full and LoRA;
#   graphs     benchmarks/cuda_graphs.py: the MLP's non-private and DP steps replayed as CUDA graphs
#              (how much of the MLP's cost on a GPU is the host's).
# privlab runs from src/ (PYTHONPATH); Opacus must be importable. Nothing here runs in CI.
set -u
out=${1:?usage: cuda_checks.sh OUTDIR [STEP ...]}
shift
steps=${*:-mlp test lm mlp64k streamrec nccl lmpaper graphs}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
python3 -c "import sys, torch, opacus, transformers, peft; print(sys.version.split()[0], 'torch', torch.__version__, 'opacus', opacus.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
run() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "== $name: rc $? in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
  grep -v "^USDT\|profiler_st" "$out/$name.txt" | tail -n 30
}
for step in $steps; do
  case $step in
    mlp) run mlp_cuda 150 python3 benchmarks/dpsgd.py --device cuda --compile --json "$out/mlp_cuda.json" ;;
    test) run test_cuda 120 python3 -m pytest -q -p no:cacheprovider tests/dpsgd/test_cuda.py ;;
    lm) run lm_cuda 90 python3 benchmarks/dpsgd_lm.py --device cuda --no-check --rounds 10 --json "$out/lm_cuda.json" ;;
    mlp64k) run mlp_cuda_64k 60 python3 benchmarks/dpsgd.py --device cuda --batch 65536 --no-kernel --rounds 8 \
              --methods non-private "privlab fast" "opacus ghost" --json "$out/mlp_cuda_64k.json" ;;
    streamrec) run streamrec_cuda 120 python3 -m privlab.cli streamrec --scale smoke --epsilons 8 inf --no-studies \
                 --no-progress --device cuda --out /tmp/streamrec_cuda
               cp /tmp/streamrec_cuda/results.json "$out/streamrec_cuda.json" ;;
    nccl) run nccl 90 torchrun --nproc_per_node="$(nvidia-smi -L | wc -l)" -m privlab.dpsgd.distributed \
            --backend nccl --epochs 1 --out "$out/nccl.json" ;;
    lmpaper) run lm_paper_cuda 300 python3 benchmarks/dpsgd_lm.py --device cuda --scale paper --batch 256 \
               --no-check --rounds 5 --methods non-private "privlab fast" "opacus ghost" \
               --json "$out/lm_paper_cuda.json" ;;
    graphs) run cuda_graphs 120 python3 benchmarks/cuda_graphs.py --json "$out/cuda_graphs.json" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
cat "$out/summary.txt"
