"""A real `imgclf serve` process on 127.0.0.1 (a free port it picks itself), fed real images from
../shared/data/hymenoptera: several images in one request, a bounded load (200 requests, 8 at a time, zero
errors, no timing assertions), the web page driven by a real headless Chromium, and a clean shutdown.

The model is the tiny test model (conftest.tiny_best): what is tested is the service, not the classifier."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import chromium_page, needs_chromium

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
API_KEY = "integration-key"

if not HYMENOPTERA.is_dir():
    pytest.skip(
        f"real images not found at {HYMENOPTERA} (../shared/data relative to the repo)", allow_module_level=True
    )


def _images(n: int) -> list[Path]:
    ants = sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))
    bees = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    mixed = [p for pair in zip(ants, bees) for p in pair]
    return mixed[:n]


def _multipart(paths: list[Path], boundary: str = "integrationboundary") -> tuple[bytes, str]:
    body = b""
    for p in paths:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{p.name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + p.read_bytes()
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _request(url: str, data: bytes | None = None, ctype: str | None = None, key: str | None = API_KEY):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if ctype:
        req.add_header("Content-Type", ctype)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def _serving(weights: str, *flags: str, key: str | None = API_KEY):
    """`python -m imgclf serve WEIGHTS FLAGS` on a free port, with `key` as $IMGCLF_API_KEY; yields (base url,
    process) once /ready says yes, and stops it with SIGTERM afterwards."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("IMGCLF_API_KEY", None)
    if key:
        env["IMGCLF_API_KEY"] = key
    cmd = [sys.executable, "-m", "imgclf", "serve", weights, "--host", "127.0.0.1", "--port", "0", *flags]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server must never block on a full pipe
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    proc.stderr = log
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            proc.wait(30)
            log.seek(0)
            pytest.fail(f"no URL in the first line: {line!r}; stderr: {log.read()}")
        url = f"http://127.0.0.1:{m.group(1)}"
        t0 = time.time()
        while _request(url + "/ready", key=None)[0] != 200:
            assert proc.poll() is None, "the server exited before it was ready"
            assert time.time() - t0 < 120, "the server never became ready"
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tiny_best):
    """`python -m imgclf serve` with an API key from the environment; yields (base url, process)."""
    with _serving(tiny_best, "--max-batch-size", "8", "--max-wait-ms", "5", "--decode-workers", "2") as served:
        yield served


def test_real_images_in_upload_order(server):
    url, _ = server
    paths = _images(4)
    body, ctype = _multipart(paths)
    status, raw = _request(url + "/predict?top_k=2", body, ctype)
    assert status == 200, raw
    import json

    preds = json.loads(raw)["predictions"]
    assert [p["filename"] for p in preds] == [p.name for p in paths]
    assert all(len(p["top_k"]) == 2 and p["label"] in ("cat", "dog", "fox") for p in preds)
    assert _request(url + "/predict", body, ctype, key=None)[0] == 401  # the key came from $IMGCLF_API_KEY
    assert _request(url + "/health", key=None)[0] == 200


def test_bounded_load(server):
    """200 single-image requests from 8 concurrent keep-alive clients: every one answered 200."""
    url, proc = server
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    reqs = []
    for p in _images(16):
        body, ctype = _multipart([p])
        reqs.append(
            (
                f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
    statuses: list[int] = []
    total, concurrency = 200, 8
    sent = [0]

    async def client(i: int):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while sent[0] < total:
                sent[0] += 1
                writer.write(reqs[sent[0] % len(reqs)])
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                body = await reader.readexactly(n)
                statuses.append(int(head[9:12]) if b'"predictions"' in body else -1)
        finally:
            writer.close()

    async def run():
        await asyncio.wait_for(asyncio.gather(*[client(i) for i in range(concurrency)]), 300)

    asyncio.run(run())
    assert len(statuses) == total and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    status, raw = _request(url + "/metrics")
    text = raw.decode()
    served = float(re.search(r"^imgclf_images_processed_total ([0-9.]+)$", text, re.M).group(1))
    assert served >= len(statuses)
    assert not re.search(r'path="/predict",status="5\d\d"', text)
    assert proc.poll() is None


# The page's layout as the browser drew it: every box in CSS pixels, {x, y, w, h}.
LAYOUT_JS = """() => {
  const box = (r) => ({x: r.left, y: r.top, w: r.width, h: r.height});
  const drop = document.getElementById('drop');
  const cs = getComputedStyle(drop);
  const px = (k) => parseFloat(cs.getPropertyValue(k));
  const r = drop.getBoundingClientRect();
  const left = px('border-left-width') + px('padding-left'), right = px('border-right-width') + px('padding-right');
  const top = px('border-top-width') + px('padding-top'), bottom = px('border-bottom-width') + px('padding-bottom');
  const inner = {x: r.left + left, y: r.top + top, w: r.width - left - right, h: r.height - top - bottom};
  const texts = [];
  const walk = document.createTreeWalker(drop, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    if (!walk.currentNode.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(walk.currentNode);
    for (const t of range.getClientRects()) texts.push({text: walk.currentNode.textContent.trim(), ...box(t)});
  }
  const controls = {};
  for (const sel of ['h1', '#model', '#keyrow', '#drop', '#preview', '#overlay', '#results', '#status',
                     'main > p:last-child']) {
    const el = document.querySelector(sel);
    const b = el && el.getBoundingClientRect();
    if (b && b.width > 0 && b.height > 0 && getComputedStyle(el).display !== 'none') controls[sel] = box(b);
  }
  return {dropPieces: Array.from(drop.getClientRects()).map(box), dropInner: inner, texts, controls,
          overflowX: document.documentElement.scrollWidth - document.documentElement.clientWidth};
}"""


def _inside(inner: dict, outer: dict, slack: float = 0.5) -> bool:
    return (
        inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["w"] <= outer["x"] + outer["w"] + slack
        and inner["y"] + inner["h"] <= outer["y"] + outer["h"] + slack
    )


def _overlap(a: dict, b: dict, slack: float = 0.5) -> bool:
    return (
        min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]) > slack
        and min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]) > slack
    )


def check_layout(layout: dict) -> None:
    """The drop zone is one box whose inside (within its padding) holds all its text, and no two visible
    controls of the page overlap."""
    assert len(layout["dropPieces"]) == 1, (
        f"the drop zone is drawn in {len(layout['dropPieces'])} pieces: {layout['dropPieces']}"
    )
    assert {t["text"] for t in layout["texts"]} >= {"Choose an image", "JPEG, PNG, WebP, GIF, BMP, TIFF"}
    for t in layout["texts"]:
        assert _inside(t, layout["dropInner"]), f"'{t['text']}' at {t} is outside the drop zone {layout['dropInner']}"
    boxes = layout["controls"]
    assert {"h1", "#drop", "#preview", "#overlay", "#results", "#status"} <= set(boxes), boxes
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not _overlap(boxes[a], boxes[b]), f"{a} {boxes[a]} overlaps {b} {boxes[b]}"
    assert layout["overflowX"] <= 0, "the page is wider than the window"


@needs_chromium
def test_web_page_in_headless_chromium(server, tmp_path):
    url, _ = server
    image = _images(2)[1]
    body, ctype = _multipart([image])
    import json

    expected = json.loads(_request(url + "/predict?top_k=5", body, ctype)[1])["predictions"][0]
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#apikey", state="visible")  # the server wants a key: the page asks for it
        page.fill("#apikey", API_KEY)
        page.dispatch_event("#apikey", "change")
        page.wait_for_function("document.getElementById('model').textContent.includes('test_tiny')")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('label').textContent.length > 0")
        shown = page.inner_text("#label")
        labels = page.locator(".topk-label").all_inner_texts()
        assert page.locator("#preview").get_attribute("src").startswith("blob:")
        assert page.evaluate("document.getElementById('preview').naturalWidth") > 0
        assert "error" not in (page.get_attribute("#status", "class") or "")
        page.wait_for_function("document.getElementById('status').textContent.length > 0")
        # a checkpoint is served: "Where does it look?" shows the Grad-CAM overlay next to the image
        assert page.is_visible("#explain") and page.inner_text("#explain") == "Where does it look?"
        page.click("#explain")
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
        assert page.locator("#overlay").get_attribute("src").startswith("blob:")
        overlay_size = page.evaluate("((o) => [o.naturalWidth, o.naturalHeight])(document.getElementById('overlay'))")
        caption = page.inner_text("#overlaycap")
        assert "error" not in (page.get_attribute("#status", "class") or ""), page.inner_text("#status")
        layouts = {}
        for width in (1000, 360):  # a desktop window and a phone
            page.set_viewport_size({"width": width, "height": 900})
            layouts[width] = page.evaluate(LAYOUT_JS)
            page.screenshot(path=str(tmp_path / f"page-{width}.png"), full_page=True)
    assert shown.split(" (")[0] == expected["label"]
    assert labels == [t["label"] for t in expected["top_k"]]
    from PIL import Image

    with Image.open(image) as im:  # drawn over the whole photo, at its size (under 1024 px here)
        assert tuple(overlay_size) == im.size
    assert caption == f"evidence for {expected['label']}"
    for width, layout in layouts.items():
        print(f"layout at {width} px (screenshot {tmp_path / f'page-{width}.png'}): {layout}")
        check_layout(layout)


@needs_chromium
def test_web_page_shows_unsure_and_no_explain_for_an_export(tiny_best, tmp_path):
    """Below --min-confidence the page says "unsure" and still names the top class; for a TorchScript export
    (no gradients) it has no "Where does it look?" button, as /metadata says."""
    from imgclf.exporting.export import export

    exported = tmp_path / "tiny.ts"
    export(tiny_best, "torchscript", out=str(exported), verify_images=8)
    image = _images(1)[0]
    with _serving(str(exported), "--min-confidence", "1", key=None) as (url, _):
        status, meta = _request(url + "/metadata", key=None)
        assert status == 200 and b'"available":false' in meta
        with chromium_page() as page:
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('test_tiny')")
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.getElementById('label').textContent.length > 0")
            shown = page.inner_text("#label")
            top = page.locator(".topk-label").all_inner_texts()[0]
            assert page.get_attribute("#label", "class") == "unsure"
            assert not page.is_visible("#explain")
    assert shown.startswith(f"unsure ({top} "), shown


def test_sigterm_shuts_down_cleanly(server):
    """Last in this file: stop the module's server the way a process manager does."""
    url, proc = server
    proc.send_signal(signal.SIGTERM)
    # uvicorn finishes the requests in flight and runs the app's shutdown; a graceful stop exits 0
    assert proc.wait(30) == 0
    proc.stderr.seek(0)
    err = proc.stderr.read()
    assert "Application shutdown complete" in err and "Traceback" not in err, err
