"""``datasets``, ``extract``, ``register`` and ``benchmark``: the data side of the command line."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import (
    _add_model_args,
    _load,
    _Parser,
    _progress_bar,
)


def cmd_datasets(a: argparse.Namespace) -> int:
    from ..data import list_datasets
    for s in list_datasets():
        splits = "" if s.splits == ("test",) else f" [splits: {', '.join(s.splits)}]"
        print(f"{s.name}\t{s.role}\t{s.description}{splits}")
    return 0


def cmd_extract(a: argparse.Namespace) -> int:
    from .. import workbench as wb
    from ..data import get_dataset

    progress = _progress_bar() if not a.quiet else None
    base = a.dataset.partition(":")[0]
    ds = get_dataset(base, a.split)
    bundle = _load(a, progress)
    if a.batch_size is not None or a.workers is not None or a.autocast != "off":
        from ..extract import extract
        ext = extract(bundle, ds, a.batch_size, a.device, progress, autocast=a.autocast, workers=a.workers)
    else:
        ext = wb.get_extraction(bundle, ds, progress, device=a.device)
    from .. import distributed as D

    path = ext.save_npz(a.out) if D.is_writer() else a.out  # only rank 0 writes ("Distributed passes")
    check = ext.extra.get("autocast_check")
    if check:
        print(f"autocast {check['dtype']}: first batch of {check['rows']} vs fp32: largest logit difference "
              f"{check['max_abs_logit_diff']:.3g} ({100 * check['max_rel_logit_diff']:.2f}% of the largest logit), "
              f"top-1 agreement {100 * check['top1_agreement']:.1f}%", file=sys.stderr)
    failed = ext.extra.get("decode_failed")
    if failed:
        print(f"{len(failed)} files could not be decoded and were scored as blank images "
              f"(sample ids {', '.join(map(str, failed[:5]))}{'…' if len(failed) > 5 else ''})", file=sys.stderr)
        for note in ext.extra.get("blank_files", [])[:5]:
            print(f"  blank: {note}", file=sys.stderr)
    print(str(path))
    return 0


def _add_register_parser(sub: Any) -> None:
    from ..data.readers import FORMATS
    from ..data.registry import USER_ROLES

    p = sub.add_parser("register", help="register a local dataset folder/file (remembered across restarts)")
    p.add_argument("--path", help="folder or file (.npz, .mat, .zip)")
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=USER_ROLES, default="ood_test")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS)
    p.add_argument("--split", help="which split of the source to use (default: test, or train for id_train)")
    p.add_argument("--limit", type=int, help="keep a fixed random subset of this many samples")
    p.add_argument("--unlabelled", action="store_true", help="ignore labels (folder names)")
    p.add_argument("--remove", action="store_true", help="forget the dataset NAME instead")
    p.add_argument("--replace", action="store_true", help="replace a dataset already registered as NAME")
    p.add_argument("--content-hash", dest="content_hash", action="store_true",
                   help="fingerprint a folder by its files' bytes too, not only names, sizes and mtimes (reads every file)")
    p.set_defaults(fn=cmd_register)


def cmd_register(a: argparse.Namespace) -> int:
    from .. import persist
    from ..data import DataError, get_dataset
    from ..figures.previews import summary

    if a.remove:
        persist.unregister_local(a.name)
        print(f"removed {a.name}")
        return 0
    if not a.path:
        raise DataError("register needs --path (or --remove)")
    spec = persist.register_local(a.path, a.name, a.role, a.fmt, a.split, a.limit, labelled=not a.unlabelled,
                                  replace=a.replace, content_hash=a.content_hash)
    for s in spec.splits:
        ds = get_dataset(spec.name, s)
        info = summary(ds)
        extra = f", {info['skipped']} unreadable skipped" if info["skipped"] else ""
        extra += ", streamed from disk" if info["streamed"] else ""
        print(f"{ds.name}\t{spec.role if s == 'test' else 'id_train'}\t{info['images']} images {info['shape']}, "
              f"{info['classes']} classes, fingerprint {info['fingerprint']}{extra}")
        names = ds.meta.get("skipped_files") or []
        if info["skipped"] and names:  # which files, and why where the reader knows
            more = "…" if info["skipped"] > 3 else ""
            print(f"  skipped: {', '.join(names[:3])}{more}", file=sys.stderr)
    return 0


def _add_benchmark_parser(sub: Any) -> None:
    from ..benchmarks import BENCHMARKS

    p = sub.add_parser("benchmark", help="register an OpenOOD v1.5 benchmark from a local data root")
    bsub = p.add_subparsers(dest="action", parser_class=_Parser, required=True)
    add = bsub.add_parser("add", help="register every image list of a benchmark found under --root")
    add.add_argument("name", choices=list(BENCHMARKS))
    add.add_argument("--root", required=True, help="the folder holding benchmark_imglist/, images_classic/, "
                     "images_largescale/ (as OpenOOD's download script leaves it)")
    add.add_argument("--replace", action="store_true", help="replace datasets of the same names registered elsewhere")
    add.set_defaults(fn=cmd_benchmark)
    bsub.add_parser("list", help="the benchmarks, their sets and groups").set_defaults(fn=cmd_benchmark)


def cmd_benchmark(a: argparse.Namespace) -> int:
    from .. import benchmarks as B

    if a.action == "list":
        for b in B.BENCHMARKS.values():
            groups = "; ".join(f"{g}: {', '.join(b.group_names(g))}" for g in ("val", *B.GROUPS))
            print(f"{b.name}\tID {b.id_name} ({b.num_classes} classes)\t{groups}")
        return 0
    got = B.add(a.name, a.root, replace=a.replace)
    for line in got.lines:
        print(line)
    print(f"{a.name}: {len(got.registered)} registered, {len(got.unchanged)} unchanged, {len(got.missing)} missing")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``datasets``, ``extract``, ``register`` and ``benchmark``."""
    sub.add_parser("datasets", help="list datasets").set_defaults(fn=cmd_datasets)

    x = sub.add_parser("extract", help="write the Extraction arrays of one dataset to .npz")
    _add_model_args(x)
    x.add_argument("--dataset", required=True)
    x.add_argument("--split", default="test", choices=("train", "test"))
    x.add_argument("--out", required=True)
    x.add_argument("--batch-size", dest="batch_size", type=int, help="forward batch (default: measured once per model)")
    x.add_argument("--workers", type=int, help="decoding worker processes for a streamed set (default: none on a CPU, "
                   "where a thread per core decodes between forwards; one per core up to 8 on a GPU)")
    x.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                   help="reduced-precision forward (checked against fp32 on the first batch)")
    x.set_defaults(fn=cmd_extract)

    _add_register_parser(sub)
    _add_benchmark_parser(sub)
