#!/usr/bin/env bash
# The checks a machine with one or more NVIDIA GPUs runs, as is, from a checkout:
#
#     bash bench/gpu_check.sh [OUT_DIR]        # default: results/gpu-check
#
# 1. A deployment (SuperLink + 2 SuperNodes per GPU over gRPC), SuperNodes pinned round-robin
#    with --gpus, `client-device = "cuda"`: FedAvg on FashionMNIST, 3 rounds. Every ClientApp
#    reports its device (config.json, `clients`); the check fails unless SuperNode p trained
#    on CUDA with CUDA_VISIBLE_DEVICES = GPU p mod N.
# 2. FedPara on VGG16-GN, CIFAR-10 (the paper's setting, shortened), against FedAvg, on the
#    first GPU: `bench/fedpara.py sweep` (needs the CIFAR-10 files: FEDSQUEEZE_DATA_DIR or
#    run-config data-download; skipped with a note when they are missing).
# Prints the figures to put in a closing note; exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu-check}
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L failed); nothing to check" >&2
  exit 2
fi
gpus=$(nvidia-smi -L | wc -l)
ids=$(seq -s, 0 $((gpus - 1)))
nodes=$((2 * gpus))
nvidia-smi -L
make setup data
py=.venv/bin/python
$py -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.device_count(), 'GPUs')"

echo "== 1. $nodes SuperNodes pinned round-robin over GPUs $ids, CUDA training"
.venv/bin/fedsqueeze deploy --clients "$nodes" --gpus "$ids" --quiet --overwrite \
  --results-dir "$out" --run-name pinned \
  --run-config "client-device='cuda' num-server-rounds=3 partitioner='iid'"
$py - "$out/pinned" "$gpus" <<'EOF'
import json, sys
from fedsqueeze.server.results import read_run
config, rounds, summary = read_run(sys.argv[1])
gpus = int(sys.argv[2])
bad = []
for pid, client in sorted(config["clients"].items(), key=lambda kv: int(kv[0])):
    want = f"CUDA_VISIBLE_DEVICES={int(pid) % gpus})"
    ok = client["device"].startswith("cuda:") and client["device"].endswith(want)
    print(f"  partition {pid}: {client['device']}{'' if ok else '   <- expected ' + want}")
    bad += [] if ok else [pid]
print(f"  status {summary['status']}, accuracy per round",
      [r["accuracy"] for r in rounds], f"s/round {[round(r['seconds'], 2) for r in rounds]}")
if bad or summary["status"] != "completed":
    sys.exit(f"gpu_check: pinning or run failed (partitions {bad}, status {summary['status']})")
EOF

echo "== 2. FedPara on VGG16-GN, CIFAR-10, against FedAvg (GPU 0)"
if $py -c "from fedsqueeze.data import load_split; load_split('cifar10', 'test', None)" \
    >/dev/null 2>&1; then
  CUDA_VISIBLE_DEVICES=0 $py bench/fedpara.py sweep --models vgg16-gn --dataset cifar10 \
    --gammas 0.1 --rounds 20 --out "$out/fedpara-vgg16"
  cat "$out/fedpara-vgg16.md"
else
  echo "  skipped: no CIFAR-10 files (set FEDSQUEEZE_DATA_DIR to a folder holding"
  echo "  cifar-10-batches-py/, or download them once, then run this script again)"
fi
