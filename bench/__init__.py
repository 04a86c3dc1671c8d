"""Benchmarks of the product (not part of the `nas` package): ``python -m bench.<name>`` from the
repository root; ``--smoke`` on any of them runs it in seconds. See BENCHMARKS.md."""
