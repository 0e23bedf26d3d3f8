"""grec: a hybrid graph + language-model recommender as a Dagster project.

Importing the package keeps freed memory in the process (`allocator.py`): every entry point, the CLI,
Dagster's step processes, torchrun workers and the benchmarks, imports it first.
"""

from grec_dagster.allocator import keep_freed_memory

keep_freed_memory()
