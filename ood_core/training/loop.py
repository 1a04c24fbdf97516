"""The training loop: the :class:`Trainer` that runs one configured job, and the job-friendly runners.

Owns the SGD update around a method's loss (each method, in :mod:`.methods`, declares its knobs
and computes its loss from the ID batch through :meth:`TrainingMethod.loss`, with the forward
passes and outlier draws this Trainer offers; the loss terms are in :mod:`.losses`, GReg+'s
selection in :mod:`.sampling`, the configuration in :mod:`.config`), the per-epoch evaluation,
checkpoints and progress. No code here branches on a method's name. Formulas and defaults:
docs/methods.md, "Training methods". Batches pair B ID samples with B auxiliary outliers (GReg+
with ``two_way``: 2B).

Optimiser and schedule follow the papers: SGD with momentum 0.9 and weight decay 1e-4,
cosine from ``lr`` to ``lr_min`` per step (as energy_ood's ``LambdaLR``), or a step
schedule (``lr`` for the first 5/6 of the epochs, then ``lr/10``; GReg+'s from-scratch
recipe, its default when ``init='scratch'``). The embedded default gets short budgets
of the same shape.

The model trains in train mode, and GReg's penalty follows it (``train_sea.py`` computes it in
train mode): with batch norm the batch statistics couple the rows, so the penalty
differentiates the whole batch as it ran. The job's first log row (``kind='setup'``), the
label and the sidecar say which form ran (``form``) and in which mode (``penalty_mode``).

A run writes its checkpoint after every epoch (so a cancelled or diverged run keeps
the last good one), with the full config, seed and history in the sidecar; the config
alone reproduces the checkpoint (:func:`TrainConfig.from_dict` then :func:`train`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed as D
from ..data import DataError, Dataset, RowSource, get_dataset, train_name_for
from ..detectors.base import energy as energy_score  # the Energy detector's score (higher = more ID)
from ..jobs import JobContext
from ..metrics import id_accuracy, ood_metrics
from ..models import ModelBundle, ModelError, Preprocess, build_arch
from ..models.checkpoints import (shift_augment, default_model_path, load_checkpoint,
                                  load_default, models_dir, save_checkpoint)
from .augment import DESCRIPTIONS as AUGMENT_DESCRIPTIONS
from .augment import crop_flip, zero_pixel
from .config import TrainConfig, TrainResult
from .methods import TrainingDiverged, TrainingError, get_method

Progress = Callable[[float, str], None]
MAX_LOSS = 1e6  # a term above this is "exploding": stop before the weights turn to NaN
# The cross-entropy of a uniform guess is ln C; ten times that means the true class gets e^-23 on
# average (C = 10): the classifier has collapsed, though no number is large enough to trip MAX_LOSS
# (a gq run at lr 0.01 reached CE 648 and ended at 11.8% accuracy with no message).
CE_COLLAPSE = 10.0


# --- the runner ---------------------------------------------------------------------

class _Reporter:
    """Fan progress/log/info out to a JobContext (pages) and/or a progress callback (CLI)."""

    def __init__(self, ctx: JobContext | None, progress: Progress | None):
        self.ctx, self.cb = ctx, progress

    def progress(self, frac: float, msg: str) -> None:
        if self.cb:
            self.cb(frac, msg)
        if self.ctx:
            self.ctx.progress(frac, msg)  # raises Cancelled when the user pressed Stop

    def log(self, **row: Any) -> None:
        if self.ctx:
            self.ctx.log(**row)

    def set(self, **info: Any) -> None:
        if self.ctx:
            self.ctx.set(**info)


def scratch_preprocess(arch: str, channels: int) -> Preprocess:
    """A fresh ``arch``'s preprocessing: the architecture's published one (input size, mean, std:
    ``ood_core.models.archs.arch_info``; CIFAR's for the CIFAR networks, MNIST's for the small CNN)
    with the ID set's channels (1 or 3)."""
    from ..models.archs import arch_info

    return arch_info(arch).preprocess(channels)


def _load_init(cfg: TrainConfig, num_classes: int, channels: int = 1) -> tuple[torch.nn.Module, Preprocess,
                                                                               dict[str, Any], str]:
    """(trainable model, its preprocessing, sidecar-style meta, init fingerprint). Never mutates a cached bundle.
    ``channels``: the ID set's (what a model built from scratch takes)."""
    if cfg.init == "scratch":
        torch.manual_seed(cfg.seed)
        try:
            pp = scratch_preprocess(cfg.arch, channels)
            model = build_arch(cfg.arch, num_classes, pp.channels)
        except ModelError as exc:
            raise TrainingError(str(exc)) from None
        meta = {"arch": cfg.arch, "num_classes": num_classes, "in_channels": pp.channels,
                "preprocess": pp.to_dict(), "class_names": None}
        return model, pp, meta, f"scratch:{cfg.arch}:{cfg.seed}"
    path = default_model_path() if cfg.init == "default" else Path(cfg.init)
    if cfg.init == "default":
        bundle = load_default()  # trains the default on first use
    elif not path.with_suffix(".json").exists():
        return _load_model_file(path, cfg)
    else:
        try:
            bundle = load_checkpoint(path)
        except ModelError as exc:
            raise TrainingError(str(exc)) from None
    meta = json.loads(path.with_suffix(".json").read_text())
    return copy.deepcopy(bundle.model), bundle.preprocess, meta, bundle.fingerprint


def make_optimizer(params: list[torch.nn.Parameter], knobs: dict[str, Any]) -> torch.optim.Optimizer:
    """The run's optimiser from its knobs: ``adam`` (train_sea.py's GReg+: ``torch.optim.Adam``, weight
    decay as Adam's L2 term) or ``sgd`` with momentum, Nesterov and weight decay."""
    lr, wd = float(knobs["lr"]), float(knobs["weight_decay"])
    if knobs.get("optimizer", "sgd") == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    nesterov = bool(knobs.get("nesterov", False))
    if nesterov and float(knobs["momentum"]) <= 0:
        raise TrainingError("nesterov=True needs momentum > 0; set momentum (e.g. 0.9) or nesterov=False")
    return torch.optim.SGD(params, lr=lr, momentum=float(knobs["momentum"]), weight_decay=wd, nesterov=nesterov)


def _load_model_file(path: Path, cfg: TrainConfig) -> tuple[torch.nn.Module, Preprocess, dict[str, Any], str]:
    """A model file that is not a workbench checkpoint (a state_dict with ``load['arch']``), loaded as the
    workbench loads it, with its own preprocessing; archives (TorchScript, .pt2) are refused."""
    from ..models.files import load_model_file
    from ..models.formats import detect_model_format

    fmt = detect_model_format(path)
    if fmt not in ("state_dict", "checkpoint"):
        raise TrainingError(f"{path.name} is a {fmt} archive, which the workbench scores but cannot fine-tune; "
                            "give its state_dict (torch.save(model.state_dict())) with --arch")
    try:
        bundle = load_model_file(path, **dict(cfg.load))
    except (ModelError, TypeError) as exc:
        raise TrainingError(f"could not load {path.name} for fine-tuning: {exc}") from None
    meta = {"arch": bundle.arch, "num_classes": int(bundle.num_classes), "in_channels": bundle.preprocess.channels,
            "preprocess": bundle.preprocess.to_dict(), "class_names": None}
    return copy.deepcopy(bundle.model), bundle.preprocess, meta, bundle.fingerprint


def _schedule(knobs: dict[str, Any], total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    lr, lr_min = float(knobs["lr"]), float(knobs["lr_min"])
    epochs = max(1, total_steps // max(1, steps_per_epoch))
    if knobs["schedule"] == "multistep":  # train_sea.py's default: ×0.1 at 50%, 75%, 90% of the epochs
        stones = [int(epochs * f) * steps_per_epoch for f in (0.5, 0.75, 0.9)]
        return lambda s: 0.1 ** sum(s >= m for m in stones)
    if knobs["schedule"] == "cosine_epoch":  # CosineAnnealingLR(T_max=epochs, eta_min=lr_min), stepped per epoch
        return lambda s: (lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * (s // steps_per_epoch) / epochs))) / lr
    if knobs["schedule"] == "step":
        drop_at = math.ceil(total_steps * 5 / 6) if total_steps > 1 else total_steps
        drop_at = max(steps_per_epoch, (drop_at // steps_per_epoch) * steps_per_epoch)
        return lambda s: 1.0 if s < drop_at else 0.1
    # Cosine per step from lr to lr_min, as a multiplicative factor for LambdaLR.
    return lambda s: (lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * s / max(1, total_steps)))) / lr


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: "torch.Tensor | RowSource", n: int) -> torch.Tensor:
    """``fn`` over row blocks of at most ``n`` rows, concatenated (``fn(x)`` itself when ``x`` is a
    tensor that fits); ``x`` may be a :class:`RowSource` (the evaluation sets)."""
    if isinstance(x, torch.Tensor) and len(x) <= n:
        return fn(x)
    return torch.cat([fn(c) for c in x.split(n)])


def _rows(ds: Dataset, idx: "np.ndarray | slice", pp: Callable) -> RowSource:
    """Rows ``idx`` of ``ds`` as a row source (a preprocessed tensor when the set is in memory)."""
    if isinstance(idx, slice):
        return ds.rows(pp) if idx == slice(None) else ds.subset(np.arange(len(ds))[idx]).rows(pp)
    return ds.rows(pp) if len(idx) == len(ds) else ds.subset(idx).rows(pp)


def _fmt_eta(sec: float) -> str:
    return f"{sec:.0f}s" if sec < 120 else f"{sec / 60:.1f} min"


class Trainer:
    """One training run. ``run()`` trains and returns the checkpoint; ``step()`` is one update."""

    def __init__(self, cfg: TrainConfig, ctx: JobContext | None = None, progress: Progress | None = None,
                 out_dir: str | Path | None = None, sync_bn: bool = False):
        self.cfg = cfg.resolved()
        self.sync_bn = bool(sync_bn)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.method = get_method(self.cfg.method)
        self.k = self.cfg.params
        self.rep = _Reporter(ctx, progress)
        self._prepare()

    # -- setup --
    def _prepare(self) -> None:
        cfg, k = self.cfg, self.k
        try:
            train_ds = get_dataset(train_name_for(cfg.id_dataset))
            test_ds = get_dataset(cfg.id_dataset)
            aux_ds = get_dataset(cfg.aux) if self.method.uses_aux else None
            val_ds = get_dataset(cfg.aux_val)
        except DataError as exc:
            raise TrainingError(str(exc)) from None
        if not train_ds.has_labels:
            raise TrainingError(f"{train_ds.name} has no labels; training needs a labelled ID training split")
        num_classes = int(max(train_ds.labels.max(), test_ds.labels.max())) + 1
        model, preprocess, base_meta, init_fp = _load_init(cfg, num_classes, int(train_ds.shape[-1]))
        if int(base_meta["num_classes"]) < num_classes:
            raise TrainingError(f"the init model has {base_meta['num_classes']} classes but {train_ds.name} has labels "
                                f"up to {num_classes - 1}")
        self.base_meta, self.init_fp = base_meta, init_fp
        # ModelBundle (below) stores the weights channels-last: with NCHW a forward pass over auxiliary
        # images took 1.9x one over ID digits (16.8 vs 8.8 ms, the default CNN, batch 64).
        self.model = model
        # Models whose forward treats every sample on its own (no batch norm) can run ID and auxiliary
        # rows as separate passes of at most B rows: one 2B-row pass ran 18-20% slower than two B-row
        # passes here (its activations outgrow the caches). With batch norm the split would change the
        # batch statistics, so those models keep the single concatenated pass.
        self.sample_independent = not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                          for m in model.modules())
        # The bundle's body/head share parameters with self.model (features for GReg+ selection).
        self.bundle = ModelBundle(model=self.model, preprocess=preprocess, name="training",
                                  arch=base_meta["arch"], num_classes=int(base_meta["num_classes"]), fingerprint="-")
        pp = self.bundle.preprocess
        rng = np.random.default_rng(cfg.seed)
        idx = np.arange(len(train_ds))
        if cfg.n_train:
            idx = np.sort(rng.permutation(len(train_ds))[: cfg.n_train])
        # Small sets are preprocessed once into tensors; streamed ones decode the rows each step
        # asks for (docs/architecture.md, "Datasets").
        self.x_train = _rows(train_ds, idx, pp)
        self.y_train = torch.as_tensor(train_ds.labels[idx])
        b = int(k["batch_size"])
        if len(self.x_train) < b:
            raise TrainingError(f"{len(self.x_train)} training images are fewer than batch_size={b}; lower batch_size "
                                "or raise n_train")
        # Evaluation subsets use a fixed seed (not the run's) so runs with different seeds compare on the
        # same images; random, because the embedded test split is ordered by class.
        ev_rng = np.random.default_rng(12345)
        ev_t = np.sort(ev_rng.permutation(len(test_ds))[: cfg.n_eval]) if cfg.n_eval else slice(None)
        ev_v = np.sort(ev_rng.permutation(len(val_ds))[: cfg.n_eval]) if cfg.n_eval else slice(None)
        self.x_test, self.y_test = _rows(test_ds, ev_t, pp), torch.as_tensor(test_ds.labels[ev_t])
        self.x_val = _rows(val_ds, ev_v, pp)
        self.x_aux = aux_ds.rows(pp) if aux_ds is not None else None
        self.method.prepare(self)
        self.form = self.method.form(k)
        self.recipe = k.get("recipe", "default")
        self.augmentation = f"{k['augment']}: {AUGMENT_DESCRIPTIONS[k['augment']]}"
        self.title = f"{self.method.name} ({self.form} form)" if self.form else self.method.name
        # What the penalty's forward ran as: the model's mode (train, as in train_sea.py) and whether
        # batch norm couples the rows.
        self.penalty_mode = None if not self.method.penalises_input_gradient else (
            "train mode, no batch norm (rows independent)" if self.sample_independent
            else "train mode, batch norm on batch statistics (rows coupled)" +
            ("; running statistics updated twice per step" if k.get("bn_double_update") else ""))
        self.steps_per_epoch = len(self.x_train) // b  # drop_last: every step sees B ID samples
        self.total_steps = self.steps_per_epoch * int(cfg.epochs)
        self._setup_ddp(b)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, k)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _schedule(k, self.total_steps, self.steps_per_epoch))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed + 1)
        self.step_no = 0
        self.epochs_done, self.epoch = 0, 0
        self.t0 = time.time()
        self.path = (self.out_dir or models_dir()) / f"{self._stem()}.pt"

    def _setup_ddp(self, b: int) -> None:
        """docs/architecture.md, "Distributed passes": under torchrun the model trains under
        DistributedDataParallel with the same global batch B, each rank taking B/world rows of the
        same global sample order (the permutation, the outlier draws and the shifts are drawn for
        the global batch on every rank from the same seeds, and each rank keeps its slice). Losses
        are means over the rank's equal shard; DDP averages the gradients, which is the global mean.
        """
        self.world, self.rank = D.size(), D.rank()
        self.ddp = None
        self._fwd = self.bundle.logits
        if self.world == 1:
            if self.sync_bn:
                raise TrainingError("--sync-bn synchronises batch norm across torchrun ranks; this is one process")
            return
        if b % self.world:
            raise TrainingError(f"batch_size={b} does not split evenly over {self.world} ranks; choose a multiple "
                                f"of {self.world} (the global batch stays B, each rank takes B/{self.world})")
        dev = next(self.model.parameters()).device
        if self.sync_bn:
            if dev.type == "cpu":
                raise TrainingError("--sync-bn needs GPUs: torch's SyncBatchNorm has no CPU kernel (under gloo each "
                                    "rank keeps its own batch statistics; drop --sync-bn)")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.bundle.model = self.model
        from torch.nn.parallel import DistributedDataParallel

        self.ddp = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self._fwd = self.ddp

    def _stem(self) -> str:
        blob = json.dumps({**self.cfg.to_dict(), "init_fp": self.init_fp}, sort_keys=True, default=str)
        tag = {"default": "ft-default", "scratch": "scratch"}.get(self.cfg.init, f"ft-{Path(self.cfg.init).stem}")
        return f"{self.cfg.method}-{tag}-s{self.cfg.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

    # -- what a method's loss uses (TrainingMethod.loss) --
    @property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model's logits; under torchrun the DistributedDataParallel wrapper, which averages the gradients."""
        return self._fwd

    def aux_batch(self, n: int) -> torch.Tensor:
        """``n`` random auxiliary outliers for this rank, augmented: the global draw of ``n·world`` rows,
        this rank's slice."""
        idx = self.np_rng.integers(0, len(self.x_aux), n * self.world)
        return self.augment(self.x_aux[torch.as_tensor(idx[self.rank * n:(self.rank + 1) * n])])

    def augment(self, x: torch.Tensor, total: int | None = None, start: int | None = None) -> torch.Tensor:
        """Augment ``x`` per the ``augment`` knob (:mod:`.augment`): this rank's rows ``[start, start+len(x))``
        of a global batch of ``total`` (default: an equal shard), drawing for the whole global batch."""
        mode = self.k["augment"]
        if mode == "none":
            return x
        n = len(x)
        draw = None if self.world == 1 else (n * self.world if total is None else total,
                                             self.rank * n if start is None else start)
        if mode == "crop_flip":  # padding is a zero pixel, normalised (the papers pad before Normalize)
            pp = self.bundle.preprocess
            return crop_flip(x, self.gen, fill=zero_pixel(pp.mean, pp.std), draw=draw)
        return shift_augment(x, self.gen, draw=draw)

    def logits(self, *parts: torch.Tensor) -> torch.Tensor:
        """Logits of the rows of ``parts`` stacked in order: one pass per part of at most B rows where
        the model is sample-independent, else one pass over the concatenation."""
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        if not self.sample_independent:
            return self._fwd(x)
        return _chunked(self._fwd, x, int(self.k["batch_size"]))

    def step(self, idx: torch.Tensor) -> dict[str, float]:
        """One SGD update on the ID samples ``idx``; returns every loss term (and the method's
        diagnostics) as a float."""
        x_in, y = self.augment(self.x_train[idx]), self.y_train[idx]
        out = self.method.loss(self, x_in, y)
        terms = {"total": out["total"], **{t: v for t, v in out.items() if t != "total" and torch.is_tensor(v)}}
        missing = [t for t in self.method.terms if t not in terms]
        if missing:  # a method's bug, not the user's input
            raise RuntimeError(f"{type(self.method).__name__}.loss returned no {', '.join(missing)} term")
        stats = {t: float(v) for t, v in out.items() if not torch.is_tensor(v)}
        self._check_terms(terms)
        self.opt.zero_grad(set_to_none=True)
        terms["total"].backward(inputs=self.params)  # parameters only: no wasted gradients for the input leaves
        if self.ddp is not None and not self.method.runs_ddp_forward(self.k):
            for p in self.params:  # no DDP forward ran, so DDP's hooks did not reduce: average explicitly
                if p.grad is not None:
                    D.all_reduce_sum(p.grad).div_(self.world)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, float("inf")))
        if not math.isfinite(gnorm):
            self._diverged("the gradient of the total loss", gnorm)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step_no += 1
        return {**{t: float(v.detach()) for t, v in terms.items()}, **stats, "grad_norm": gnorm, "lr": lr}

    def _check_terms(self, terms: dict[str, torch.Tensor]) -> None:
        for name in list(terms)[1:] + ["total"]:  # name the culprit term before the total
            v = float(terms[name].detach())
            if not math.isfinite(v) or abs(v) > MAX_LOSS:
                self._diverged(f"the {name} term", v)
        ce_max = CE_COLLAPSE * math.log(max(2, int(self.base_meta["num_classes"])))
        if "ce" in terms and float(terms["ce"].detach()) > ce_max:
            self._diverged(f"the ce term (above {ce_max:.3g} = {CE_COLLAPSE:g}·ln C: a collapsed classifier)",
                           float(terms["ce"].detach()))

    def _diverged(self, what: str, value: float) -> None:
        lr = self.opt.param_groups[0]["lr"]
        state = "NaN" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.3g} (exploding)")
        kept = f"the last good checkpoint (epoch {self.epochs_done}) is kept at {self.path}" if self.epochs_done else \
            "no epoch finished, so no checkpoint was written"
        raise TrainingDiverged(
            f"{self.method.name}: {what} became {state} at step {self.step_no + 1} (epoch {self.epoch + 1}, "
            f"lr {lr:.3g}); lower the learning rate (e.g. {self.method.name}.lr={float(self.k['lr']) / 10:g}); {kept}")

    # -- evaluation --
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """ID test accuracy and the Energy score's AUROC, ID test vs the held-out aux_val."""
        self.model.eval()
        try:
            lt, lv = (_chunked(self.bundle.logits, x, 512).numpy() for x in (self.x_test, self.x_val))
        finally:
            self.model.train()
        acc = id_accuracy(lt, self.y_test.numpy())
        s_in, s_out = energy_score(lt), energy_score(lv)
        if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
            return {"accuracy": acc, "auroc": float("nan"), "fpr95": float("nan")}
        m = ood_metrics(s_in, s_out)
        return {"accuracy": acc, "auroc": m["auroc"], "fpr95": m["fpr95"]}

    # -- the run --
    def label(self, complete: bool) -> str:
        init = {"default": "fine-tuned default", "scratch": "from scratch"}.get(self.cfg.init,
                                                                              f"fine-tuned {Path(self.cfg.init).stem}")
        done = f"{self.cfg.epochs} ep" if complete else f"{self.epochs_done}/{self.cfg.epochs} ep, stopped"
        defaults = self.method.defaults(self.cfg.init, self.k.get("preset"), self.k.get("recipe", "default"))
        crop = self.k.get("augment") == "crop_flip"
        extra = ", ".join(f"{n}={v}" for n, v in self.k.items()
                          if v != defaults.get(n) and n not in ("preset", "recipe") and not (crop and n == "augment"))
        preset = self.k.get("preset")
        form = f" · {self.form} form" if self.form else ""
        form += f" ({preset} preset)" if self.form and preset and preset != self.form else ""
        form += f" · {self.recipe} recipe" if self.recipe != "default" else ""
        form += " · crop+flip augmentation" if crop else ""
        bn = " · penalty on batch-norm batch statistics" if self.penalty_mode and not self.sample_independent else ""
        return f"{self.method.name} · {init} · {done} · seed {self.cfg.seed}{form}{bn}" + (f" · {extra}" if extra else "")

    def _save(self, complete: bool, history: dict[str, list], last: dict[str, float]) -> Path:
        meta = {
            "name": self.path.stem, "arch": self.base_meta["arch"], "num_classes": int(self.base_meta["num_classes"]),
            "in_channels": int(self.base_meta.get("in_channels", 1)), "preprocess": self.base_meta["preprocess"],
            "class_names": self.base_meta.get("class_names"), "method": self.method.name,
            "label": self.label(complete), "training": self.cfg.to_dict(), "seed": self.cfg.seed,
            "form": self.form, "preset": self.k.get("preset"), "recipe": self.recipe,
            "optimizer": type(self.opt).__name__, "penalty_mode": self.penalty_mode,
            "augmentation": self.augmentation,
            "init_fingerprint": self.init_fp, "epochs_done": self.epochs_done, "complete": complete,
            "trained_on": train_name_for(self.cfg.id_dataset), "aux": self.cfg.aux if self.method.uses_aux else None,
            "id_test_accuracy": last.get("accuracy"), "val_auroc": last.get("auroc"),
            "recommended_detector": self.method.recommended_detector,
            "train_seconds": round(time.time() - self.t0, 1), "history": history,
        }
        if self.world > 1:
            meta["ranks"], meta["sync_bn"] = self.world, self.sync_bn
        self._meta = meta
        if D.is_writer():  # only rank 0 writes ("Distributed passes")
            save_checkpoint(self.model, self.path, meta)
        self.rep.set(checkpoint=str(self.path), label=meta["label"], complete=complete)
        return self.path

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.t0 = time.time()
        self.epochs_done, self.epoch = 0, 0
        history: dict[str, list] = {"steps": [], "epochs": []}
        self.rep.set(method=cfg.method, config=cfg.to_dict(), steps_per_epoch=self.steps_per_epoch,
                     total_steps=self.total_steps, terms=list(self.method.terms), checkpoint=None,
                     form=self.form, recipe=self.recipe, penalty_mode=self.penalty_mode,
                     augmentation=self.augmentation)
        self.rep.log(kind="setup", method=cfg.method, form=self.form, preset=self.k.get("preset"),
                     recipe=self.recipe, optimizer=type(self.opt).__name__, penalty_mode=self.penalty_mode,
                     augmentation=self.augmentation)
        first = self.evaluate()
        row0 = {"kind": "epoch", "epoch": 0, **first}
        history["epochs"].append(row0)
        self.rep.log(**row0)
        self.model.train()
        b = int(self.k["batch_size"])
        last = first
        for ep in range(int(cfg.epochs)):
            self.epoch = ep
            perm = torch.randperm(len(self.x_train), generator=self.gen)
            for i in range(self.steps_per_epoch):
                lo, hi = D.shard_bounds(b, self.rank, self.world)  # all of it in one process
                row = self.step(perm[i * b: (i + 1) * b][lo:hi])
                row = {"kind": "step", "step": self.step_no, "epoch": ep + (i + 1) / self.steps_per_epoch, **row}
                history["steps"].append(_rounded(row))
                self.rep.log(**row)
                done = self.step_no / self.total_steps
                el = time.time() - self.t0
                self.rep.progress(done, f"{self.title}: epoch {ep + 1}/{cfg.epochs}, step {self.step_no}/"
                                        f"{self.total_steps}, loss {row['total']:.4g}, ETA "
                                        f"{_fmt_eta(el / max(done, 1e-9) * (1 - done))}")
            last = self.evaluate()
            self.epochs_done = ep + 1
            erow = {"kind": "epoch", "epoch": ep + 1, **last}
            history["epochs"].append(erow)
            self.rep.log(**erow)
            self._save(complete=self.epochs_done == cfg.epochs, history=history, last=last)
        self.rep.progress(1.0, f"{self.title}: done, accuracy {100 * last['accuracy']:.2f}%, "
                               f"AUROC vs {cfg.aux_val} {100 * last['auroc']:.2f}%")
        meta = json.loads(self.path.with_suffix(".json").read_text()) if D.is_writer() else self._meta
        return TrainResult(self.path, meta)


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}


def train(cfg: TrainConfig, ctx: JobContext | None = None, progress: Progress | None = None,
          out_dir: str | Path | None = None, sync_bn: bool = False) -> TrainResult:
    """Train (or fine-tune) per ``cfg``; returns the checkpoint (in ``out_dir``, default the
    model picker's folder). Raises TrainingError (TrainingDiverged) or jobs.Cancelled."""
    return Trainer(cfg, ctx, progress, out_dir, sync_bn).run()


def job_fn(cfg: TrainConfig, out_dir: str | Path | None = None) -> Callable[[JobContext], TrainResult]:
    """A function for ``ood_core.jobs.JOBS.submit``; validates ``cfg`` now, trains later."""
    cfg.resolved()
    return lambda ctx: train(cfg, ctx, out_dir=out_dir)

