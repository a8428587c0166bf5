"""The webhook server lands with the server issue; until then `uvicorn server:app` only answers /healthz."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def healthz(request):  # TODO(server issue): outbox depth, delivery state, Segment configured
    return JSONResponse({"status": "ok", "webhooks": "not implemented yet"})


app = Starlette(routes=[Route("/healthz", healthz)])
