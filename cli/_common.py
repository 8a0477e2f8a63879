"""Helpers shared by the command modules: one-line errors, JSON output, common options."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from polarpack._io import printable
from polarpack.errors import PolarpackError


def handle_errors(fn: Callable) -> Callable:
    """Turn library errors, and the environment's (an unwritable folder, a full disk), into click's
    one-line `Error: ...` with exit status 1; control characters are shown escaped."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PolarpackError as exc:
            raise click.ClickException(printable(str(exc))) from None
        except BrokenPipeError:
            raise  # the reader of stdout went away (`| head`): click ends quietly
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(
                printable(
                    f"{where}{exc.strerror or exc}; check the path, its permissions and "
                    "the free disk space"
                )
            ) from None

    return wrapper


def emit_json(obj: Any) -> None:
    """Machine-readable results go to stdout, nothing else does when --json is given."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def info(message: str) -> None:
    """Hints and progress go to stderr so stdout stays clean for pipes."""
    click.echo(message, err=True)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print a machine-readable JSON result on stdout."
)


def hub_options(fn: Callable) -> Callable:
    """--endpoint / --revision / --token for anything that may read an hf:// reference."""
    fn = click.option(
        "--token",
        envvar="HF_TOKEN",
        default=None,
        show_envvar=True,
        help="Hugging Face token (default: $HF_TOKEN or the cached login).",
    )(fn)
    fn = click.option(
        "--revision", help="Hub revision (branch, tag or commit) for hf:// references without @rev."
    )(fn)
    fn = click.option(
        "--endpoint",
        envvar="HF_ENDPOINT",
        default=None,
        show_envvar=True,
        help="Hub endpoint URL (default: $HF_ENDPOINT or https://huggingface.co). Each Hub call "
        "ends within $POLARPACK_HUB_TIMEOUT seconds (default 60).",
    )(fn)
    return fn
