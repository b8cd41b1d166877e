"""Surgery and initialisation: turning a loaded teacher into a student with MLA or GateSWA attention."""
from mindedit.edit.config import GateSWAConfig, MLAConfig, TargetError, target_from_dict
from mindedit.edit.surgery import edit_model

__all__ = ["GateSWAConfig", "MLAConfig", "TargetError", "edit_model", "target_from_dict"]
