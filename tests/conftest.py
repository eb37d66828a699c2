"""Shared pytest setup: the tests folder is importable, so tests can use ckpt_builders."""
