"""``@triton.jit`` code only: no torch allocation, no validation, no host logic."""
