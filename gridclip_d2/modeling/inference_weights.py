"""Convolution weights prepared once for inference: the BatchNorm after a conv folded into it, and
on the CPU laid out channels-last.

Inference reads the same weights at every call, yet eager PyTorch redoes two things each time:
the frozen BatchNorm after each of the CLIP ResNet's 55 convs is a pass over the feature map
(~5% of an RN50-FPN inference on 2 CPU cores), and oneDNN reorders every contiguous weight to the
channels-last layout of the activations (``_inference_layout``), another ~1%. Here both are done
once per weight: :func:`inference_conv` returns ``(weight, bias)`` with the BatchNorm folded in
(``torch.nn.utils.fusion.fuse_conv_bn_weights``) and, on the CPU, channels-last.

The prepared tensors are kept beside the module (a weak-key cache, outside the state dict; one
more copy of the conv weights in memory) and rebuilt when any source tensor changed: another
tensor object, another storage (``.to()``, ``.half()``, ``.data = ...``) or an in-place write
(``load_state_dict``, the checkpointer, an optimizer step, ``copy_`` or ``torch.nn.init`` on the
parameter), which PyTorch counts in each tensor's version counter. In-place writes through
``param.data`` bypass that counter, as they bypass autograd: after such a write call
:func:`clear_prepared_weights`. The cache is only read where nothing needs the weights' gradients
(:func:`use_prepared_weights`).
"""

import weakref
from typing import Iterable, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import FrozenBatchNorm2d

__all__ = [
    "clear_prepared_weights",
    "conv_forward",
    "conv_norm_forward",
    "foldable_norm",
    "inference_conv",
    "use_prepared_weights",
]

# conv module -> (source-tensor key, weight, bias); weak keys: a module's entry goes with it
_CACHE: "weakref.WeakKeyDictionary[nn.Conv2d, tuple]" = weakref.WeakKeyDictionary()


def clear_prepared_weights(model: Union[None, nn.Module, Iterable[nn.Module]] = None) -> None:
    """Forget the prepared weights of ``model``'s convs (of every model when None; or of the given
    modules); the next inference prepares them again."""
    if model is None:
        _CACHE.clear()
        return
    for m in model.modules() if isinstance(model, nn.Module) else model:
        _CACHE.pop(m, None)


def use_prepared_weights(module: nn.Module) -> bool:
    """Whether ``module`` may run on prepared weights: in eval mode, with gradients off
    (Detectron2's inference and evaluation, the demo, the frozen teacher), and not while
    ``torch.jit.trace`` or ONNX export records the graph (which would hold the prepared tensors
    as constants beside the parameters)."""
    return not module.training and not torch.is_grad_enabled() and not torch.jit.is_tracing()


def foldable_norm(norm: nn.Module) -> bool:
    """A norm layer whose eval-mode output is an affine map of its input with fixed statistics:
    FrozenBatchNorm2d, or a BatchNorm in eval mode that tracks running statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, _BatchNorm) and not norm.training and norm.running_mean is not None


def _source_key(tensors) -> tuple:
    # a weak reference to each tensor (a dead one never matches), its storage and its write count
    return tuple(
        None if t is None else (weakref.ref(t), t.data_ptr(), t._version, t.device, t.dtype)
        for t in tensors
    )


def _same_source(a: Optional[tuple], b: Optional[tuple]) -> bool:
    if a is None or b is None:
        return a is b
    tensor = a[0]()
    return tensor is not None and tensor is b[0]() and a[1:] == b[1:]


def _same(key: tuple, other: tuple) -> bool:
    return len(key) == len(other) and all(_same_source(a, b) for a, b in zip(key, other))


def inference_conv(
    conv: nn.Conv2d, norm: Optional[nn.Module] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    """``(weight, bias)`` of ``conv`` followed by ``norm`` (a :func:`foldable_norm`, or None) as one
    conv, for ``F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)``;
    channels-last on the CPU. Computed on the first call and after any change of a source tensor.
    """
    sources = [conv.weight, conv.bias]
    if norm is not None:
        if not foldable_norm(norm):
            raise ValueError(f"{type(norm).__name__} in training mode cannot be folded into a conv")
        sources += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
    # tensors made under torch.inference_mode() count no writes: prepared at every call, not kept
    key = None if any(t is not None and t.is_inference() for t in sources) else _source_key(sources)
    cached = _CACHE.get(conv)
    if key is not None and cached is not None and _same(cached[0], key):
        return cached[1], cached[2]
    with torch.no_grad():
        weight, bias = conv.weight.detach(), conv.bias
        if norm is not None:
            weight, bias = fuse_conv_bn_weights(
                weight,
                bias,
                norm.running_mean,
                norm.running_var,
                norm.eps,
                norm.weight,
                norm.bias,
            )
        weight = weight.detach()
        bias = None if bias is None else bias.detach()
        if weight.device.type == "cpu":
            weight = weight.contiguous(memory_format=torch.channels_last)
    if key is None:
        _CACHE.pop(conv, None)
    else:
        _CACHE[conv] = (key, weight, bias)
    return weight, bias


def conv_norm_forward(
    x: Tensor, conv: nn.Conv2d, norm: Optional[nn.Module] = None, activation=None
) -> Tensor:
    """``activation(norm(conv(x)))`` (each optional) on :func:`inference_conv`'s weights, the norm
    folded in where :func:`foldable_norm`; for callers that checked :func:`use_prepared_weights`."""
    fold = norm is not None and foldable_norm(norm)
    if conv.padding_mode == "zeros":
        weight, bias = inference_conv(conv, norm if fold else None)
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:  # F.conv2d pads with zeros only: the module pads (an nn.Conv2d, no norm of its own)
        x, fold = conv(x), False
    if norm is not None and not fold:
        x = norm(x)
    return x if activation is None else activation(x)


def conv_forward(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for an ``nn.Conv2d`` or Detectron2's ``Conv2d`` (with its ``norm`` and
    ``activation``), on prepared weights where :func:`use_prepared_weights`."""
    if not use_prepared_weights(conv) or conv.padding_mode != "zeros":
        return conv(x)
    return conv_norm_forward(
        x, conv, getattr(conv, "norm", None), getattr(conv, "activation", None)
    )
