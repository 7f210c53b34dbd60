"""Build glue: the only compiled piece is shm/_atomics.c (metadata lives in pyproject.toml)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("shm._atomics", ["shm/_atomics.c"], extra_compile_args=["-O2"])])
