"""Channel attention module (CAM) shared by MFG-Net and MBFN."""

import torch
from torch import nn

__all__ = ["ChannelAttention"]


class ChannelAttention(nn.Module):
    """Channel attention with channel weighting and channel superposition.

    ``out = x * sigmoid(W2 ReLU(W1 GAP(x))) + x`` where ``W1`` is a 1x1 conv C -> C/r and ``W2``
    a 1x1 conv C/r -> C (both with bias). The product is the "channel weighting", the residual sum
    the "channel superposition".

    Reference:
        - Rong et al., "A vehicle re-identification framework based on the improved multi-branch
          feature fusion network", Sci. Rep. 11, 20210 (2021), Fig. 5 (r = 4).
        - Xu et al., "Joint Multiple Fine-grained feature for Vehicle Re-Identification"
          (MFG-Net), Fig. 1a.

    Args:
        channels (int): C, number of input channels.
        reduction (int): r, the squeeze ratio; must divide ``channels``.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)

    Raises:
        ValueError: ``reduction`` < 1 or does not divide ``channels``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        if reduction < 1 or channels % reduction != 0:
            raise ValueError(f"CAM reduction r={reduction} must be >= 1 and divide the number of "
                             f"channels C={channels}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) channel weights in (0, 1)."""
        return torch.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x) + x
