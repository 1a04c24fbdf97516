"""BiT ResNetV2, the GradNorm/RG papers' ImageNet model: weight standardization from its formula,
and a state_dict saved by the authors' code (DataParallel prefix, 1x1-conv head) loading as is."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ood_core.models import state_dicts as S
from ood_core.models.archs import StdConv2d, arch_info, build_arch


def test_std_conv_is_a_conv_with_standardized_filters():
    torch.manual_seed(0)
    conv = StdConv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight.detach().double().numpy()
    flat = w.reshape(5, -1)
    ws = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-10)  # population variance
    want = F.conv2d(x.double(), torch.from_numpy(ws.reshape(w.shape)), padding=1)
    torch.testing.assert_close(conv(x).double(), want, rtol=1e-5, atol=1e-5)


def test_reference_state_dict_loads_and_the_head_is_the_linear_gradnorm_uses():
    from ood_core.models.bundle import ModelBundle

    torch.manual_seed(1)
    m = build_arch("bit_r50x1", 7, 3).eval()
    ref = {f"module.{k}": (v[..., None, None] if k == "head.conv.weight" else v) for k, v in m.state_dict().items()}
    assert S.match_architectures(ref)[0] == ("bit_r50x1", 0)
    got, n_classes, ch = S.state_dict_into(ref, "bit_r50x1")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(got(x), m(x))
    b = ModelBundle(model=got, preprocess=arch_info("bit_r50x1").preprocess(), name="bit", arch="bit_r50x1",
                    num_classes=7, fingerprint="t")
    assert b.head_name == "head.conv" and n_classes == 7 and ch == 3
    with torch.no_grad():
        lo, h = b.forward(x)
    assert h.shape == (2, 2048)
    torch.testing.assert_close(lo, m(x), rtol=1e-4, atol=1e-4)  # the bundle runs channels-last
    assert arch_info("bit_r101x1").input_size == (480, 480)  # the reference's evaluation size
