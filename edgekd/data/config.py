"""TODO docstring (recipe -> data.config)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgekd.configtools import require


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split.

    name: 'fashion-mnist-subset' (embedded), 'fashion-mnist', 'mnist', 'cifar10',
    'cifar100', 'imagefolder' or 'npz'; path: where to look (a folder or a file).
    """

    name: str = "fashion-mnist-subset"
    path: Optional[str] = None
    val_fraction: float = 0.1
    calib_size: int = 512
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None

    def __post_init__(self):
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction must be between 0 and 1")
        require(self.calib_size > 0, "data.calib_size must be positive")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key} must be positive")
