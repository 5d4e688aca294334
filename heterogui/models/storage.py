"""Storage for modules built on the meta device (their weights are loaded right after)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# torch's random and constant initialisers: in place, so a meta tensor keeps its shape
_INITIALISERS = frozenset(
    {
        *("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_"),
        *("xavier_uniform_", "xavier_normal_", "orthogonal_", "erfinv_"),
        *("zeros_", "ones_", "constant_", "fill_", "zero_"),
    }
)


class _MetaUninitialised(TorchFunctionMode):
    """Skip the initialisers of meta tensors: they hold no values to set.

    Some (``normal_`` on a meta tensor) run through torch's Python references, whose first
    call imports torch._dynamo: about a second of a process's first merge. Tensors on a real
    device are initialised as usual.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _INITIALISERS:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Return ``build()`` on the meta device: shapes without memory or initialisation.

    The global random state is left as it was.
    """
    with torch.device("meta"), _MetaUninitialised(), torch.random.fork_rng(devices=[]):
        return build()


def holding_state(
    build: Callable[[], nn.Module],
    state: dict[str, torch.Tensor],
    convert: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> tuple[nn.Module, list[str], list[str]]:
    """Return ``build()`` made on the meta device and given ``state``'s tensors themselves
    (``load_state_dict`` by assignment: no initialisation, no second copy), each through
    ``convert(tensor, the module's meta tensor of that name or None)``; with the names the
    state lacks and the ones the module lacks.

    Raises:
        RuntimeError: a tensor of another shape than the module's.
    """
    module = on_meta(build)
    want = module.state_dict()
    held = {k: convert(v.detach(), want.get(k)) for k, v in state.items()}
    missing, unexpected = module.load_state_dict(held, strict=False, assign=True)
    return module, missing, unexpected


def allocate(module: nn.Module, device: torch.device) -> nn.Module:
    """Give every meta tensor of ``module`` uninitialised storage on ``device``, in place.

    Integer buffers (BatchNorm's batch counters) start at zero; tensors made on a real device
    (the unmerge maps, rotary frequencies) are moved there with their values; tied parameters
    stay tied.

    Raises:
        AssertionError: a buffer that is not saved (so never loaded) is on the meta device.
    """
    made: dict[int, torch.Tensor] = {}

    def real(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            if not t.is_meta:
                new = t.to(device)
            elif t.is_floating_point() or t.is_complex():
                # not empty_like: on a meta tensor it runs torch's Python reference, whose first
                # call imports sympy (half a second)
                new = _empty_as(t, device)
            else:
                new = torch.zeros(t.shape, dtype=t.dtype, device=device)
            made[id(t)] = nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new
        return made[id(t)]

    for name, sub in module.named_modules():
        for key, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[key] = real(param)
        for key, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_meta and key in sub._non_persistent_buffers_set:
                raise AssertionError(f"buffer {name}.{key} is not saved and cannot be loaded")
            if buf is not None:
                sub._buffers[key] = real(buf)
    return module


def _empty_as(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Return uninitialised storage for ``t``: channels-last if ``t`` is (a convolution's
    weight, ``models.conv.channels_last_weights``), else contiguous (an expanded buffer's
    zero strides are not kept: its storage would overlap)."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
    return torch.empty(t.shape, dtype=t.dtype, device=device)
