"""Two facts of the transformer's shape that training, the exporter and the model folder's checks share.

Stage k of a model with D depth heads (`pred_head_positions`, one layer index per head) runs the
layers after head k-1's up to head k's, then head k: the cut of `stage_cut`. Its KV cache holds one
slot per position a sequence feeds: `cache_length`.
"""
from collections.abc import Sequence


def stage_cut(pred_head_positions: Sequence[int]) -> list[range]:
    """The layers of each stage, in head order. The last one stops after the last head's layer: a layer
    past it could never change a head's logits, so it is neither built nor exported."""
    heads = list(pred_head_positions)
    return [range(heads[k - 1] + 1 if k else 0, heads[k] + 1) for k in range(len(heads))]


def cache_length(cls_token_num: int, seq_len: int) -> int:
    """Cache slots a sequence fills: its condition tokens, then every latent cell but the last (whose
    codes are sampled, never fed back)."""
    return cls_token_num + seq_len - 1
