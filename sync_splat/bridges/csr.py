"""Sparse CSR helpers of the splat colour fit (`sync_splat.bridges.splat_fit`): building CSR matrices from sorted COO
entries without torch's construction warnings, converting their index and value dtypes, and slicing rows."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def transpose_coo(
    rows: Tensor, columns: Tensor, values: Tensor, shape: tuple[int, int], index_dtype: torch.dtype
) -> Tensor:
    """`W^T` as CSR `[G, rows]` from W's sorted COO entries (rows stay ascending within each column)."""
    order = torch.sort(columns, stable=True).indices
    crow = row_offsets(columns, shape[1]).to(index_dtype)
    return csr_matrix(crow, rows[order].to(index_dtype), values[order], (shape[1], shape[0]))


def with_values_dtype(matrix: Tensor, dtype: torch.dtype) -> Tensor:
    """A CSR matrix with its values in `dtype` (the same matrix when they already are)."""
    if matrix.values().dtype == dtype:
        return matrix
    return csr_matrix(matrix.crow_indices(), matrix.col_indices(), matrix.values().to(dtype), matrix.shape)


def csr_bytes(matrix: Tensor) -> int:
    """Bytes of a CSR matrix's three arrays."""
    arrays = (matrix.crow_indices(), matrix.col_indices(), matrix.values())
    return sum(array.numel() * array.element_size() for array in arrays)


def csr_matrix(crow_indices: Tensor, col_indices: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR tensor built from indices made here (sorted, in range), without torch's construction warnings:
    the invariant checks are explicitly off (not implicitly, which warns) and the one-off notice that sparse CSR
    support is in beta is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, shape, check_invariants=False)


def row_offsets(rows: Tensor, count: int) -> Tensor:
    """CSR row offsets `[count + 1]` of sorted row indices."""
    offsets = torch.zeros(count + 1, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.bincount(rows, minlength=count).cumsum(0)
    return offsets


def csr_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """The rows `rows` of a CSR matrix, as a new CSR matrix."""
    crow = matrix.crow_indices().long()
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long, device=crow.device)
    offsets[1:] = counts.cumsum(0)
    gather = torch.repeat_interleave(starts - offsets[:-1], counts) + torch.arange(int(offsets[-1]), device=crow.device)
    index_dtype = matrix.crow_indices().dtype
    return csr_matrix(
        offsets.to(index_dtype), matrix.col_indices()[gather], matrix.values()[gather], (len(rows), matrix.shape[1])
    )


def with_index_dtype(matrix: Tensor, index_dtype: torch.dtype) -> Tensor:
    """A CSR matrix with its indices converted (sparse products return 64-bit indices)."""
    if matrix.crow_indices().dtype == index_dtype:
        return matrix
    return csr_matrix(
        matrix.crow_indices().to(index_dtype), matrix.col_indices().to(index_dtype), matrix.values(), matrix.shape
    )


__all__ = [
    "csr_bytes",
    "csr_matrix",
    "csr_rows",
    "row_offsets",
    "transpose_coo",
    "with_index_dtype",
    "with_values_dtype",
]
