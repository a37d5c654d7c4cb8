"""A stand-in engine process for nvml_probe.py and nvml_e2e.sh: holds 12 GiB of GPU memory and keeps
the GPU busy with bf16 matmuls for N seconds (default 60). Needs torch and a CUDA GPU.

    python benchmarks/gpu_holder.py 75
"""

import sys
import time

import torch

held = torch.empty(12 * 2**30 // 2, dtype=torch.bfloat16, device="cuda")
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
print("holding", flush=True)
end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
while time.time() < end:
    for _ in range(50):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
