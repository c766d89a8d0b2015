"""trainer: a small, faithful super-resolution training library (SRGAN-DP / ESRGAN-DP)."""
