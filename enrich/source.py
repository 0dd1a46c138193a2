"""Source stage: list webdataset shards and stream their samples as raw bytes, in canonical order.

Canonical order: shards sorted by name, samples in tar order. A sample is the run of consecutive
members sharing a key (``<key>.jpg`` + ``<key>.txt``). Nothing is decoded here: with decoding on,
one corrupt JPEG ends a ``datasets`` iterator and loses every later row, so the
reader hands out bytes and the prepare stage judges them.

Shards come from a local directory or glob, any fsspec URL (``s3://``, ``hf://``...), a Hugging Face
dataset id (read through ``huggingface_hub.HfFileSystem``), or the word ``sample``.
"""

from __future__ import annotations

import dataclasses
import glob as globmod
import hashlib
import io
import logging
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any, TypeVar

import pyarrow as pa

from enrich.errors import SourceError, SourceUnavailableError, one_line
from enrich.skip import PREFIX

log = logging.getLogger(__name__)
_T = TypeVar("_T")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt",)
# Transient read errors (network, object store) are retried by reopening the shard and skipping
# what was already read; content errors (a truncated or non-tar file) are not.
READ_RETRIES = 4


@dataclass(frozen=True)
class Shard:
    name: str  # the shard's file name, the table's source_shard
    url: str  # what to open
    open: Callable[[], IO[bytes]]
    remote: bool = False  # on an object store or the hub: a read task downloads it whole
    kind: str = "tar"  # "tar" (webdataset), "parquet" (a file of rows) or "image" (one image file)
    column: str | None = None  # parquet: the image column
    text_column: str | None = None  # parquet: the text column (source_text), if any
    text: str | None = None  # an image folder's file: its text from metadata.jsonl, if any


@dataclass(frozen=True)
class Sample:
    """One webdataset sample, raw. ``error`` is set for a shard-level error marker."""

    shard: str
    offset: int
    key: str
    image: bytes | None
    image_ext: str | None
    error: str | None = None
    text: str | None = None  # the source's own text for the image (source_text)

    @property
    def image_hash(self) -> str | None:
        return None if self.image is None else hashlib.sha256(self.image).hexdigest()


def looks_like_path(source: str) -> bool:
    """A local path as typed: ``./``, ``../``, ``/``, ``~``, or a data file's extension. Such a
    source is never taken for a hub dataset id, so a typo is answered at once."""
    if "://" in source:
        return False
    bare = source.rstrip("/\\")
    return (source.startswith(("./", "../", "/", "~", ".\\", "..\\")) or bare in (".", "..")
            or source.endswith(("/", "\\"))
            or bare.lower().endswith(tuple("." + e for e in ("tar", "parquet", *IMAGE_EXTS))))


def _is_hub_id(source: str) -> bool:
    return (
        "://" not in source
        and source.count("/") == 1
        and not looks_like_path(source)
        and not os.path.exists(source)
        and not _is_glob(source)
    )


def _is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")



# --------------------------------------------------------------------------------------------
# Transient errors of remote sources, in one place. The hub client raises HfHubHTTPError for
# HTTP statuses and its HTTP library's TransportError (resets, protocol errors, timeouts),
# neither of which is an OSError; object stores raise OSError subclasses. Transient ones are
# retried with bounded exponential backoff (honouring Retry-After); what is left after the
# retries becomes SourceUnavailableError (exit 5); only "does not exist" is a SourceError (exit 2).
# --------------------------------------------------------------------------------------------
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None


def is_missing(exc: BaseException) -> bool:
    """The source (repo, revision, file) does not exist, or may not be read: retrying cannot help."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
                         "GatedRepoError", "FileNotFoundError", "PermissionError"}) or \
        _status(exc) in (401, 403, 404)


def is_transient(exc: BaseException) -> bool:
    # HF_HUB_OFFLINE=1 makes the hub client refuse every request: deliberate, not transient.
    if is_missing(exc) or type(exc).__name__ == "OfflineModeIsEnabled":
        return False
    status = _status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    # httpx's (and huggingface_hub's httpx2's) resets, protocol errors and timeouts, by name:
    # the hub client has used more than one HTTP library.
    if {cls.__name__ for cls in type(exc).__mro__} & {"TransportError", "TimeoutException"}:
        return True
    return isinstance(exc, OSError | TimeoutError)


def retry_delay(exc: BaseException, attempt: int) -> float:
    response = getattr(exc, "response", None)
    after = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        wait = float(after) if after is not None else 0.0
    except ValueError:
        wait = 0.0
    return min(RETRY_MAX_S, max(wait, RETRY_BASE_S * 2 ** (attempt - 1)))


def unavailable(what: str, exc: BaseException, attempts: int) -> SourceUnavailableError:
    return SourceUnavailableError(f"{what}: still failing after {attempts} tries "
                                  f"({type(exc).__name__}: {one_line(str(exc))[:300]}); rows "
                                  "committed so far are safe, run the same command again later")


class Retries:
    """The retry policy of every remote read (listing, reading, downloading a shard): transient
    errors (``is_transient``) are retried up to READ_RETRIES times with exponential backoff
    (``retry_delay``); the first failure of a kind is one warning line, repeats of it are not;
    what is left becomes :class:`SourceUnavailableError` naming ``what``."""

    def __init__(self, what: str) -> None:
        self.what, self.attempt, self.said = what, 0, ""

    def wait(self, exc: BaseException) -> None:
        """After a transient failure: sleep before the next try, or raise if none is left."""
        self.attempt += 1
        if self.attempt > READ_RETRIES:
            raise unavailable(self.what, exc, self.attempt) from None
        delay = retry_delay(exc, self.attempt)
        text = f"{type(exc).__name__}: {one_line(str(exc))[:300]}"
        if text != self.said:
            log.warning("%s failed (%s); retrying, up to %d times", self.what, text, READ_RETRIES)
            self.said = text
        time.sleep(delay)


HUB_PREFIX = "hf://datasets/"


def source_spellings(source: str) -> list[str]:
    """The ways of writing this source that name the same dataset, its canonical one first.

    A hub dataset is ``ORG/NAME`` whether given so or as ``hf://datasets/ORG/NAME[/]``. The
    table keys a stream by the source string (``source`` column, app id), so a table must keep
    the spelling it started with: the planner takes the first spelling the table already has
    progress under, and the canonical one for a new stream."""
    if source.startswith(HUB_PREFIX):
        rest = source[len(HUB_PREFIX):].strip("/")
        if rest.count("/") == 1 and not any(ch in rest for ch in "*?[@"):
            return list(dict.fromkeys([rest, source, HUB_PREFIX + rest, HUB_PREFIX + rest + "/"]))
        return [source]
    if _is_hub_id(source):
        return [source, HUB_PREFIX + source, HUB_PREFIX + source + "/"]
    return [source]


def is_hub_dataset(source: str) -> bool:
    """``ORG/NAME`` or ``hf://datasets/ORG/NAME``: a whole dataset on the hub (not a path in it)."""
    return len(source_spellings(source)) > 1


def stream_selector(subset: str | None, split: str | None) -> str:
    """What ``--subset``/``--split`` add to a hub source's identity in the table (nothing when
    neither is given: tables that predate the flags keep their stream)."""
    parts = [f"{k}={v}" for k, v in (("subset", subset), ("split", split)) if v]
    return "?" + "&".join(parts) if parts else ""


def split_stream(stream: str) -> tuple[str, str | None, str | None]:
    """A table's ``source`` value back into (source, subset, split): the inverse of appending
    :func:`stream_selector`."""
    base, sep, query = stream.partition("?")
    if not sep or not is_hub_dataset(base):
        return stream, None, None
    got = dict(p.partition("=")[::2] for p in query.split("&"))
    return base, got.get("subset") or None, got.get("split") or None


def list_shards(source: str, *, sample_dir: str | None = None, image_column: str | None = None,
                subset: str | None = None, split: str | None = None,
                text_column: str | None = None) -> list[Shard]:
    """The shards of ``source`` in canonical (name) order. Raises :class:`SourceError`."""
    if (subset or split) and not is_hub_dataset(source):
        raise SourceError(f"--subset/--split choose among a hub dataset's files; --source {source!r} "
                          "is not a hub dataset id")
    if source == "sample":
        from enrich.sample import ensure_sample

        return list_shards(str(ensure_sample(sample_dir)), image_column=image_column,
                           text_column=text_column)
    if is_hub_dataset(source):
        return _list_hub(source_spellings(source)[0], source, image_column, subset, split,
                         text_column)
    if _is_hub_id(source) or source.startswith("hf://"):
        return _list_fsspec(source if source.startswith("hf://") else f"hf://datasets/{source}",
                            shown=source, image_column=image_column, text_column=text_column)
    if "://" in source:
        return _list_fsspec(source, image_column=image_column, text_column=text_column)
    source = os.path.expanduser(source)
    if looks_like_path(source) and not _is_glob(source) and not os.path.exists(source):
        raise SourceError(f"--source {source!r}: no such file or folder")
    if os.path.isdir(source):
        found = sorted(globmod.glob(os.path.join(source, "**", "*"), recursive=True))
    elif os.path.isfile(source):
        found = [source]
    else:
        found = sorted(globmod.glob(source, recursive=True))
    found = [p for p in found if os.path.isfile(p)]
    kind, paths = _pick_format(found)
    if not paths:
        raise SourceError(f"--source {source!r}: no .tar shards, .parquet files or images found")
    base = source if os.path.isdir(source) else os.path.dirname(source)
    if kind == "image":  # one row per file, named by its path in the folder, in name order
        names = [os.path.relpath(p, base) for p in paths]
        order = sorted(zip(names, paths, strict=True))
        texts = _folder_texts(found)
        return [Shard(n, p, _opener_local(p), kind="image", text=texts.get(os.path.abspath(p)))
                for n, p in order]
    paths.sort(key=lambda p: (os.path.basename(p), p))
    shards = [Shard(os.path.basename(p), p, _opener_local(p), kind=kind) for p in paths]
    return _with_image_column(shards, image_column, source, text_column) if kind == "parquet" \
        else shards


def _pick_format(paths: list[str]) -> tuple[str, list[str]]:
    """webdataset tars if there are any, else parquet files, else an image folder."""
    for kind, exts in (("tar", (".tar",)), ("parquet", (".parquet",)),
                       ("image", tuple("." + e for e in IMAGE_EXTS))):
        chosen = [p for p in paths if p.lower().endswith(exts)]
        if chosen:
            return kind, chosen
    return "tar", []


def image_column_of(schema: pa.Schema, wanted: str | None) -> str | None:
    """The image column of a parquet schema: ``wanted``, else the first struct with a ``bytes``
    field (what `datasets` writes for an Image feature), else a binary column named like an
    image, else the first binary column."""
    if wanted:
        return wanted if wanted in schema.names else None
    for f in schema:
        if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0:
            return f.name
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    named = [n for n in binary if any(w in n.lower() for w in ("image", "img", "jpg", "png"))]
    return (named or binary or [None])[0]


def text_column_of(schema: pa.Schema, wanted: str | None) -> str | None:
    """The text column of a parquet schema (source_text): ``wanted``, else the first string
    column named caption, text or txt (in that order of preference), else none."""
    if wanted:
        return wanted if wanted in schema.names else None
    strings = {f.name.lower(): f.name for f in schema
               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)}
    return next((strings[n] for n in TEXT_FIELDS if n in strings), None)


def _with_image_column(shards: list[Shard], wanted: str | None, source: str,
                       text_wanted: str | None = None) -> list[Shard]:
    """Find the image and text columns once, from the first file's schema (all files of a split
    share it)."""
    import pyarrow.parquet as pq

    try:
        with shards[0].open() as fh:
            schema = pq.ParquetFile(fh).schema_arrow
    except Exception as exc:  # noqa: BLE001 - a first file that is not parquet: unusable source
        raise SourceError(f"--source {source!r}: {shards[0].name} is not a readable parquet file "
                          f"({type(exc).__name__}: {one_line(str(exc))[:200]})") from None
    column = image_column_of(schema, wanted)
    if column is None:
        what = f"no column {wanted!r}" if wanted else "no image column (a {bytes, path} struct or binary)"
        raise SourceError(f"--source {source!r}: {what} in {shards[0].name}; columns: "
                          f"{', '.join(schema.names)} (choose one with --image-column)")
    text = text_column_of(schema, text_wanted)
    if text_wanted and text is None:
        raise SourceError(f"--source {source!r}: no column {text_wanted!r} in {shards[0].name}; "
                          f"columns: {', '.join(schema.names)} (--text-column)")
    return [dataclasses.replace(s, column=column, text_column=text) for s in shards]


def _opener_local(path: str) -> Callable[[], IO[bytes]]:
    def _open() -> IO[bytes]:
        return open(path, "rb")

    return _open


def _listing(shown: str, list_once: Callable[[], _T]) -> _T:
    """``list_once()`` with transient errors retried (bounded backoff); what is left becomes
    SourceUnavailableError (exit 5), a source that does not exist SourceError (exit 2)."""
    retries = Retries(f"--source {shown!r}: listing shards")
    while True:
        try:
            return list_once()
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted below: transient, missing, or unusable
            if is_transient(exc):
                retries.wait(exc)
                continue
            why = "not found" if is_missing(exc) else "cannot list shards"
            raise SourceError(f"--source {shown!r}: {why} ({type(exc).__name__}: "
                              f"{one_line(str(exc))[:300]})") from None


def _list_fsspec(url: str, shown: str | None = None, image_column: str | None = None,
                 text_column: str | None = None) -> list[Shard]:
    import fsspec

    shown = shown or url  # the spelling the user typed, for messages
    if url.startswith("hf://"):
        _probe_hub(shown)

    def list_once() -> tuple[object, list[str]]:
        if url.startswith("hf://"):
            # HfFileSystem reads HF_TOKEN from the environment itself; enrich never handles it.
            from huggingface_hub import HfFileSystem

            fs = HfFileSystem(skip_instance_cache=True)  # no listing cached from a failed try
            root = url[len("hf://") :]
        else:
            fs, root = fsspec.core.url_to_fs(url)
        if any(ch in root for ch in "*?["):
            paths = fs.glob(root)
        else:
            paths = fs.glob(root.rstrip("/") + "/**/*.tar") or \
                fs.glob(root.rstrip("/") + "/**/*.parquet")
        return fs, sorted(paths, key=lambda p: (PurePosixPath(p).name, p))

    fs, paths = _listing(shown, list_once)
    if not paths:
        raise SourceError(f"--source {shown!r}: no .tar shards or .parquet files found")

    kind = "parquet" if paths[0].endswith(".parquet") else "tar"
    shards = [Shard(PurePosixPath(p).name, p, _opener_fs(fs, p), remote=True, kind=kind) for p in paths]
    return _with_image_column(shards, image_column, shown, text_column) if kind == "parquet" \
        else shards


def _opener_fs(fs: Any, path: str) -> Callable[[], IO[bytes]]:
    return lambda: fs.open(path, "rb", block_size=8 * 1024 * 1024)


# The `datasets` library knows the hub's conventions for a dataset's subsets (configs), splits
# and file formats (README YAML, folder and file naming); enrich asks it which files make up a
# split and reads those files itself (`datasets`' own iterators lose every row after a corrupt
# image, and Ray reads such a dataset in one task).
_HUB_FORMATS = {"webdataset": "tar", "parquet": "parquet", "imagefolder": "image"}


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


def _probe_hub(shown: str) -> None:
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


def _list_hub(repo: str, shown: str, image_column: str | None, subset: str | None,
              split: str | None, text_column: str | None = None) -> list[Shard]:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SourceError(f"--source {shown!r}: HF_HUB_OFFLINE is set, so the hub is not asked "
                          "for the dataset's files")
    _probe_hub(shown)

    def resolve_once() -> tuple[str, dict[str, list[str]]]:
        import datasets

        builder = datasets.load_dataset_builder(repo, name=subset)
        files = {str(k): [str(u) for u in v] for k, v in (builder.config.data_files or {}).items()}
        return type(builder).__module__.rsplit(".", 1)[-1], files

    module, files = _listing(shown, resolve_once)
    kind = _HUB_FORMATS.get(module)
    if kind is None:
        raise SourceError(f"--source {shown!r}: a {module} dataset; enrich reads webdataset, parquet "
                          "and image folder datasets")
    names = list(files)
    chosen = split or ("train" if "train" in files else names[0] if len(names) == 1 else None)
    if chosen not in files:
        what = f"no split {split!r}" if split else "more than one split and none is 'train'"
        raise SourceError(f"--source {shown!r}: {what}; splits: {', '.join(names) or 'none'} "
                          "(choose one with --split)")
    urls = [u for u in files[chosen]
            if kind != "image" or u.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    if not urls:
        raise SourceError(f"--source {shown!r}: split {chosen!r} has no files")
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(skip_instance_cache=True)

    def name(url: str) -> str:  # tar/parquet: the file name (as tables before `datasets` have it)
        in_repo = url.split("@", 1)[-1].split("/", 1)[-1] if "@" in url else PurePosixPath(url).name
        return in_repo if kind == "image" else PurePosixPath(url).name

    paths = [u.removeprefix("hf://") for u in urls]  # HfFileSystem paths
    shards = sorted((Shard(name(u), p, _opener_fs(fs, p), remote=True, kind=kind)
                     for u, p in zip(urls, paths, strict=True)), key=lambda s: (s.name, s.url))
    return _with_image_column(shards, image_column, shown, text_column) if kind == "parquet" \
        else shards


def _split_name(name: str) -> tuple[str, str]:
    """webdataset convention: the key is everything before the first dot of the base name."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, (ext.lower() if dot else "")


def _iter_members(fileobj: IO[bytes]) -> Iterator[tuple[str, str, bytes]]:
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            key, ext = _split_name(member.name)
            yield key, ext, data


class _Broken(Exception):
    """The shard's content broke after ``count`` complete samples."""

    def __init__(self, cause: BaseException, count: int) -> None:
        super().__init__(str(cause))
        self.count = count


def _group(members: Iterator[tuple[str, str, bytes]], shard: str) -> Iterator[Sample]:
    offset = 0
    key: str | None = None
    image: bytes | None = None
    image_ext: str | None = None
    text: str | None = None
    json_text: str | None = None
    try:
        for mkey, ext, data in members:
            new_image_same_key = mkey == key and ext in IMAGE_EXTS and image is not None
            if key is not None and (mkey != key or new_image_same_key):
                # A new key, or the same key again with a second image: a new sample, never a
                # silent overwrite.
                yield Sample(shard, offset, key, image, image_ext, text=_or(text, json_text))
                offset += 1
                image, image_ext, text, json_text = None, None, None, None
            key = mkey
            if ext in IMAGE_EXTS and image is None:
                image, image_ext = data, ext
            elif ext == "txt" and text is None:
                text = data.decode("utf-8", errors="replace")
            elif ext == "json" and json_text is None:
                json_text = _json_text(data)
    except (tarfile.ReadError, EOFError) as exc:
        # The members read before the break are intact: hand them out, then report the break.
        if key is not None and image is not None:
            yield Sample(shard, offset, key, image, image_ext, text=_or(text, json_text))
            offset += 1
        raise _Broken(exc, offset) from exc
    if key is not None:
        yield Sample(shard, offset, key, image, image_ext, text=_or(text, json_text))


def _or(text: str | None, json_text: str | None) -> str | None:
    return text if text is not None else json_text


TEXT_FIELDS = ("caption", "text", "txt")  # a sample's .json fields, and parquet column names


def _json_text(data: bytes) -> str | None:
    """The caption (or text) field of a webdataset sample's .json, if it has one."""
    import json

    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return _text_field(doc)


def _text_field(doc: object) -> str | None:
    """The first of TEXT_FIELDS that a JSON object holds as a string."""
    if not isinstance(doc, dict):
        return None
    return next((doc[f] for f in TEXT_FIELDS if isinstance(doc.get(f), str)), None)


def _image_file(fileobj: IO[bytes], shard: Shard) -> Iterator[Sample]:
    """An image folder's file: one row. Undecodable bytes are the prepare stage's to reject."""
    stem, _, ext = shard.name.rpartition(".")
    yield Sample(shard.name, 0, stem, fileobj.read(), ext.lower(), text=shard.text)


def _folder_texts(files: list[str]) -> dict[str, str]:
    """An image folder's texts (source_text), as the hub's image-folder convention keeps them:
    ``metadata.jsonl`` files whose lines name a ``file_name`` (relative to that file's folder)
    and a caption, text or txt field. Absolute image path → text; unreadable lines are skipped."""
    import json

    texts: dict[str, str] = {}
    for meta in (f for f in files if os.path.basename(f) == "metadata.jsonl"):
        folder = os.path.dirname(os.path.abspath(meta))
        with open(meta, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                text = _text_field(doc)
                if text is not None and isinstance(doc.get("file_name"), str):
                    texts[os.path.normpath(os.path.join(folder, doc["file_name"]))] = text
    return texts


def _parquet_rows(fileobj: IO[bytes], shard: Shard) -> Iterator[Sample]:
    """A parquet file's rows in file order; the image from a ``{bytes, path}`` struct or a binary
    column. A file that cannot be read as parquet is a broken shard (one error marker)."""
    import pyarrow.parquet as pq

    assert shard.column is not None
    offset = 0
    stem = shard.name.rsplit(".", 1)[0]
    try:
        pf = pq.ParquetFile(fileobj)
        if shard.column not in pf.schema_arrow.names:
            raise ValueError(f"no column {shard.column!r}")
        texts = shard.text_column if shard.text_column in pf.schema_arrow.names else None
        batches = pf.iter_batches(columns=[shard.column, *([texts] if texts else [])], batch_size=256)
        for batch in batches:
            text_cells = batch.column(1).to_pylist() if texts else [None] * batch.num_rows
            for cell, text in zip(batch.column(0).to_pylist(), text_cells, strict=True):
                image, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
                ext = path.rsplit(".", 1)[-1].lower() if path and "." in path else None
                error = None
                if image is None:
                    image, error = _image_by_path(shard, path)
                yield Sample(shard.name, offset, path or f"{stem}/{offset}", image, ext, error=error,
                             text=text if isinstance(text, str) else None)
                offset += 1
    except (pa.ArrowException, ValueError) as exc:  # pyarrow's errors: the content is broken
        raise _Broken(exc, offset) from exc


def _image_by_path(shard: Shard, path: str | None) -> tuple[bytes | None, str | None]:
    """A parquet row whose image cell holds no bytes: ``datasets`` writes ``{bytes: None, path}``
    for an ``Image`` column made from file paths. Read the file where the parquet is local (a
    relative path from the parquet file's folder, as ``datasets`` resolves it); otherwise the
    row is rejected with a reason that says so. A remote parquet's paths are not followed: they
    name files on the machine that wrote it."""
    column = f"parquet column {shard.column!r}"
    if not path:
        return None, f"no image: {column} is empty in this row"
    if shard.remote:
        return None, (f"image not in the parquet file: {column} holds only the path {path!r} (no "
                      "bytes); embed the images when writing it (datasets: embed_external_files)")
    full = os.path.join(os.path.dirname(shard.url), os.path.expanduser(path))
    try:
        with open(full, "rb") as f:
            return f.read(), None
    except OSError as exc:
        return None, (f"image not in the parquet file and its path could not be read: {column} "
                      f"holds only {path!r} ({type(exc).__name__}: {exc.strerror or exc})")


def iter_shard(shard: Shard, *, start: int = 0) -> Iterator[Sample]:
    """The samples of one shard from position ``start``. A shard whose content is broken ends with
    one error marker (``Sample.error``) after the samples that could be read; transient read errors
    are retried by reopening and skipping ahead; if they persist, ``OSError`` propagates."""
    done = start
    retries = Retries(f"reading shard {shard.name}")
    rows = {"tar": lambda f: _group(_iter_members(f), shard.name),
            "parquet": lambda f: _parquet_rows(f, shard),
            "image": lambda f: _image_file(f, shard)}[shard.kind]
    while True:
        try:
            with shard.open() as fileobj:
                for sample in rows(fileobj):
                    if sample.offset < done:
                        continue
                    yield sample
                    done = sample.offset + 1
            return
        except _Broken as exc:
            if exc.count == 0 and "empty file" in str(exc):
                log.warning("shard %s is empty", shard.name)
                return
            if exc.count >= done:  # not yet reported by the run being resumed
                if shard.kind == "tar":
                    what = "not a tar file" if exc.count == 0 else f"truncated tar after {exc.count} samples"
                else:
                    what = f"not a readable {shard.kind} file" if exc.count == 0 else \
                        f"{shard.kind} file broken after {exc.count} rows"
                yield Sample(shard.name, exc.count, "", None, None,
                             error=f"shard error: {shard.name}: {what} ({exc})")
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            retries.wait(exc)


def _download(shard: Shard) -> bytes:
    retries = Retries(f"downloading shard {shard.name}")
    while True:
        try:
            with shard.open() as fh:
                return fh.read()
        except Exception as exc:
            if not is_transient(exc):
                raise
            retries.wait(exc)


def _bytes_opener(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


# --------------------------------------------------------------------------------------------
# One read task's work (reader.py runs it in Ray): a shard's rows from a position, in blocks,
# hashed. The metadata and the image bytes are separate tables, so the driver can take the
# small one and leave the bytes in the object store for the fetch stage.
# --------------------------------------------------------------------------------------------
META_SCHEMA = pa.schema([
    pa.field("shard", pa.string()),
    pa.field("offset", pa.int64()),
    pa.field("key", pa.string()),
    pa.field("image_hash", pa.string()),  # sha256 hex; null: no image
    pa.field("hash16", pa.binary(PREFIX)),  # its first bytes (the skip index's key); zeros if null
    pa.field("error", pa.string()),  # a shard-level error marker
    pa.field("text", pa.string()),  # the source's own text (source_text)
])
IMAGES_SCHEMA = pa.schema([pa.field("image", pa.binary())])
_NO_HASH = bytes(PREFIX)


def _block(samples: list[Sample]) -> tuple[pa.Table, pa.Table]:
    digests = [None if s.image is None else hashlib.sha256(s.image).digest() for s in samples]
    meta = pa.table({
        "shard": pa.array([s.shard for s in samples], pa.string()),
        "offset": pa.array([s.offset for s in samples], pa.int64()),
        "key": pa.array([s.key for s in samples], pa.string()),
        "image_hash": pa.array([d.hex() if d else None for d in digests], pa.string()),
        "hash16": pa.array([d[:PREFIX] if d else _NO_HASH for d in digests], pa.binary(PREFIX)),
        "error": pa.array([s.error for s in samples], pa.string()),
        "text": pa.array([s.text for s in samples], pa.string()),
    }, schema=META_SCHEMA)
    return meta, pa.table({"image": pa.array([s.image for s in samples], pa.binary())},
                          schema=IMAGES_SCHEMA)


def read_blocks(shards: list[Shard], *, start: int = 0, only: frozenset[int] | None = None,
                limit: int | None = None, block_rows: int = 128) -> Iterator[tuple[pa.Table, pa.Table]]:
    """The rows of ``shards`` in order (the first from position ``start``; or, for retried rows,
    just the offsets in ``only`` of a single shard), at most ``limit`` of them, as (metadata,
    image bytes) table pairs of up to ``block_rows`` rows.

    A remote shard (object store, hub) is downloaded whole first, with retries: one request
    stream instead of many range reads, and a dropped connection costs one shard's download."""
    wanted = set(only) if only is not None else None
    buf: list[Sample] = []
    count = 0
    for n, shard in enumerate(shards):
        if wanted == set() or (limit is not None and count >= limit):
            break
        if shard.remote:
            shard = dataclasses.replace(shard, open=_bytes_opener(_download(shard)))
        first = min(wanted) if wanted else (start if n == 0 else 0)
        for sample in iter_shard(shard, start=first):
            if wanted is not None:
                if sample.offset not in wanted or sample.error:
                    continue
                wanted.discard(sample.offset)
            buf.append(sample)
            count += 1
            if len(buf) == block_rows:
                yield _block(buf)
                buf = []
            if (limit is not None and count >= limit) or wanted == set():
                break
    if buf:
        yield _block(buf)
