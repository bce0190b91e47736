"""GPU fused kernels generated from the traced rule kernels (CUDA source; see cuda_source.py)."""
