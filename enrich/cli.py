"""The command line: parse flags into a RunConfig, call the library, turn errors into one line.

    python -m enrich --until N [options]        caption the first N rows of the source
    python -m enrich status|sql|compact|gallery  operate on the table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from enrich import __version__
from enrich.args import Parser, json_object, nonneg_float, nonneg_int, pos_int, whole_int
from enrich.config import ENGINES
from enrich.errors import EnrichError, Terminated, UsageError, one_line
from enrich.journal import Outcome

COMMANDS = ("status", "sql", "compact", "gallery")


def build_run_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="enrich",
        description="Caption the first N images of a webdataset stream with a vision-language "
        "model on Ray and append them to a Delta table, exactly once. Run it again with the same "
        "or a larger --until to resume. Other commands: " + ", ".join(COMMANDS) +
        " (enrich COMMAND --help).",
    )
    p.add_argument("--version", action="version", version=f"enrich {__version__}")
    g = p.add_argument_group("what to do")
    g.add_argument("--until", type=nonneg_int, metavar="N",
                   help="cover the first N rows of the source's canonical stream (required)")
    g.add_argument("--source", help="hub dataset id (default BLIP3o/BLIP3o-Pretrain-Short-Caption), "
                   "a directory, glob or fsspec URL of webdataset .tar shards, parquet files or "
                   "images, or 'sample' (a small offline dataset)")
    g.add_argument("--image-column", metavar="NAME",
                   help="parquet sources: the image column ({bytes, path} struct or binary; "
                   "default: found from the schema)")
    g.add_argument("--text-column", metavar="NAME",
                   help="parquet sources: the column whose text goes to source_text (default: a "
                   "string column named caption, text or txt, if any)")
    g.add_argument("--subset", metavar="NAME",
                   help="hub datasets: the subset (the `datasets` config name; default: as "
                   "`datasets` picks, e.g. the only one)")
    g.add_argument("--split", metavar="NAME",
                   help="hub datasets: the split (default: train, or the only split)")
    g.add_argument("--table", help="Delta table path or s3:// gs:// az:// URI (default ./captions)")
    g.add_argument("--engine", choices=ENGINES,
                   help="caption engine (default vllm); dry-run is a deterministic CPU engine")
    g.add_argument("--image-size", type=whole_int, metavar="PX",  # its range: config.py
                   help="images are resized to PX x PX before captioning (default 225)")
    g.add_argument("--plan", action="store_true",
                   help="print the resolved plan as JSON and exit; reads no image, writes nothing")
    g.add_argument("--config", metavar="FILE",
                   help="settings file (default: ./enrich.toml or [tool.enrich] in ./pyproject.toml)")
    g.add_argument("--quiet", action="store_true", help="print only the final summary")

    m = p.add_argument_group("caption config (changing any of these captions everything again)")
    m.add_argument("--model", help="model id (default Qwen/Qwen2.5-VL-3B-Instruct)")
    m.add_argument("--model-revision", help="model revision on the hub (default main)")
    m.add_argument("--system-prompt", help="system prompt (default: the tutorial's)")
    m.add_argument("--prompt", help="user prompt sent with each image (default: the tutorial's)")
    m.add_argument("--temperature", type=nonneg_float, help="sampling temperature (default 0.3)")
    m.add_argument("--max-tokens", type=pos_int, help="max generated tokens per caption (default 256)")

    e = p.add_argument_group("engine")
    e.add_argument("--accelerator-type", help="GPU type of a replica (default L4), or cpu for vLLM's CPU backend")
    e.add_argument("--concurrency", type=pos_int, help="GPUs, i.e. groups of engine replicas (default 1)")
    e.add_argument("--replicas-per-gpu", type=pos_int,
                   help="vLLM engines sharing one GPU, each with 1/N of its memory (default, as "
                   "measured best: 2 on H200, 3 on H100/A100-80G, else 1)")
    e.add_argument("--render-processes", type=nonneg_int, metavar="N",
                   help="processes per vLLM replica that process its inputs (image processor, "
                   "tokenizer); 0: threads in the replica (default: 2 on GPUs, 0 on cpu)")
    e.add_argument("--batch-size", type=pos_int, help="rows per engine batch (default 512 for vLLM on GPUs, else 64)")
    e.add_argument("--max-model-len", type=pos_int, help="vLLM max_model_len (default 8192)")
    e.add_argument("--engine-kwargs", type=json_object, metavar="JSON",
                   help="extra vLLM engine arguments as a JSON object (tensor_parallel_size, "
                   "quantization, max_num_seqs, ...)")
    e.add_argument("--gpu-wait", dest="gpu_wait_s", type=nonneg_float, metavar="S",
                   help="how long to wait for a node with the accelerator to join (autoscaling "
                   "clusters); default 0: fail at once when none is there")
    e.add_argument("--dry-run-ms-per-image", type=nonneg_float, metavar="MS",
                   help="time the dry-run engine spends per image (default 0)")

    r = p.add_argument_group("run")
    r.add_argument("--commit-every", type=pos_int, metavar="ROWS",
                   help="commit to the table every ROWS rows (default 2000)")
    r.add_argument("--commit-seconds", type=nonneg_float, metavar="S",
                   help="...or every S seconds, whichever comes first (default 60)")
    r.add_argument("--lock-ttl", type=nonneg_float, metavar="SECONDS",
                   help="object-store tables: the run lease's time to live; a run that died is "
                   "taken over this long after its last renewal (default 120)")
    r.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where run journals go (default ./checkpoints)")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="existing Ray cluster to use (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--num-cpus", type=pos_int, help="CPUs of the local Ray (default: all cores)")
    return p


def _run_main(argv: Sequence[str]) -> int:
    from enrich.settings import resolve

    args = build_run_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("plan", "config", "quiet")}
    cfg = resolve(flags, config_file=args.config)
    if args.plan:
        from enrich.plan import make_plan
        from enrich.settings import storage_options_from_env
        from enrich.sink import CaptionsTable

        plan = make_plan(cfg, CaptionsTable(cfg.table, storage_options=storage_options_from_env()))
        out = plan.to_dict()
        out["settings"] = {k: {"value": v, "from": cfg.origins.get(k, "default")}
                           for k, v in cfg.public_dict().items()}
        print(json.dumps(out, indent=2, default=str))
        return 0
    from enrich.pipeline import run
    from enrich.progress import Reporter, rows_range

    reporter = Reporter(total=cfg.until, quiet=args.quiet)
    try:
        result = run(cfg, reporter=reporter)
    finally:
        reporter.close()  # the live line ends before the summary or the error line
    if result.outcome in (Outcome.NOTHING_TO_DO, Outcome.EXHAUSTED):
        print(f"enrich: nothing to do: the table already covers "
              f"{rows_range(result.plan.progress.next_index)} of {result.plan.source} under "
              f"{result.plan.caption_config}"
              + (" (the source is exhausted)" if result.plan.progress.exhausted
                 or result.outcome == Outcome.EXHAUSTED else ""), file=sys.stderr)
        return 0
    reporter.summary(result)
    return 0


class _OneLine(logging.Formatter):
    """Every log record on one line (library messages carry newlines and tracebacks)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="enrich: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_OneLine("enrich: %(levelname)s: %(message)s"))
    # The hub client logs each of its own HTTP retries in two lines; enrich's retries say it once.
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
    try:
        if argv and argv[0] in COMMANDS:
            from enrich import ops_cli

            return ops_cli.main(argv[0], argv[1:])
        return _run_main(argv)
    except EnrichError as exc:
        print(f"enrich: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"enrich: {how}; committed rows are safe, run the same command to resume",
              file=sys.stderr)
        return code
    except BrokenPipeError:
        # stdout was closed by its reader (`enrich status | head -1`): what it wanted, it got.
        # Point stdout at /dev/null so that the final flush cannot raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # after BrokenPipeError, one of its kind
        # An I/O failure no check foresaw (a store that went away between two reads, a disk that
        # filled): one line, exit 1; committed rows are safe as always.
        from enrich.errors import store_error

        print(f"enrich: error: {type(exc).__name__}: {store_error(exc)}", file=sys.stderr)
        return 1


__all__ = ["UsageError", "build_run_parser", "main"]


def exit_now(code: int) -> None:
    """End the process with ``code`` once the command is done, skipping interpreter teardown.

    A process that has used deltalake (delta-rs) and pyarrow can abort while the interpreter
    tears down their native threads ("terminate called without an active exception", exit -6,
    seen with pyarrow 26 and once on a `nothing to do` rerun) although the command succeeded.
    Everything that matters is finished by then: commits are in the Delta log, journals are
    fsynced, Ray is shut down below. So flush what is buffered and leave without the teardown."""
    import os

    ray = sys.modules.get("ray")  # never imported just to exit: a rerun answered from the log stays fast
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def console_main() -> None:
    """The `enrich` console script and `python -m enrich`."""
    exit_now(main())
