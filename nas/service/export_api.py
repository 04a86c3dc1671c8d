"""``GET /api/candidates/{id}/export``: a candidate's exported directory (`nas.export`) as a zip.

The export is built per request (seconds: ONNX export and the parity checks) in a temporary
directory, zipped to a temporary file, streamed, and deleted once sent. Exports run one at a
time: each is CPU-bound, and ONNX export changes torch's process-wide thread count while it runs.
An unknown candidate is 404; a failed, pruned or still-running one is 409 with its state and
error. Being a GET, it needs no token (it reveals what the pages already show, plus weights).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from nas.service.schemas import ErrorOut

router = APIRouter(prefix="/api", tags=["export"])
_export_lock = threading.Lock()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "search"


def zip_directory(directory: Path, destination: Path, root: str) -> None:
    """Every file of ``directory`` under ``root/`` in the archive, in name order."""
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root}/{path.relative_to(directory).as_posix()}")


@router.get("/candidates/{candidate_id}/export", response_class=FileResponse, responses={
    200: {"content": {"application/zip": {}}, "description": "the exported directory, zipped"},
    404: {"model": ErrorOut, "description": "no such candidate"},
    409: {"model": ErrorOut, "description": "the candidate is failed, pruned or still running"}})
def export_candidate_zip(candidate_id: int, request: Request) -> FileResponse:
    """architecture.json, metrics.json, model.onnx, decode.onnx, model.safetensors, tokenizer,
    README.md (model card) and, where the architecture maps, a Hugging Face config.json."""
    from nas.export import NotExportableError, check_exportable, export_candidate

    store = request.app.state.store
    candidate = store.candidate(candidate_id)  # NotFoundError: the app's 404 handler
    try:
        check_exportable(candidate)
    except NotExportableError as err:
        raise HTTPException(409, str(err)) from None
    name = f"{_safe(candidate.search)}-trial{candidate.trial_number}"
    work = Path(tempfile.mkdtemp(prefix="nas-export-"))
    try:
        with _export_lock:
            directory = export_candidate(store, candidate.search, candidate, work / name)
        archive = work / f"{name}.zip"
        zip_directory(directory, archive, name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename=f"{name}.zip",
                        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True))
