"""Drive an exported folder with ONNX Runtime the way the runtime does (shared by the export tests)."""
import numpy as np
import onnxruntime as ort

from dnd_sdk.model_folder.manifest import load_manifest


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


def rows_that_depend_on_their_batch(model_dir) -> list:
    """[(row, stage)] whose outputs differ between a call of five rows of any range and the row alone, through
    the runtime's ONNX Runtime backend (the runtime promises an image that never depends on its batch)."""
    from dnd_sdk.backends.onnxrt import OnnxrtBackend

    m = load_manifest(model_dir)
    rng, rows = np.random.default_rng(0), 5
    hidden = rng.standard_normal((rows, 1, m.model_config["dim"])).astype(np.float32)
    hidden *= np.array([1, 30, 0.01, 0, 5], np.float32)[:, None, None]  # neighbours of any range
    positions = np.zeros(rows, np.int64)
    backend = OnnxrtBackend(m.model_dir, m, threads=1)
    backend.reset(rows)
    together = [backend.stage_step(k, hidden, positions) for k in range(m.depth)]
    differ = []
    for r in range(rows):
        backend.reset(rows)
        alone = [backend.stage_step(k, hidden[r:r + 1], positions[r:r + 1]) for k in range(m.depth)]
        differ += [(r, k) for k, (a, t) in enumerate(zip(alone, together))
                   if not all(np.array_equal(x[0], y[r]) for x, y in zip(a, t))]
    return differ


def nbits_extremes_exact(k: int = 64) -> bool:
    """True where ONNX Runtime's 4-bit MatMulNBits (blocks of 32, accuracy level 4: int8 activations) gives
    the exact sum when every weight is -8 or 7 and every activation +-127, at 1, 2 and 16 rows: products of
    the largest magnitudes, added in whatever pairs the kernel adds, do not saturate."""
    from onnx import TensorProto, helper, numpy_helper  # here: the runtime's tests import this module without onnx
    node = helper.make_node("MatMulNBits", ["a", "b", "scales"], ["y"], domain="com.microsoft", K=k, N=2, bits=4,
                            block_size=32, accuracy_level=4)
    # column 0 holds stored nibbles 0 (weight -8), column 1 nibbles 15 (weight 7); zero point 8
    packed = np.stack([np.full((k // 32, 16), 0x00, np.uint8), np.full((k // 32, 16), 0xFF, np.uint8)])
    graph = helper.make_graph(
        [node], "nbits", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 2])],
        [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(np.ones((2, k // 32), np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (1, 2, 16):
        for sign in (1, -1):
            y = session.run(None, {"a": np.full((rows, k), sign * 127, np.float32)})[0]
            if not np.array_equal(y, np.tile(np.array([-8, 7], np.float32) * sign * 127 * k, (rows, 1))):
                return False
    return True
