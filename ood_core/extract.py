"""One batched forward per (model, dataset, preprocessing) -> cached Extraction arrays.

docs/architecture.md, "Extraction": the pass streams its results into the cache in chunks
(``cache/partial/<key>/``), so memory is the batches in flight whatever N is, and a pass that
was killed resumes from its last complete chunk with the batch size it started with (the same
batches, so the same bits). The batch size itself is measured on the machine once per model
(:func:`ood_core.batching.tuned_batch_size`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import cache, stores
from . import distributed as D
from .batching import ExtractError, model_forward, plan_batch, tuned_batch_size
from .data import Dataset
from .jobs import checkpoint
from .models import ModelBundle

Progress = Callable[[float, str], None]
EXTRACT_VERSION = 1
# Rows per chunk written to disk during a pass (rounded up to whole batches).
CHUNK_ROWS = 4096
AUTOCAST = ("off", "bf16", "fp16")




@dataclass
class Extraction:
    """docs/architecture.md, "Extraction": float32 arrays of one model on one dataset.

    ``features`` is the input of the final linear layer, ``(N, 0)`` when the model has
    none we can find; ``labels`` is -1 where unknown.
    """

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray
    dataset: str = ""
    sample_ids: np.ndarray | None = None
    model_fingerprint: str = ""
    dataset_fingerprint: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, np.float32)
        n = len(self.logits)
        self.features = np.asarray(self.features, np.float32).reshape(n, -1) if self.features is not None else np.zeros((n, 0), np.float32)
        self.labels = np.asarray(self.labels, np.int64) if self.labels is not None else np.full(n, -1, np.int64)
        self.head_weight = np.asarray(self.head_weight, np.float32)
        self.head_bias = np.asarray(self.head_bias, np.float32)
        if self.sample_ids is None:
            self.sample_ids = np.arange(n, dtype=np.int64)
        self._memo: dict = {}

    def memo(self, key: str, compute):
        """Knob-independent derived arrays (norms, sorted values), computed once per object."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def has_features(self) -> bool:
        return self.features.shape[1] > 0

    @property
    def has_head(self) -> bool:
        return self.head_weight.size > 0 and self.head_weight.shape[1] == self.features.shape[1] > 0

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy on the labelled samples (NaN when none is labelled)."""
        from .metrics import id_accuracy

        return id_accuracy(self.logits, self.labels)

    def subset(self, idx: np.ndarray) -> "Extraction":
        idx = np.asarray(idx)
        return Extraction(self.logits[idx], self.features[idx], self.labels[idx], self.head_weight, self.head_bias,
                          self.dataset, self.sample_ids[idx], self.model_fingerprint, self.dataset_fingerprint)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "logits": self.logits, "features": self.features, "labels": self.labels,
            "head_weight": self.head_weight, "head_bias": self.head_bias, "sample_ids": self.sample_ids,
            "dataset": np.array(self.dataset), "model_fingerprint": np.array(self.model_fingerprint),
            "dataset_fingerprint": np.array(self.dataset_fingerprint),
            "failed": np.asarray(self.extra.get("decode_failed", []), np.int64),
            "extra": np.array(json.dumps({k: v for k, v in self.extra.items() if k != "decode_failed"})),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "Extraction":
        failed = a.get("failed")
        try:
            extra = json.loads(str(a["extra"])) if "extra" in a else {}
        except ValueError:
            extra = {}
        if failed is not None and len(failed):
            extra["decode_failed"] = failed.tolist()
        return cls(a["logits"], a["features"], a["labels"], a["head_weight"], a["head_bias"],
                   str(a.get("dataset", "")), a.get("sample_ids"), str(a.get("model_fingerprint", "")),
                   str(a.get("dataset_fingerprint", "")), extra=extra)

    def save_npz(self, path: str | Path) -> Path:
        """Write the arrays to ``path``: a regular file is written atomically (a full disk leaves
        nothing half-written); a device or pipe is written in place."""
        path = Path(path)
        if path.is_dir():
            raise ExtractError(f"{path} is a folder; name a file, e.g. {path / 'extraction.npz'}")
        buf = io.BytesIO()
        np.savez(buf, **self.arrays())
        if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: never replace the node itself
            try:
                with open(path, "wb") as f:
                    f.write(buf.getvalue())
            except OSError as exc:
                if stores.storage_failure(exc):
                    raise stores.StorageError(stores.storage_message(exc, str(path))) from None
                raise
            return path
        stores.atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> "Extraction":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def extraction_key(bundle: ModelBundle, ds: Dataset, autocast: str = "off") -> str:
    parts = {"v": EXTRACT_VERSION, "model": bundle.fingerprint, "head": bundle.head_name, "dataset": ds.fingerprint,
             "preprocess": bundle.preprocess.cache_key()}
    if autocast != "off":  # reduced precision gives other numbers: its own entry
        parts["autocast"] = autocast
    return cache.make_key("extract", **parts)


def _partial_dir(key: str) -> Path:
    """Where a pass's chunks go; not created here (its first chunk's write creates it), so a cache hit
    on a cache that cannot be written never tries to write."""
    return cache.cache_dir() / "partial" / hashlib.sha256(key.encode()).hexdigest()[:24]


def _write_chunk(d: Path, start: int, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    stores.atomic_write_bytes(d / f"c{start:012d}.npz", buf.getvalue())


def _iter_chunks(d: Path, n: int, chunk: int):
    """The complete chunks from row 0 on, in order, read one at a time. A chunk that cannot be read
    (an atomic write leaves no half-written file, but a damaged disk can) ends the run of good ones."""
    pos = 0
    while pos < n:
        f = d / f"c{pos:012d}.npz"
        if not f.is_file():
            return
        try:
            with np.load(f, allow_pickle=False) as z:
                part = {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001
            return
        m = len(part["logits"])
        if m != min(chunk, n - pos):
            return
        yield part
        pos += m


def _complete_rows(d: Path, n: int, chunk: int) -> int:
    """The row a resumed pass starts at: the end of the complete chunks on disk."""
    return sum(len(p["logits"]) for p in _iter_chunks(d, n, chunk))


def run_forward(bundle: ModelBundle, ds: Dataset, batch_size: int | None = None, device: str | None = None,
                progress: Progress | None = None, autocast: str = "off", resume_key: str | None = None,
                workers: int | None = None) -> Extraction:
    """The batched forward pass itself, in batches sized to the memory budget.

    With ``resume_key`` (what :func:`extract` passes) results go to disk chunk by chunk and a
    rerun after a kill resumes from the last complete chunk. ``autocast`` (``bf16``/``fp16``)
    runs the forward in reduced precision after checking its first batch against fp32; the
    difference is reported in ``extra["autocast_check"]``. ``batch_size=None`` measures it.
    """
    device = device or default_device()
    if autocast not in AUTOCAST:
        raise ExtractError(f"autocast must be one of {', '.join(AUTOCAST)}; got {autocast!r}")
    bundle.model.eval()  # a model left in training mode would score with each batch's BN statistics
    n = len(ds)
    d = _partial_dir(resume_key) if resume_key else None
    manifest = _read_manifest(d) if d is not None else None
    if manifest:  # the batches and chunks the pass started with, so a resumed run is bit-identical
        batch_size, chunk = int(manifest["batch_size"]), int(manifest["chunk"])
    else:
        if batch_size is None:
            batch_size = tuned_batch_size(bundle, device) if n > 64 else plan_batch(bundle, n, device)
        else:
            batch_size = plan_batch(bundle, batch_size, device)
        chunk = batch_size * max(1, -(-CHUNK_ROWS // batch_size))
    pos = _complete_rows(d, n, chunk) if manifest else 0
    if d is not None and not manifest:
        d.mkdir(parents=True, exist_ok=True)
        stores.atomic_write_bytes(d / "manifest.json",
                                 json.dumps({"batch_size": batch_size, "chunk": chunk, "n": n, "key": resume_key}).encode())
    model_dev = bundle.device
    bundle.to(device)
    extra: dict = {"batch_size": batch_size, "resumed_at": pos} if pos else {"batch_size": batch_size}
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    dev_type = torch.device(device).type
    held: list[dict[str, np.ndarray]] = []  # chunks kept in memory (a pass without resume_key)
    try:
        logits, feats = [], []
        start = done = pos
        rows = np.arange(pos, n)
        if hasattr(ds, "failed"):
            ds.failed.clear()  # type: ignore[attr-defined]
        with torch.inference_mode():
            for x in ds.batches(bundle.preprocess, batch_size, rows if pos else None, workers, device):
                checkpoint()  # a cancelled job or Ctrl-C stops here, between batches (chunks so far are kept)
                x = x.to(device, non_blocking=True)
                if amp is not None:
                    if "autocast_check" not in extra:
                        extra["autocast_check"] = _autocast_check(bundle, x, dev_type, amp, autocast)
                    with torch.autocast(dev_type, dtype=amp):
                        lo, h = model_forward(bundle, x)
                else:
                    lo, h = model_forward(bundle, x)
                logits.append(lo.float().cpu().numpy())
                if h is not None:
                    feats.append(h.float().cpu().numpy())
                done += len(lo)
                if done - start == chunk or done == n:
                    failed = np.asarray(sorted(r for r in getattr(ds, "failed", ()) if start <= r < done), np.int64)
                    part = {"logits": np.concatenate(logits), "failed": failed,
                            "features": np.concatenate(feats) if feats else np.zeros((done - start, 0), np.float32)}
                    if d is not None:  # on disk, not in memory: the pass holds one chunk whatever N is
                        _write_chunk(d, start, part)
                    else:
                        held.append(part)
                    logits, feats, start = [], [], done
                if progress:
                    progress(min(1.0, done / n), f"forward pass on {ds.name}: {done}/{n}")
    finally:
        bundle.to(model_dev)
    lg, ft, failed = _assemble(held if d is None else _iter_chunks(d, n, chunk), n)
    w, b = bundle.head_arrays()
    bad = ~np.isfinite(lg).all(1)
    if bad.any():  # the model's fault, not a detector's: say so before anything is cached or scored
        raise ExtractError(f"the model outputs NaN or inf on {int(bad.sum())} of {n} images of {ds.name!r} "
                           f"(first: sample {int(ds.sample_ids[bad.argmax()])}); check its weights and preprocessing")
    if len(failed):
        extra["decode_failed"] = [int(ds.sample_ids[i]) for i in failed]
        if hasattr(ds, "blank_notes"):  # which files became blanks, and why (the first 20)
            extra["blank_files"] = ds.blank_notes(failed)  # type: ignore[attr-defined]
    return Extraction(lg, ft, ds.labels, w, b, ds.name, ds.sample_ids, bundle.fingerprint, ds.fingerprint, extra=extra)


def _assemble(parts, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chunks, in order, written into one preallocated pair of arrays (no list of copies)."""
    lg = ft = None
    failed, pos = [], 0
    for part in parts:
        m = len(part["logits"])
        if lg is None:
            lg = np.empty((n, part["logits"].shape[1]), np.float32)
            ft = np.empty((n, part["features"].shape[1]), np.float32)
        lg[pos: pos + m] = part["logits"]
        ft[pos: pos + m] = part["features"]
        failed.append(part.get("failed", np.zeros(0, np.int64)))
        pos += m
    if lg is None or pos != n:
        raise ExtractError(f"the forward pass produced {pos} of {n} rows; run it again")
    return lg, ft, np.concatenate(failed) if failed else np.zeros(0, np.int64)


def _read_manifest(d: Path) -> dict | None:
    try:
        m = json.loads((d / "manifest.json").read_text())
        ok = isinstance(m, dict) and int(m.get("batch_size", 0)) > 0 and int(m.get("chunk", 0)) > 0
        return m if ok else None
    except Exception:  # noqa: BLE001 - no manifest: a fresh pass
        return None


def _autocast_check(bundle: ModelBundle, x: torch.Tensor, dev_type: str, amp: torch.dtype, name: str) -> dict:
    """The first batch in fp32 and in ``amp``: the largest logit difference and the top-1 agreement."""
    ref, _ = model_forward(bundle, x)
    with torch.autocast(dev_type, dtype=amp):
        got, _ = model_forward(bundle, x)
    diff = (got.float() - ref.float()).abs()
    scale = ref.float().abs().max().clamp_min(1e-12)
    return {"dtype": name, "rows": int(len(x)), "max_abs_logit_diff": float(diff.max()),
            "max_rel_logit_diff": float(diff.max() / scale),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).float().mean())}


def extract(bundle: ModelBundle, ds: Dataset, batch_size: int | None = None, device: str | None = None,
            progress: Progress | None = None, autocast: str = "off", workers: int | None = None) -> Extraction:
    """Cached :func:`run_forward`: a second call with the same inputs does no forward pass; a call
    after a killed one resumes it.

    docs/architecture.md, "Concurrency and cancellation": one pass per key at a time across
    threads and processes; a second caller waits for the first and reuses its entry (or, when
    the first died, takes over its chunks)."""
    key = extraction_key(bundle, ds, autocast)
    hit = cache.get_arrays(key)
    if D.is_distributed():  # docs/architecture.md, "Distributed passes": the same key, rank 0 writes
        if D.any_true(hit is None):
            ext0 = run_forward_sharded(bundle, ds, batch_size, device, progress, autocast, workers, resume_key=key)
            hit = {k: np.asarray(v) for k, v in ext0.arrays().items()}
            cache.put_arrays(key, hit)  # a no-op on the other ranks
            D.barrier()  # the entry is in: every rank drops its own chunks
            with cache.key_lock(_rank_key(key)):  # not under another job's pass over the same shard
                shutil.rmtree(_partial_dir(_rank_key(key)), ignore_errors=True)
    elif hit is None:
        def waiting() -> None:  # key_lock stops the wait of a cancelled job itself
            if progress:
                progress(0.0, f"waiting for another forward pass on {ds.name} (same model and data) to finish")

        with cache.key_lock(key, waiting):
            hit = cache.get_arrays(key)  # the pass we waited for stored it
            if hit is None:
                ext0 = run_forward(bundle, ds, batch_size, device, progress, autocast, resume_key=key, workers=workers)
                hit = {k: np.asarray(v) for k, v in ext0.arrays().items()}
                cache.put_arrays(key, hit)
            shutil.rmtree(_partial_dir(key), ignore_errors=True)  # only once the whole entry is in
        sweep_partials()
    elif _partial_dir(key).exists():  # left by a pass that raced an older version of this code
        with cache.key_lock(key, blocking=False) as mine:
            if mine:
                shutil.rmtree(_partial_dir(key), ignore_errors=True)
    ext = Extraction.from_arrays(hit)
    ext.dataset = ds.name  # the same images may be registered under another name
    return ext


def sweep_partials() -> int:
    """Remove ``cache/partial/`` folders no pass needs: their entry is stored and no pass holds their
    key. A folder of a pass that died before its entry was stored is kept: the next pass resumes it."""
    root = cache.cache_dir() / "partial"
    removed = 0
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        m = _read_manifest(d) or {}
        key = m.get("key")
        if not isinstance(key, str) or not cache.contains(key):
            continue
        with cache.key_lock(key, blocking=False) as mine:
            if mine:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
    return removed


def run_forward_sharded(bundle: ModelBundle, ds: Dataset, batch_size: int | None = None, device: str | None = None,
                        progress: Progress | None = None, autocast: str = "off",
                        workers: int | None = None, resume_key: str | None = None) -> Extraction:
    """:func:`run_forward` under torchrun: each rank takes a contiguous, disjoint shard of the rows
    (no padding duplicates), and the shards are gathered in rank order on every rank.

    docs/architecture.md, "Distributed passes": rank 0 picks the batch size (measured or planned as
    one process would) and every rank uses it; only rank 0 reports progress, as the fraction of its
    shard (the shards differ by at most one row). With ``resume_key`` each rank streams its shard
    to its own ``cache/partial/`` folder (keyed by rank and world size), so a job restarted with the
    same number of ranks resumes every shard from its last complete chunk.
    """
    device = device or D.device()
    n, w = len(ds), D.size()
    if n < w:  # fewer rows than ranks: every rank runs the whole (tiny) set
        return run_forward(bundle, ds, batch_size, device, progress if D.is_writer() else None, autocast,
                           workers=workers)
    if D.is_writer():
        if batch_size is None:
            batch_size = tuned_batch_size(bundle, device) if n > 64 else plan_batch(bundle, n, device)
    batch_size = int(D.broadcast_object(batch_size))
    idx = D.shard(n)
    prog = None
    if progress is not None and D.is_writer():
        def prog(f: float, _msg: str) -> None:
            progress(f, f"forward pass on {ds.name}: {min(n, round(f * n))}/{n} ({w} ranks)")
    rk = _rank_key(resume_key) if resume_key else None
    # this shard's chunks are another job's too when two jobs share the cache: one at a time (held
    # over this rank's own pass only, never across a collective, so jobs cannot deadlock)
    with cache.key_lock(rk) if rk else contextlib.nullcontext():
        local = run_forward(bundle, ds.subset(idx), batch_size, device, prog, autocast, workers=workers,
                            resume_key=rk)
    lg = D.gather_rows(local.logits)
    ft = D.gather_rows(local.features)
    failed = [i for part in D.gather_objects(local.extra.get("decode_failed", [])) for i in part]
    extra = {k: v for k, v in local.extra.items() if k not in ("decode_failed", "resumed_at")}
    extra["ranks"] = w
    if failed:
        extra["decode_failed"] = failed
    w_, b_ = bundle.head_arrays()
    return Extraction(lg, ft, ds.labels, w_, b_, ds.name, ds.sample_ids, bundle.fingerprint, ds.fingerprint,
                      extra=extra)


def _rank_key(key: str) -> str:
    """The partial-results key of this rank's shard (another world size shards otherwise)."""
    return f"{key}#rank{D.rank()}of{D.size()}"
