"""llama-cpp-python's OpenAI-compatible server on an exported GGUF: started as a child process on a free local port,
stopped when the block ends (tests, the zero-shot probe), with a small client for its completion endpoint.

    with serve("model.gguf", n_ctx=2048) as server:
        text = server.complete("The capital of France is", max_tokens=16)["choices"][0]["text"]

The command it runs is the one docs/deploy.md gives for serving by hand (`server_command`). The client is the
standard library's urllib (a few JSON POSTs; no HTTP package needed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import runtime


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(gguf_path: str | os.PathLike, host: str, port: int, n_ctx: int = 2048, n_threads: int | None = None,
                   exact: bool = True) -> list[str]:
    """`python -m llama_cpp.server …` for `gguf_path`, with logits of every position (completions with `echo` and
    `logprobs` need them). `exact`: an f32 KV cache without flash attention, as nirvana.deploy.runtime's exact mode
    (greedy output equal to transformers'); else llama.cpp's f16 cache with flash attention (deployment)."""
    threads = str(n_threads or runtime.default_threads())
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", host, "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", threads, "--n_threads_batch", threads, "--logits_all", "true",
           "--flash_attn", "false" if exact else "true"]
    if exact:
        cmd += ["--type_k", "0", "--type_v", "0"]  # GGML_TYPE_F32
    return cmd


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log: Path

    def post(self, route: str, payload: dict, timeout: float = 120.0) -> dict:
        request = urllib.request.Request(self.base_url + route, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def complete(self, prompt: str | list[int], max_tokens: int = 16, **options) -> dict:
        """POST /v1/completions, the model's own greedy continuation unless `options` say otherwise: temperature 0
        AND repeat_penalty 1 — the server's default repeat penalty (1.1) changes greedy output."""
        return self.post("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                                             "repeat_penalty": 1.0, **options})

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def serve(gguf_path: str | os.PathLike, n_ctx: int = 2048, n_threads: int | None = None, host: str = "127.0.0.1",
          port: int | None = None, exact: bool = True, start_timeout: float = 120.0) -> Iterator[Server]:
    """Run the server on `gguf_path` for the duration of the block; it is terminated (then killed) on exit."""
    runtime.require()
    if not Path(gguf_path).is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="nirvana-server-") as scratch:
        log = Path(scratch) / "server.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(server_command(gguf_path, host, port, n_ctx, n_threads, exact), stdout=sink,
                                       stderr=subprocess.STDOUT)
        server = Server(f"http://{host}:{port}", process, log)
        try:
            deadline = time.monotonic() + start_timeout
            while not _ready(server.base_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the llama.cpp server did not come up on {server.base_url} "
                                       f"(exit code {process.poll()}): {server.log_tail()}")
                time.sleep(0.25)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
