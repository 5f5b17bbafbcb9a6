#!/usr/bin/env bash
# Paper-profile runs on a GPU machine without Jupyter: train, score, export small results.
#   tools/paper_run.sh <mirror> <out> <step> [<step> ...]
# Steps: glow-fmnist, glow-cifar, cvglow-fmnist, cvglow-cifar, classifier-cifar, classifier-fmnist,
#        densenet-cifar (DenseNet-BC-100, the ASH paper's CIFAR network).
# After each step, results/ is archived to <out>/results-<step>.tar so a run cut short keeps
# what it finished. Extract the archives in the checkout and commit results/.
set -euo pipefail
export OOD_DATA="$1"; out="$2"; shift 2
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
for step in "$@"; do
  t0=$(date +%s)
  case "$step" in
    glow-fmnist)       python3 -m ood_core glow --profile paper --dataset fashion_mnist --coupling affine --export ;;
    glow-cifar)        python3 -m ood_core glow --profile paper --dataset cifar10 --coupling affine --export ;;
    cvglow-fmnist)     python3 -m ood_core glow --profile paper --dataset fashion_mnist --coupling additive --export ;;
    cvglow-cifar)      python3 -m ood_core glow --profile paper --dataset cifar10 --coupling additive --export ;;
    classifier-cifar)  python3 -m ood_core classifier --profile paper --dataset cifar10 --export ;;
    classifier-fmnist) python3 -m ood_core classifier --profile paper --dataset fashion_mnist --export ;;
    densenet-cifar)    python3 -m ood_core classifier --profile paper --network densenet --export ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "step $step took $(( $(date +%s) - t0 )) s"
  tar cf "$out/results-$step.tar" results
done
