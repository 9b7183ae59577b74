"""nosclient: call a nosd server from anywhere: numpy, msgpack, httpx (blocking) and aiohttp (async); no torch."""

from nosclient.client import AsyncClient, Client, InferResult, NosdError
from nosclient.codec import TensorError

__all__ = ["AsyncClient", "Client", "InferResult", "NosdError", "TensorError"]
__version__ = "0.1.0"
