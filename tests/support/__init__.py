"""Helpers shared by tests (importable as ``support`` because pytest puts tests/ on sys.path)."""
