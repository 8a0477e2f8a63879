"""`polarpack push` and `polarpack pull`: share distributions on the Hugging Face Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from polarpack import hub
from polarpack._io import atomic_write_bytes, check_output_path
from polarpack.format import encoding_for_path, save

from ._common import emit_json, handle_errors, hub_options, info, json_option


@click.command(short_help="Publish a distribution to a Hugging Face Hub model repository.")
@click.argument("file")
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private (no effect if it already exists).")
@click.option("--revision", default=None, help="Branch to commit to, created from main if missing (default: main).")
@click.option("--token", envvar="HF_TOKEN", default=None, show_envvar=True, help="Hugging Face token with write access (default: $HF_TOKEN or the cached login).")
@click.option("--endpoint", envvar="HF_ENDPOINT", default=None, show_envvar=True, help="Hub endpoint URL (default: $HF_ENDPOINT or https://huggingface.co).")
@click.option("--message", "-m", default=None, help="Commit message (default: 'Upload NAME.polar with polarpack VERSION').")
@click.option("--license", "license_", default="mit", show_default=True, help="License written in the model card metadata.")
@click.option("--name", "stem", default=None, help="File name on the Hub without suffix (default: FILE's name, e.g. mnv2 for mnv2.polar).")
@json_option
@handle_errors
def push(file, repo_id, private, revision, token, endpoint, message, license_, stem, as_json):
    """Publish FILE to the Hub model repository REPO_ID (owner/name).

    FILE is a .polar or .polar.safetensors file (only read, never modified) or a preset such as
    paper:alexnet. One commit uploads NAME.polar (JSON), NAME.polar.safetensors and a generated
    model card README.md (layer table, source and sha256, size figures, usage). The repository
    is created if needed. Pushing the same content again commits nothing and prints "unchanged".

    Prints the commit URL on stdout.
    """
    info(f"pushing {file} to {repo_id} ...")
    result = hub.push(
        file,
        repo_id,
        private=private,
        revision=revision,
        token=token,
        endpoint=endpoint,
        message=message,
        license=license_,
        stem=stem,
    )
    polar_file = next(name for name in result.files if name.endswith(".polar"))
    if as_json:
        emit_json(result.to_dict())
    elif result.changed:
        info(f"committed {', '.join(result.files)} to {result.repo_id}")
        click.echo(result.commit_url)
    else:
        info(f"{result.repo_id} already holds exactly these files; nothing was committed")
        click.echo("unchanged")
    rev = f"@{result.revision}" if result.revision not in (None, "main") else ""
    info(f"use it with: polarpack inspect hf://{result.repo_id}{rev}/{polar_file}")


@click.command(short_help="Download a distribution from the Hub and check it.")
@click.argument("ref")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a copy here (atomically); a .safetensors suffix selects that encoding.")
@hub_options
@json_option
@handle_errors
def pull(ref, out, endpoint, revision, token, as_json):
    """Download REF (hf://owner/repo[@rev]/file.polar) through the Hugging Face cache and validate it.

    Prints where the file is: the --out copy if given, else the cached file (treat it as
    read-only). With HF_HUB_OFFLINE=1 only the local cache is used.
    """
    if out is not None:
        check_output_path(out)  # fail before downloading anything
    path = hub.download(ref, endpoint=endpoint, token=token, revision=revision)
    dist = hub.read_downloaded(path, ref)
    data = path.read_bytes()
    encoding = "json" if data.lstrip()[:1] == b"{" else "safetensors"
    where = path
    if out is not None:
        if encoding_for_path(out) == encoding:
            atomic_write_bytes(out, data)
        else:
            save(dist, out)
            info(f"re-encoded {encoding} to {encoding_for_path(out)} for {out}")
        where = out
    if as_json:
        emit_json(
            {
                "ref": ref,
                "path": str(where),
                "cache_path": str(path),
                "encoding": encoding,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "layers": len(dist),
                "names": dist.names,
            }
        )
        return
    names = ", ".join(dist.names[:8]) + (", ..." if len(dist) > 8 else "")
    info(f"{ref}: valid distribution, {len(dist)} layers ({names}), {len(data):,} bytes ({encoding})")
    click.echo(str(where))
