"""Which tensors of a model to constrain, and how to put them on their constraint set.

The paper's rules (Leimkuhler, Vlaar, Pouchon, Storkey, ICML 2021):

* circle constraint (c-CoLA): every weight but the biases, each weight on its own circle
  ``w^2 + xi^2 = r^2``; radius ``r0 = 0.05`` for the input layer and ``r1 = 0.1`` for the others;
* orthogonality (o-CoLA): every weight tensor with ``ndim >= 2`` except the first layer's; conv
  kernels ``(out, in, kh, kw)`` are ``(out, in*kh*kw)`` matrices, orthonormal columns when tall or
  square and orthonormal rows when wide.

"Weights" are the parameters with ``ndim >= 2`` (linear, conv, embedding matrices), in the order
of ``model.named_parameters()``; the first of them is the first layer. Biases and normalisation
scales (``ndim == 1``) stay unconstrained. ``geoopt.ManifoldParameter``s keep their own manifold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import geoopt
import torch

from .._checks import check_positive

__all__ = ["DEFAULT_RADII", "circle_init_", "constrained_groups", "orthogonal_init_"]

#: the paper's circle radii ``(r0, r1)``: first layer, other layers
DEFAULT_RADII = (0.05, 0.1)

Radius = float | tuple[float, float] | Mapping[str, float] | Callable[[str, torch.Tensor], float]


@torch.no_grad()
def orthogonal_init_(tensor: torch.Tensor) -> torch.Tensor:
    """Replace ``tensor`` (in place) by the orthonormal factor of its QR decomposition.

    The matrix view is ``(out, in*kh*kw...)``. Tall or square: ``Q`` of ``QR(M)`` (so
    ``M^T M = I``); wide: the transpose of ``Q`` of ``QR(M^T)`` (so ``M M^T = I``). The signs are
    fixed so that ``R`` has a non-negative diagonal, which makes the result a deterministic
    function of the input. Computed in float64 and rounded once.

    Args:
        tensor: a weight with ``ndim >= 2``.

    Returns:
        ``tensor``.

    Examples:
        >>> w = torch.randn(3, 5)
        >>> _ = orthogonal_init_(w)
        >>> bool((w @ w.T - torch.eye(3)).abs().max() < 1e-6)
        True
    """
    if tensor.dim() < 2:
        raise ValueError(f"orthogonal_init_ needs ndim >= 2, got shape {tuple(tensor.shape)}")
    rows = tensor.shape[0]
    m = tensor.reshape(rows, -1)
    wide = rows < m.shape[1]
    work = m.to(torch.float64) if tensor.device.type != "mps" else m.float()
    q, r = torch.linalg.qr(work.T if wide else work)
    diag = torch.diagonal(r, dim1=-2, dim2=-1)
    q = q * torch.where(diag >= 0, 1.0, -1.0).to(q.dtype).unsqueeze(-2)
    if wide:
        q = q.T
    tensor.copy_(q.reshape(tensor.shape))
    return tensor


@torch.no_grad()
def circle_init_(tensor: torch.Tensor, radius: float, mode: str = "clip") -> torch.Tensor:
    """Put every entry of ``tensor`` into ``[-radius, radius]`` (in place).

    Args:
        tensor: the weights.
        radius: the circle radius ``r > 0``.
        mode: ``"clip"`` clamps each entry; ``"scale"`` multiplies the whole tensor by
            ``r / max|w|`` when that is below 1 (keeps the relative sizes).

    Returns:
        ``tensor``.

    Examples:
        >>> w = torch.tensor([0.3, -0.02, 0.01])
        >>> circle_init_(w, 0.1).tolist()
        [0.10000000149011612, -0.019999999552965164, 0.009999999776482582]
    """
    radius = check_positive("radius", radius)
    if mode == "clip":
        return tensor.clamp_(-radius, radius)
    if mode == "scale":
        top = float(tensor.abs().max()) if tensor.numel() else 0.0
        if top > radius:
            tensor.mul_(radius / top)
            tensor.clamp_(-radius, radius)  # rounding of the product
        return tensor
    raise ValueError(f"mode must be 'clip' or 'scale', got {mode!r}")


def _radius_of(radius: Radius | None, name: str, p: torch.Tensor, first: bool) -> float:
    r0, r1 = DEFAULT_RADII
    if radius is None:
        return r0 if first else r1
    if callable(radius):
        return float(radius(name, p))
    if isinstance(radius, Mapping):
        return float(radius.get(name, r0 if first else r1))
    if isinstance(radius, (tuple, list)):
        if len(radius) != 2:
            raise ValueError(f"radius as a pair is (first layer, other layers), got {radius}")
        return float(radius[0] if first else radius[1])
    if not isinstance(radius, (int, float)) or isinstance(radius, bool):
        raise TypeError(
            "radius must be a float, a pair (r0, r1), a mapping name -> radius or a callable, "
            f"got {type(radius).__name__}"
        )
    return float(radius)


def constrained_groups(
    model: torch.nn.Module,
    constraint: str = "orthogonal",
    radius: Radius | None = None,
    *,
    init: bool = True,
    init_mode: str = "clip",
    constrain_first: bool | None = None,
    select: Callable[[str, torch.Tensor], bool] | None = None,
    unconstrained: Mapping | None = None,
    **group_overrides,
) -> list[dict]:
    """Param groups for [`CoLA`][manifold_langevin.optim.CoLA] following the paper's rules.

    Args:
        model: the network.
        constraint: ``"orthogonal"`` or ``"circle"``.
        radius: circle radii: ``None`` (the paper's ``r0 = 0.05`` for the first layer and
            ``r1 = 0.1`` for the others), one float for every layer, a pair ``(r0, r1)``, a
            mapping from parameter name to radius (missing names get the defaults) or a callable
            ``(name, tensor) -> radius``. Not used by ``"orthogonal"``.
        init: put the selected weights on their constraint set now (orthogonal: QR, see
            [`orthogonal_init_`][]; circle: [`circle_init_`][]). With ``False`` the weights
            are kept and CoLA raises [`OffManifoldError`][manifold_langevin.OffManifoldError] at the
            first step if one is off its set.
        init_mode: ``"clip"`` or ``"scale"`` for the circle initialisation.
        constrain_first: whether the first layer is constrained (default: yes for circles, no
            for orthogonality, as in the paper).
        select: ``(name, tensor) -> bool`` choosing the candidate weights instead of
            ``ndim >= 2``.
        unconstrained: options for the unconstrained group only (e.g.
            ``{"scheme": "od"}``), on top of ``group_overrides``.
        **group_overrides: options for every group (``lr``, ``temperature``, ...).

    Returns:
        A list of param groups (dicts with ``params``, ``param_names``, ``constraint`` and, for
        circles, ``radius``): one per circle radius or one orthogonal group, then the
        unconstrained rest. Empty groups are left out.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> [(g["constraint"], g.get("radius"), g["param_names"])
        ...  for g in constrained_groups(net, "circle")]  # doctest: +NORMALIZE_WHITESPACE
        [('circle', 0.05, ['0.weight']), ('circle', 0.1, ['2.weight']),
         (None, None, ['0.bias', '2.bias'])]
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} (for a list of "
            "tensors, build the param groups by hand)"
        )
    if not isinstance(constraint, str) or constraint not in ("orthogonal", "circle"):
        raise ValueError(f"constraint must be 'orthogonal' or 'circle', got {constraint!r}")
    if init not in (True, False):
        raise TypeError(f"init must be True or False, got {init!r}")
    if constraint == "orthogonal" and radius is not None:
        raise ValueError("radius applies to the circle constraint only")
    if "params" in group_overrides or "constraint" in group_overrides:
        raise ValueError("params and constraint are chosen by constrained_groups")
    if constrain_first is None:
        constrain_first = constraint == "circle"
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")

    def candidate(name: str, p: torch.Tensor) -> bool:
        if isinstance(p, geoopt.ManifoldParameter):
            return False  # keeps its own manifold
        return bool(select(name, p)) if select is not None else p.dim() >= 2

    chosen, rest = {}, []  # chosen: radius (or None) -> [(name, p)]
    first_seen = False
    for name, p in named:
        if not candidate(name, p):
            rest.append((name, p))
            continue
        first = not first_seen
        first_seen = True
        if first and not constrain_first:
            rest.append((name, p))
            continue
        if constraint == "orthogonal":
            if p.dim() < 2:
                raise ValueError(f"{name} has shape {tuple(p.shape)}: not a matrix")
            key = None
        else:
            key = check_positive(f"radius of {name}", _radius_of(radius, name, p, first))
        chosen.setdefault(key, []).append((name, p))

    if init:
        with torch.no_grad():
            for key, members in chosen.items():
                for _, p in members:
                    if constraint == "orthogonal":
                        orthogonal_init_(p)
                    else:
                        circle_init_(p, key, init_mode)

    groups = []
    for key, members in chosen.items():
        group = {
            "params": [p for _, p in members],
            "param_names": [n for n, _ in members],
            "constraint": constraint,
            **group_overrides,
        }
        if constraint == "circle":
            group["radius"] = key
        groups.append(group)
    if rest:
        groups.append(
            {
                "params": [p for _, p in rest],
                "param_names": [n for n, _ in rest],
                "constraint": None,
                **group_overrides,
                **dict(unconstrained or {}),
            }
        )
    return groups
