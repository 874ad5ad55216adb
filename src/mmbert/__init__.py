"""mmbert: a ModernBERT-architecture multilingual encoder and the mmBERT recipe that trains it.

    import mmbert
    model = mmbert.from_pretrained("path/to/hf-or-mmbert-dir")      # head="mlm" by default
    cfg = mmbert.EncoderConfig.from_preset("mmbert-small")
"""

from mmbert.model.config import PRESETS, ConfigError, EncoderConfig

__version__ = "0.1.0"


def from_pretrained(path, head: str = "mlm", **kwargs):
    """Load our checkpoint or a transformers ModernBERT directory (or hub id, when online)."""
    from mmbert.export.hf import from_pretrained as _from_pretrained

    return _from_pretrained(path, head=head, **kwargs)


__all__ = ["EncoderConfig", "ConfigError", "PRESETS", "from_pretrained", "__version__"]
