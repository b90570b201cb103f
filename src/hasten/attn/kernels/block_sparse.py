"""Triton block-sparse attention over a chunk table: forward, and backward for dq, dk, dv.

Read like Triton's fused-attention tutorial with two changes. The kv loop runs over a list of
kv *chunks* per query chunk instead of all of them, in two passes: chunks kept whole and of
full length run with no mask at all; the rest (short chunks at ragged tile edges, pairs the
pattern keeps only in part, text padding) pay for a bounds mask and, where the table needs
them (``CELL_MASK``, ``PAD_MASK``), the pattern's cell lookup and the padding test. And chunks
have variable length (tile-aligned, at most ``BLOCK_M`` / ``BLOCK_N`` tokens), so sliding
tiles need no element masks on any canvas.

Softmax runs in base 2 (``exp2`` with ``scale * log2(e)`` folded in); ``LSE`` is stored in
that base for the backward pass. Accumulation is fp32 whatever the input dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _keep(offs_m, valid_m, offs_n, valid_n, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi,
          CELL_MASK: tl.constexpr, PAD_MASK: tl.constexpr):
    # [M, N] pairs to keep in a masked chunk: in bounds, kept by the pattern, not padding.
    keep = valid_m[:, None] & valid_n[None, :]
    if CELL_MASK:
        cq = tl.load(CELL + offs_m, mask=valid_m, other=0)
        ck = tl.load(CELL + offs_n, mask=valid_n, other=0)
        ptr = KEEP + h * stride_keep_h + cq[:, None] * stride_keep_q + ck[None, :]
        keep = keep & (tl.load(ptr, mask=keep, other=0) != 0)
    if PAD_MASK:
        keep = keep & ((offs_n < pad_lo) | (offs_n >= pad_hi))[None, :]
    return keep


@triton.jit
def _load_rows(ptr, offs, valid, stride, offs_d, MASKED: tl.constexpr, UPCAST: tl.constexpr):
    if MASKED:
        x = tl.load(ptr + offs[:, None] * stride + offs_d[None, :], mask=valid[:, None], other=0.0)
    else:
        x = tl.load(ptr + offs[:, None] * stride + offs_d[None, :])
    if UPCAST:  # the interpreter's bf16 dot is wrong: compute in fp32 there
        x = x.to(tl.float32)
    return x


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, desc_k, desc_v, row0, stride_ks, stride_vs, KVB, IDX, n,
               offs_m, valid_m, offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi,
               qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CELL_MASK: tl.constexpr,
               PAD_MASK: tl.constexpr, USE_TMA: tl.constexpr, UPCAST: tl.constexpr,
               WARP_SPEC: tl.constexpr):
    # WARP_SPEC: Triton splits the loop into producer (TMA loads) and consumer warps.
    for t in tl.range(0, n, warp_specialize=WARP_SPEC):
        if MASKED:
            j = tl.load(IDX + t)
            ks = tl.load(KVB + j)
            offs_n = ks + tl.arange(0, BLOCK_N)
            valid_n = offs_n < tl.load(KVB + j + 1)
        else:  # unmasked lists hold the chunk's first token: one load, no indirection
            ks = tl.load(IDX + t)
            offs_n = ks + tl.arange(0, BLOCK_N)
            valid_n = offs_n >= 0
        if USE_TMA:  # rows past the chunk are read but masked below (or absent when unmasked)
            k = desc_k.load([row0 + ks, 0])
            v = desc_v.load([row0 + ks, 0])
        else:
            k = _load_rows(K, offs_n, valid_n, stride_ks, offs_d, MASKED, UPCAST)
            v = _load_rows(V, offs_n, valid_n, stride_vs, offs_d, MASKED, UPCAST)
        qk = tl.dot(q, tl.trans(k))
        if MASKED:
            keep = _keep(offs_m, valid_m, offs_n, valid_n, CELL, KEEP, stride_keep_h, stride_keep_q,
                         h, pad_lo, pad_hi, CELL_MASK, PAD_MASK)
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row with nothing kept so far has m = -inf: subtract 0 to avoid inf - inf.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        else:
            # Every row keeps every column here: fold the scale into one multiply-add.
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, desc_k, desc_v, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os, stride_lb, stride_lh, QB, KVB,
    FULL_N, FULL_I, PART_N, PART_I, stride_nb, stride_nh, stride_nq, stride_ib, stride_ih, stride_iq,
    stride_pb, stride_ph, stride_pq, CELL, KEEP, stride_keep_h, stride_keep_q, PAD, H, S, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASKED: tl.constexpr,
    CELL_MASK: tl.constexpr, PAD_MASK: tl.constexpr, USE_TMA: tl.constexpr, UPCAST: tl.constexpr,
    WARP_SPEC: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    qs = tl.load(QB + i)
    offs_m = qs + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    valid_m = offs_m < tl.load(QB + i + 1)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    q = _load_rows(Q, offs_m, valid_m, stride_qs, offs_d, True, UPCAST)
    pad_lo = tl.load(PAD + 2 * b)
    pad_hi = tl.load(PAD + 2 * b + 1)
    row0 = bh * S  # this (batch, head)'s first row in the [B * H * S, D] descriptors

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = tl.load(FULL_N + b * stride_nb + h * stride_nh + i * stride_nq)
    full_idx = FULL_I + b * stride_ib + h * stride_ih + i * stride_iq
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, desc_k, desc_v, row0, stride_ks, stride_vs, KVB, full_idx, n_full,
        offs_m, valid_m, offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi,
        qk_scale, BLOCK_N, False, False, False, USE_TMA, UPCAST, WARP_SPEC,
    )
    if HAS_MASKED:
        n_part = tl.load(PART_N + b * stride_nb + h * stride_nh + i * stride_nq)
        part_idx = PART_I + b * stride_pb + h * stride_ph + i * stride_pq
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, K, V, desc_k, desc_v, row0, stride_ks, stride_vs, KVB, part_idx, n_part,
            offs_m, valid_m, offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi,
            qk_scale, BLOCK_N, True, CELL_MASK, PAD_MASK, USE_TMA, UPCAST, False,
        )
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    O += b * stride_ob + h * stride_oh
    tl.store(O + offs_m[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=valid_m[:, None])
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, m_i + tl.math.log2(l_safe), mask=valid_m)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qs, stride_ds, QB, IDX, n, offs_n, valid_n,
                offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi, qk_scale,
                BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CELL_MASK: tl.constexpr,
                PAD_MASK: tl.constexpr, UPCAST: tl.constexpr):
    for t in range(0, n):
        if MASKED:
            i = tl.load(IDX + t)
            offs_m = tl.load(QB + i) + tl.arange(0, BLOCK_M)
            valid_m = offs_m < tl.load(QB + i + 1)
        else:
            offs_m = tl.load(IDX + t) + tl.arange(0, BLOCK_M)
            valid_m = offs_m >= 0
        q = _load_rows(Q, offs_m, valid_m, stride_qs, offs_d, MASKED, UPCAST)
        do = _load_rows(DO, offs_m, valid_m, stride_ds, offs_d, MASKED, UPCAST)
        if MASKED:
            lse = tl.load(LSE + offs_m, mask=valid_m, other=0.0)
            delta = tl.load(DELTA + offs_m, mask=valid_m, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
            delta = tl.load(DELTA + offs_m)
        qkT = tl.dot(k, tl.trans(q)) * qk_scale  # [N, M]
        pT = tl.math.exp2(qkT - lse[None, :])
        if MASKED:
            keep = _keep(offs_m, valid_m, offs_n, valid_n, CELL, KEEP, stride_keep_h, stride_keep_q,
                         h, pad_lo, pad_hi, CELL_MASK, PAD_MASK)
            pT = tl.where(tl.trans(keep), pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv)
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, LSE, DELTA, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_db, stride_dh, stride_ds, stride_gb, stride_gh, stride_gs,
    stride_lb, stride_lh, QB, KVB, FULL_N, FULL_I, PART_N, PART_I, stride_nb, stride_nh, stride_nq,
    stride_ib, stride_ih, stride_iq, stride_pb, stride_ph, stride_pq, CELL, KEEP, stride_keep_h,
    stride_keep_q, PAD, H, qk_scale, sm_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_MASKED: tl.constexpr, CELL_MASK: tl.constexpr, PAD_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # One program per kv chunk; the table is the transposed one (its query chunks).
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = tl.load(KVB + j) + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    valid_n = offs_n < tl.load(KVB + j + 1)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    k = _load_rows(K, offs_n, valid_n, stride_ks, offs_d, True, UPCAST)
    v = _load_rows(V, offs_n, valid_n, stride_vs, offs_d, True, UPCAST)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_db + h * stride_dh
    LSE += b * stride_lb + h * stride_lh
    DELTA += b * stride_lb + h * stride_lh
    pad_lo = tl.load(PAD + 2 * b)
    pad_hi = tl.load(PAD + 2 * b + 1)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    n_full = tl.load(FULL_N + b * stride_nb + h * stride_nh + j * stride_nq)
    full_idx = FULL_I + b * stride_ib + h * stride_ih + j * stride_iq
    dk, dv = _dkdv_inner(
        dk, dv, k, v, Q, DO, LSE, DELTA, stride_qs, stride_ds, QB, full_idx, n_full, offs_n, valid_n,
        offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi, qk_scale, BLOCK_M,
        False, False, False, UPCAST,
    )
    if HAS_MASKED:
        n_part = tl.load(PART_N + b * stride_nb + h * stride_nh + j * stride_nq)
        part_idx = PART_I + b * stride_pb + h * stride_ph + j * stride_pq
        dk, dv = _dkdv_inner(
            dk, dv, k, v, Q, DO, LSE, DELTA, stride_qs, stride_ds, QB, part_idx, n_part, offs_n,
            valid_n, offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi, qk_scale,
            BLOCK_M, True, CELL_MASK, PAD_MASK, UPCAST,
        )
    out = b * stride_gb + h * stride_gh + offs_n[:, None] * stride_gs + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=valid_n[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=valid_n[:, None])


@triton.jit
def _dq_inner(dq, q, do, lse, delta, K, V, stride_ks, stride_vs, KVB, IDX, n, offs_m, valid_m, offs_d,
              CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi, qk_scale,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CELL_MASK: tl.constexpr,
              PAD_MASK: tl.constexpr, UPCAST: tl.constexpr):
    for t in range(0, n):
        if MASKED:
            j = tl.load(IDX + t)
            offs_n = tl.load(KVB + j) + tl.arange(0, BLOCK_N)
            valid_n = offs_n < tl.load(KVB + j + 1)
        else:
            offs_n = tl.load(IDX + t) + tl.arange(0, BLOCK_N)
            valid_n = offs_n >= 0
        k = _load_rows(K, offs_n, valid_n, stride_ks, offs_d, MASKED, UPCAST)
        v = _load_rows(V, offs_n, valid_n, stride_vs, offs_d, MASKED, UPCAST)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        if MASKED:
            keep = _keep(offs_m, valid_m, offs_n, valid_n, CELL, KEEP, stride_keep_h, stride_keep_q,
                         h, pad_lo, pad_hi, CELL_MASK, PAD_MASK)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, DQ, LSE, DELTA, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_db, stride_dh, stride_ds, stride_gb, stride_gh, stride_gs,
    stride_lb, stride_lh, QB, KVB, FULL_N, FULL_I, PART_N, PART_I, stride_nb, stride_nh, stride_nq,
    stride_ib, stride_ih, stride_iq, stride_pb, stride_ph, stride_pq, CELL, KEEP, stride_keep_h,
    stride_keep_q, PAD, H, qk_scale, sm_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_MASKED: tl.constexpr, CELL_MASK: tl.constexpr, PAD_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.load(QB + i) + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    valid_m = offs_m < tl.load(QB + i + 1)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_db + h * stride_dh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    q = _load_rows(Q, offs_m, valid_m, stride_qs, offs_d, True, UPCAST)
    do = _load_rows(DO, offs_m, valid_m, stride_ds, offs_d, True, UPCAST)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m, mask=valid_m, other=0.0)
    delta = tl.load(DELTA + b * stride_lb + h * stride_lh + offs_m, mask=valid_m, other=0.0)
    pad_lo = tl.load(PAD + 2 * b)
    pad_hi = tl.load(PAD + 2 * b + 1)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = tl.load(FULL_N + b * stride_nb + h * stride_nh + i * stride_nq)
    full_idx = FULL_I + b * stride_ib + h * stride_ih + i * stride_iq
    dq = _dq_inner(
        dq, q, do, lse, delta, K, V, stride_ks, stride_vs, KVB, full_idx, n_full, offs_m, valid_m,
        offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi, qk_scale, BLOCK_N,
        False, False, False, UPCAST,
    )
    if HAS_MASKED:
        n_part = tl.load(PART_N + b * stride_nb + h * stride_nh + i * stride_nq)
        part_idx = PART_I + b * stride_pb + h * stride_ph + i * stride_pq
        dq = _dq_inner(
            dq, q, do, lse, delta, K, V, stride_ks, stride_vs, KVB, part_idx, n_part, offs_m, valid_m,
            offs_d, CELL, KEEP, stride_keep_h, stride_keep_q, h, pad_lo, pad_hi, qk_scale, BLOCK_N,
            True, CELL_MASK, PAD_MASK, UPCAST,
        )
    out = b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gs + offs_d[None, :]
    tl.store(DQ + out, (dq * sm_scale).to(DQ.dtype.element_ty), mask=valid_m[:, None])
