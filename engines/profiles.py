"""Optimization-profile shapes: the (min, opt, max) of every graph input, from the manifest.

    shapes = profile_shapes(manifest, max_rows=32)
    shapes["stage0"]["past_key_values.0.key"]   # ((1, kv, L, hd), (32, kv, L, hd), (32, kv, L, hd))

Stage graphs v2 fix every dim but the rows (one new position per row, a fixed cache of L
slots), so only rows vary: 1 .. max_rows (guidance takes 2 rows per image).
"""


def dim_ranges(manifest, max_rows: int) -> dict:
    """(min, opt, max) of each symbolic dim of the manifest's tensor specs."""
    return {"batch_size": (1, max_rows, max_rows)}


def profile_shapes(manifest, max_rows: int) -> dict:
    """graph name -> input name -> (min shape, opt shape, max shape), for every stage and the decoder."""
    ranges = dim_ranges(manifest, max_rows)
    shapes = {}
    for graph in [*manifest.stage_names, "decoder"]:
        shapes[graph] = {}
        for spec in manifest.inputs(graph):
            per_dim = [ranges[d] if isinstance(d, str) else (d, d, d) for d in spec.shape]
            shapes[graph][spec.name] = tuple(tuple(r[i] for r in per_dim) for i in range(3))
    return shapes
