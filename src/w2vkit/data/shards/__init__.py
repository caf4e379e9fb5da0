"""Sharded corpora: tar shards in the WebDataset layout, their index, and streaming batches.

- `index`: the shard set's index (`index.json` + `items.npz`), read from a folder or a URL.
- `fetch`: whole shards from local paths, `file://`, `http(s)://`, `s3://`, `gs://` (fsspec),
  with retries, a sha256 check, prefetch and an optional local cache.
- `write`: `w2vkit shard` (manifest -> shards + index) and `--verify`.
- `plan`: which batches each rank and DataLoader worker builds in an epoch, in which order.
- `stream`: a worker reading its shards in order and turning members into batches.
- `loader`: `ShardSampler` and `ShardLoader`, the resumable loader the training loop uses.
"""
