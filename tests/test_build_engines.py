"""The builder's engines: the in-process prefix-cache reuse, vLLM at its `vllm.LLM` boundary, and the `openai`
engine against a real `transformers serve` (same rows as in process; a server killed mid-run is retried)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile
import torch
from conftest import Server, free_port

from desta_audio import testing as tiny_assets
from desta_audio.data.arguments import make_generator, parse_args
from desta_audio.data.builder import BuildOptions, build
from desta_audio.data.descriptions import generation_messages, load_instructions
from desta_audio.data.engines import TransformersGenerator, VLLMGenerator, render_prompt
from desta_audio.data.engines_openai import EngineError, OpenAIGenerator, RejectedAnswer
from desta_audio.data.sources import SourceColumns, folder_source
from desta_audio.data.store import record_files, shard_file
from desta_audio.testing.servers import console_script

# Slow (real Whisper, subprocesses, servers or a browser): left out of the quick loop `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 6
ROWS = 10
COLUMNS = SourceColumns(audio="file", transcript="text", attributes=("gender",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """ROWS sine clips of 1-3 s with transcripts and a gender, so every prompt differs after the shared prefix."""
    root = tmp_path_factory.mktemp("engine_corpus")
    rows = []
    for i in range(ROWS):
        soundfile.write(root / f"c{i}.wav", tiny_assets.sine(1.0 + i % 3, freq=200 + 30 * i), 16000)
        rows.append({"file": f"c{i}.wav", "text": f"row {i} says {'hello ' * (i % 4)}".strip(), "gender": "Female"})
    (root / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def conversations(count: int = 6) -> list[list[dict[str, str]]]:
    pool = load_instructions()
    return [
        generation_messages(f"[00:00-00:0{1 + i % 5}] clip {i} {'la ' * i}(Gender: Male, Duration: 2s)", pool[i * 7])
        for i in range(count)
    ]


def records_of(out: Path) -> dict[str, dict]:
    return {r["id"]: r for path in record_files(out) for r in map(json.loads, path.read_text().splitlines())}


def run_build(corpus: Path, out: Path, generator, batch_size: int = 4):
    options = BuildOptions(output_dir=out, instructions=load_instructions(), batch_size=batch_size, progress=False)
    return build(folder_source(corpus, corpus / "meta.jsonl", "file", "toy"), COLUMNS, generator, options)


@pytest.fixture(scope="module")
def in_process_rows(corpus, llm_dir, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("in_process")
    generator = TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=MAX_NEW_TOKENS)
    run_build(corpus, out, generator)
    return records_of(out)


# ----------------------------------------------------------------------------- in process: shared-prefix KV cache


def test_prefix_cache_reuse_gives_the_same_rows_as_whole_prompts(llm_dir):
    chats = conversations()
    whole = TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=12, reuse_prefix=False)
    reused = TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=12)
    expected = whole.generate(chats, seed=0)
    assert reused.generate(chats, seed=0) == expected
    assert reused.generate(chats[:1], seed=0) == expected[:1]  # batch 1, and the cache survives reuse
    assert reused.generate(chats[2:5], seed=0) == expected[2:5]
    assert len(set(expected)) > 1

    # the prefix is the system prompt and the user header, shared by every row and nothing more
    rows = [reused.tokenizer(render_prompt(reused.tokenizer, c), add_special_tokens=False).input_ids for c in chats]
    prefix = reused.prefix_ids
    assert all(row[: len(prefix)] == prefix for row in rows)
    text = reused.tokenizer.decode(prefix)
    assert text.endswith("user<|end_header_id|>\n\n") and "Imagine you can hear the audio clips." in text


def test_prefix_cache_is_rebuilt_for_another_system_prompt(llm_dir):
    reused = TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=8)
    whole = TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=8, reuse_prefix=False)
    other = [[{"role": "system", "content": "Answer in one word."}, c[1]] for c in conversations(3)]
    assert reused.generate(conversations(3), seed=0) == whole.generate(conversations(3), seed=0)
    first_prefix = reused.prefix_ids
    assert reused.generate(other, seed=0) == whole.generate(other, seed=0)
    assert reused.prefix_ids != first_prefix
    mixed = [conversations(1)[0], other[0]]  # no common prefix beyond BOS and header: the plain path
    assert reused.generate(mixed, seed=0) == whole.generate(mixed, seed=0)


# ----------------------------------------------------------------------------- vllm, replaced at vllm.LLM


class TinyVLLM:
    """Stands in for `vllm.LLM` only: greedy decoding of the given token ids with the tiny model, vLLM-style output."""

    instances: list[TinyVLLM] = []

    def __init__(self, model: str, **options):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.calls = []
        TinyVLLM.instances.append(self)

    @torch.inference_mode()
    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        results = []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_tokens,
                do_sample=False,
                eos_token_id=params.stop_token_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )[0, ids.shape[1] :].tolist()
            text = self.tokenizer.decode(out, skip_special_tokens=params.skip_special_tokens)
            results.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, token_ids=out)]))
        return results


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = TinyVLLM
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    TinyVLLM.instances.clear()
    return module


def test_vllm_engine_sends_the_in_process_token_ids_and_gets_the_same_rows(fake_vllm, llm_dir):
    chats = conversations(4)
    engine = VLLMGenerator(llm_dir, max_new_tokens=10, tensor_parallel_size=2)
    llm = TinyVLLM.instances[0]
    assert llm.options == {"dtype": "auto", "enable_prefix_caching": True, "tensor_parallel_size": 2}
    expected = TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=10).generate(chats, 0)
    assert engine.generate(chats, seed=5) == expected
    prompts, params = llm.calls[0]
    tokenizer = llm.tokenizer
    assert [p["prompt_token_ids"] for p in prompts] == [
        tokenizer(render_prompt(tokenizer, c), add_special_tokens=False).input_ids for c in chats
    ]
    assert prompts[0]["prompt_token_ids"].count(tokenizer.bos_token_id) == 1
    assert (params.max_tokens, params.temperature, params.seed) == (10, 0.0, 5)
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in params.stop_token_ids


# ----------------------------------------------------------------------------- openai: retries on a loopback server


class FlakyCompletions(BaseHTTPRequestHandler):
    """A real HTTP server: answers 503, then 429 (Retry-After: 0), then a chat completion echoing the last message."""

    statuses: list[int] = []
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append({**body, "authorization": self.headers.get("authorization")})
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        payload = {
            "choices": [{"message": {"role": "assistant", "content": f" echo: {body['messages'][-1]['content']}"}}]
        }
        data = json.dumps(payload if status == 200 else {"error": "busy"}).encode()
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyCompletions)
    FlakyCompletions.statuses, FlakyCompletions.bodies = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_engine_retries_429_and_5xx_and_keeps_the_order(flaky_server, monkeypatch):
    FlakyCompletions.statuses = [503, 429]
    monkeypatch.setenv("MY_KEY", "sk-test")
    engine = OpenAIGenerator.from_environment(flaky_server, "m", "MY_KEY", max_concurrency=1, backoff_s=0.01)
    chats = conversations(3)
    assert engine.generate(chats, seed=7) == [f"echo: {c[-1]['content']}" for c in chats]
    bodies = FlakyCompletions.bodies
    assert len(bodies) == 5  # two refusals retried, then one request per row
    assert [b["seed"] for b in bodies[2:]] == [7, 8, 9]
    assert bodies[0]["authorization"] == "Bearer sk-test"
    assert {(b["model"], b["max_tokens"], b["temperature"]) for b in bodies} == {("m", 512, 0.0)}


def test_openai_engine_gives_up_with_the_url_after_its_retries(flaky_server):
    FlakyCompletions.statuses = [500] * 3
    engine = OpenAIGenerator(flaky_server, "m", max_retries=2, backoff_s=0.01)
    with pytest.raises(EngineError, match=r"/v1/chat/completions: HTTP 500, still failing after 2 retries"):
        engine.generate(conversations(1), seed=0)
    FlakyCompletions.statuses = [400]
    with pytest.raises(EngineError, match="answered HTTP 400"):  # a client error is not retried
        engine.generate(conversations(1), seed=0)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match="ConnectError.*still failing after 1 retries"):
        OpenAIGenerator(closed, "m", max_retries=1, backoff_s=0.01).generate(conversations(1), seed=0)


# ----------------------------------------------------------------------------- openai: a real transformers serve


def test_console_scripts_are_found_beside_the_interpreter_off_path(monkeypatch, tmp_path):
    """`.venv/bin/python -m pytest` from a shell that never activated the venv: its scripts are not on PATH."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("transformers") is None
    assert console_script("transformers") == str(Path(sys.executable).with_name("transformers"))
    assert console_script("no-such-script") is None


@pytest.fixture(scope="module")
def serve(llm_dir, tmp_path_factory):
    if console_script("transformers") is None:
        pytest.skip("the transformers CLI is not installed beside this python or on PATH")
    pytest.importorskip("fastapi", reason='transformers serve needs pip install "transformers[serving]"')
    server = Server(llm_dir, free_port(), tmp_path_factory.mktemp("serve") / "serve.log")
    server.start()
    yield server
    server.kill()


def builder_args(corpus: Path, out: Path, serve: Server, *extra: str) -> list[str]:
    return [
        "--audio-dir", str(corpus), "--metadata", str(corpus / "meta.jsonl"), "--audio-column", "file",
        "--transcript-column", "text", "--attribute-columns", "gender", "--dataset-label", "toy",
        "--engine", "openai", "--base-url", serve.base_url, "--model", str(serve.llm_dir),
        "--max-new-tokens", str(MAX_NEW_TOKENS), "--output-dir", str(out),
        "--keep-truncated-answers",  # the tiny LLM never ends an answer; the in-process engine keeps them
        *extra,
    ]  # fmt: skip


def test_openai_engine_on_transformers_serve_writes_the_in_process_rows(corpus, serve, in_process_rows, tmp_path):
    """Greedy decoding, the same chat template (the server's tokenizer is the model folder's), the same stop token:
    every field of every record is the in-process engine's."""
    result = subprocess.run(
        [sys.executable, "build_dataset.py", *builder_args(corpus, tmp_path, serve, "--max-concurrency", "4")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert records_of(tmp_path) == in_process_rows
    assert len({r["response"] for r in in_process_rows.values()}) > 1


SLOW_ENGINE = """
import runpy, sys, time
from desta_audio.data.engines_openai import OpenAIGenerator

generate = OpenAIGenerator.generate
def slow_generate(self, *args, **kwargs):
    time.sleep(0.4)
    return generate(self, *args, **kwargs)
OpenAIGenerator.generate = slow_generate
sys.argv[0] = "build_dataset.py"
runpy.run_path("build_dataset.py", run_name="__main__")
"""


def test_server_killed_mid_run_is_retried_and_every_row_is_written_once(corpus, serve, in_process_rows, tmp_path):
    out = tmp_path / "out"
    stderr_path = tmp_path / "builder.log"
    args = builder_args(
        corpus,
        out,
        serve,
        "--batch-size",
        "2",
        "--max-concurrency",
        "2",
        "--max-retries",
        "60",
        "--max-retry-wait",
        "1",
    )
    with stderr_path.open("w") as stderr:
        builder = subprocess.Popen(
            [sys.executable, "-c", SLOW_ENGINE, *args], cwd=REPO_ROOT, stdout=stderr, stderr=stderr, text=True
        )
    try:
        shard = shard_file(out, 0, 1)
        wait_for(lambda: shard.exists() and shard.read_text().count("\n") >= 2, builder, "a first batch")
        serve.kill()
        wait_for(lambda: "retry" in stderr_path.read_text(), builder, "a retry after the server died")
        written_while_down = shard.read_text().count("\n")
        assert written_while_down < ROWS, "the run should still have rows to do"
        serve.start()
        assert builder.wait(timeout=240) == 0, stderr_path.read_text()[-3000:]
    finally:
        if builder.poll() is None:
            builder.kill()
        if serve.process.poll() is not None:
            serve.start()
    log = stderr_path.read_text()
    assert "ConnectError" in log or "RemoteProtocolError" in log or "ReadError" in log, log[-3000:]
    lines = [json.loads(line) for line in shard.read_text().splitlines()]
    assert Counter(r["id"] for r in lines) == Counter(f"c{i}.wav" for i in range(ROWS))  # each row exactly once
    assert {r["id"]: r for r in lines} == in_process_rows


def wait_for(condition, process, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the builder exited (code {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_run_that_runs_out_of_retries_stops_and_resumes_without_repeats(corpus, serve, in_process_rows, tmp_path):
    """The server is down for longer than the retries last: the run stops (exit 1, finished batches kept); the same
    command after a restart writes only the rest."""
    down = Server(serve.llm_dir, free_port(), tmp_path / "down.log")  # nobody listens on this port yet
    args = builder_args(corpus, tmp_path, down, "--batch-size", "4", "--max-retries", "0")
    failed = subprocess.run(
        [sys.executable, "build_dataset.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1 and "rerun the same command to resume" in failed.stderr, failed.stderr[-2000:]
    assert not records_of(tmp_path)
    partial = {k: in_process_rows[k] for k in ("c0.wav", "c1.wav", "c2.wav", "c3.wav")}
    shard_file(tmp_path, 0, 1).write_text("".join(json.dumps(r) + "\n" for r in partial.values()))
    resumed = subprocess.run(
        [sys.executable, "build_dataset.py", *builder_args(corpus, tmp_path, serve, "--batch-size", "4")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = [json.loads(line) for line in shard_file(tmp_path, 0, 1).read_text().splitlines()]
    assert Counter(r["id"] for r in lines) == Counter(f"c{i}.wav" for i in range(ROWS))
    assert json.loads((tmp_path / "summary.json").read_text())["already_done"] == 4


# ----------------------------------------------------------------------------- openai: bounded, bad answers refused


class ScriptedCompletions(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted reply: a `choice` dict (as JSON), raw `bytes`, or a `drip` of bytes
    sent one per 0.2 s (bounded by the script)."""

    replies: list = []
    requests = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["content-length"]))
        type(self).requests += 1
        kind, value = type(self).replies.pop(0) if type(self).replies else ("choice", {"message": {"content": "ok"}})
        data = json.dumps({"choices": [value]}).encode() if kind == "choice" else value
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if kind != "drip":
            self.send_header("content-length", str(len(data)))
        self.end_headers()
        for start in range(0, len(data), 1 if kind == "drip" else len(data) or 1):
            try:
                self.wfile.write(data[start : start + (1 if kind == "drip" else len(data))])
                self.wfile.flush()
            except OSError:
                return
            if kind == "drip":
                time.sleep(0.2)

    def log_message(self, *args):
        pass


@pytest.fixture()
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedCompletions)
    server.daemon_threads = True
    ScriptedCompletions.replies, ScriptedCompletions.requests = [], 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("choice", "reason"),
    [
        ({"message": {"content": None}}, "content is NoneType, not text"),
        ({"message": {"content": 42}}, "content is int, not text"),
        ({"message": {"content": [{"type": "text", "text": "hi"}]}}, "content is list, not text"),
        ({"message": {"content": "  "}}, "the answer is empty"),
        ({"message": {"content": "cut mid-sen"}, "finish_reason": "length"}, "cut at the token limit"),
    ],
)
def test_unusable_answers_are_asked_again_then_rejected(scripted_server, choice, reason):
    ScriptedCompletions.replies = [("choice", choice)] * 2
    answer = OpenAIGenerator(scripted_server, "m", backoff_s=0.01).complete([{"role": "user", "content": "x"}], 0)
    assert isinstance(answer, RejectedAnswer) and reason in answer
    assert ScriptedCompletions.requests == 2  # asked once more


def test_a_rejected_answer_is_skipped_and_counted_never_a_row(corpus, scripted_server, tmp_path):
    ScriptedCompletions.replies = [("choice", {"message": {"content": None}})] * 2  # the first row, twice
    summary = run_build(corpus, tmp_path, OpenAIGenerator(scripted_server, "m", max_concurrency=1), batch_size=ROWS)
    assert summary.skipped["rejected answer"] == 1 and summary.written == ROWS - 1
    assert len(records_of(tmp_path)) == ROWS - 1
    assert all(record["response"] == "ok" for record in records_of(tmp_path).values())


def test_a_response_over_the_byte_cap_is_an_error_not_a_memory_spike(scripted_server):
    ScriptedCompletions.replies = [("bytes", b"x" * 300_000)]
    engine = OpenAIGenerator(scripted_server, "m", max_response_bytes=100_000)
    with pytest.raises(EngineError, match="over max_response_bytes=100000"):
        engine.complete([{"role": "user", "content": "x"}], 0)


def test_a_dripping_server_is_cut_at_the_request_timeout_and_retried(scripted_server):
    ScriptedCompletions.replies = [("drip", b"{" + b" " * 200)] * 2
    engine = OpenAIGenerator(scripted_server, "m", timeout_s=1.0, max_retries=1, backoff_s=0.01)
    started = time.monotonic()
    with pytest.raises(EngineError, match="longer than 1 s in all, still failing after 1 retries"):
        engine.complete([{"role": "user", "content": "x"}], 0)
    assert time.monotonic() - started < 20  # each drip would last 40 s


def test_request_timeout_flag_reaches_the_engine():
    args = parse_args(
        [
            "--engine",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--request-timeout",
            "7",
            "--audio-dir",
            ".",
            "--metadata",
            "m.jsonl",
            "--output-dir",
            "out",
        ]
    )
    assert make_generator(args).timeout_s == 7.0
