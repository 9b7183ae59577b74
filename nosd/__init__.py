"""nosd: a fast inference server for PyTorch computer-vision models (KServe v2 over msgpack, Ray workers)."""

__version__ = "0.1.0"
