"""GPU benchmark: csoftmax's CUDA kernels against torch and cupyx.scipy.special, as
fractions of a device copy; the code is the package's (csoftmax._bench.gpu), so this is
`python -m csoftmax bench --device gpu` under its old name.

    python benchmarks/bench_gpu.py [--repeats 20] [--dtypes float16,float32] [--markdown out.md]

Needs CuPy and a CUDA GPU; torch and cupyx are optional peers.
"""
import sys

from csoftmax._bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_gpu.py", devices=("gpu",)))
