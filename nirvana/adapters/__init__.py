"""Architecture adapters, found by `config.model_type`."""

from __future__ import annotations

from .base import ATTENTION, MLP, MODULE_KINDS, LayerUnits, LlamaLayout, ModelAdapter, ParamSlice, UnitGroup
from .decoder import LlamaFamilyAdapter
from .t5 import T5Adapter

ADAPTERS: list[type[ModelAdapter]] = [LlamaFamilyAdapter, T5Adapter]


def supported_model_types() -> list[str]:
    return sorted(t for cls in ADAPTERS for t in cls.model_types)


def adapter_class_for(model_type: str) -> type[ModelAdapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise ValueError(
        f"unsupported model_type {model_type!r}: NIRVANA adapters exist for {', '.join(supported_model_types())}"
    )


def get_adapter(model) -> ModelAdapter:
    return adapter_class_for(model.config.model_type)(model)


__all__ = [
    "ATTENTION",
    "MLP",
    "MODULE_KINDS",
    "LayerUnits",
    "LlamaLayout",
    "ModelAdapter",
    "ParamSlice",
    "UnitGroup",
    "get_adapter",
    "adapter_class_for",
    "supported_model_types",
]
