"""Tokenizing one split into an Arrow file, streamed, with the cores as threads.

Why not `Dataset.map`: at a million rows it made `prepare` slow and its memory grow with the data.
A fast (Rust) tokenizer encodes a batch with the GIL released, so threads of this one process
tokenize in parallel, with no worker processes and nothing pickled. Rows are read from the raw
split's Arrow files with plain reads and written out batch by batch: pages of a memory-mapped
file count in the process's resident memory, and mapping the raw and the tokenized tables was
what grew. Memory is bounded by the batches in flight, not by the split.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli.config import DataConfig
from ftcli.errors import FtcliError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import numpy as np
    import pyarrow as pa

BATCH_ROWS = 500
"""Rows a thread tokenizes at a time. The Rust tokenizer's encodings of a batch are allocated in
the thread's malloc arena, which keeps its high-water mark: at 1,000,000 rows and 2 threads,
2,000-row batches left ~50 MB more resident than 500-row ones, at the same speed."""

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Encoded:
    """What one split's tokenization wrote, for the manifest."""

    rows: int = 0
    tokens: int = 0
    max_tokens: int = 0
    truncated: int = 0


class Encoder:
    """Tokenizes batches of texts as `tokenizer(*texts, truncation=..., max_length=...)` does,
    without the padding, and says which rows were cut. A fast tokenizer's Rust side is used
    directly (a copy of it, so the caller's tokenizer keeps its settings); a slow one is called
    as it is."""

    def __init__(self, tokenizer, data: DataConfig, max_length: int):
        self.tokenizer, self.data, self.max_length = tokenizer, data, max_length
        self.keep = [c for c in MODEL_COLUMNS if c in tokenizer.model_input_names]
        self.backend = self.ascii = None
        if getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is not None:
            from tokenizers import Tokenizer

            from ftcli.data.bert_ascii import AsciiBert

            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.no_padding()
            backend.enable_truncation(max_length, stride=0, strategy=data.truncation,
                                      direction=getattr(tokenizer, "truncation_side", "right"))
            self.backend = backend
            # encode_batch_fast skips character offsets, which ftcli does not keep
            self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
            self.ascii = AsciiBert.of(backend)

    @property
    def threads_help(self) -> bool:
        """Whether threads run in parallel: only the Rust tokenizer releases the GIL."""
        return self.backend is not None

    def encode(self, texts: list[pa.Array]) -> tuple[list[list[int]], list[list[int]] | None, list[bool]]:
        """Token ids, token type ids (None when the model takes none) and whether each row was cut,
        for the rows of one or two Arrow string arrays (the text columns)."""
        types_wanted = "token_type_ids" in self.keep
        if self.backend is not None:
            encodings = self._encodings(texts)
            ids = [e.ids for e in encodings]
            types = [e.type_ids for e in encodings] if types_wanted else None
            # the Rust tokenizer keeps what it cut off: a row that fills max_length exactly is not cut
            return ids, types, [bool(e.overflowing) for e in encodings]
        enc = self.tokenizer(*[t.to_pylist() for t in texts], truncation=self.data.truncation,
                             max_length=self.max_length)
        ids = enc["input_ids"]
        types = enc["token_type_ids"] if types_wanted else None
        # A slow tokenizer does not say what it cut: a row that fills max_length counts as cut.
        return ids, types, [len(x) >= self.max_length for x in ids]

    def _encodings(self, texts: list[pa.Array]) -> list:
        """The Rust tokenizer's encodings of the rows, the ASCII ones through the shortcut."""
        if self.ascii is None:
            return self._encode_batch(_inputs(texts))
        import numpy as np
        import pyarrow as pa

        takes, normalized = self.ascii.split(texts)
        shortcut = self.ascii.encode_batch(_inputs(normalized))
        if takes.all():
            return shortcut
        rest = np.flatnonzero(~takes)
        encodings = [None] * len(takes)
        for i, e in zip(np.flatnonzero(takes).tolist(), shortcut):
            encodings[i] = e
        for i, e in zip(rest.tolist(), self._encode_batch(_inputs([t.take(pa.array(rest)) for t in texts]))):
            encodings[i] = e
        return encodings


def _inputs(texts: list[pa.Array]) -> list:
    """The tokenizers library's batch input: the texts, or pairs of them."""
    lists = [t.to_pylist() for t in texts]
    return list(zip(*lists)) if len(lists) == 2 else lists[0]


def encode_split(ds: datasets.Dataset, encoder: Encoder, out: Path, schema: pa.Schema, labels: Any,
                 *, positions: np.ndarray | None = None, threads: int = 1, source: str,
                 advance: Callable[[int], None] | None = None) -> Encoded:
    """Tokenize the rows of `ds` (only those at `positions`, sorted, when given) into the Arrow
    stream file `out` with `schema`, in `threads` threads, in row order. `labels`: every row's
    label (an Arrow array, or a rows x labels numpy array), indexed like `ds`. `source` names the
    file in errors; an error's row is the row of `ds` (its file's row, counted from 1)."""
    import numpy as np
    import pyarrow as pa

    text_columns = list(encoder.data.text_columns)
    multi = isinstance(labels, np.ndarray) and labels.ndim == 2
    if not multi and isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    label_type = schema.field("labels").type

    def work(piece: tuple[pa.RecordBatch, np.ndarray]) -> tuple[pa.RecordBatch, Encoded]:
        batch, rows = piece
        texts = [batch.column(c) for c in text_columns]
        try:
            ids, types, cut = encoder.encode(texts)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise _row_error(encoder, texts, rows, source, exc) from None
        lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        offsets_array = pa.array(offsets)

        def rows_of(values: np.ndarray) -> pa.ListArray:  # one list per row, cut at the offsets
            return pa.ListArray.from_arrays(offsets_array, pa.array(values))

        def flat(lists, dtype) -> np.ndarray:
            return np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=total)

        # no padding is stored, so every stored token is attended to
        columns = {"input_ids": rows_of(flat(ids, np.int32)), "attention_mask": rows_of(np.ones(total, np.int8))}
        if types is not None:
            columns["token_type_ids"] = rows_of(flat(types, np.int8))
        columns["length"] = pa.array(lengths)
        columns["truncated"] = pa.array(cut, type=pa.bool_())
        if multi:
            columns["labels"] = pa.FixedSizeListArray.from_arrays(pa.array(labels[rows].ravel()), labels.shape[1])
        else:
            columns["labels"] = labels.take(pa.array(rows)).cast(label_type)  # no copy of the whole column
        record = pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)
        return record, Encoded(rows=len(ids), tokens=total, max_tokens=int(lengths.max(initial=0)),
                               truncated=int(sum(cut)))

    done = Encoded()
    with (pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer,
          rust_threads_off()):
        for record, part in _in_order(work, _pieces(ds, text_columns, positions),
                                      threads if encoder.threads_help else 1):
            writer.write_batch(record)
            done.rows += part.rows
            done.tokens += part.tokens
            done.max_tokens = max(done.max_tokens, part.max_tokens)
            done.truncated += part.truncated
            if advance is not None:
                advance(part.rows)
    return done


PARALLELISM = "TOKENIZERS_PARALLELISM"


@contextlib.contextmanager
def rust_threads_off():
    """The tokenizers library's own thread pool off while ftcli's threads tokenize, as it was
    afterwards. By default each batch call splits its rows over a Rust thread pool: tiny tasks,
    and encodings freed by other threads than made them. On 200k MRPC pairs and 2 cores, two ftcli
    threads with it on reached 12,800 to 16,100 rows/s, and with it off 19,400 to 20,100. The library
    reads TOKENIZERS_PARALLELISM at every call; it is set only before ftcli's threads start and
    restored after they end."""
    import os

    before = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARALLELISM, None)
        else:
            os.environ[PARALLELISM] = before


def _in_order(work, items, threads: int) -> Iterator:
    """`map(work, items)` in `threads` threads, results in order, at most two per thread in flight."""
    if threads <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="ftcli-tokenize") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pieces(ds: datasets.Dataset, columns: list[str],
            positions: np.ndarray | None) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """The split's `columns` in record batches of at most BATCH_ROWS rows, each with its rows'
    positions in the split; only the rows at `positions` when given."""
    import numpy as np
    import pyarrow as pa

    rows = BATCH_ROWS
    start = 0
    for batch in raw_batches(ds):
        end = start + batch.num_rows
        if positions is None:
            picked = np.arange(start, end)
            part = batch
        else:
            lo, hi = np.searchsorted(positions, [start, end])
            picked = positions[lo:hi]
            part = batch.take(pa.array(picked - start)) if hi > lo else None
        if part is not None:
            part = pa.RecordBatch.from_arrays([part.column(c) for c in columns], names=columns)
            for offset in range(0, part.num_rows, rows):
                yield part.slice(offset, rows), picked[offset:offset + rows]
        start = end
    if start != ds.num_rows:
        raise FtcliError(f"internal error: read {start} rows of a split of {ds.num_rows}")


def raw_batches(ds: datasets.Dataset) -> Iterator[pa.RecordBatch]:
    """The split's rows in order as Arrow record batches. From its one Arrow file with plain reads
    when it is a whole file as loaded (each batch is freed after use); else from its table."""
    import pyarrow as pa

    files = [f["filename"] for f in ds.cache_files]
    # a loaded split's table is its file, with the features put into the schema's metadata
    changed = [op for op, *_ in getattr(ds.data, "replays", None) or () if op != "replace_schema_metadata"]
    whole_file = (len(files) == 1 and getattr(ds, "_indices", None) is None and not changed
                  and ds.data.num_rows == ds.num_rows)
    if whole_file:
        with pa.OSFile(files[0]) as f:
            yield from pa.ipc.open_stream(f)
    else:  # in memory, several files, or a selection of rows
        for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
            yield from table.to_batches()


def _row_error(encoder: Encoder, texts: list[pa.Array], rows, source: str, exc: Exception) -> FtcliError:
    """The row a batch failed on, in words: `only_first`/`only_second` cannot fit a row whose
    other text alone fills max_length."""
    data = encoder.data
    for i, row in enumerate(rows):
        try:
            encoder.encode([t.slice(i, 1) for t in texts])
        except Exception as row_exc:  # noqa: BLE001
            if data.truncation == "longest_first":  # can cut any row: the failure is something else
                return FtcliError(f"{source}: row {int(row) + 1}: tokenization failed ({_first_line(row_exc)})")
            return FtcliError(f"{source}: row {int(row) + 1}: truncation {data.truncation} cannot fit it into "
                              f"max_length {encoder.max_length} (the text it may not cut is that long alone); "
                              "use truncation: longest_first or a larger data.max_length")
    return FtcliError(f"{source}: tokenization failed ({_first_line(exc)})")


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def features(keep: list[str], label_feature) -> datasets.Features:
    """The prepared split's columns and types."""
    import datasets as hfds

    return hfds.Features({
        **{c: hfds.List(hfds.Value("int32" if c == "input_ids" else "int8")) for c in keep},
        "length": hfds.Value("int32"), "truncated": hfds.Value("bool"), "labels": label_feature,
    })
