"""CPU benchmark: csoftmax against NumPy's stable formula, scipy.special and torch; the
code is the package's (csoftmax._bench.cpu), so this is `python -m csoftmax bench
--device cpu` under its old name.

    python benchmarks/bench_cpu.py                   # the default shapes
    python benchmarks/bench_cpu.py --quick           # under a minute
    python benchmarks/bench_cpu.py --threads 1 --ops softmax --shapes 4096x4096
    python benchmarks/bench_cpu.py --shapes sweep --threads 1,2 --csv sweep.csv --plot sweep.png
    python benchmarks/bench_cpu.py --markdown out.md # also write the table as Markdown
"""
import sys

from csoftmax._bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_cpu.py", devices=("cpu",)))
