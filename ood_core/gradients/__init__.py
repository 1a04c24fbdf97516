"""Per-sample parameter gradients and low-dimensional gradients ``G_low = G̃·V`` at batch speed.

The package's public API (see ``docs/methods.md``, section "Low-dimensional gradients";
the reference preset follows the authors' ``github_main.py``, ``github_PCA.py`` and
``github_Average_gradient.py``):

* :mod:`.settings`: the gradient knobs (one declaration), presets, errors;
* :mod:`.per_sample`: parameter sets, per-sample losses, the ``torch.func`` engine (GradNorm-exact);
* :mod:`.hooks`: per-sample gradient blocks from one batched backward (Linear, Conv2d, BatchNorm);
* :mod:`.linalg` and :mod:`.engine`: streamed ``A·Z`` / ``Aᵀ·Y`` products, NFK statistics, randomized SVD;
* :mod:`.subspace`: fitted subspaces, the memory check, the disk cache, ``lowdim_for_dataset``.
"""
from .per_sample import (estimate_memory, iter_grad_blocks, iter_per_sample_grads, last_block_name,
                         memory_budget_bytes, MemoryEstimate, n_params, param_names, per_sample_grad_norms,
                         per_sample_grads, plan_chunk, sample_loss)
from .settings import (DEFAULT_PARAMS, DEFAULT_POWER_ITERS, EARLIER, GRAD_KNOB_NAMES, GRAD_KNOBS, KERNELS, LOSSES,
                       MAX_FIT, PARAM_SETS, max_fit, PRECISIONS, REFERENCE, SUBSPACES, FitCancelled, GradientError,
                       MemoryBudgetError, Progress, grad_knobs, resolve_params)
from .subspace import (GRAD_VERSION, Subspace, available_bytes, estimate_cost, fit_memory, fit_subspace, lowdim_for_dataset,
                       lowdim_key, project, subspace_key)

__all__ = [n for n in dir() if not n.startswith("_")]
