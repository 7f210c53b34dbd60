"""Suite-wide settings: hypothesis without per-example deadlines (the machine is
noisy and shared), and a default pytest timeout from pyproject.toml."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "tracebus", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tracebus")
