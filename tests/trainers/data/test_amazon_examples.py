"""trainers/data/amazon_examples.py: writing the examples in chunks and several shards per split."""
from __future__ import annotations

from tests.test_preprocess import _cfg, raw_flat  # noqa: F401 (raw_flat: a fixture)
from tests.trainers.data.test_amazon import _load, processed  # noqa: F401 (processed: a fixture)
from trainers.data.amazon import run_preprocess


def test_chunks_and_shards_do_not_change_the_data(processed, raw_flat, tmp_path, monkeypatch):  # noqa: F811 (fixture)
    """Large outputs are written in chunks and several shards per split; the loaded data is the same."""
    import trainers.data.amazon_examples as ex

    monkeypatch.setattr(ex, "CHUNK_EXAMPLES", 50)
    monkeypatch.setattr(ex, "MAX_SHARD_BYTES", 20_000)
    out, _ = run_preprocess(_cfg(raw_flat, tmp_path))
    assert len(list((out / "train").glob("data-*-of-*.arrow"))) > 3
    dd, ref = _load(out), processed[0]
    for s in ("train", "valid", "test", "item_info"):
        assert dd[s].data.table.equals(ref[s].data.table), s
