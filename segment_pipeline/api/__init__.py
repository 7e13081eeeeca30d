"""The segment feed API: an ASGI (Starlette) app served by uvicorn; see ``docs/api.md``."""
