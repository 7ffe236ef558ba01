"""Solvers of Zhou et al.'s label propagation, ``F* = (1 - a)(I - a S)^-1 Y``.

``S = D^-1/2 W D^-1/2`` is the symmetrically normalised affinity matrix. The fixed point
of ``F <- a S F + (1 - a) Y`` solves ``(I - a S) F = (1 - a) Y``; ``I - a S`` is
symmetric positive definite for ``0 <= a < 1``, so conjugate gradients apply and can
start from the last solution (a warm start), which after one more click is already
right almost everywhere. Seeds are clamped (Dirichlet values): their rows leave the
system and their known values move to the right-hand side,
``(I - a S)_UU F_U = (1 - a) Y_U + a S_UC F_C``.

The binary case uses one signed column, ``Y = Y_tumour - Y_not``; since the map is
linear, ``F`` is the difference of the two columns of the two-class propagation and
``F > 0`` is its arg max.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp_

__all__ = ["normalise", "solve_clamped", "solve_pixels", "propagate_grid"]


def normalise(W: sp_.csr_matrix) -> sp_.csr_matrix:
    """``D^-1/2 W D^-1/2`` of a symmetric non-negative sparse matrix."""
    d = np.asarray(W.sum(axis=1)).ravel()
    r = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    Dr = sp_.diags(r)
    return (Dr @ W @ Dr).tocsr()


def _dot(a, b) -> float:
    # Not np.dot: BLAS threads on a busy machine made one dot of 16k values take 4 ms.
    return float(np.add.reduce(a * b))


def _cg(A, b, x0, tol, maxiter):
    """Conjugate gradients for SPD ``A`` from ``x0``, until ``|r| <= tol |b|``."""
    if b.size == 0:
        return b.copy()
    bn = np.sqrt(_dot(b, b))
    if bn == 0.0:
        return np.zeros_like(b)
    x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=b.dtype)
    r = b - A @ x
    rr = _dot(r, r)
    p = r.copy()
    stop = (tol * bn) ** 2
    for _ in range(maxiter):
        if rr <= stop:
            break
        Ap = A @ p
        step = rr / _dot(p, Ap)
        x += step * p
        r -= step * Ap
        rr_new = _dot(r, r)
        p *= rr_new / rr
        p += r
        rr = rr_new
    return x


def solve_clamped(S: sp_.csr_matrix, y: np.ndarray, clamped: np.ndarray, values: np.ndarray,
                  alpha: float, x0: np.ndarray | None = None, tol: float = 1e-4,
                  maxiter: int = 1000, leak: np.ndarray | None = None) -> np.ndarray:
    """Label propagation on a graph with clamped nodes.

    Parameters
    ----------
    S : (n, n) CSR
        Normalised affinities (:func:`normalise`).
    y : (n,) float
        Initial labelling ``Y`` (signed: > 0 tumour).
    clamped : (n,) bool
        Nodes whose value is fixed.
    values : (n,) float
        The fixed values (read where ``clamped``).
    alpha : float
        Propagation weight in [0, 1).
    x0 : (n,) float, optional
        Warm start (the previous solution).
    leak : (n,) float, optional
        Extra per-node fidelity to ``Y``: the system becomes
        ``(I + diag(leak) - alpha S) F = (1 - alpha) Y``, so a node with a large leak
        holds its own value and passes little on (its reach shrinks like
        ``1 / sqrt(leak)`` hops).

    Returns
    -------
    F : (n,) float64
    """
    n = y.size
    F = np.empty(n, np.float64)
    F[clamped] = values[clamped]
    free = np.flatnonzero(~clamped)
    if free.size == 0:
        return F
    Sf = S[free]   # the free rows once; the clamped columns enter through F (0 at the free nodes)
    Suu = Sf[:, free]
    diag = np.ones(free.size) if leak is None else 1.0 + leak[free]
    A = (sp_.diags(diag, format="csr") - alpha * Suu).tocsr()
    b = (1.0 - alpha) * y[free]
    if clamped.any():
        Fc = np.where(clamped, F, 0.0)
        b = b + alpha * (Sf @ Fc)
    F[free] = _cg(A, b, None if x0 is None else x0[free], tol, maxiter)
    return F



def solve_pixels(U: np.ndarray, y: np.ndarray, g: np.ndarray, aff, alpha: float, pos: np.ndarray,
                 x0: np.ndarray | None = None, tol: float = 1e-3, maxiter: int = 300) -> np.ndarray:
    """Label propagation on the pixels ``U`` of the 4-connected grid, with every pixel
    outside ``U`` held at its value in ``g`` (Dirichlet boundary).

    Parameters
    ----------
    U : (m,) int64
        Flat indices (row-major) of the unknown pixels.
    y : (m,) float
        ``Y`` at those pixels.
    g : (H * W,) float32
        Values of all pixels; those outside ``U`` that touch ``U`` are the boundary.
    aff : PixelAffinity
    pos : (H * W,) int32
        Scratch array filled with -1; returned as it was.
    x0 : (m,) float, optional
        Warm start.

    Returns
    -------
    F : (m,) float64
    """
    h, w = aff.degree.shape
    m = U.size
    if m == 0:
        return np.zeros(0)
    right, down, deg = aff.right.ravel(), aff.down.ravel(), aff.degree.ravel()
    # the unknowns in row-major order: each row's columns (up, left, itself, right, down)
    # then come sorted, A goes straight into CSR, and the band is read in memory order
    order = np.argsort(U, kind="stable")
    U = U[order]
    pos[U] = np.arange(m, dtype=np.int32)
    try:
        col = U % w
        ok = np.stack([U >= w, col > 0, col < w - 1, U < (h - 1) * w])
        Q = np.where(ok, np.stack([U - w, U - 1, U + 1, U + w]), 0)
        wt = np.where(ok, np.stack([down[Q[0]], right[Q[1]], right[U], down[U]]), 0)
        rs = 1.0 / np.sqrt(deg[U].astype(np.float64))
        S = wt * rs / np.sqrt(deg[Q].astype(np.float64))
        J = np.where(ok, pos[Q], -1)
        b = (1.0 - alpha) * np.asarray(y, np.float64)[order]
        out = ok & (J < 0)
        for d in (2, 1, 3, 0):  # the boundary's known values: right, left, down, up
            b += np.where(out[d], alpha * S[d] * g[Q[d]], 0.0)
        cols = np.empty((m, 5), np.int32)
        vals = np.empty((m, 5), np.float32)
        for k, d in enumerate((0, 1, None, 2, 3)):
            cols[:, k] = np.arange(m) if d is None else J[d]
            vals[:, k] = 1.0 if d is None else -alpha * S[d]
        keep = cols >= 0
        indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
        A = sp_.csr_matrix((vals[keep], cols[keep], indptr), shape=(m, m))
    finally:
        pos[U] = -1
    # float32: half the memory traffic of each product; the pixel values are float32 anyway
    F = np.empty(m, np.float32)
    F[order] = _cg(A, b.astype(np.float32), None if x0 is None else np.asarray(x0, np.float32)[order], tol, maxiter)
    return F


def propagate_grid(y: np.ndarray, aff, alpha: float = 0.9, tol: float = 1e-4,
                   maxiter: int = 500) -> np.ndarray:
    """Label propagation over the whole pixel grid without clamping, matrix-free.

    Parameters
    ----------
    y : (H, W) float
        Signed initial labelling, e.g. ``2 p - 1`` for a tumour probability ``p``.
    aff : PixelAffinity
    alpha : float
        The paper's 0.9 by default.

    Returns
    -------
    F : (H, W) float64
    """
    h, w = y.shape
    r = 1.0 / np.sqrt(aff.degree.astype(np.float64))
    sr = aff.right[:, :-1] * r[:, :-1] * r[:, 1:]
    sd = aff.down[:-1, :] * r[:-1, :] * r[1:, :]

    def matvec(v):
        f = v.reshape(h, w)
        out = f.copy()
        t = alpha * sr
        out[:, :-1] -= t * f[:, 1:]
        out[:, 1:] -= t * f[:, :-1]
        t = alpha * sd
        out[:-1, :] -= t * f[1:, :]
        out[1:, :] -= t * f[:-1, :]
        return out.ravel()

    class A:
        def __matmul__(self, v):
            return matvec(v)

    b = (1.0 - alpha) * y.astype(np.float64).ravel()
    return _cg(A(), b, b / (1.0 - alpha), tol, maxiter).reshape(h, w)
