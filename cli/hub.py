"""`polarpack push` and `polarpack pull`: thin wrappers over polarpack.hub."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import click

from polarpack import hub
from polarpack._io import atomic_write_bytes, check_output_path, read_bytes
from polarpack.format import detect_encoding, encoding_for_path, save, size_limit

from ._common import emit_json, handle_errors, hub_options, info, json_option, printable


@click.command(short_help="Publish a distribution to a Hugging Face Hub model repository.")
@click.argument("file")
@click.argument("repo_id")
@click.option(
    "--private", is_flag=True, help="Create the repository as private (an existing one keeps it)."
)
@click.option(
    "--revision",
    default=None,
    help="Branch to commit to, created from main if missing (default: main).",
)
@click.option(
    "--token",
    envvar="HF_TOKEN",
    show_envvar=True,
    help="Token with write access (default: the login).",
)
@click.option(
    "--endpoint",
    envvar="HF_ENDPOINT",
    show_envvar=True,
    help="Hub URL (default: https://huggingface.co).",
)
@click.option("--message", "-m", default=None, help="Commit message.")
@click.option(
    "--license",
    "license_",
    default="mit",
    show_default=True,
    help="License in the model card metadata.",
)
@click.option(
    "--name",
    "stem",
    default=None,
    help="File name on the Hub without suffix (default: FILE's name).",
)
@json_option
@handle_errors
def push(file, repo_id, license_, as_json, **options):
    """Publish FILE (a .polar file, only read, or a preset such as paper:alexnet) to REPO_ID
    (owner/name).

    One commit uploads NAME.polar, NAME.polar.safetensors and a model card README.md. Prints the
    commit URL, or "unchanged" when the repository already holds exactly these files. Gives up
    after $POLARPACK_HUB_TIMEOUT seconds (default 60); pushing again is safe.
    """
    result = hub.push(file, repo_id, license=license_, **options)
    if as_json:
        emit_json(dataclasses.asdict(result))
    else:  # the URL is the server's: control characters are shown escaped
        click.echo(printable(str(result.commit_url)) if result.changed else "unchanged")
    rev = f"@{result.revision}" if result.revision not in (None, "main") else ""
    info(f"use it with: polarpack inspect hf://{result.repo_id}{rev}/{result.files[0]}")


@click.command(short_help="Download a distribution from the Hub and check it.")
@click.argument("ref")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a copy here (atomically); a .safetensors suffix selects that encoding.",
)
@hub_options
@json_option
@handle_errors
def pull(ref, out, as_json, **options):
    """Download REF (hf://owner/repo[@rev]/file.polar) through the Hugging Face cache and validate
    it.

    Prints the --out copy's path if given, else the cached file's (treat it as read-only). Gives
    up after $POLARPACK_HUB_TIMEOUT seconds (default 60), and refuses a file over
    $POLARPACK_MAX_POLAR_BYTES (default 16 MiB JSON, 1 GiB safetensors).
    """
    if out is not None:
        check_output_path(out)  # fail before downloading anything
    dist, path = hub.pull_file(ref, **options)
    data = read_bytes(path, limit=size_limit(encoding_for_path(path)), what=".polar files")
    encoding, where = detect_encoding(data), out or path
    if out is not None and encoding_for_path(out) == encoding:
        atomic_write_bytes(out, data)
    elif out is not None:
        save(dist, out)
        info(f"re-encoded {encoding} to {encoding_for_path(out)} for {out}")
    if as_json:
        emit_json(
            {
                "ref": ref,
                "path": str(where),
                "cache_path": str(path),
                "encoding": encoding,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "layers": len(dist.layers),
                "names": dist.names,
            }
        )
        return
    info(f"{ref}: valid distribution, {len(dist.layers)} layers, {len(data):,} bytes ({encoding})")
    click.echo(str(where))
