"""The Ray Serve application of ``cmpnas serve``: one deployment, its replicas each holding the query
model and the gallery index, behind a FastAPI ingress.

Routes (JSON answers):

* ``POST /search``: images (multipart files, base64 JSON or an image body: ``payload.py``) ->
  ``{"k", "queries": [{"image", "results": [{"id", "score"}]}]}``, best first, as ``cmpnas query``;
* ``POST /embed``: images -> ``{"dim", "embeddings": [[...]], "images": [...]}`` (L2-normalised);
* ``GET /healthz``: liveness (the replica answers); ``GET /readyz``: readiness, with what is loaded
  (a replica takes traffic only once its constructor has loaded both);
* metrics: ``metrics.py`` (Ray's metrics export port, not a route: a route would see one replica).

Rules:

* each replica opens the export and the gallery once (``QueryService``), with CUDA for ONNX Runtime
  where the replica has a GPU;
* requests are batched (``serve.batch``: ``max_batch_size`` requests or ``batch_wait_timeout_s``,
  whichever comes first) into one model call and one FAISS search; the call runs in a thread, so
  the replica keeps reading requests meanwhile;
* a bad request is answered 4xx with ``{"error", "status"}`` and changes nothing; the replica keeps
  serving.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (``Request``) at
# run time, and Serve's ingress wrapper hides the module globals it would resolve strings against.
import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from orchestrator.serving.query import QueryService
from orchestrator.serving.registry_reference import download_registered_export
from orchestrator.serving.request_images import BadRequestError
from orchestrator.serving.serve.metrics import ServeMetrics
from orchestrator.serving.serve.options import ServeOptions
from orchestrator.serving.serve.payload import ImageShape, QueryImages, read_query

api = FastAPI(title="cmpnas query service",
              description="Nearest gallery ids of query images, by a compatible query model (cmpnas serve)")


def open_query_service(options: ServeOptions) -> QueryService:
    """A replica's query service: the export folder, or on a node without the driver's download of
    ``--model models:/...``, its own download (``orchestrator.serving.registry_reference``)."""
    model = options.model
    if options.model_reference and not model.is_dir():
        model = download_registered_export(options.model_reference, options.tracking_uri)
    return QueryService(model, options.index, options.force, nprobe=options.nprobe, ef_search=options.ef_search)


@serve.deployment
@serve.ingress(api)
class QueryDeployment:
    """One replica: the export's ONNX query model and the embedded gallery, opened once."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.service = open_query_service(options)
        self.shape = ImageShape(self.service.image_size, self.service.channels)
        self.metrics = ServeMetrics()
        for batched in (self.search_batch, self.embed_batch):
            batched.set_max_batch_size(options.max_batch_size)
            batched.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    @api.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        async def answer(query: QueryImages) -> dict:
            matches = await self.search_batch(query)
            return {"k": query.k, "queries": [
                {"image": name, "results": [{"id": match.id, "score": match.score} for match in found]}
                for name, found in zip(query.names, matches)]}

        return await self._answer("search", request, answer)

    @api.post("/embed")
    async def embed(self, request: Request) -> JSONResponse:
        async def answer(query: QueryImages) -> dict:
            embeddings = await self.embed_batch(query)
            return {"dim": int(embeddings.shape[1]), "images": list(query.names), "embeddings": embeddings.tolist()}

        return await self._answer("embed", request, answer)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict:
        gallery = self.service.gallery
        return {"ready": True, "model": str(self.options.model), "index": str(gallery.folder),
                "gallery_size": len(gallery.ids), "fingerprint": gallery.record["fingerprint"],
                "providers": self.service.session.get_providers()}

    @serve.batch
    async def search_batch(self, queries: list[QueryImages]) -> list[list]:
        """One model call and one FAISS search for a batch of requests, each trimmed to its own ``k``."""
        self.metrics.batched("search", len(queries), sum(len(query.names) for query in queries))
        found = await asyncio.to_thread(self.service.search, np.concatenate([query.images for query in queries]),
                                        max(query.k for query in queries))
        answers, start = [], 0
        for query in queries:
            answers.append([matches[:query.k] for matches in found[start:start + len(query.names)]])
            start += len(query.names)
        return answers

    @serve.batch
    async def embed_batch(self, queries: list[QueryImages]) -> list[np.ndarray]:
        """One model call for a batch of requests."""
        self.metrics.batched("embed", len(queries), sum(len(query.names) for query in queries))
        embeddings = await asyncio.to_thread(self.service.embed, np.concatenate([query.images for query in queries]))
        return np.split(embeddings, np.cumsum([len(query.names) for query in queries])[:-1])

    async def _answer(self, route: str, request: Request, answer: Callable[[QueryImages], Awaitable[dict]]):
        """The route's answer, or the request's fault as a 4xx JSON error; counted and timed either way."""
        started = time.perf_counter()
        try:
            query = await read_query(request, self.shape, self.options.limits, self.options.max_body_bytes,
                                     self.options.k_default)
            response = JSONResponse(await answer(query))
        except BadRequestError as error:
            response = JSONResponse({"error": str(error), "status": error.status}, status_code=error.status)
        except Exception:  # noqa: BLE001 - a server fault: logged by Serve with its traceback, counted as a 500
            self.metrics.answered(route, 500, time.perf_counter() - started)
            raise
        self.metrics.answered(route, response.status_code, time.perf_counter() - started)
        return response


def build_app(options: ServeOptions):
    """The application ``serve.run`` deploys: ``options.replicas`` replicas of the CPUs and GPUs asked for."""
    return QueryDeployment.options(
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
    ).bind(options)
