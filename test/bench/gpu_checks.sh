#!/usr/bin/env bash
# Usage: bash test/bench/gpu_checks.sh OUT_DIR   (model-core checks on a CUDA machine: gpu tests, CIF and KD-memory bench)
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$out/versions.txt"
python3 test/bench/bench_cif.py --device cuda --repeats 10 --skip_textbook 2>&1 | tee "$out/bench_cif_cuda.txt"
python3 test/bench/bench_cif.py --device cpu --repeats 3 --skip_textbook 2>&1 | tee "$out/bench_cif_cpu16.txt"
python3 test/bench/bench_kd_memory.py --device cuda --batch 8 --length 512 2>&1 | tee "$out/bench_kd_memory_cuda.txt"
python3 -m pytest -p no:cacheprovider test/test_model.py test/test_cif.py test/test_speech_encoder.py -q -x 2>&1 | tail -30 | tee "$out/pytest_gpu.txt"
