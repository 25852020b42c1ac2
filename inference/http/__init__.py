"""KServe v2 over HTTP/REST (aiohttp + orjson)."""
