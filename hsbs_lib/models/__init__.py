"""Models: the registry, backbones and one module per method. Importing registers every model."""
from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.registry import create_model, list_models, register_model

# Each import registers its models with the registry.
from hsbs_lib.models import baseline  # noqa: E402,F401

for _optional in ("hsbs", "clcl", "phanet", "mfer"):
    try:
        __import__(f"hsbs_lib.models.{_optional}")
    except ModuleNotFoundError as _error:  # a method module not present in this checkout
        if _error.name != f"hsbs_lib.models.{_optional}":
            raise

__all__ = ["FERModel", "ModelOutput", "create_model", "list_models", "register_model"]
