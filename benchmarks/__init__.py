"""linfeat benchmark suite: `python -m benchmarks [--quick]` or `linfeat bench [--quick]`.

Runs every comparison side by side in one process, checks that every method reaches the same
final predictor (`w = B^T v` within 1e-8 relative of a tight reference), reports compile time
apart from run time, prints a table and writes a JSON file with the machine, the package
versions and every figure. Not part of the pytest suite (no timed unit tests).
"""
