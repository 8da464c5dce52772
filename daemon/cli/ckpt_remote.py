"""`traind ckpt ls|verify|inspect URL`: the same three commands on a remote (s3://, gs://, az://,
file://, any fsspec URL), through traind.store.remote. Credentials come from the standard chains
(AWS_* variables, ~/.aws, AWS_ENDPOINT_URL, ...); `-o KEY=VALUE` passes fsspec storage options,
as `checkpoint.remote_options` does in a spec (dotted keys nest: -o config_kwargs.connect_timeout=2).
"""
from __future__ import annotations

import json
import tempfile

import yaml

from .. import store as ck
from ..contract.errors import TraindError, UsageError
from ..store.remote import Remote, is_remote_url
from .ckpt_views import print_table, print_verdicts, show_inspection

__all__ = ["add_options", "is_remote_url", "remote_ls", "remote_verify", "remote_inspect"]


def add_options(parser) -> None:
    parser.add_argument("-o", "--remote-option", dest="remote_options", action="append", default=[],
                        metavar="KEY=VALUE", help="with a URL: an fsspec storage option (value parsed as YAML), "
                                                  "e.g. -o endpoint_url=http://127.0.0.1:9000")


def _options(items: list[str]) -> dict:
    options: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"-o {item!r}: expected KEY=VALUE (e.g. -o endpoint_url=http://127.0.0.1:9000)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = options
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"-o {item!r}: {part} is already a value, not a mapping")
        node[last] = value
    return options


def _open(url: str, items: list[str]) -> tuple[Remote, int | None]:
    """A URL naming a remote checkpoints location, or one step-N dir in it."""
    base, _, last = url.rstrip("/").rpartition("/")
    m = ck.STEP_DIR_RE.match(last)
    if m and "://" in base:
        return Remote(base, _options(items)), int(m.group(1))
    return Remote(url, _options(items)), None


def remote_ls(args) -> int:
    remote, step = _open(args.dir, args.remote_options)
    remote.check_bucket()
    objects = remote.objects(step)
    infos = [remote.check(s, files, deep=not args.quick) for s, files in objects.items()]
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=1))
    elif not infos:
        print(f"no checkpoints at {remote.url}")
    else:
        print_table(infos)
    return 0


def remote_verify(args) -> int:
    remote, step = _open(args.path, args.remote_options)
    infos = [remote.check(s, files, deep=True, every_file=True) for s, files in remote.objects(step).items()]
    if step is not None and not infos:
        infos = [ck.CheckpointInfo(path=remote.where(step), step=step,
                                   error=f"{remote.where(step)}: no such checkpoint")]
    return print_verdicts(infos, args.json, f"no checkpoints at {remote.url}")


def remote_inspect(args) -> int:
    """The newest valid remote checkpoint (or the step named), fetched into a temporary dir through
    the commit protocol (every checksum verified), then inspected like a local one."""
    remote, step = _open(args.path, args.remote_options)
    steps = [step] if step is not None else list(remote.objects())
    skipped = []
    with tempfile.TemporaryDirectory(prefix="traind-inspect-") as scratch:
        for candidate in steps:          # newest first; each download verifies every checksum
            local = remote.download(candidate, scratch)
            if local.valid:
                return show_inspection(local, skipped, args.json, shown=remote.where(candidate))
            if step is not None:
                raise TraindError(local.error or f"{remote.where(step)}: invalid")
            skipped.append(local)
    raise UsageError(f"{remote.url}: no valid checkpoint to inspect"
                     + (f" ({len(skipped)} invalid)" if skipped else ""))
