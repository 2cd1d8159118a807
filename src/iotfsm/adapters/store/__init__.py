"""Stores: where the platform keeps sessions and records (SQLite, PostgreSQL), and how a --store
value names one.
"""
