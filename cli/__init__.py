"""Thin command-line front-ends: parse flags, build a config, call a pipeline."""
