"""One record per backbone family: what makes Spikformer, Spikingformer and the Spike-driven
Transformer differ, in one place (``../shared/reference/architectures.md`` has the sources).

The blocks, the model and the registry read these fields; nothing else compares family names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .stems import SPS, MSSPS, SpikingTokenizer


@dataclass(frozen=True)
class Family:
    name: str
    stem: type[nn.Module]      # the tokenizer (SPS-like stem; I-SPS is its one-pass mode)
    attention: str             # "ssa": q (k^T v) * 0.125, "sdsa": q * SN(sum_K k * v)
    branches_fire_first: bool  # pre-activation: each branch starts with a LIF (else the stream feeds q/k/v)
    branches_end_in_spikes: bool  # attention proj and MLP fc2 end in a LIF: an integer residual stream
    head_fires: bool           # a LIF before the classifier (per-step head on spikes)
    qkv_bias_below: int        # q/k/v have a bias on images smaller than this (0: never)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # Zhou et al. 2022: spikes on the residual stream, biased q/k/v in the CIFAR code (not ImageNet's)
    Family("spikformer", SPS, "ssa", branches_fire_first=False, branches_end_in_spikes=True,
           head_fires=False, qkv_bias_below=128),
    # Zhou et al. 2023: every branch LIF -> ... -> BN, a real-valued residual stream
    Family("spikingformer", SpikingTokenizer, "ssa", branches_fire_first=True, branches_end_in_spikes=False,
           head_fires=False, qkv_bias_below=0),
    # Yao et al. 2023: spike-driven self-attention, membrane shortcuts, a LIF before the head
    Family("spikedriven", MSSPS, "sdsa", branches_fire_first=True, branches_end_in_spikes=False,
           head_fires=True, qkv_bias_below=0),
)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"family {name!r} is not supported; accepted values: {', '.join(FAMILIES)}") from None
