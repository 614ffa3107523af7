"""POST /classify: one or more images -> class probabilities, through the classifier's batcher."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile

from ..decode import DecodeError, open_image
from ..responses import UPLOAD_ERRORS
from ..schemas import ClassifyResponse
from ..state import Service, start_deadline


def add_routes(r: FastAPI, service: Service) -> None:
    settings = service.settings

    @r.post("/classify", response_model=ClassifyResponse, responses=UPLOAD_ERRORS,
            summary="Classify one or more images (PNG, JPEG, BMP, GIF, WebP; any size)")
    async def classify(request: Request, file: Annotated[list[UploadFile], File(
            description="image file; repeat the field for several images")]) -> dict[str, Any]:
        deadline = start_deadline(request)  # the upload is complete: the deadline counts from here
        runner = service.runner("classifier")
        if len(file) > settings.max_files:
            raise HTTPException(413, f"{len(file)} files; the limit is {settings.max_files} per request")
        service.check_ready()
        service.precheck("classifier")  # overloaded: refuse before spending CPU on decoding
        datas = [await f.read() for f in file]
        names = [f.filename or f"file{i}" for i, f in enumerate(file)]

        def decode_all(should_stop: Callable[[], str | None]) -> list[torch.Tensor]:
            # Headers first (no pixels decoded): the request's total decode size is checked before any work.
            total = 0
            for name, data in zip(names, datas):
                try:
                    total += open_image(data, settings.max_image_pixels, settings.max_image_decode_bytes
                                        ).decoded_bytes
                except DecodeError as e:
                    raise DecodeError(e.status_code, f"{name}: {e.detail}") from None
            if total > settings.max_request_decode_bytes:
                raise DecodeError(413, f"the images need {total} bytes to decode, over the limit of "
                                       f"{settings.max_request_decode_bytes} bytes per request; send fewer")
            images = []
            for name, data in zip(names, datas):
                try:
                    images.append(runner.decode(data, settings.max_image_pixels, settings.max_image_decode_bytes,
                                                should_stop))
                except DecodeError as e:
                    raise DecodeError(e.status_code, f"{name}: {e.detail}") from None
            return images

        images = await service.decode(request, "classifier", deadline, decode_all)
        probs = await service.run_batched(request, "classifier", images, deadline)
        results = []
        for name, p in zip(names, probs):
            top = int(p.argmax())
            results.append({"filename": name, "label": runner.class_names[top], "confidence": float(p[top]),
                            "probabilities": dict(zip(runner.class_names, p.tolist()))})
        return {"model": runner.name, "results": results}

