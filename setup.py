"""Build glue: the compiled pieces are shm/_atomics.c and shm/_validate.c (metadata
lives in pyproject.toml)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("shm._atomics", ["shm/_atomics.c"], extra_compile_args=["-O2"]),
        Extension("shm._validate", ["shm/_validate.c"], extra_compile_args=["-O2"]),
    ]
)
