"""nosclient: call a nosd server from anywhere, with numpy + msgpack + httpx only."""

from nosclient.client import AsyncClient, Client, InferResult, NosdError
from nosclient.codec import TensorError

__all__ = ["AsyncClient", "Client", "InferResult", "NosdError", "TensorError"]
__version__ = "0.1.0"
