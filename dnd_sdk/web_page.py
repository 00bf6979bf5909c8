"""The page at `/`: pick a label, set the seed and the sampler, press Generate, and watch the images being
made (the streamed partial images of `POST /v1/images/generations`). Plain HTML, CSS and JS from the
package's `page` folder: no build step, nothing fetched from anywhere but this server."""
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

PAGE = Path(__file__).parent / "page"


def page_routes() -> list:
    async def index(request: Request) -> Response:
        return FileResponse(PAGE / "index.html")

    return [Route("/", index), Mount("/page", StaticFiles(directory=PAGE))]
