"""Per-model integrations: processors and adapters for diffusers' video transformers."""

from hasten.video.models.base import ModelAdapter

__all__ = ["ADAPTERS", "ModelAdapter", "adapter_for"]


def _adapters() -> dict[str, ModelAdapter]:
    from hasten.video.models.cogvideox import CogVideoXAdapter
    from hasten.video.models.hunyuan import HunyuanVideoAdapter
    from hasten.video.models.wan import WanAdapter

    return {a.class_name: a for a in (HunyuanVideoAdapter(), WanAdapter(), CogVideoXAdapter())}


ADAPTERS: dict[str, ModelAdapter] = {}


def adapter_for(transformer) -> ModelAdapter:
    """The adapter of ``transformer``'s class; a ``TypeError`` names the supported ones."""
    if not ADAPTERS:
        ADAPTERS.update(_adapters())
    for cls in type(transformer).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__]
    raise TypeError(
        f"{type(transformer).__name__} is not a supported video transformer; supported: "
        f"{sorted(ADAPTERS)} (diffusers 0.42)"
    )
