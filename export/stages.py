"""Export wrappers: one nn.Module per graph, with the graph's I/O names and dynamic axes.

A stage wrapper takes `hidden` float32 and a flat list of past keys/values, and returns
`logits` (last position), `hidden_out` float32 and the present keys/values, in the order
of `StageIO.outputs`. The decoder wrapper maps codes to uint8 RGB pixels.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"


@dataclass
class StageIO:
    layers: list  # global layer indices of the stage

    @property
    def inputs(self) -> list:
        return ["hidden"] + [n % i for i in self.layers for n in (PAST_KEY, PAST_VALUE)]

    @property
    def outputs(self) -> list:
        return ["logits", "hidden_out"] + [n % i for i in self.layers for n in (PRESENT_KEY, PRESENT_VALUE)]

    @property
    def dynamic_axes(self) -> dict:
        # names follow optimum's add_past_key_values so tools recognise the cache tensors
        axes = {"hidden": {0: BATCH, 1: SEQ}, "logits": {0: BATCH}, "hidden_out": {0: BATCH, 1: SEQ}}
        for i in self.layers:
            axes.update({PAST_KEY % i: {0: BATCH, 2: PAST}, PAST_VALUE % i: {0: BATCH, 2: PAST},
                         PRESENT_KEY % i: {0: BATCH, 2: TOTAL}, PRESENT_VALUE % i: {0: BATCH, 2: TOTAL}})
        return axes


class StageWrapper(nn.Module):
    """Transformer.stage_forward(k, ...) with float32 hidden I/O whatever the weight dtype."""

    def __init__(self, model, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.io = StageIO(list(model.stage_layers(k)))
        self.dtype = next(model.parameters()).dtype
        # the exporter restores the wrapper's mode afterwards, recursively: a wrapper left in
        # training mode would switch the model's class dropout on for whoever uses it next
        self.eval()

    def forward(self, hidden, *past_flat):
        past = list(zip(past_flat[0::2], past_flat[1::2]))
        logits, h, present = self.model.stage_forward(self.k, hidden.to(self.dtype), past)
        # only the last position is sampled; slicing here keeps the [B, S, V] tensor out of the graph outputs.
        # Not logits[:, -1]: that exports as Gather(-1) on the dynamic sequence axis, which TensorRT leaves
        # undefined (export/trt_lint.py). Slice resolves -1 against the runtime length, and index 0 of the
        # one position left is always in range (squeeze(1) would export an If node instead)
        flat = [t for kv in present for t in kv]
        return (logits[:, -1:][:, 0].float(), h.float(), *flat)

    def example_inputs(self, batch: int = 2, seq: int = 2, past: int = 3) -> tuple:
        # non-zero past and seq > 1 so the tracer cannot specialise either length to a constant
        a = self.model.args
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(batch, seq, a.dim, generator=g)
        cache = [torch.randn(batch, a.n_kv_head, past, a.head_dim, generator=g).to(self.dtype)
                 for _ in range(2 * len(self.io.layers))]
        return (hidden, *cache)


class DecoderWrapper(nn.Module):
    """codes [B, h, w, D] int64 -> image [B, H, W, 3] uint8 (or the float pixels, for tests)."""

    def __init__(self, tokenizer, as_uint8: bool = True):
        super().__init__()
        self.tokenizer, self.as_uint8 = tokenizer, as_uint8
        self.eval()  # see StageWrapper

    def forward(self, codes):
        x = self.tokenizer.decode(codes).permute(0, 2, 3, 1)  # [B, H, W, 3] in about [-1, 1]
        x = torch.clamp(x.float() * 0.5 + 0.5, 0.0, 1.0)
        if not self.as_uint8:
            return x
        return torch.floor(x * 255.0).to(torch.uint8)

    @staticmethod
    def dynamic_axes() -> dict:
        return {"codes": {0: BATCH}, "image": {0: BATCH}}
