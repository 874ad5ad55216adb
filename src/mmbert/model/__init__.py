"""The encoder: config, building blocks, heads, attention backends (no training or I/O code)."""

from mmbert.model.config import PRESETS, ConfigError, EncoderConfig
from mmbert.model.encoder import (HEADS, Encoder, EncoderOutput, MaskedLM, SequenceClassifier, TokenClassifier,
                                  build_model, init_weights)

__all__ = ["EncoderConfig", "ConfigError", "PRESETS", "HEADS", "Encoder", "EncoderOutput", "MaskedLM",
           "SequenceClassifier", "TokenClassifier", "build_model", "init_weights"]
