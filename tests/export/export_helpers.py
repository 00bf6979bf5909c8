"""Drive an exported folder with ONNX Runtime the way the runtime does (shared by the export tests)."""
import numpy as np
import onnxruntime as ort

from dnd_sdk.manifest import load_manifest


def sessions(model_dir):
    m = load_manifest(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return m, {name: ort.InferenceSession(str(m.graph_path(name)), opts, providers=["CPUExecutionProvider"])
               for name in m.stage_names + ["decoder"]}


def teacher_forced_logits(model_dir, codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """codes [B, L, D] -> logits [B, D, L, V], one position per step through the fixed-cache stage graphs."""
    m, sess = sessions(model_dir)
    emb = np.load(m.file_path("embeddings"))
    tok, cls = emb["tok_embeddings"].astype(np.float32), emb["cls_embedding"].astype(np.float32)
    B, L, D = codes.shape
    # fixed caches in the graph's own dtype (float16 for an fp16 export)
    caches = {s.graph: {i.name: np.zeros([B] + i.shape[1:], np.dtype(i.dtype)) for i in m.inputs(s.graph)[3:]}
              for s in m.stages}
    out = []
    for p in range(L):
        hidden = cls[labels][:, None] if p == 0 else tok[codes[:, p - 1]].sum(1)[:, None]
        positions = np.full(B, p, np.int64)
        mask = np.arange(m.cache_length)[None, :] < positions[:, None]
        for k, stage in enumerate(m.stages):
            logits, hidden, *new = sess[stage.graph].run(
                None, {"hidden": hidden, "positions": positions, "kv_mask": mask, **caches[stage.graph]})
            for cache, fresh in zip(caches[stage.graph].values(), new):
                cache[:, :, p] = fresh[:, :, 0]
            out.append(logits)
            if k < D - 1:
                hidden = hidden + tok[codes[:, p, k]][:, None]
    return np.stack(out, 1).reshape(B, L, D, -1).transpose(0, 2, 1, 3)


def run_calls(backend, calls):
    """calls: per call, one (hidden [d], position) per row, through both stages -> logits [calls, rows, 2, V]."""
    backend.reset(len(calls[0]))
    out = []
    for call in calls:
        hidden = np.stack([h for h, _ in call])[:, None, :]
        positions = np.array([p for _, p in call])
        per_stage = []
        for k in range(2):
            logits, hidden = backend.stage_step(k, hidden, positions)
            per_stage.append(logits.copy())
        out.append(np.stack(per_stage, 1))
    return np.stack(out)
