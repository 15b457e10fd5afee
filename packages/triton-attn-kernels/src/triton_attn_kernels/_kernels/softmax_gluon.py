"""The online-softmax step of the Gluon kernels (``prefill_gluon.py``, ``mla_gluon.py``),
written once: the same math as ``softmax.online_softmax_step`` for Gluon's explicit layouts."""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def online_step(s, m_i, l_i, qk_scale):
    """One step on masked raw scores s [rows, keys] (``-inf`` where a key is not seen), in
    base 2 (``qk_scale`` = softmax scale x log2(e)): the new row maxima (raw units), the new
    row sums, the probabilities p and the factor alpha that rescales what was accumulated."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    # A row with nothing visible yet keeps m = -inf: subtract 0 instead (no NaN).
    m_use = gl.where(m_new == float("-inf"), gl.zeros_like(m_new), m_new)
    alpha = gl.exp2((m_i - m_use) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_use * qk_scale, 1))
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return m_new, l_i, p, alpha
