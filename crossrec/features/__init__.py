"""Feast integration: repo config from Settings, offline feature tables, apply/materialise, reads.

Importing this package does not import Feast (~6 s); the functions that need it import it.
"""
