"""Triton kernels, one file each; imported only where Triton is installed."""
