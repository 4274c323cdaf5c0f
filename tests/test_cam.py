"""Channel attention module against a hand-computed example."""

import math

import pytest
import torch

import fastreid_plugins  # noqa: F401
from fastreid_plugins.layers import ChannelAttention


def test_cam_hand_example():
    cam = ChannelAttention(4, reduction=2)
    with torch.no_grad():
        cam.fc1.weight.copy_(torch.tensor([[1., 0, 0, 0], [0, 0, 0, -1]]).view(2, 4, 1, 1))
        cam.fc1.bias.zero_()
        cam.fc2.weight.copy_(torch.tensor([[1., 0], [0, 0], [-1, 0], [2, 0]]).view(4, 2, 1, 1))
        cam.fc2.bias.copy_(torch.tensor([0., 0, 0, -2]))
    x = torch.tensor([1., 2, 3, 4]).view(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()
    # GAP = [1,2,3,4]; fc1 -> [1, -4]; ReLU -> [1, 0]; fc2 -> [1, 0, -1, 0]; sigmoid:
    s = 1 / (1 + math.exp(-1))
    w = torch.tensor([s, 0.5, 1 - s, 0.5])
    expected = torch.tensor([1., 2, 3, 4]) * (1 + w)  # weighting + superposition
    out = cam(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[0, :, 1, 0], expected)
    torch.testing.assert_close(cam.weights(x).view(4), w)


def test_cam_rejects_bad_reduction():
    with pytest.raises(ValueError, match="r=3"):
        ChannelAttention(8, reduction=3)
    with pytest.raises(ValueError, match="r=0"):
        ChannelAttention(8, reduction=0)


def test_cam_default_r_is_4():
    assert ChannelAttention(16).fc1.out_channels == 4
