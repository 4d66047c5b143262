"""Weight-sharing prox benchmark: time per call against torch.sort of the same vector.

    python benchmarks/bench_prox.py --sizes 1e5,1e6,1e7
    python benchmarks/bench_prox.py --device cuda --sizes 1e6,1e7,1e8

See ``constrain.prox._bench`` for what each row measures.
"""

from constrain.prox._bench import main

if __name__ == "__main__":
    raise SystemExit(main())
