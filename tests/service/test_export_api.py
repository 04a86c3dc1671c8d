"""``GET /api/candidates/{id}/export`` and the candidate page's "Export (zip)" link."""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import nas
from nas.architecture import Architecture, static_metrics
from nas.export import HF_ATOL
from nas.model import NasLM, build_model
from nas.proxy import weights_to_bytes
from nas.results import CandidateResult, LatencyStats, ProfileLatency, ProxyResult
from nas.service.app import create_app
from nas.space import load_space
from nas.store import Store

ARCH = Architecture(n_layer=4, d_model=32, n_head=4, n_kv_head=2, ffn_mult=2.0,
                    attention="sliding_window", window=4, sharing="repeat:2", tie_embeddings=False,
                    max_seq_len=64)
FILES = {"architecture.json", "metrics.json", "model.onnx", "decode.onnx", "model.safetensors",
         "tokenizer.json", "tokenizer_config.json", "config.json", "README.md"}


@pytest.fixture
def served(tmp_path: Path) -> tuple[TestClient, Store, dict[str, int], NasLM]:
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    store.create_search(
        "s", space=load_space("tiny").to_dict(), space_hash="h", profiles=[{"name": "cpu-1t"}],
        objectives=[("val_loss", "minimize"), ("latency:cpu-1t:decode_ms", "minimize")],
        constraints=["params <= 1500000"], data={"corpus": ["stdlib"], "tokenizer": "byte"},
        budget={"tokens": 2048, "batch_size": 4, "seq_len": 32}, trials=3, study_name="study-s")
    model = build_model(ARCH, seed=3).eval()
    lat = ProfileLatency("cpu-1t", "ph", LatencyStats(1.0, 1.1, 0.02, 20), LatencyStats(0.2, 0.25, 0.03, 20))
    record = store.finish_candidate("s", 0, CandidateResult(
        ARCH, "complete", metrics={**static_metrics(ARCH), "val_loss": 2.5, **lat.metrics()},
        proxy=ProxyResult(2.5, ((1024, 2.5),), 1024, 1e4, 0.1), latencies=(lat,),
        weights=weights_to_bytes(model)))
    store.start_candidate("s", 1, ARCH)
    store.fail_candidate("s", 1, "ExportError: decode graph differs from PyTorch")
    running = store.start_candidate("s", 2, ARCH)
    ids = {"complete": record.id, "failed": store.candidate_by_trial("s", 1).id, "running": running}
    with TestClient(create_app(store)) as client:
        yield client, store, ids, model
    store.close()


def _check_zip(content: bytes, model: NasLM, tmp_path: Path) -> None:
    import onnxruntime as ort
    from transformers import AutoModelForCausalLM

    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        assert {n.split("/", 1)[1] for n in zf.namelist()} == FILES
        assert {n.split("/", 1)[0] for n in zf.namelist()} == {"s-trial0"}
        zf.extractall(tmp_path)
    out = tmp_path / "s-trial0"
    ids = torch.randint(0, ARCH.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids)
        assert torch.equal(nas.load(out)(ids), want)
        hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        assert (hf(ids).logits - want).abs().max() <= HF_ATOL
    logits = ort.InferenceSession(str(out / "model.onnx")).run(["logits"], {"input_ids": ids.numpy()})[0]
    assert np.abs(logits - want.numpy()).max() <= 1e-4 * max(1.0, float(want.abs().max()))


def test_export_zip_round_trips_and_cleans_up(served, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    client, _, ids, model = served
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the route builds the export
    response = client.get(f"/api/candidates/{ids['complete']}/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="s-trial0.zip"' in response.headers["content-disposition"]
    _check_zip(response.content, model, tmp_path / "unzipped")
    assert [p for p in scratch.iterdir() if p.name.startswith("nas-export-")] == []  # removed once sent


def test_candidate_page_export_link_downloads_the_zip(served, tmp_path: Path) -> None:
    client, _, ids, model = served
    page = client.get(f"/candidates/{ids['complete']}", headers={"accept": "text/html"})
    assert page.status_code == 200
    link = re.search(
        r'<a[^>]*id="export"[^>]*href="([^"]+)"|<a[^>]*href="([^"]+)"[^>]*id="export"', page.text
    )
    assert link is not None, "candidate page has no Export (zip) link"
    response = client.get(link.group(1) or link.group(2))
    assert response.status_code == 200
    _check_zip(response.content, model, tmp_path)


def test_unknown_and_unexportable_candidates(served) -> None:
    client, _, ids, _ = served
    response = client.get("/api/candidates/9999/export")
    assert response.status_code == 404
    assert response.json()["detail"] == "no candidate with id 9999"
    response = client.get(f"/api/candidates/{ids['failed']}/export")
    assert response.status_code == 409
    assert "is failed: ExportError: decode graph differs from PyTorch" in response.json()["detail"]
    response = client.get(f"/api/candidates/{ids['running']}/export")
    assert response.status_code == 409
    assert "is still running" in response.json()["detail"]


# ----- a real browser: click "Export (zip)" on the candidate page ------------------------------
@pytest.fixture
def live_url(served) -> str:
    """The app served by uvicorn on a free loopback port, in a thread."""
    import socket
    import threading
    import time

    import uvicorn

    client, *_ = served
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.browser
def test_browser_downloads_the_zip_from_the_candidate_page(served, live_url: str, tmp_path: Path) -> None:
    import shutil
    import time

    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    _, _, ids, model = served
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(f"{live_url}/candidates/{ids['complete']}")
        browser.find_element(By.ID, "export").click()
        deadline = time.monotonic() + 90  # the export itself takes seconds
        target = downloads / "s-trial0.zip"
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        browser.quit()
    assert target.exists(), f"no download; found {sorted(p.name for p in downloads.iterdir())}"
    _check_zip(target.read_bytes(), model, tmp_path / "unzipped")
