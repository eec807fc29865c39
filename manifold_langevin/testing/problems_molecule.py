r"""A rigid triatomic molecule: three unit-mass atoms in $\mathbb{R}^3$ with all three pairwise
distances fixed (a vector-valued constraint on $x \in \mathbb{R}^9$), a harmonic tether on the
centre of mass and an orienting field on the first bond.

The constraint set $\Sigma = \{g = 0\}$ with $g_{ij}(x) = (|r_i - r_j|^2 - l_{ij}^2)/2$ for the
pairs $(1, 2), (2, 3), (1, 3)$ is the set of congruent copies $r_i = c + R a_i$ of a fixed
scalene triangle $a_1, a_2, a_3$ (body frame, $\sum_i a_i = 0$), with $c \in \mathbb{R}^3$ and
$R \in SO(3)$ (a mirror image of a planar triangle is a rotated copy, so $\Sigma$ is one copy of
$\mathbb{R}^3 \times SO(3)$). The potential is

$$
U(x) = \frac{k}{2} |c|^2 - \kappa\, u \cdot e_z, \qquad
c = \frac{r_1 + r_2 + r_3}{3}, \quad u = \frac{r_2 - r_1}{|r_2 - r_1|},
$$

at $\tau = 1$.

Derivations:

* The rows of $J = Dg$ are $\nabla g_{ij} = (\dots, r_i - r_j, \dots, r_j - r_i, \dots)$ (non-zero
  in the blocks of atoms $i$ and $j$), so every entry of $J J^T$ is a sum of inner products of bond
  vectors $r_i - r_j$, which the constraints fix: $\det(J J^T)$ is constant on $\Sigma$, the
  conditional measure is the surface measure, and there are no ``conditional`` values.
* In the coordinates $(c, R)$ the metric induced from $\mathbb{R}^9$ is block-diagonal: a
  translation $dc$ moves every atom by $dc$ ($|dx|^2 = 3 |dc|^2$), a rotation $R \Omega$ moves them
  by $R \Omega a_i$, orthogonal to translations because $\sum_i a_i = 0$, with the body-frame
  inertia form, which does not depend on $R$ (left invariance). So the surface measure is a
  constant times $dc \times$ Haar$(dR)$, and the target factorises: $c \sim N(0, I_3/k)$, hence
  $E|c|^2 = 3/k$, independent of $R$, whose law is Haar tilted by $e^{\kappa u \cdot e_z}$.
* Under Haar measure $u = R a_{12}/|a_{12}|$ is uniform on $S^2$, so under the tilt it is
  von Mises-Fisher on $S^2$ with mean direction $e_z$: $t = u_z$ has density
  $\kappa e^{\kappa t} / (2 \sinh \kappa)$ on $[-1, 1]$, $E[t] = A = \coth\kappa - 1/\kappa$
  and $E[t^2] = 1 - 2A/\kappa$.
* Given $u$, the rotation about $u$ is still uniform (the tilt depends on $u$ only), so the
  triangle's unit normal $n$ is uniform on the great circle orthogonal to $u$:
  $E[n_z^2 \mid u] = (1 - u_z^2)/2$ and $E[n_z^2] = A/\kappa$. This observable checks the
  orientational part beyond the bond direction.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .problem import Marginal, Problem, Tensor, constant_like, implicit, randn_points

__all__ = ["BONDS", "MOLECULE_K", "MOLECULE_KAPPA", "body_frame", "rigid_triatomic"]

#: fixed distances ``(l12, l23, l13)`` of the scalene triangle
BONDS = (1.0, 1.2, 1.5)
#: the stiffness ``k`` of the tether on the centre of mass
MOLECULE_K = 4.0
#: the strength ``kappa`` of the orienting field on the first bond
MOLECULE_KAPPA = 3.0
_PAIRS = ((0, 1), (1, 2), (0, 2))


def _atoms(x: Tensor) -> Tensor:
    return x.reshape(*x.shape[:-1], 3, 3)


def molecule_constraint(x: Tensor) -> Tensor:
    """``g(x)``, ``(..., 3)``: ``(|r_i - r_j|^2 - l_ij^2)/2`` for the pairs (1,2), (2,3), (1,3)."""
    r = _atoms(x)
    cols = []
    for (i, j), length in zip(_PAIRS, BONDS):
        d = r[..., i, :] - r[..., j, :]
        cols.append(0.5 * ((d * d).sum(-1) - length**2))
    return torch.stack(cols, dim=-1)


def _com(x: Tensor) -> Tensor:
    return _atoms(x).mean(-2)


def _bond_direction(x: Tensor) -> Tensor:
    r = _atoms(x)
    d = r[..., 1, :] - r[..., 0, :]
    return d / d.norm(dim=-1, keepdim=True)


def _normal(x: Tensor) -> Tensor:
    r = _atoms(x)
    n = torch.linalg.cross(r[..., 1, :] - r[..., 0, :], r[..., 2, :] - r[..., 0, :])
    return n / n.norm(dim=-1, keepdim=True)


def _potential(x: Tensor) -> Tensor:
    c = _com(x)
    return 0.5 * MOLECULE_K * (c * c).sum(-1) - MOLECULE_KAPPA * _bond_direction(x)[..., 2]


def body_frame() -> np.ndarray:
    """The triangle ``a_1, a_2, a_3`` (rows) with the distances ``BONDS``, centred at the origin,
    in the plane ``z = 0`` with the first bond along ``e_x``."""
    l12, l23, l13 = BONDS
    p = (l13**2 + l12**2 - l23**2) / (2 * l12)
    q = math.sqrt(l13**2 - p**2)
    a = np.array([[0.0, 0.0, 0.0], [l12, 0.0, 0.0], [p, q, 0.0]])
    return a - a.mean(0)


def _random_rotations(n, dtype, device, generator) -> Tensor:
    q, r = torch.linalg.qr(randn_points(n, (3, 3), dtype, device, generator))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    sign = torch.sign(torch.linalg.det(q))
    return torch.cat([q[..., :1] * sign[:, None, None], q[..., 1:]], dim=-1)


def _initial(n_chains, dtype=torch.float64, device="cpu", generator=None) -> Tensor:
    """Rigid copies ``c + R a_i``: ``R`` a Haar rotation, ``c`` standard normal (not the
    target's ``N(0, I/k)``)."""
    rot = _random_rotations(n_chains, dtype, device, generator)
    c = randn_points(n_chains, (3,), dtype, device, generator)
    a = constant_like(body_frame().tolist(), c)
    r = c[:, None, :] + a @ rot.transpose(-1, -2)  # r_i = c + R a_i
    return r.reshape(n_chains, 9)


def vmf_s2_mean(kappa: float) -> float:
    r"""$E[u_z] = \coth\kappa - 1/\kappa$ for the von Mises-Fisher law on $S^2$."""
    return 1.0 / math.tanh(kappa) - 1.0 / kappa


def rigid_triatomic() -> Problem:
    k, kappa = MOLECULE_K, MOLECULE_KAPPA
    a = vmf_s2_mean(kappa)
    exact = {
        "cos": a,
        "cos_sq": 1.0 - 2.0 * a / kappa,
        "normal_z_sq": a / kappa,
        "com_sq": 3.0 / k,
        "com_z": 0.0,
    }

    def density(t):
        t = np.asarray(t, dtype=float)
        # kappa e^{kappa t} / (2 sinh kappa), written without overflow
        return kappa * np.exp(kappa * (t - 1.0)) / (1.0 - math.exp(-2.0 * kappa))

    return Problem(
        name="rigid_triatomic",
        description=(
            "rigid triatomic in R^9 (three pairwise distances 1, 1.2, 1.5 fixed: a vector "
            "constraint): U = (k/2)|c|^2 - kappa u.e_z, k = 4, kappa = 3, tau = 1 (c: centre "
            "of mass, u: first bond direction); det(J J^T) is constant, so conditional = surface"
        ),
        make_manifold=implicit(molecule_constraint),
        potential=_potential,
        observables={
            "cos": lambda x: _bond_direction(x)[..., 2],
            "cos_sq": lambda x: _bond_direction(x)[..., 2] ** 2,
            "normal_z_sq": lambda x: _normal(x)[..., 2] ** 2,
            "com_sq": lambda x: (_com(x) ** 2).sum(-1),
            "com_z": lambda x: _com(x)[..., 2],
        },
        exact=exact,
        initial=_initial,
        event_shape=(9,),
        constraint=molecule_constraint,
        marginal=Marginal("cos", density, (-1.0, 1.0)),
    )
