"""How a serving engine's hasten scheduler is configured: HASTEN_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hasten.serve.policies import Policy, StarvationGuard, make_policy

ENV_POLICY = "HASTEN_POLICY"
ENV_RANKER = "HASTEN_RANKER"
ENV_STARVATION = "HASTEN_STARVATION"
ENV_RANKER_DEVICE = "HASTEN_RANKER_DEVICE"

#: Policies an engine can run on live requests. The oracles read the request's
#: ``max_tokens`` as its length, which is exact for replays (``ignore_eos``) only.
ENGINE_POLICIES = ("ltr", "ltr-starvation", "fcfs", "sjf", "srtf", "mlfq")
#: ``HASTEN_RANKER`` values besides a saved ranker's ``.pt`` path.
RANKERS = ("default", "prompt-length")
#: ``starvation`` value meaning "what the policy name implies": the paper's 200/10 for
#: ``ltr-starvation``, off for the others (as :func:`~hasten.serve.policies.make_policy`).
POLICY_DEFAULT = "policy-default"
PAPER_GUARD = (200, 10)


@dataclass(frozen=True)
class EngineSchedulerConfig:
    """What the hasten scheduler inside an engine does.

    ``policy`` is one of :data:`ENGINE_POLICIES`. ``ranker`` (for ``ltr``) is
    ``"default"`` (the packaged MiniLM ranker), a saved ranker's ``.pt`` path, or
    ``"prompt-length"`` (no model: shorter prompts first, the fallback on its own).
    ``starvation`` is the guard as ``(threshold, quantum)`` in iterations, ``None`` for
    none, or :data:`POLICY_DEFAULT`: 200/10 (the paper's) for ``ltr-starvation``, none for
    the rest. ``ranker_device`` is where the ranker runs (default: CUDA if present).
    """

    policy: str = "ltr-starvation"
    ranker: str = "default"
    starvation: tuple[int, int] | str | None = POLICY_DEFAULT
    ranker_device: str | None = None

    def __post_init__(self) -> None:
        if self.policy not in ENGINE_POLICIES:
            raise ValueError(
                f"policy {self.policy!r} ({ENV_POLICY}, --policy) is not one the engine can run; "
                f"choose one of {list(ENGINE_POLICIES)}"
            )
        if self.ranker not in RANKERS:
            path = Path(self.ranker)
            if path.suffix != ".pt" or not path.is_file():
                raise ValueError(
                    f"ranker {self.ranker!r} ({ENV_RANKER}, --ranker) is neither one of "
                    f"{list(RANKERS)} nor an existing saved ranker (.pt, .json beside it)"
                )
        if self.starvation == POLICY_DEFAULT:
            guard = PAPER_GUARD if self.policy == "ltr-starvation" else None
            object.__setattr__(self, "starvation", guard)
        elif isinstance(self.starvation, str):
            object.__setattr__(self, "starvation", parse_starvation(self.starvation))
        if self.starvation is not None:
            # Validates the pair with StarvationGuard's own messages.
            StarvationGuard(*self.starvation)

    @property
    def uses_ranker(self) -> bool:
        """Whether the policy reads the learned ranker (and so the prompt text)."""
        return self.policy in ("ltr", "ltr-starvation") and self.ranker != "prompt-length"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineSchedulerConfig:
        """Read the ``HASTEN_*`` variables; unset ones keep the defaults."""
        env = os.environ if environ is None else environ
        kwargs: dict = {}
        if env.get(ENV_POLICY):
            kwargs["policy"] = env[ENV_POLICY]
        if env.get(ENV_RANKER):
            kwargs["ranker"] = env[ENV_RANKER]
        if env.get(ENV_STARVATION):
            kwargs["starvation"] = parse_starvation(env[ENV_STARVATION])
        if env.get(ENV_RANKER_DEVICE):
            kwargs["ranker_device"] = env[ENV_RANKER_DEVICE]
        return cls(**kwargs)

    def to_env(self) -> dict[str, str]:
        """The variables that make :meth:`from_env` return this config."""
        guard = "off" if self.starvation is None else "{}/{}".format(*self.starvation)
        env = {ENV_POLICY: self.policy, ENV_RANKER: self.ranker, ENV_STARVATION: guard}
        if self.ranker_device:
            env[ENV_RANKER_DEVICE] = self.ranker_device
        return env

    def build_policy(self, *, log: Callable[[str], None] = print) -> Policy:
        """The policy, with the ranker loaded and wrapped so that scoring cannot fail."""
        from hasten.serve.fallback import FallbackScorer, prompt_length_scores

        guard = None if self.starvation is None else StarvationGuard(*self.starvation)
        base = "ltr" if self.policy == "ltr-starvation" else self.policy
        if base != "ltr":
            return make_policy(base, starvation=guard)
        if self.ranker == "prompt-length":
            return make_policy("ltr", scorer=prompt_length_scores, starvation=guard)
        from hasten.serve.ranker import Ranker

        if self.ranker == "default":
            ranker = Ranker.default(device=self.ranker_device)
        else:
            ranker = Ranker.load(self.ranker, device=self.ranker_device)
        if ranker.config.head != "score":
            raise ValueError(
                f"{ENV_RANKER}={self.ranker!r} has head={ranker.config.head!r}; policy 'ltr' "
                f"needs a score head (train with `hasten rank train --loss listmle`)"
            )
        return make_policy("ltr", scorer=FallbackScorer(ranker.scorer(), log=log), starvation=guard)

    def describe(self) -> str:
        guard = "off" if self.starvation is None else "{}/{}".format(*self.starvation)
        ranker = f", ranker {self.ranker}" if self.policy.startswith("ltr") else ""
        return f"policy {self.policy}{ranker}, starvation guard {guard}"


def parse_starvation(text: str) -> tuple[int, int] | None:
    """``"200/10"`` (or ``"200,10"``) -> ``(200, 10)``; ``"off"`` -> ``None``.

    ``"default"`` gives :data:`POLICY_DEFAULT` (what the policy name implies).
    """
    if text.strip().lower() in ("off", "none", "0"):
        return None
    if text.strip().lower() == "default":
        return POLICY_DEFAULT  # type: ignore[return-value]
    parts = text.replace(",", "/").split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        pair = (int(parts[0]), int(parts[1]))
    except ValueError:
        raise ValueError(
            f"starvation guard {text!r} ({ENV_STARVATION}, --starvation) must be "
            f"THRESHOLD/QUANTUM in iterations (the paper's '200/10'), 'off' or 'default'"
        ) from None
    StarvationGuard(*pair)
    return pair
