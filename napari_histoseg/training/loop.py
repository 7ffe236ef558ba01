"""Pieces of the training loop that every task shares: seeding, train mode with frozen BatchNorm."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_train_mode(model, freeze_bn: bool = False):
    """``model.train()``, but with ``freeze_bn`` every BatchNorm layer stays in eval mode:
    its running mean/var are used and not updated (its affine weight/bias still train)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model
