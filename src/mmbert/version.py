"""The package version, defined once: pyproject.toml reads it (dynamic version), `mmbert --version`,
the server's /info and merged checkpoints' provenance import it from here."""

__version__ = "0.1.0"
