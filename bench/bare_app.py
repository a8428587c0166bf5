"""The baseline for the ingest benchmark: Starlette under uvicorn that parses the JSON body and answers 200."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def receive(request: Request) -> JSONResponse:
    await request.json()
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/webhooks/aircall", receive, methods=["POST"])])
