"""A stand-in for your order system, on 127.0.0.1:8081, so the examples have an API to call.

    GET /orders/{number}   200 with the order as JSON, 404 if unknown, 401 without the API key

It expects the key in examples/secrets/demo_store_api_key as its `X-API-Key` header, the way the
sidecar sends it for the `demo-order-status` connector of examples/connectors.yaml.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

ADDRESS = ("127.0.0.1", 8081)
API_KEY = (Path(__file__).parent / "secrets" / "demo_store_api_key").read_text().strip()
ORDERS = {
    "A-10023": {"order_number": "A-10023", "status": "shipped", "carrier": "UPS", "eta": "Tue"},
    "A-10024": {"order_number": "A-10024", "status": "processing", "carrier": None, "eta": None},
}


async def get_order(request: web.Request) -> web.Response:
    if request.headers.get("X-API-Key") != API_KEY:
        return web.json_response({"error": "missing or wrong API key"}, status=401)
    order = ORDERS.get(request.match_info["number"])
    if order is None:
        return web.json_response({"error": "no such order"}, status=404)
    return web.json_response(order)


def application() -> web.Application:
    app = web.Application()
    app.router.add_get("/orders/{number}", get_order)
    return app


if __name__ == "__main__":
    web.run_app(application(), host=ADDRESS[0], port=ADDRESS[1])
