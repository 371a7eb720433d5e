"""llenergymeasure: measure the energy, throughput and latency of LLM inference.

The package holds all logic of the Snakemake workflow at the repository root. Importing it needs only the
standard library: engines, NVML, numpy and friends are imported lazily where they are used, so the
measurement step can run inside a stock backend image.
"""

__version__ = "0.1.0"
