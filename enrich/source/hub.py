"""Hugging Face hub datasets: which files make up a subset's split (asked of ``datasets``), read
through ``huggingface_hub.HfFileSystem``; a hub that cannot be reached is refused at once."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from enrich.errors import SourceError, SourceUnavailableError, one_line
from enrich.source.access import listing, opener_fs
from enrich.source.formats import BY_HUB_MODULE, BY_KIND
from enrich.source.naming import Shard

# The `datasets` library knows the hub's conventions for a dataset's subsets (configs), splits
# and file formats (README YAML, folder and file naming); enrich asks it which files make up a
# split and reads those files itself (`datasets`' own iterators lose every row after a corrupt
# image, and Ray reads such a dataset in one task). Its builder module names the format
# (formats.BY_HUB_MODULE).


# How long the hub may take to answer "are you there" (name lookup, then a TCP connection) before
# a run is refused: the hub client itself retries an unreachable host for minutes.
HUB_PROBE_S = 5.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def connect_error(host: str, port: int, timeout_s: float = HUB_PROBE_S) -> str | None:
    """Why nothing answers at ``host:port`` (its name does not resolve, the connection is refused
    or times out), or None when a TCP connection opens. The name lookup has no timeout of its
    own: it runs in a thread that is not waited for beyond ``timeout_s`` (twice: lookup, then
    connect)."""
    import socket
    import threading

    found: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            found.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            found.append(exc)

    t = threading.Thread(target=connect, daemon=True, name="enrich-probe")
    t.start()
    t.join(2 * timeout_s)
    if not found:
        return "no answer"
    exc = found[0]
    if exc is None:
        return None
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(str(exc))[:200]
    return f"{type(exc).__name__}: {detail}"


def probe_hub(shown: str) -> None:
    """Refuse at once, in one line, a hub that cannot be reached: its name does not resolve or
    nothing listens (HF_ENDPOINT, default huggingface.co). Hub *errors* (5xx, 429, resets) are
    left to the retries. Skipped behind a proxy, where the direct route proves nothing."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARS):
        return
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or ""
    why = connect_error(host, url.port or (443 if url.scheme == "https" else 80))
    if why is None:
        return
    local = "" if "://" in shown else f"no local folder {shown!r}; "
    raise SourceUnavailableError(
        f"--source {shown!r}: {local}the hub ({host}) could not be reached: {why} "
        "(check the network, HF_ENDPOINT, or give a local path)")


def list_hub(repo: str, shown: str, image_column: str | None, subset: str | None,
              split: str | None, text_column: str | None = None) -> list[Shard]:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SourceError(f"--source {shown!r}: HF_HUB_OFFLINE is set, so the hub is not asked "
                          "for the dataset's files; unset HF_HUB_OFFLINE to read it from the hub, "
                          "or give a local folder of its shards (or 'sample')")
    probe_hub(shown)

    def resolve_once() -> tuple[str, dict[str, list[str]]]:
        import datasets

        builder = datasets.load_dataset_builder(repo, name=subset)
        files = {str(k): [str(u) for u in v] for k, v in (builder.config.data_files or {}).items()}
        return type(builder).__module__.rsplit(".", 1)[-1], files

    module, files = listing(shown, resolve_once)
    kind = BY_HUB_MODULE.get(module)
    if kind is None:
        raise SourceError(f"--source {shown!r}: a {module} dataset; enrich reads webdataset, parquet "
                          "and image folder datasets")
    names = list(files)
    chosen = split or ("train" if "train" in files else names[0] if len(names) == 1 else None)
    if chosen not in files:
        what = f"no split {split!r}" if split else "more than one split and none is 'train'"
        raise SourceError(f"--source {shown!r}: {what}; splits: {', '.join(names) or 'none'} "
                          "(choose one with --split)")
    fmt = BY_KIND[kind]
    # an image folder's split lists its metadata files too: the format's files only
    urls = [u for u in files[chosen] if not fmt.file_per_row or fmt.matches(u)]
    if not urls:
        raise SourceError(f"--source {shown!r}: split {chosen!r} has no files")
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(skip_instance_cache=True)

    def name(url: str) -> str:  # tar/parquet: the file name (as tables before `datasets` have it)
        in_repo = url.split("@", 1)[-1].split("/", 1)[-1] if "@" in url else PurePosixPath(url).name
        return in_repo if fmt.file_per_row else PurePosixPath(url).name

    paths = [u.removeprefix("hf://") for u in urls]  # HfFileSystem paths
    shards = sorted((Shard(name(u), p, opener_fs(fs, p), remote=True, kind=kind)
                     for u, p in zip(urls, paths, strict=True)), key=lambda s: (s.name, s.url))
    return fmt.options(shards, image_column, shown, text_column)

