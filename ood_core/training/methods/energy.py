"""Energy-margin methods: energy-bounded learning (``energy_oe``), GReg (``greg``) and GReg+ (``greg_plus``).

GReg and GReg+ add the gradient penalty L_∇S to the energy-margin loss L_S; GReg+ also picks
its auxiliary batch from a candidate pool by energy-based k-means (:meth:`GRegPlus.select_aux`).
Presets: ``reference`` follows the authors' ``train_sea.py`` (repository ``o4lc/Greg-OOD``),
``earlier`` is our first reading of the papers. docs/methods.md, "Training methods".
"""
from __future__ import annotations

import math

import torch

from ... import distributed as D
from ...knobs import Knob, Paper
from .. import losses as L
from ..sampling import SELECTIONS, pool_features_energies, select_by_energy, select_reference
from .base import StepLoss, TrainerView, TrainingError, TrainingMethod, register

_LAM_S = Knob("lam_s", 0.1, 0.0, 10.0, help="λ_S, weight of the energy-margin loss L_S")
_M_IN = Knob("m_in", -25.0, -100.0, 0.0, help="m_in: ID energies above it are penalised (CIFAR-10 value; depends on "
             "the logit scale: the embedded default's ID energies sit around -15)")
_M_OUT = Knob("m_out", -7.0, -100.0, 0.0, help="m_out: auxiliary energies below it are penalised")
_LAM_GRAD = Knob("lam_grad", 1.0, 0.0, 100.0, help="λ_∇S, weight of the gradient penalty L_∇S")
_PENALTY = Knob("penalty", "reference", kind="choice", choices=L.PENALTY_FORMS,
                help="reference: the input gradient of ONE batch scalar φ = -mean_in[relu(m_in - E)] + "
                     "mean_aux[relu(E - m_out)], per-row norm, mean over all N rows (train_sea.py; N times weaker "
                     "than per_sample at the same λ_∇S). per_sample: mean_in[1{E ≤ m_in}·‖∇E‖] + "
                     "mean_aux[1{E ≥ m_out}·‖∇E‖] (our earlier reading)")
_NORM = Knob("norm", "l2", kind="choice", choices=L.NORMS,
             help="norm of each row's input gradient in L_∇S (train_sea.py: L2)")
_BN_TWICE = Knob("bn_double_update", False, kind="bool",
                  help="models with batch norm: the penalty re-runs the forward in train mode, so the running "
                       "statistics move twice per step (train_sea.py's Jacobian re-forward; the paper recipe). "
                       "False: the penalty differentiates the step's one forward and they move once. The loss and "
                       "its gradients are the same either way")
_GREG_PAPER = Paper("Gradient-Regularized Out-of-Distribution Detection", "Sharifi, Entesari, Safaei, Patel, Fazlyab",
                    "ECCV", 2024, "https://github.com/o4lc/Greg-OOD")
# With the CIFAR-10 margins the embedded default's first L_S is ~130 (its ID energies sit near -15):
# fine-tuning at the papers' lr 0.01 explodes within 10 steps (measured), so the energy-margin
# methods default to energy_ood's fine-tuning lr, 0.001.
_MARGIN_LR = {"lr": 0.001}


@register
class EnergyOE(TrainingMethod):
    name, title, terms = "energy_oe", "Energy-bounded learning", ("total", "ce", "ls")
    knobs = (_LAM_S, _M_IN, _M_OUT,
             Knob("aux_factor", 1.0, 0.25, 8.0,
                  help="auxiliary outliers per step = ⌊aux_factor·B⌋ (energy_ood: --oe_batch_size 256 at B = 128, 2)"))
    paper = Paper("Energy-based Out-of-distribution Detection", "Liu, Wang, Owens, Li", "NeurIPS", 2020,
                  "https://github.com/wetliu/energy_ood")
    overrides = _MARGIN_LR
    help = "L_CE + λ_S·L_S, L_S = mean_in[max(0, E - m_in)²] + mean_aux[max(0, m_out - E)²]"

    def loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        k, b = trainer.k, len(x)
        logits = trainer.logits(x, trainer.aux_batch(max(1, int(math.floor(float(k["aux_factor"]) * b)))))
        ce = L.ce_loss(logits[:b], y)
        e = L.free_energy(logits)
        ls = L.energy_margin_loss(e[:b], e[b:], k["m_in"], k["m_out"])
        return {"total": ce + k["lam_s"] * ls, "ce": ce, "ls": ls}


@register
class GReg(TrainingMethod):
    name, title, terms = "greg", "GReg", ("total", "ce", "ls", "grad")
    knobs = (_PENALTY, _LAM_S, _LAM_GRAD, _M_IN, _M_OUT, _NORM, _BN_TWICE)
    paper = _GREG_PAPER
    overrides = _MARGIN_LR
    presets = {"reference": {"penalty": "reference", "lam_s": 0.1, "lam_grad": 1.0},
               "earlier": {"penalty": "per_sample", "lam_s": 0.1, "lam_grad": 1.0}}
    form_knobs = ("penalty",)
    penalises_input_gradient = True
    help = ("L_CE + λ_S·L_S + λ_∇S·L_∇S; L_∇S penalises the input gradient of the energy on samples already on "
            "the right side of their margin (double backward). Reference: the gradient of one batch scalar, "
            "per-row L2 norm, mean over all rows, with the model in train mode")

    def select_aux(self, trainer: TrainerView, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(outliers for L_S, outliers for L_∇S): one random batch for both."""
        x = trainer.aux_batch(b)
        return x, x

    def loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        k, b = trainer.k, len(x)
        x_low, x_high = self.select_aux(trainer, b)
        xx = torch.cat([x, x_high])
        logits, graph = L.penalised_forward(trainer.logits, xx)
        e = L.free_energy(logits)
        is_aux = torch.arange(len(xx)) >= b
        ce = L.ce_loss(logits[:b], y)
        e_low = e[b:] if x_low is x_high else L.free_energy(trainer.logits(x_low))
        ls = L.energy_margin_loss(e[:b], e_low, k["m_in"], k["m_out"])
        # bn_double_update: no graph, so the penalty re-forwards the whole batch in train mode and batch
        # norm's running statistics move a second time, as in the authors' runs (values are unchanged).
        twice = bool(k.get("bn_double_update")) and not trainer.sample_independent
        grad, stats = L.gradient_penalty(trainer.logits, xx, e, is_aux, k["m_in"], k["m_out"], k["norm"],
                                         graph=None if twice else graph, form=k["penalty"],
                                         rows_independent=trainer.sample_independent, shards=trainer.world)
        return {"total": ce + k["lam_s"] * ls + k["lam_grad"] * grad, "ce": ce, "ls": ls, "grad": grad, **stats}


@register
class GRegPlus(GReg):
    name, title = "greg_plus", "GReg+"
    knobs = (_PENALTY,
             Knob("selection", "reference", kind="choice", choices=SELECTIONS,
                  help="reference: per k-means cluster the lowest-energy outlier (two_way: also the highest), filled "
                       "to B at random; that one batch feeds L_S and L_∇S (train_sea.py). split: lowest per cluster "
                       "for L_S, highest for L_∇S (our earlier reading)"),
             Knob("pool_factor", 6.0, 1.0, 32.0,
                  help="candidate pool = ⌊pool_factor·B⌋ auxiliary samples per step (reference: 300,000 / 50,000 = 6, "
                       "384 at B = 64)"),
             Knob("drop_lowest", 0, 0, 4096, kind="int",
                  help="the lowest-energy (most ID-looking) candidates left out of the pool (the published commands' "
                       "--spt 0; train_sea.py's argparse default, preset code_defaults: 16)"),
             Knob("two_way", True, kind="bool",
                  help="selection=reference: also each cluster's highest-energy member; the batch fills to 2B "
                       "(the published commands: --sampleTwoWay)"),
             Knob("max_clusters", 64, 1, 4096, kind="int",
                  help="k-means clusters k = min(max_clusters, B) (train_sea.py: min(--num_cluster, B), --num_cluster "
                       "64); with k < B each cluster gives ⌊B/k⌋ lowest (and highest) members"),
             _LAM_S, _LAM_GRAD, _M_IN, _M_OUT, _NORM, _BN_TWICE)
    # The GReg+ paper's from-scratch lr 0.1 explodes within 7 steps on the embedded small CNN (no batch
    # norm; L_S starts near 500): keep the step schedule's shape at the margin methods' lr.
    scratch_defaults = {"schedule": "step"}
    # reference: the authors' loss with the selection of every published GReg+ command (README.md,
    # Scripts/cifar10ScriptGregPlus.sh, Scripts/normFeat.sh: --spt 0 --sampleTwoWay, the kept range above
    # the pool); code_defaults: the same loss with train_sea.py's argparse defaults (--spt 16, one way).
    presets = {"reference": {"penalty": "reference", "selection": "reference", "pool_factor": 6.0,
                             "drop_lowest": 0, "two_way": True, "max_clusters": 64, "lam_s": 0.1, "lam_grad": 1.0},
               "code_defaults": {"penalty": "reference", "selection": "reference", "pool_factor": 6.0,
                                 "drop_lowest": 16, "two_way": False, "max_clusters": 64, "lam_s": 0.1,
                                 "lam_grad": 1.0},
               "earlier": {"penalty": "per_sample", "selection": "split", "pool_factor": 8.0,
                           "drop_lowest": 0, "two_way": False, "max_clusters": 4096, "lam_s": 0.1, "lam_grad": 1.0}}
    form_knobs = ("penalty", "selection")
    conflicts = (({"selection": "split", "two_way": True},
                  "two_way applies to selection=reference (split already takes each cluster's lowest and "
                  "highest energy)"),)
    help = ("GReg with energy-based k-means selection of the auxiliary batch from a candidate pool scored in "
            "eval mode")

    @staticmethod
    def _pool_size(k: dict, b: int) -> int:
        return int(math.floor(float(k["pool_factor"]) * b))

    def prepare(self, trainer: TrainerView) -> None:
        k, b = trainer.k, int(trainer.k["batch_size"])
        pool, picked = self._pool_size(k, b), b * (2 if k["two_way"] and k["selection"] == "reference" else 1)
        if len(trainer.x_aux) < pool:
            raise TrainingError(f"{trainer.cfg.aux} has {len(trainer.x_aux)} samples, fewer than ⌊pool_factor·B⌋ = "
                                f"{pool}; lower pool_factor or batch_size")
        if pool - int(k["drop_lowest"]) < picked:
            raise TrainingError(f"the candidate pool ⌊pool_factor·B⌋ = {pool} less drop_lowest = "
                                f"{k['drop_lowest']} leaves fewer than the {picked} outliers a step takes; raise "
                                "pool_factor or lower drop_lowest")

    def select_aux(self, trainer: TrainerView, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Selection from a ⌊pool_factor·B⌋ pool scored in eval mode: (rows for L_S, rows for L_∇S), the
        same tensor for ``selection=reference``."""
        k = trainer.k
        # Under torchrun the pool of the global batch is drawn on every rank and each rank selects
        # its B/world outliers from its own slice of it (selection is per rank, on the rank's pool).
        total = self._pool_size(k, b * trainer.world)
        pool_idx = trainer.np_rng.choice(len(trainer.x_aux), total, replace=False)
        lo, hi = D.shard_bounds(total, trainer.rank, trainer.world)
        pool = trainer.augment(trainer.x_aux[torch.as_tensor(pool_idx[lo:hi])], total, lo)
        feats, ens = pool_features_energies(trainer.bundle.forward, trainer.model, pool)
        seed = trainer.cfg.seed * 1_000_003 + trainer.step_no
        if k["selection"] == "reference":
            x = pool[torch.as_tensor(select_reference(feats, ens, b, int(k["drop_lowest"]), bool(k["two_way"]), seed,
                                                      clusters=min(int(k["max_clusters"]), b)))]
            return x, x
        sel = select_by_energy(feats, ens, b, seed=seed, drop=int(k["drop_lowest"]))
        return pool[torch.as_tensor(sel.low)], pool[torch.as_tensor(sel.high)]
