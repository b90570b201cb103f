"""The learned length ranker: a text encoder, mean pooling, one linear head; higher = shorter."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hasten.serve.losses import expected_bucket_score
from hasten.serve.request import Request

#: The packaged default ranker: MiniLM with its top 2 layers and a score head fine-tuned
#: (ListMLE) on the SmolLM2 ShareGPT trace; the 2 layers ship as float16 (7 MB).
DEFAULT_RANKER = Path(__file__).parent / "data" / "ranker-minilm-top2.pt"
#: Tag written into every saved config, so a stranger JSON is refused, not misread.
FORMAT = "hasten-ranker/1"

HEADS = ("score", "classify")


@dataclass(frozen=True)
class RankerConfig:
    """What a ranker is: its encoder, how much of a prompt it reads, and its head.

    ``encoder=None`` is the packaged all-MiniLM-L6-v2 (:func:`hasten.serve.models.minilm_path`);
    it is saved as ``null`` so a saved head works wherever the package is installed.
    Otherwise a HF model name or local path. Prompts are cut to their first ``max_tokens``
    tokens (the paper cut to 2,048 for OPT; BERT-style encoders stop at 512 positions).
    all-MiniLM-L6-v2 has 512 positions from pretraining, but its sentence-embedding tuning
    used short texts and sentence-transformers cuts it at 256; 512 reads more of a long
    prompt's text at the price of positions the tuning rarely saw.

    ``head="score"`` is one bias-free linear score per prompt (a bias adds the same to every
    score, which no ranking can see). ``head="classify"`` is the bucket baseline: one logit
    per length bucket (with a bias: class priors matter there), ``bucket_edges`` in tokens.
    """

    encoder: str | None = None
    max_tokens: int = 512
    head: Literal["score", "classify"] = "score"
    bucket_edges: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ValueError(
                f"max_tokens must be >= 2 (room for [CLS] [SEP]), got {self.max_tokens}"
            )
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; pick one of {HEADS}")
        if self.head == "classify":
            edges = self.bucket_edges
            if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(
                    f"head='classify' needs strictly increasing bucket_edges (e.g. (50, 120, "
                    f"300)), got {edges!r}; losses.bucket_edges(lengths, classes) makes them"
                )
            object.__setattr__(self, "bucket_edges", tuple(int(e) for e in edges))
        elif self.bucket_edges is not None:
            raise ValueError(f"bucket_edges {self.bucket_edges} only apply to head='classify'")

    @property
    def outputs(self) -> int:
        """Head outputs per prompt: 1 score, or one logit per bucket."""
        return 1 if self.head == "score" else len(self.bucket_edges) + 1  # type: ignore[arg-type]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_encoder(ref: str | os.PathLike | None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of a HF encoder; ``None`` is the packaged MiniLM (offline)."""
    from transformers import AutoModel, AutoTokenizer

    if ref is None:
        from hasten.serve.models import minilm_path

        # The packaged weights are complete; never reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        ref = minilm_path()
    # Float32 whatever the checkpoint stores: Adam and the head want full precision, and
    # fine-tuning on a GPU gets its speed from autocast instead.
    model = AutoModel.from_pretrained(str(ref), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(ref))
    return model.eval(), tokenizer


class Ranker:
    """Scores prompts so that a higher score means a shorter answer.

    ``score`` mean-pools the encoder's last hidden states over the prompt's tokens and
    applies the head. The paper read OPT's last token: in a causal decoder only the last
    token has seen the whole prompt. A bidirectional sentence encoder sees everything at
    every position, and all-MiniLM-L6-v2 was trained so that the *mean* of its token states
    is the sentence's embedding, so mean pooling is the summary it was built to give.

    Build one with :meth:`new` (a fresh head), :meth:`load`, :meth:`default`, or train one
    with :func:`hasten.serve.rank_train.train_ranker`.
    """

    def __init__(
        self,
        config: RankerConfig,
        encoder: nn.Module,
        tokenizer: Any,
        head: nn.Linear,
        *,
        device: str | torch.device | None = None,
        encoder_changed: bool = False,
        tuned_layers: Sequence[int] | None = None,
        provenance: dict | None = None,
    ) -> None:
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit is not None and config.max_tokens > limit:
            raise ValueError(
                f"max_tokens {config.max_tokens} exceeds the encoder's {limit} positions; "
                f"pass max_tokens <= {limit}"
            )
        hidden = encoder.config.hidden_size
        if head.in_features != hidden or head.out_features != config.outputs:
            raise ValueError(
                f"head is {head.in_features} -> {head.out_features} but the encoder gives "
                f"{hidden} features and head={config.head!r} needs {config.outputs} outputs"
            )
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = head
        #: True once the encoder's weights differ from ``config.encoder`` (fine-tuned):
        #: :meth:`save` then writes the encoder beside the head instead of referencing it.
        self.encoder_changed = encoder_changed
        #: When only some encoder layers were trained (their indices): :meth:`save` writes
        #: just those layers, so a fine-tune ships in megabytes instead of the whole encoder.
        self.tuned_layers = None if tuned_layers is None else tuple(sorted(tuned_layers))
        if self.tuned_layers is not None:
            self.encoder_changed = True
            _check_layer_indices(self.tuned_layers, len(encoder_layers(encoder)))
        #: How the ranker was trained and how well it did (written by save, read by load).
        self.provenance: dict = dict(provenance or {})
        self.device = torch.device(device or default_device())
        self.to(self.device)

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def new(cls, config: RankerConfig | None = None, *, device=None, seed: int = 0) -> Ranker:
        """A ranker with a freshly initialised head (normal, std 0.02, seeded)."""
        config = config or RankerConfig()
        encoder, tokenizer = load_encoder(config.encoder)
        head = make_head(encoder.config.hidden_size, config, seed=seed)
        return cls(config, encoder, tokenizer, head, device=device)

    def to(self, device: str | torch.device) -> Ranker:
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.head.to(self.device)
        return self

    # ---- scoring -----------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, cut to ``max_tokens``, padded, on the device."""
        enc = self.tokenizer(
            list(prompts),
            truncation=True,
            max_length=self.config.max_tokens,
            padding=True,
            return_tensors="pt",
        )
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[n, hidden]`` mean of the last hidden states over real (unpadded) tokens."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def head_scores(self, out: torch.Tensor) -> torch.Tensor:
        """``[n]`` scores from head outputs: the score itself, or minus the expected bucket."""
        return out.squeeze(-1) if self.config.head == "score" else expected_bucket_score(out)

    @torch.no_grad()
    def embed(
        self, prompts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> torch.Tensor:
        """``[n, hidden]`` float32 pooled embeddings on the CPU, in the order given.

        Prompts are batched by length (longest first) so a batch pads to similar lengths,
        then put back in the caller's order.
        """
        _check_prompts(prompts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.encoder.training
        self.encoder.eval()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out = torch.empty(len(prompts), self.encoder.config.hidden_size)
        batches = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="embed", unit="batch")
        try:
            for lo in batches:
                idx = order[lo : lo + batch_size]
                emb = self.pool(**self.tokenize([prompts[i] for i in idx]))
                out[idx] = emb.float().cpu()
        finally:
            self.encoder.train(was_training)
        return out

    @torch.no_grad()
    def score_embeddings(self, emb: torch.Tensor) -> np.ndarray:
        """Scores of precomputed :meth:`embed` rows (higher = shorter)."""
        return self.head_scores(self.head(emb.to(self.device))).float().cpu().numpy()

    def score(
        self, prompts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """``float32[n]`` scores, higher = shorter answer expected; batched, no grad."""
        if not prompts:
            return np.zeros(0, dtype=np.float32)
        emb = self.embed(prompts, batch_size=batch_size, progress=progress)
        return self.score_embeddings(emb).astype(np.float32)

    @torch.no_grad()
    def buckets(self, prompts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Most likely length bucket per prompt (0 = shortest); ``head='classify'`` only.

        What the ``bucket`` policy wants, as the paper's classification baseline ranked.
        """
        if self.config.head != "classify":
            raise ValueError("buckets() needs a head='classify' ranker; use score() instead")
        emb = self.embed(prompts, batch_size=batch_size)
        return self.head(emb.to(self.device)).argmax(-1).cpu().numpy()

    def scorer(self, *, batch_size: int = 32):
        """A :data:`hasten.serve.policies.Scorer` for the ``ltr`` policy: requests -> scores."""

        def score_requests(requests: Sequence[Request]) -> list[float]:
            missing = [r.id for r in requests if not r.prompt]
            if missing:
                raise ValueError(
                    f"the ranker reads prompt text; request(s) {missing[:3]} carry none "
                    f"(use precomputed_scores for traces without prompts)"
                )
            return self.score([r.prompt for r in requests], batch_size=batch_size).tolist()

        return score_requests

    # ---- saving ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the head to ``path`` (``.pt``) and config + provenance beside it (``.json``).

        The encoder is referenced by name when unchanged (the packaged MiniLM as ``null``);
        a fine-tuned encoder is saved with its tokenizer in ``<stem>.encoder/``, or, when
        only :attr:`tuned_layers` were trained, those layers alone in ``<stem>.layers.pt``
        (float16) over the referenced encoder. Returns the JSON path.
        """
        path = Path(path)
        if path.suffix != ".pt":
            raise ValueError(f"save a ranker to a .pt file (config goes beside it), got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        whole_encoder = self.encoder_changed and self.tuned_layers is None
        if self.tuned_layers is not None:
            torch.save(self._layer_state(), path.with_suffix(".layers.pt"))
        if whole_encoder:
            enc_dir = path.with_suffix(".encoder")
            self.encoder.save_pretrained(enc_dir)
            self.tokenizer.save_pretrained(enc_dir)
            config["encoder"] = enc_dir.name  # relative to the JSON's folder
        elif self.config.encoder is not None and Path(self.config.encoder).exists():
            # A local folder: absolute, so the JSON does not depend on the working directory.
            config["encoder"] = str(Path(self.config.encoder).resolve())
        state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        torch.save(state, path)
        meta = {
            "format": FORMAT,
            "config": config,
            "encoder_saved": whole_encoder,
            "tuned_layers": None if self.tuned_layers is None else list(self.tuned_layers),
            "provenance": self.provenance,
        }
        json_path = path.with_suffix(".json")
        json_path.write_text(json.dumps(meta, indent=1) + "\n")
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None) -> Ranker:
        """Read what :meth:`save` wrote (``path`` is the ``.pt``; the ``.json`` sits beside)."""
        path = Path(path)
        json_path = path.with_suffix(".json")
        if not path.is_file() or not json_path.is_file():
            raise FileNotFoundError(
                f"a saved ranker is {path.with_suffix('.pt')} + {json_path}; "
                f"missing {path if not path.is_file() else json_path}"
            )
        meta = json.loads(json_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{json_path} is not a {FORMAT} config (format {meta.get('format')!r})"
            )
        raw = dict(meta["config"])
        if raw.get("bucket_edges") is not None:
            raw["bucket_edges"] = tuple(raw["bucket_edges"])
        if meta.get("encoder_saved"):
            # Saved beside the head: from here on it is referenced like any local folder.
            raw["encoder"] = str((json_path.parent / raw["encoder"]).resolve())
        config = RankerConfig(**raw)
        encoder, tokenizer = load_encoder(config.encoder)
        head = make_head(encoder.config.hidden_size, config)
        head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        tuned = meta.get("tuned_layers")
        if tuned is not None:
            _load_layers(encoder, tuned, path.with_suffix(".layers.pt"))
        return cls(
            config,
            encoder,
            tokenizer,
            head,
            device=device,
            tuned_layers=tuned,
            provenance=meta.get("provenance"),
        )

    def _layer_state(self) -> dict[str, torch.Tensor]:
        """The tuned layers' weights as float16, keyed ``<layer index>.<parameter>``."""
        layers = encoder_layers(self.encoder)
        return {
            f"{i}.{k}": v.detach().to("cpu", torch.float16)
            for i in self.tuned_layers or ()
            for k, v in layers[i].state_dict().items()
        }

    @classmethod
    def default(cls, *, device=None) -> Ranker:
        """The packaged ranker (MiniLM, top 2 layers and head fine-tuned on the SmolLM2 trace)."""
        if not DEFAULT_RANKER.is_file():
            raise FileNotFoundError(
                f"no packaged ranker at {DEFAULT_RANKER}; train one with "
                f"`hasten rank train --prompts sharegpt --lengths traces/sharegpt-smollm2.jsonl "
                f"--mode finetune --layers 2 --epochs 3 --lr 5e-5 --max-tokens 256 "
                f"--out {DEFAULT_RANKER}` (or pass --ranker PATH / Ranker.load(PATH))"
            )
        return cls.load(DEFAULT_RANKER, device=device)

    def __repr__(self) -> str:
        enc = self.config.encoder or "packaged all-MiniLM-L6-v2"
        tuned = ", fine-tuned" if self.encoder_changed else ""
        if self.tuned_layers is not None:
            tuned = f", layers {list(self.tuned_layers)} fine-tuned"
        return (
            f"Ranker(encoder={enc!r}{tuned}, head={self.config.head!r}, "
            f"max_tokens={self.config.max_tokens}, device={self.device})"
        )


def make_head(hidden: int, config: RankerConfig, *, seed: int = 0) -> nn.Linear:
    """The linear head ``config`` asks for, initialised like HF heads (normal, std 0.02)."""
    head = nn.Linear(hidden, config.outputs, bias=config.head == "classify")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.02)
        if head.bias is not None:
            head.bias.zero_()
    return head


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a HF encoder (BERT, RoBERTa, DistilBERT, ...)."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        module = encoder
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(
        f"cannot find the layer stack of a {type(encoder).__name__} (looked for "
        f".encoder.layer, .transformer.layer, .layers); fine-tune the whole encoder instead "
        f"(layers=None)"
    )


def _check_layer_indices(indices: Sequence[int], count: int) -> None:
    bad = [i for i in indices if not 0 <= i < count]
    if bad or len(set(indices)) != len(indices):
        raise ValueError(f"tuned layer indices {list(indices)} must be distinct, in 0..{count - 1}")


def _load_layers(encoder: nn.Module, indices: Sequence[int], path: Path) -> None:
    """Overwrite ``indices`` of ``encoder``'s layer stack with the float16 weights at ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"the ranker's tuned layers {list(indices)} should be in {path}")
    layers = encoder_layers(encoder)
    _check_layer_indices(indices, len(layers))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for i in indices:
        prefix = f"{i}."
        own = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        # strict: a layer file of another architecture fails loudly instead of half-loading.
        layers[i].load_state_dict(own, strict=True)


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise TypeError("pass a list of prompts, not one string (score([prompt]))")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(
            f"prompts must be strings; item {bad[0]} is {type(prompts[bad[0]]).__name__}"
        )
