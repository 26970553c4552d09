"""bigvar: JAX/Flax VAR and BiGR (see README.md)."""
from bigvar import cpu_tuning

cpu_tuning.prefer_xla_convolutions()  # before JAX starts a backend: it reads XLA_FLAGS then
