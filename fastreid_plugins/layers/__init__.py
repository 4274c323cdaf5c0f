from .cam import ChannelAttention

__all__ = ["ChannelAttention"]
