"""mmbert: a ModernBERT-architecture multilingual encoder and the mmBERT recipe that trains it.

    import mmbert
    model = mmbert.from_pretrained("path/to/hf-or-mmbert-dir")      # head="mlm" by default
    mmbert.save_pretrained(model, "out/export")                      # transformers loads it too
    cfg = mmbert.EncoderConfig.from_preset("mmbert-small")
"""

from mmbert.model.config import PRESETS, ConfigError, EncoderConfig
from mmbert.version import __version__


def from_pretrained(path, head: str = "mlm", **kwargs):
    """Load our checkpoint or a transformers ModernBERT directory (or hub id, when online)."""
    from mmbert.export.hf import from_pretrained as _from_pretrained  # lazy: `import mmbert` stays light

    return _from_pretrained(path, head=head, **kwargs)


def save_pretrained(model, path, card=None):
    """Write a directory that transformers (AutoModelForMaskedLM etc.), sentence-transformers and mmbert
    all load, with a README.md model card (`card`: an export.card.CardInfo); returns its path."""
    from mmbert.export.hf import save_pretrained as _save_pretrained  # lazy: `import mmbert` stays light

    return _save_pretrained(model, path, card=card)


__all__ = ["EncoderConfig", "ConfigError", "PRESETS", "from_pretrained", "save_pretrained", "__version__"]
