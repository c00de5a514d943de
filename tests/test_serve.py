"""`mlx-rsg serve`: the real server in a child process (its CLI, its port, its signals), on a tiny
run trained on every task of the fixture data and its 4-bit quantization."""

from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tiny_model import tiny_model_dir, tiny_train_config  # noqa: F401

import mlx_rsg
from mlx_rsg import tasks
from mlx_rsg.data import load_split
from mlx_rsg.data.sample import diagnostic_records
from mlx_rsg.serve.batcher import Job, MicroBatcher
from mlx_rsg.serve.examples import BUILTIN, examples
from mlx_rsg.serve.process import ServerProcess

CLI = [sys.executable, "-c", "from mlx_rsg.cli import main; main()"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(tiny_model_dir, fixture_root, tmp_path_factory):  # noqa: F811
    from mlx_rsg.quant.quantize import quantize
    from mlx_rsg.train import train

    root = tmp_path_factory.mktemp("serve-runs")
    fp32 = root / "fp32"
    cfg = tiny_train_config(epochs=1, tasks=tasks.TRAIN_TASKS, max_len=128)
    train(tiny_model_dir, fixture_root, fp32, cfg, log=lambda m: None)
    q4 = quantize(fp32, root / "q4", bits=4, group_size=32)
    return fp32, q4


class Server(ServerProcess):
    """The server in a child process, with JSON calls."""

    def call(self, path: str, body=None, headers=None) -> tuple[int, dict]:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {},
                                     method="GET" if data is None else "POST")  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def predict(self, task: str, records: list, model: str | None = "fp32") -> tuple[int, dict]:
        body = {"task": task, "records": records}
        if model is not None:
            body["model"] = model
        return self.call("/v1/predict", body)


@pytest.fixture(scope="module")
def server(runs):
    s = Server(list(runs))
    yield s
    s.stop()


def val_records(data: Path, task: str) -> list[dict]:
    """The fixture val records of TASK as JSON objects (records as the API takes them)."""
    from mlx_rsg.data.files import read_objects

    split = "test" if task == "LiDiRus" else "val"
    _, values = read_objects(data, task, split)
    if task == "RuCoS":  # one query per API record
        return [{**obj, "qas": [q]} for _, obj in values for q in obj["qas"]]
    return [obj for _, obj in values]


@functools.cache
def loaded(run: Path):
    return mlx_rsg.load(run)


def expected(run: Path, task: str, objs: list[dict]) -> list[dict]:
    """What `mlx_rsg.load(run)` predicts in this process, spelled as the submission."""
    predictor = loaded(run)
    records = [tasks.parse_record(task, o) for o in objs]
    preds, _, _ = predictor.predictions(task, records)
    spec = tasks.get(task)
    out = []
    for r, p in zip(records, preds, strict=True):
        row = spec.submission_row(r, p)
        out.append(row["label"] if "label" in row else {"passage": row["passage"]})
    return out


def _numbers(probs) -> list[float]:
    """The probabilities of an answer in a fixed order, whatever their keys' spelling: a label
    task's {label: p} in the head's label order, MuSeRC's one such dict per answer, a choice
    task's list."""
    if isinstance(probs, dict):
        probs = list(probs.values())
    if isinstance(probs, list):
        return [v for p in probs for v in _numbers(p)]
    return [probs]


# ---------------------------------------------------------------------------------- API


def test_health_and_models(server, runs):
    status, health = server.call("/health")
    assert status == 200 and health["status"] == "ok" and health["models"] == ["fp32", "q4"]
    assert health["rss_peak_bytes"] > 0
    status, body = server.call("/v1/models")
    assert status == 200
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["fp32"]["bits"] == 32 and by_name["fp32"]["quantization"] is None
    assert by_name["q4"]["bits"] == 4 and by_name["q4"]["quantization"]["group_size"] == 32
    assert set(by_name["fp32"]["tasks"]) == set(tasks.TASKS)  # LiDiRus rides on TERRa
    q4_size = sum(f.stat().st_size for f in Path(runs[1]).rglob("*.safetensors"))
    assert by_name["q4"]["size_bytes"] == q4_size
    assert by_name["q4"]["size_bytes"] < by_name["fp32"]["size_bytes"]


@pytest.mark.parametrize("model", ["fp32", "q4"])
def test_every_task_answers_as_the_library(server, runs, fixture_root, model):
    """Each task's fixture val records through the API: the labels `mlx_rsg.load` gives in this
    process, in the submission's spelling, with the request's own idx and probabilities."""
    run = runs[0] if model == "fp32" else runs[1]
    for task in tasks.TASKS:
        objs = val_records(fixture_root, task)
        status, body = server.predict(task.lower(), objs, model)
        assert status == 200, body
        assert body["task"] == task and body["model"] == model
        preds = body["predictions"]
        assert [p["label"] for p in preds] == expected(run, task, objs), task
        assert [p["idx"] for p in preds] == [tasks.parse_record(task, o).idx for o in objs]
        library = loaded(run).predict(task, objs)  # the same records as one batch, in-process
        for p, lib in zip(preds, library, strict=True):
            assert _numbers(p["probs"]) == pytest.approx(_numbers(lib["probs"]), abs=1e-6), task
        for p in preds:
            probs = p["probs"]
            if isinstance(probs, dict):  # label tasks: keys spelled like the labels
                assert p["label"] in probs and sum(probs.values()) == pytest.approx(1, abs=1e-5)
                assert max(probs, key=probs.get) == p["label"] or task in ("MuSeRC",)
            elif task in ("PARus", "RuCoS"):
                assert len(probs) == len(p["choices"]) and sum(probs) == pytest.approx(1, abs=1e-5)
                best = p["choices"][int(np.argmax(probs))]
                assert best == (p["label"] if task == "RuCoS" else p["choices"][p["label"]])


def test_records_without_idx_or_label(server):
    """Records typed by hand: numbered by position; a test record has no label."""
    records = [{"premise": "Кот спит на диване.", "hypothesis": "Кот спит."},
               {"premise": "Идёт дождь.", "hypothesis": "На улице сухо."}]  # fmt: skip
    status, body = server.predict("TERRa", records, model="q4")
    assert status == 200 and [p["idx"] for p in body["predictions"]] == [0, 1]
    assert {p["label"] for p in body["predictions"]} <= {"entailment", "not_entailment"}


def test_the_page_and_the_schema(server):
    with urllib.request.urlopen(server.url + "/", timeout=30) as r:
        page = r.read().decode()
    assert "<title>mlx-rsg</title>" in page and 'id="predict"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # offline: nothing from elsewhere
    status, schema = server.call("/openapi.json")
    assert status == 200 and "/v1/predict" in schema["paths"]
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {"model", "task", "records"}
    status, ex = server.call("/v1/examples")
    assert status == 200 and ex == BUILTIN


BAD = [  # (body, status, error)
    (b"\xff\xfe{}", 400, "body: not UTF-8 (byte 0: invalid start byte)"),
    (b'{"task": "TERRa", "records": [', 400,
     "body: invalid JSON: Expecting value (line 1, column 31)"),
    (b"[1, 2]", 422, "body: expected a JSON object with task and records"),
    ({"task": "TERRa", "records": [{}], "extra": 1}, 422,
     "body: unknown field 'extra' (expected model, task, records)"),
    ({"records": [{}]}, 422, "field 'model': missing (this server has fp32, q4)"),
    ({"model": "fp16", "task": "TERRa", "records": [{}]}, 404,
     "field 'model': 'fp16' is not served here (fp32, q4)"),
    ({"model": "fp32", "task": "CoLA", "records": [{}]}, 422,
     "field 'task': 'CoLA' is not one of LiDiRus, RCB, PARus, MuSeRC, TERRa, RUSSE, RWSD, "
     "DaNetQA, RuCoS"),
    ({"model": "fp32", "task": 3, "records": [{}]}, 422,
     "field 'task': expected a string, got int"),
    ({"model": "fp32", "task": "TERRa"}, 422, "field 'records': missing"),
    ({"model": "fp32", "task": "TERRa", "records": {}}, 422,
     "field 'records': expected a list, got dict"),
    ({"model": "fp32", "task": "TERRa", "records": []}, 422, "field 'records': empty"),
    ({"model": "fp32", "task": "TERRa", "records": [{"premise": "a", "hypothesis": "b"}, "x"]}, 422,
     "records[1]: expected a JSON object, got str"),
    ({"model": "fp32", "task": "TERRa", "records": [{"premise": "a", "hypothesis": "b"},
                                                    {"premise": "a"}]}, 422,
     "records[1]: field 'hypothesis': missing"),
    ({"model": "fp32", "task": "TERRa", "records": [{"premise": "a", "hypothesis": 5}]}, 422,
     "records[0]: field 'hypothesis': expected a string, got integer"),
    ({"model": "fp32", "task": "TERRa", "records": [{"premise": "a", "hypothesis": "b", "idx": 7},
                                                    {"premise": "c", "hypothesis": "d", "idx": 7}]},
     422, "records[1]: field 'idx': 7 is also records[0]'s"),
    ({"model": "fp32", "task": "TERRa", "records": [{"premise": "a", "hypothesis": "b",
                                                     "label": "maybe"}]}, 422, None),
    ({"model": "fp32", "task": "TERRa", "records": [{"premise": "a", "hypothesis": "b"}] * 65},
     413, "field 'records': 65 records; at most 64 in one request (--max-records)"),
]  # fmt: skip


@pytest.mark.parametrize("body,status,error", BAD)
def test_bad_requests_get_one_line_4xx(server, body, status, error):
    got, answer = server.call("/v1/predict", body)
    assert got == status, answer
    assert set(answer) == {"error"} and "\n" not in answer["error"]
    if error is None:  # the parser's own wording: it names the record and the field
        assert answer["error"].startswith("records[0]: field 'label'"), answer
    else:
        assert answer["error"] == error
    assert server.call("/health")[0] == 200  # and the server goes on


def test_bodies_over_the_limit(server):
    # 8 MiB: a server that closed with the body unread would reset this client while it sends
    big = b'{"task": "TERRa", "records": ["' + b"a" * (8 << 20) + b'"]}'
    for _ in range(3):
        status, answer = server.call("/v1/predict", big)
        assert (status, answer) == (413, {"error": "body: larger than 1024 KiB (--max-body-kb)"})

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(128):
            yield b"a" * (64 * 1024)

    req = urllib.request.Request(server.url + "/v1/predict", data=chunks(), method="POST",
                                 headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413
    assert server.call("/health")[0] == 200
    status, answer = server.call("/nowhere")
    assert (status, answer) == (404, {"error": "GET /nowhere: Not Found"})


def _raw(server, request: bytes, close_after: bool = False) -> bytes:
    """Send raw bytes to the server; what it answers (b"" when closing first)."""
    import socket

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        if close_after:
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _log_since(server, start: int) -> str:
    time.sleep(0.5)  # the server's stderr is read by a thread as it comes
    return "".join(server._err[start:])


def test_a_client_gone_mid_body_is_one_line_in_the_log(server):
    """Issue 27, item 10: it was ~50 lines of ASGI traceback per connection."""
    start = len(server._err)
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"task\": \"TERRa\", ")  # fmt: skip
    _raw(server, head, close_after=True)
    log = _log_since(server, start)
    assert "Traceback" not in log
    assert log.strip().splitlines() == [
        "WARNING:  POST /v1/predict: the client disconnected before sending its whole body; "
        "dropped"], log  # fmt: skip
    assert server.call("/health")[0] == 200


@pytest.mark.parametrize("length", [b"-1", b"x", b"1, 2"])
def test_a_request_uvicorn_cannot_parse_gets_the_json_error(server, length):
    """Issue 27, item 10: `Content-Length: -1` got uvicorn's plain-text 400."""
    answer = _raw(server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
                  + b"\r\n\r\n{}")  # fmt: skip
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"error": "request: not valid HTTP/1.1 (its request line or a "
                                         "header such as Content-Length could not be parsed)"}
    assert server.call("/health")[0] == 200


# The standing catalogue of records (issue 27): every field of every task's example record left
# out or replaced by each of these; the library answers or raises one UserError line, the server
# answers 200 or a one-line 4xx, never a 500, a traceback or another exception.
MISSING = object()
HOSTILE = [MISSING, None, [], {}, 7, -1, 2**70, 1.5, True, "", "\x00", "\u2028", "\ud800",
           "ы" * 100_000]  # fmt: skip


def _mutations(record: dict):
    """(field path, value, the record with that field replaced or left out) for every field and
    list item of `record`, nested ones included."""
    import copy

    def paths(obj, path):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            yield (*path, key)
            if isinstance(value, (dict, list)):
                yield from paths(value, (*path, key))

    for path in list(paths(record, ())):
        for value in HOSTILE:
            new = copy.deepcopy(record)
            parent = new
            for key in path[:-1]:
                parent = parent[key]
            if value is MISSING:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            yield path, value, new


def test_every_field_of_every_task_survives_hostile_values(server, runs):
    from mlx_rsg.errors import UserError

    clf = loaded(runs[0])
    start, count = len(server._err), 0
    for task, example in BUILTIN.items():
        for path, value, record in _mutations(example):
            case = (task, path, "missing" if value is MISSING else repr(value)[:20])
            try:
                rows = clf.predict(task, [record])
                assert len(rows) == 1, case
            except UserError as e:
                assert str(e) and "\n" not in str(e), case
            status, answer = server.predict(task, [record])
            refused = status in (400, 413, 422) and set(answer) == {"error"}
            assert status == 200 or refused and "\n" not in answer["error"], (case, answer)
            count += 1
    assert count > 900  # 994 today: docs/layout.md counts these cases
    assert server.call("/health")[0] == 200
    log = "".join(server._err[start:])
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]


# ------------------------------------------------------------------------ micro-batching


def _job(run, task, units, log):
    return Job(run, task, [], units, lambda result: log.append(result))


def test_batcher_groups_by_run_and_task_in_order():
    b = MicroBatcher(window_s=0, max_units=2)
    keys = [("a", "TERRa", 1), ("a", "TERRa", 1), ("a", "RCB", 1), ("a", "TERRa", 1),
            ("b", "TERRa", 1), ("a", "TERRa", 3)]  # fmt: skip
    jobs = [_job(run, task, units, []) for run, task, units in keys]
    for j in jobs:
        b.submit(j)
    got = []
    while batch := b.next_batch(timeout=0.01):
        got.append([jobs.index(j) for j in batch])
    # full at 2 units; the RCB job waits for the next batch, then the held jobs go first;
    # a job larger than max_units is a batch of its own
    assert got == [[0, 1], [2], [3], [4], [5]]
    assert (b.batches, b.jobs, b.pending()) == (5, 6, 0)


def test_batcher_waits_the_window_for_company():
    b = MicroBatcher(window_s=0.3, max_units=8)
    b.submit(_job("a", "TERRa", 1, []))
    threading.Timer(0.1, lambda: b.submit(_job("a", "TERRa", 1, []))).start()
    t0 = time.monotonic()
    assert len(b.next_batch(timeout=1)) == 2 and time.monotonic() - t0 < 0.29 + 0.2
    assert b.next_batch(timeout=0.01) == []


@pytest.fixture(scope="module")
def batching_server(runs):
    """A server whose batches wait a whole second for company: concurrent requests meet."""
    s = Server([runs[0], "--batch-window-ms", 1000])
    yield s
    s.stop()


def test_concurrent_requests_share_batches_and_keep_their_answers(batching_server, runs,
                                                                  fixture_root):  # fmt: skip
    objs = val_records(fixture_root, "TERRa")
    alone = (expected(runs[0], "TERRa", objs) * 16)[:16]
    objs = (objs * 16)[:16]
    single = [{**o, "idx": 0} for o in objs]  # every request says idx 0
    _, before = batching_server.call("/health")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda o: batching_server.predict("TERRa", [o], None), single))
    _, after = batching_server.call("/health")
    assert all(status == 200 for status, _ in answers)
    assert [a["predictions"][0]["label"] for _, a in answers] == alone
    assert all(a["predictions"][0]["idx"] == 0 for _, a in answers)
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 16 and batches <= 3, (requests, batches)


def test_sigterm_answers_the_requests_in_flight(batching_server, fixture_root):
    """SIGTERM while a request waits in its batch window: it is answered, then exit 0."""
    objs = val_records(fixture_root, "RCB")[:2]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(batching_server.predict, "RCB", objs, None)
        time.sleep(0.4)  # the request is in: its batch waits 1 s for company
        batching_server.proc.send_signal(signal.SIGTERM)
        status, body = pending.result(timeout=30)
    assert status == 200 and len(body["predictions"]) == 2
    code, out, err = batching_server.stop()
    assert code == 0, err
    assert "stopped" in out
    with pytest.raises(urllib.error.URLError):  # and it no longer listens
        urllib.request.urlopen(batching_server.url + "/health", timeout=5)


# ------------------------------------------------------------------------- runs on disk


def test_a_run_replaced_on_disk_changes_nothing(runs, tmp_path, fixture_root):
    """Loaded once at start: weights overwritten and run.json deleted under a running server do
    not change (or break) its answers."""
    run = tmp_path / "fp32"
    shutil.copytree(runs[0], run)
    objs = val_records(fixture_root, "PARus")
    s = Server([run])
    try:
        _, first = s.predict("PARus", objs, None)
        import mlx.core as mx

        w = mx.load(str(run / "trainable.safetensors"))
        mx.save_safetensors(str(run / "trainable.safetensors"),
                            {k: mx.zeros_like(v) for k, v in w.items()})  # fmt: skip
        (run / "run.json").unlink()
        _, second = s.predict("PARus", objs, None)
        assert second["predictions"] == first["predictions"]
    finally:
        code, _, err = s.stop()
    assert code == 0, err


def test_cli_errors(runs, tmp_path):
    def serve(*args):
        return subprocess.run([*CLI, "serve", *map(str, args)], capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    r = serve(tmp_path / "missing")
    missing = tmp_path / "missing"
    assert r.returncode == 2 and r.stderr.strip() == f"error: {missing}: no such run directory"
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "trainable.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    r = serve(runs[0], broken)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {broken / 'trainable.safetensors'}: ")
    r = serve(runs[0], "--max-records", 0)
    assert r.returncode == 2 and r.stderr.strip() == ("error: Invalid value for '--max-records': "
                                                      "must be in [1, 2147483647], got 0 (see "
                                                      "mlx-rsg serve --help)")  # fmt: skip
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = serve(runs[0], "--port", port)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: --host 127.0.0.1 --port {port}: cannot listen "
                                "(Address already in use)")  # fmt: skip


def test_examples_from_data_are_labelless_val_records(fixture_root):
    got = examples(str(fixture_root))
    assert set(got) == set(tasks.TASKS)
    terra = load_split(fixture_root, "TERRa", "val")[0]
    assert got["TERRa"]["premise"] == terra.premise and "label" not in got["TERRa"]
    assert got["LiDiRus"]["sentence1"] == diagnostic_records(fixture_root)[0].premise
    answers = [a for q in got["MuSeRC"]["passage"]["questions"] for a in q["answers"]]
    assert answers and all("label" not in a for a in answers)
    assert len(got["RuCoS"]["qas"]) == 1 and "answers" not in got["RuCoS"]["qas"][0]
    for task, obj in {**got, **BUILTIN}.items():
        assert tasks.parse_record(task, obj).idx == obj["idx"]


# ------------------------------------------------------------------------------ the page


def chromium(tmp_path: Path):
    """Headless Debian Chromium driven by selenium through Debian's chromedriver (no browser
    download). Skipped where they are missing, except in CI, where .ci/run installs them."""
    import os

    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chrome and driver and webdriver):
        why = "needs selenium and Debian's chromium + chromium-driver (docs/layout.md, Tests)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", f"--user-data-dir={tmp_path / 'chrome'}",
                 "--window-size=1000,1400"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def shown(label) -> str:
    """A label as the page writes it: text as is, a number or bool as JS's String(), a
    structure as JSON.stringify()."""
    if isinstance(label, str):
        return label
    if isinstance(label, bool):
        return "true" if label else "false"
    if isinstance(label, (int, float)):
        return str(label)
    return json.dumps(label, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.slow
def test_the_page_in_a_real_browser(server, tmp_path):
    """One prediction per task on the page, by hand as a person would: pick the task, press
    Predict, read the label; it must be the API's for the same record. Then an edited field and
    the 4-bit model."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = chromium(tmp_path)
    wait = WebDriverWait(browser, 60)
    _, samples = server.call("/v1/examples")

    def predict_on_page() -> str:
        browser.find_element(By.ID, "predict").click()
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        return browser.find_element(By.ID, "label").text

    try:
        browser.get(server.url + "/")
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        assert Select(browser.find_element(By.ID, "model")).first_selected_option.text == (
            "fp32 (32-bit)")
        for task in tasks.TASKS:
            Select(browser.find_element(By.ID, "task")).select_by_value(task)
            label = predict_on_page()
            status, api = server.predict(task, [samples[task]])
            assert status == 200
            assert label == shown(api["predictions"][0]["label"]), task
            bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
            probs = api["predictions"][0]["probs"]
            n = sum(len(p) for p in probs) if task == "MuSeRC" else len(probs)
            assert len(bars) == n, task
            assert "ms in the server" in browser.find_element(By.ID, "latency").text
        browser.save_screenshot(str(tmp_path / "page.png"))

        # an edited field is what gets sent
        Select(browser.find_element(By.ID, "task")).select_by_value("TERRa")
        field = browser.find_element(By.ID, "f-hypothesis")
        field.clear()
        field.send_keys("Мост закрыли навсегда.")
        label = predict_on_page()
        edited = {**samples["TERRa"], "hypothesis": "Мост закрыли навсегда."}
        assert label == server.predict("TERRa", [edited])[1]["predictions"][0]["label"]

        # the 4-bit run, chosen in the model menu
        Select(browser.find_element(By.ID, "model")).select_by_value("q4")
        Select(browser.find_element(By.ID, "task")).select_by_value("RCB")
        label = predict_on_page()
        assert label == server.predict("RCB", [samples["RCB"]], "q4")[1]["predictions"][0]["label"]
    finally:
        browser.quit()


def test_server_process_reports_a_failed_start(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with 2: error: .*missing: no such run"):
        ServerProcess([tmp_path / "missing"])


def test_a_failing_batch_is_retried_request_by_request(runs, fixture_root):
    """One request whose records break scoring fails alone; the others in its batch are
    answered as if it had not been there."""
    from mlx_rsg.serve.scoring import score_batch

    predictor = mlx_rsg.load(runs[0])
    real = predictor.predictions

    def predictions(task, records):
        if any(r.premise == "boom" for r in records):
            raise ValueError("boom")
        return real(task, records)

    predictor.predictions = predictions
    objs = val_records(fixture_root, "TERRa")
    good = [tasks.parse_record("TERRa", o) for o in objs]
    bad = [tasks.parse_record("TERRa", {"idx": 0, "premise": "boom", "hypothesis": "x"})]
    answers: dict[int, object] = {}
    jobs = [Job("fp32", "TERRa", recs, len(recs), lambda r, i=i: answers.setdefault(i, r))
            for i, recs in enumerate([good[:2], bad, good[2:]])]  # fmt: skip
    score_batch(predictor, jobs)
    assert isinstance(answers[1], ValueError)
    labels = expected(runs[0], "TERRa", objs)
    assert [row["label"] for row in answers[0] + answers[2]] == labels
    assert [row["idx"] for row in answers[0] + answers[2]] == [r.idx for r in good]


def test_too_many_waiting_requests_get_503(runs, fixture_root):
    """Load shedding: while a TERRa batch waits out its window, RCB requests queue behind it;
    past --max-pending the next one is refused at once, and the waiting ones are answered."""
    s = Server([runs[0], "--batch-window-ms", 1500, "--max-pending", 1])
    try:
        terra, rcb = val_records(fixture_root, "TERRa")[:1], val_records(fixture_root, "RCB")[:1]
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(s.predict, "TERRa", terra, None)
            time.sleep(0.5)  # taken: its batch waits for company
            second = pool.submit(s.predict, "RCB", rcb, None)
            time.sleep(0.5)  # held for the next batch: 1 waiting
            status, answer = s.predict("RCB", rcb, None)
            assert (status, answer) == (503, {"error": "busy: 1 requests are waiting "
                                              "(--max-pending); retry later"})  # fmt: skip
            assert first.result(timeout=30)[0] == 200 and second.result(timeout=30)[0] == 200
    finally:
        code, _, err = s.stop()
    assert code == 0, err


@pytest.mark.parametrize(
    "flags",
    [
        {"--max-batch": 2**31 - 1, "--max-records": 2**31 - 1, "--max-pending": 2**31 - 1,
         "--max-body-kb": 2**31 - 1, "--batch-window-ms": 0},
        # a full batch (one unit) does not wait out the longest window
        {"--max-batch": 1, "--max-records": 1, "--max-pending": 1, "--max-body-kb": 1,
         "--batch-window-ms": 60_000},
    ],
    ids=["largest", "smallest"],
)  # fmt: skip
def test_the_server_works_at_the_bounds_of_every_number_flag(flags, runs, fixture_root):
    """The server survives every value its flags accept: started with each number flag at the
    largest (then the smallest) value the CLI lets through, it answers as the library does and
    stops cleanly. Values outside the bounds are refused before start (test_reliability)."""
    s = Server([runs[0], *(str(x) for item in flags.items() for x in item)])
    try:
        objs = val_records(fixture_root, "TERRa")[:1]
        started = time.monotonic()
        status, body = s.predict("TERRa", objs, None)
        assert status == 200, body
        assert [row["label"] for row in body["predictions"]] == expected(runs[0], "TERRa", objs)
        assert time.monotonic() - started < 30
        assert s.call("/health")[0] == 200
    finally:
        code, _, err = s.stop()
    assert code == 0, err
    assert "Traceback" not in err, err
