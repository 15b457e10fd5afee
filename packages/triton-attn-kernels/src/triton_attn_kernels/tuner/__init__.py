"""The offline tuner: ``python -m triton_attn_kernels.tuner`` (``nox -s tune``). Run on a GPU,
it writes the tables that :mod:`triton_attn_kernels.tuning` reads; see docs/tuning.md."""
