#!/usr/bin/python3
"""vit serve end to end: routes, the same answers as the CLI, dynamic batching, limits, hostile
bodies, the metrics, and a clean stop on SIGTERM with requests in flight. Every server listens
on 127.0.0.1 at a free port, every request has a timeout, and each server is stopped at the end.
usage: test_serve.py path/to/vit path/to/datasets path/to/models"""
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib

from serve_util import Server

VIT, DATASETS, MODELS = sys.argv[1:4]
Server.vit = VIT
SAMPLES = os.path.join(DATASETS, "samples")
BAG = os.path.join(SAMPLES, "bag_00018.png")
COAT = os.path.join(SAMPLES, "coat_00006.png")
CNN = os.path.join(MODELS, "cnn_resnet8_fmnist.safetensors")
failures = []


def check(name, ok, detail=""):
    if not ok:
        failures.append(name)
        print(f"FAIL: {name} {detail}".rstrip())


def multipart(files):
    boundary = uuid.uuid4().hex
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_claiming(width, height):
    """A PNG whose header claims width × height and whose data is one tiny IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + \
        chunk(b"IEND", b"")


def cli_json(*args):
    return json.loads(subprocess.run([VIT, *args], check=True, capture_output=True, text=True,
                                     timeout=60).stdout)


bag, coat = open(BAG, "rb").read(), open(COAT, "rb").read()
octet = {"Content-Type": "application/octet-stream"}

# Routes and answers, against the CLI.
with Server("--max-delay-ms", "1") as s:
    status, _, body = s.request("GET", "/healthz")
    check("healthz", status == 200 and json.loads(body)["status"] == "ok", body)
    status, headers, body = s.request("GET", "/")
    check("the page", status == 200 and b"<title>vit</title>" in body and
          headers.get("Content-Type", "").startswith("text/html"))
    check("the page loads nothing from elsewhere", re.search(rb"(src|href)=\"(https?:)?//", body) is None)
    status, _, body = s.request("GET", "/v1/models")
    models = json.loads(body)
    check("models: the bundled ViT and CNN", status == 200 and
          [m["name"] for m in models] == ["vit_fmnist", "cnn_resnet8_fmnist"], body[:200])
    check("models: classes, config and preprocess", all(len(m["classes"]) == 10 and "config" in m and
                                                        m["preprocess"]["img_size"] == 28 for m in models))

    # Every sample, raw and all in one multipart form, against vit classify --json.
    names = sorted(os.listdir(SAMPLES))
    want = {os.path.basename(r["image"]): r["top_k"] for r in cli_json("classify", "--json", "--top-k", "10", SAMPLES)}

    def same(a, b):
        return [x["class"] for x in a] == [x["class"] for x in b] and all(
            abs(x["probability"] - y["probability"]) < 1e-5 for x, y in zip(a, b))
    raw_ok = True
    for name in names:
        status, _, body = s.request("POST", "/v1/classify?top_k=10",
                                    open(os.path.join(SAMPLES, name), "rb").read(), octet)
        raw_ok &= status == 200 and same(json.loads(body)[0]["top_k"], want[name])
    check("every sample posted raw: vit classify's classes and probabilities", raw_ok)
    data, h = multipart([(n, open(os.path.join(SAMPLES, n), "rb").read()) for n in names])
    status, _, body = s.request("POST", "/v1/classify?top_k=10", data, h)
    got = json.loads(body) if status == 200 else []
    check("every sample in one multipart form: the same", len(got) == len(names) and all(
        g["image"] == n and same(g["top_k"], want[n]) for g, n in zip(got, names)), body[:200])

    want = cli_json("classify", "--json", "--top-k", "3", BAG)[0]["top_k"]
    status, headers, body = s.request("POST", "/v1/classify?top_k=3", bag, octet)
    got = json.loads(body)
    check("classify a raw body: vit classify's answer", status == 200 and got[0]["top_k"] == want,
          body[:300])
    check("classify says its batch size", headers.get("X-Vit-Batch-Size") == "1")
    data, h = multipart([("bag.png", bag), ("coat.png", coat)])
    status, _, body = s.request("POST", "/v1/classify?top_k=1", data, h)
    got = json.loads(body)
    check("classify a multipart form of two images", status == 200 and
          [g["image"] for g in got] == ["bag.png", "coat.png"] and
          [g["top_k"][0]["class"] for g in got] == ["bag", "coat"], body[:300])
    want = cli_json("classify", "--json", "--model", CNN, BAG)[0]["top_k"]
    status, _, body = s.request("POST", "/v1/classify?model=cnn_resnet8_fmnist", bag, octet)
    check("classify with the second model", status == 200 and json.loads(body)[0]["top_k"] == want)

    status, headers, body = s.request("POST", "/v1/explain", bag, octet)
    check("explain: a PNG", status == 200 and headers.get("Content-Type") == "image/png" and
          body.startswith(b"\x89PNG\r\n\x1a\n"), f"{status} {body[:200]}")
    want = cli_json("explain", "--json", "--method", "attention", "--heads", BAG)[0]
    status, _, body = s.request("POST", "/v1/explain?format=json&method=attention&heads=1", bag, octet)
    got = json.loads(body)[0] if status == 200 else {}
    check("explain as JSON: vit explain --json's maps", status == 200 and
          got.get("map") == want["map"] and got.get("heads") == want["heads"] and
          got.get("layer") == want["layer"], body[:300])
    want = cli_json("explain", "--json", "--model", CNN, "--class", "coat", BAG)[0]
    status, _, body = s.request("POST", "/v1/explain?format=json&model=cnn_resnet8_fmnist&class=coat",
                                bag, octet)
    got = json.loads(body)[0] if status == 200 else {}
    check("explain Grad-CAM for a chosen class", got.get("map") == want["map"] and
          got.get("explained", {}).get("class") == "coat", body[:300])

    # Bad requests: the status and the reason, and the server stays up.
    def error(name, want_status, pattern, method, path, body=None, headers=None):
        status, h, b = s.request(method, path, body, headers)
        try:
            text = json.loads(b)["error"]
        except (ValueError, KeyError, TypeError):
            text = repr(b[:200])
        check(name, status == want_status and re.search(pattern, text) is not None,
              f"{status} {text}")
        return h

    error("garbage body", 400, r"'body': not an image vit reads", "POST", "/v1/classify", b"hello", octet)
    error("empty body", 400, r"no body", "POST", "/v1/classify", b"", octet)
    error("a GIF is not decoded", 400, r"not an image vit reads", "POST", "/v1/classify",
          b"GIF89a" + b"\0" * 64, octet)
    error("a PNG claiming gigapixels", 400, r"100000x100000 pixels, more than the limit", "POST",
          "/v1/classify", png_claiming(100000, 100000), octet)
    error("a 20 000 x 20 000 PNG header", 400, r"20000x20000 pixels, more than the limit", "POST",
          "/v1/classify", png_claiming(20000, 20000), {"Content-Type": "image/png"})
    error("a wrong content type", 415, r"Content-Type 'application/json': send the image's bytes",
          "POST", "/v1/classify", bag, {"Content-Type": "application/json"})
    error("curl's default form type", 415, r"Content-Type 'application/x-www-form-urlencoded'",
          "POST", "/v1/classify", bag, {"Content-Type": "application/x-www-form-urlencoded"})
    error("a malformed multipart body", 400, r"a malformed multipart/form-data body", "POST",
          "/v1/classify", b"garbage--xyz", {"Content-Type": "multipart/form-data; boundary=xyz"})
    error("a truncated PNG", 400, r"truncated|cannot decode|not an image", "POST", "/v1/classify",
          bag[: len(bag) // 2], octet)
    data, h = multipart([("a.png", bag)])
    error("a form without the field 'image'", 400, r"no field named 'image'", "POST", "/v1/classify",
          data.replace(b'name="image"', b'name="picture"'), h)
    error("unknown model", 404, r"no model 'resnet50' \(served: vit_fmnist, cnn_resnet8_fmnist\)",
          "POST", "/v1/classify?model=resnet50", bag, octet)
    error("bad top_k", 400, r"'top_k' must be an integer", "POST", "/v1/classify?top_k=lots", bag, octet)
    error("zero top_k", 400, r"'top_k' must be positive", "POST", "/v1/classify?top_k=0", bag, octet)
    error("gradcam on the ViT", 400, r"'method' gradcam explains the CNN", "POST",
          "/v1/explain?method=gradcam", bag, octet)
    error("bad head fusion", 400, r"'head_fusion' must be mean, max or min", "POST",
          "/v1/explain?head_fusion=sum", bag, octet)
    error("class on the ViT", 400, r"'class' needs 'method' gradcam", "POST", "/v1/explain?class=1",
          bag, octet)
    error("bad format", 400, r"'format' must be png or json", "POST", "/v1/explain?format=gif", bag, octet)
    data, h = multipart([("a.png", bag), ("b.png", bag)])
    error("two images as one PNG", 400, r"format=png explains one image", "POST", "/v1/explain", data, h)
    error("unknown route", 404, r"no route GET /v1/nothing", "GET", "/v1/nothing")
    error("no path names a file", 404, r"no route", "GET", "/../../etc/passwd")
    error("classify wants POST", 404, r"no route GET /v1/classify", "GET", "/v1/classify")
    status, _, _ = s.request("GET", "/healthz")
    check("still up after the bad requests", status == 200)

    status, _, body = s.request("GET", "/metrics")
    text = body.decode()
    check("metrics: requests by route and status",
          re.search(r'^vit_requests_total\{route="/v1/classify",status="400"\} [1-9]', text, re.M) and
          re.search(r'^vit_requests_total\{route="other",status="404"\} [1-9]', text, re.M), text[:500])
    check("metrics: latency and batch-size histograms, queue depth",
          'vit_request_duration_seconds_bucket{route="/v1/classify",le="+Inf"}' in text and
          re.search(r"^vit_batch_size_count [1-9]", text, re.M) and
          re.search(r"^vit_queue_depth 0$", text, re.M), text[-600:])
    # After every refused body above (each was announced from its headers), nothing is left
    # counted as on its way, which would hold every later batch for --max-delay-ms.
    check("metrics: the model's busy seconds; no request left on its way",
          re.search(r"^vit_compute_seconds_total 0\.0*[1-9]|^vit_compute_seconds_total [1-9]", text, re.M)
          and re.search(r"^vit_requests_on_the_way 0$", text, re.M), text[-600:])
    logged = [l for l in s.log if re.match(r"vit serve: POST /v1/classify 200 [0-9.]+ ms batch \d+$", l)]
    check("one log line per request: method, route, status, latency, batch", len(logged) >= 3,
          "".join(s.log[-5:]))
code = s.stop()
check("SIGTERM: exit 0", code == 0, str(code))

# Dynamic batching. Requests are held mid-body (headers and all but the last byte sent): the
# server has announced them to the batcher, so the batch waits for them, and they arrive
# together when their last bytes are sent.
def raw_post(port, body, path="/v1/classify?top_k=10"):
    c = socket.create_connection(("127.0.0.1", port), timeout=20)
    c.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream"
               f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:-1])
    return c


def raw_answers(held, images):
    """Sends each held request's last byte, then reads every answer: status, headers, body."""
    for c, image in zip(held, images):
        c.sendall(image[-1:])
    out = []
    for c in held:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(l.split(": ", 1) for l in lines[1:] if ": " in l)
        while len(body) < int(headers.get("Content-Length", 0)):
            chunk = c.recv(65536)
            if not chunk:
                break
            body += chunk
        c.close()
        out.append((int(lines[0].split()[1]) if lines[0] else 0, headers, body))
    return out


def wait_on_the_way(s, n, timeout=20):
    """Until the server counts n requests on their way (their headers read)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = s.request("GET", "/metrics")[2].decode()
        if re.search(rf"^vit_requests_on_the_way {n}$", text, re.M):
            return True
        time.sleep(0.02)
    return False


def closed(s):
    text = s.request("GET", "/metrics")[2].decode()
    return {k: int(n) for k, n in re.findall(r'^vit_batches_total\{closed="(\w+)"\} (\d+)$', text, re.M)}


with Server("--max-delay-ms", "5000", "--max-batch", "8") as s:
    start = time.time()
    status, headers, body = s.request("POST", "/v1/classify?top_k=10", coat, octet)
    alone = json.loads(body)[0]["top_k"]
    check("a request alone is not kept waiting for company that cannot come",
          status == 200 and time.time() - start < 2.5 and closed(s) ==
          {"full": 0, "max_delay": 0, "nothing_on_the_way": 1}, f"{time.time() - start:.2f} s {closed(s)}")
    images = [coat if i % 2 else bag for i in range(8)]
    held = [raw_post(s.port, image) for image in images[:6]]
    check("6 requests held mid-body count as on their way", wait_on_the_way(s, 6))
    results = raw_answers(held, images)
    sizes = [int(r[1].get("X-Vit-Batch-Size", 0)) for r in results]
    check("6 requests on their way together: one batch of 6", sizes == [6] * 6, str(sizes))
    same = all(r[0] == 200 for r in results) and all(
        abs(a["probability"] - b["probability"]) < 1e-5 and a["class"] == b["class"]
        for r in results[1::2] for a, b in zip(json.loads(r[2])[0]["top_k"], alone))
    check("batched answers equal the one alone", same)
    check("the batch closed when nothing more was on its way",
          closed(s) == {"full": 0, "max_delay": 0, "nothing_on_the_way": 2}, str(closed(s)))
    held = [raw_post(s.port, image) for image in images]
    wait_on_the_way(s, 8)
    sizes = [int(r[1].get("X-Vit-Batch-Size", 0)) for r in raw_answers(held, images)]
    check("8 on their way at --max-batch 8: a full batch", sizes == [8] * 8 and closed(s).get("full") == 1,
          f"{sizes} {closed(s)}")
    # The CNN's layers keep a plan per batch size: a batch of 7 runs as passes of 4, 2 and 1,
    # each image answered as alone.
    cnn = "/v1/classify?top_k=10&model=cnn_resnet8_fmnist"
    cnn_alone = {name: json.loads(s.request("POST", cnn, image, octet)[2])[0]["top_k"]
                 for name, image in (("bag", bag), ("coat", coat))}
    held = [raw_post(s.port, image, cnn) for image in images[:7]]
    wait_on_the_way(s, 7)
    results = raw_answers(held, images)
    check("the CNN: 7 requests on their way, one batch of 7 in passes of 4, 2, 1, answered as alone",
          [int(r[1].get("X-Vit-Batch-Size", 0)) for r in results] == [7] * 7 and all(
              r[0] == 200 and all(abs(a["probability"] - b["probability"]) < 1e-5 and
                                  a["class"] == b["class"] for a, b in zip(
                                      json.loads(r[2])[0]["top_k"], cnn_alone["coat" if i % 2 else "bag"]))
              for i, r in enumerate(results)), str([r[0] for r in results]))
    status, _, body = s.request("GET", "/metrics")
    check("metrics count a batch of more than one", re.search(
        r'^vit_batch_size_bucket\{le="1"\} (\d+)$', body.decode(), re.M).group(1) !=
        re.search(r"^vit_batch_size_count (\d+)$", body.decode(), re.M).group(1))
with Server("--max-delay-ms", "300", "--max-batch", "8") as s:
    stalled = raw_post(s.port, bag)  # never finished: the batch waits for it --max-delay-ms only
    wait_on_the_way(s, 1)
    status, headers, _ = s.request("POST", "/v1/classify", coat, octet)
    check("a request that stalls on its way holds the batch for --max-delay-ms, no longer",
          status == 200 and headers.get("X-Vit-Batch-Size") == "1" and closed(s).get("max_delay") == 1,
          f"{status} {closed(s)}")
    stalled.close()

    # SIGTERM with requests on their way: they are read, answered, and the server exits 0.
    held = [raw_post(s.port, image) for image in images[:6]]
    wait_on_the_way(s, 6)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    results = [r[0] for r in raw_answers(held, images)]
    check("SIGTERM: the requests in flight answered", results == [200] * 6, str(results))
    code = s.stop()
    check("SIGTERM: then exit 0", code == 0 and any("stopped" in l for l in s.log), str(code))

# Limits: body size, images per request, queue, timeout.
with Server("--max-body-mb", "0.001", "--max-batch", "2") as s:
    status, _, body = s.request("POST", "/v1/classify", b"\x89PNG" + b"\0" * 4096, octet)
    check("a body over --max-body-mb: 413", status == 413, f"{status} {body[:200]}")
with Server("--max-batch", "2") as s:
    data, h = multipart([("a.png", bag)] * 3)
    status, _, body = s.request("POST", "/v1/classify", data, h)
    check("more images than --max-batch: 413", status == 413 and b"at most 2" in body, body[:200])
with Server("--max-batch", "1", "--max-queue", "1", "--max-delay-ms", "0", "--threads", "1") as s:
    results = []
    lock = threading.Lock()

    def hammer():
        for _ in range(8):
            r = s.request("POST", "/v1/explain?format=json", bag, octet)
            with lock:
                results.append(r)
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    full = [r for r in results if r[0] == 503]
    check("a full queue: 503 with Retry-After, the rest answered", len(results) == 64 and full and
          all(r[1].get("Retry-After") == "1" and b"queue is full" in r[2] for r in full) and
          all(r[0] in (200, 503) for r in results), str(sorted({r[0] for r in results})))
with Server("--http-threads", "2", "--max-connections", "2") as s:
    results = [None] * 8

    def one(i):
        results[i] = s.request("POST", "/v1/classify", bag, octet)[0]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    check("8 clients through 2 connections' worth of threads: all answered in turn",
          results == [200] * 8, str(results))
# Clients that arrive together wait in the kernel's backlog while every thread is busy. With
# httplib's own backlog of 5 the kernel drops the rest's SYNs, and each waits out a 1 s
# retransmission: within half a second only 6 of 40 would be connected.
with Server("--http-threads", "1", "--max-connections", "1") as s:
    hold = socket.create_connection(("127.0.0.1", s.port), timeout=5)  # takes the one thread
    time.sleep(0.2)
    waiting = []
    for _ in range(40):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", s.port))
        waiting.append(c)
    time.sleep(0.5)
    _, writable, _ = select.select([], waiting, [], 0)
    connected = sum(1 for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    for c in waiting + [hold]:
        c.close()
    check("40 clients at once while the threads are busy: all in the backlog", connected == 40,
          f"{connected} of 40 connected within 0.5 s")
    check("and the server still answers", s.request("GET", "/healthz")[0] == 200)
# 64 images through the CNN take far more than 1 ms on any machine (the plans are built before
# the first request, so a single image may well be answered within 1 ms).
with Server("--timeout-ms", "1", "--max-batch", "64") as s:
    data, h = multipart([("a.png", bag)] * 64)
    status, headers, body = s.request("POST", "/v1/classify?model=cnn_resnet8_fmnist", data, h)
    check("no answer within --timeout-ms: 503", status == 503 and b"no answer within 1 ms" in body and
          headers.get("Retry-After") == "1", body[:200])

# Wrong command lines, and a port already taken.
def run(*args):
    return subprocess.run([VIT, "serve", *args], capture_output=True, text=True, timeout=30)
r = run("--port", "70000")
check("bad port: exit 2", r.returncode == 2 and "--port must be in 0 to 65535" in r.stderr, r.stderr)
r = run("--http-threads", "8", "--max-connections", "4")
check("connections below threads: exit 2", r.returncode == 2 and "--max-connections" in r.stderr)
r = run("--model", BAG)
check("an image as a model: exit 1", r.returncode == 1 and "bag_00018.png" in r.stderr, r.stderr)
r = run("--model", CNN, "--model", CNN)
check("two models of one name: exit 2", r.returncode == 2 and "two models named" in r.stderr, r.stderr)
with Server() as s:
    r = run("--port", str(s.port))
    check("a port in use: exit 1, named", r.returncode == 1 and f"cannot listen on 127.0.0.1:{s.port}"
          in r.stderr, r.stderr)

print(f"serve: {len(failures)} failed")
sys.exit(1 if failures else 0)
