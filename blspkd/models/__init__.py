"""BLSP-KD models: speech encoder, CIF adapter (cif.py), Partial LoRA (plora.py) and the composite model."""
from blspkd.models.configuration_blspkd import BlspKdConfig
from blspkd.models.modeling_blspkd import BlspKdModel

__all__ = ["BlspKdConfig", "BlspKdModel"]
